"""``load_engine``: the backend, device and precision named by configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from servicesupport import build_tiny_model_dir

from radlvlm.engine.loading import kv_cache_bytes_per_sequence, load_engine, memory_bound_batch_size
from radlvlm.errors import InputError, ModelError
from radlvlm.model import GenerationSettings
from radlvlm.pipeline.task_engine import TaskEngine
from radlvlm.tasks.checking import CheckRequest, CheckResult
from radlvlm.tasks.drafting import DraftRequest, DraftResult


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    return build_tiny_model_dir(tmp_path_factory.mktemp("loading") / "tiny")


def test_the_torch_backend_in_half_precision(model_dir: Path) -> None:
    loaded, info = load_engine(
        "torch", model_dir, dtype="bfloat16", generation=GenerationSettings(max_new_tokens=3), model_id="tiny-bf16"
    )
    engine = TaskEngine(loaded)
    try:
        assert info["backend"] == "torch" and info["id"] == "tiny-bf16" and info["architecture"]["vision"] == "dinov2"
        assert next(loaded.model.parameters()).dtype == torch.bfloat16  # type: ignore[attr-defined]
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


def test_the_kv_cache_of_a_llava_7b_sequence() -> None:
    """LLaVA-1.5-7B's LM (32 layers, 32 heads of 128) in float16: 0.5 MB of K and V per token, for 576 image
    tokens, the 512-token text budget and 256 new tokens."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(),
        text_config=LlamaConfig(hidden_size=4096, num_attention_heads=32, num_hidden_layers=32),
        image_seq_length=576,
    )
    per_sequence = kv_cache_bytes_per_sequence(config, 256, torch.float16)
    assert per_sequence == 2 * 32 * 32 * 128 * (576 + 512 + 256) * 2  # 672 MiB
    assert memory_bound_batch_size(8, per_sequence, free_bytes=2 * 2**30) == 1  # a V100 after the weights
    assert memory_bound_batch_size(8, per_sequence, free_bytes=6 * 2**30) == 4
    assert memory_bound_batch_size(8, per_sequence, free_bytes=60 * 2**30) == 8  # never above the setting
    assert memory_bound_batch_size(8, per_sequence, free_bytes=0) == 1  # one at a time, not none


def test_the_engine_batches_no_more_than_free_memory_holds(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from radlvlm.engine import loading

    engine, _ = load_engine("torch", model_dir, max_batch_size=8)
    engine.close()
    assert engine.max_batch_size == 8  # this machine has room for eight tiny sequences
    per_sequence = kv_cache_bytes_per_sequence(engine.model.config, 256, torch.float32)  # type: ignore[attr-defined]
    monkeypatch.setattr(loading, "free_memory_bytes", lambda device: 6 * per_sequence)  # room for three
    engine, _ = load_engine("torch", model_dir, max_batch_size=8)
    try:
        assert engine.max_batch_size == 3
        assert "max_batch_size lowered from 8 to 3" in caplog.text
        drafts = TaskEngine(engine)
        futures = [drafts.submit(DraftRequest(image=torch.rand(28, 28), max_new_tokens=2)) for _ in range(6)]
        assert max(f.result(timeout=60).timings.batch_size for f in futures) <= 3
    finally:
        engine.close()
