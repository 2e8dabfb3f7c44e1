"""The service with no model configured runs the embedded default model and says so."""

from __future__ import annotations

from pathlib import Path

from servicesupport import make_settings

from radlvlm.pipeline.runtime import build_engine
from radlvlm.service.schemas import ModelOut


def test_no_model_configured_serves_the_embedded_default(tmp_path: Path) -> None:
    settings, _, _ = make_settings(tmp_path, None)  # type: ignore[arg-type]
    engine, info = build_engine(settings)
    try:
        described = ModelOut(**info)
        assert described.embedded_default and described.id.startswith("radlvlm-embedded")
        # The embedded model reads the radiograph with its finding classifier, as its vision tower (9 tokens).
        assert described.architecture["vision"] == "radlvlm_finding_tower" and described.adapter is not None
        assert described.architecture["image_tokens"] == 9
    finally:
        engine.close()
