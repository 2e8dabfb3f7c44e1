"""``load_engine``: the backend, device and precision named by configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from servicesupport import build_tiny_model_dir

from radlvlm.engine import CheckRequest, CheckResult, DraftRequest, DraftResult
from radlvlm.engine.loading import load_engine
from radlvlm.errors import InputError, ModelError
from radlvlm.model import GenerationSettings


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    return build_tiny_model_dir(tmp_path_factory.mktemp("loading") / "tiny")


def test_the_torch_backend_in_half_precision(model_dir: Path) -> None:
    engine, info = load_engine(
        "torch", model_dir, dtype="bfloat16", generation=GenerationSettings(max_new_tokens=3), model_id="tiny-bf16"
    )
    try:
        assert info["backend"] == "torch" and info["id"] == "tiny-bf16" and info["architecture"]["vision"] == "dinov2"
        assert next(engine.model.parameters()).dtype == torch.bfloat16  # type: ignore[attr-defined]
        assert isinstance(engine.run(DraftRequest(image=torch.rand(28, 28)), timeout=60), DraftResult)
        # A SIMPLE check with an image is one forward pass: the pixels follow the model's precision.
        check = engine.run(
            CheckRequest(report="FINDINGS: Lungs clear.\nIMPRESSION: Normal chest.", image=torch.rand(28, 28)),
            timeout=60,
        )
        assert isinstance(check, CheckResult) and check.answer_valid
    finally:
        engine.close()


def test_bad_backends_devices_and_precisions_are_refused(model_dir: Path) -> None:
    with pytest.raises(InputError, match="backend must be one of torch, vllm"):
        load_engine("onnx", model_dir)
    with pytest.raises(InputError, match="dtype must be one of"):
        load_engine("torch", model_dir, dtype="int4")
    with pytest.raises(InputError, match="device must be"):
        load_engine("torch", model_dir, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU is visible"):
            load_engine("torch", model_dir, device="cuda")
