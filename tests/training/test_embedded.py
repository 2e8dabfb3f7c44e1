"""The embedded model's recipe end to end at its tiny scale on the real public data (resumable steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testsupport import shared_path

from radlvlm.errors import InputError
from radlvlm.model import load_pretrained
from radlvlm.training.embedded import STEPS, build_embedded


def test_tiny_embedded_recipe_runs_and_resumes(tmp_path: Path) -> None:
    data = shared_path("iu_xray").parent
    shared_path("nih_cxr14")
    shared_path("covid_chestxray")
    summary = build_embedded(data, tmp_path / "work", scale_name="tiny")
    assert all((tmp_path / "work" / step / "done.json").is_file() for step in STEPS)
    stage2 = summary["stage2"]
    model, processor = load_pretrained(stage2["base"], adapter=stage2["adapter"])
    assert getattr(model, "_mole_adapter", None) is not None and processor.num_image_tokens == 4
    lm_losses = json.loads((tmp_path / "work" / "vision" / "state" / "contrastive_history.json").read_text())
    assert len(lm_losses) == 2
    again = build_embedded(data, tmp_path / "work", scale_name="tiny")  # every step is done: nothing reruns
    assert again["stage2"]["seconds"] == stage2["seconds"]
    with pytest.raises(InputError, match="unknown scale"):
        build_embedded(data, tmp_path / "x", scale_name="huge")
    with pytest.raises(InputError, match="missing"):
        build_embedded(tmp_path, tmp_path / "y", scale_name="tiny")
