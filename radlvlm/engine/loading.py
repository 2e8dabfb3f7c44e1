"""Start the configured backend on a model directory: what the service, the CLI and offline runs share.

``torch`` loads a radlvlm model directory (dense, LoRA or MoLE; CPU or any CUDA GPU, V100 included). ``vllm``
serves an HF Llava export with a CLIP or SigLIP tower on an A100/H100-class GPU (see ``vllm_engine``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import torch

from radlvlm.engine.batching import BatchingEngine
from radlvlm.errors import InputError, ModelError
from radlvlm.model.generation import GenerationSettings

Backend = Literal["torch", "vllm"]
BACKENDS: tuple[str, ...] = get_args(Backend)
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model_info(model: Any, model_id: str, adapter: str | None, backend: str = "torch") -> dict[str, Any]:
    """What ``GET /v1/models`` says of a loaded torch model."""
    config = getattr(model, "config", None)
    vision = getattr(config, "vision_config", None)
    text = getattr(config, "text_config", None)
    return {
        "id": model_id,
        "backend": backend,
        "architecture": {
            "vision": getattr(vision, "model_type", None),
            "text": getattr(text, "model_type", None),
            "image_tokens": getattr(config, "image_seq_length", None),
        },
        "adapter": adapter,
    }


def default_model_id(model_dir: str | Path, adapter_dir: str | Path | None) -> str:
    return Path(model_dir).name + (f"+{Path(adapter_dir).name}" if adapter_dir else "")


def load_engine(
    backend: str,
    model_dir: str | Path,
    *,
    adapter_dir: str | Path | None = None,
    model_id: str | None = None,
    max_batch_size: int = 8,
    max_wait_ms: float = 25.0,
    max_queue: int = 64,
    generation: GenerationSettings | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    vllm_options: Any = None,
) -> tuple[BatchingEngine, dict[str, Any]]:
    """The started engine for ``backend`` and what ``GET /v1/models`` says of it.

    Args:
        backend ("torch" | "vllm"): which backend runs the model.
        model_dir: a radlvlm model directory (torch) or an HF Llava export (vllm; ``radlvlm convert export-hf``).
        adapter_dir: a MoLE or peft LoRA adapter (torch); a peft LoRA adapter (vllm, through multi-LoRA).
        device (str, default "cpu") and dtype (str, default "float32"): where and in what precision the torch
            backend runs (``cuda``/``cuda:N``; ``float16`` on V100, which has no bfloat16). vLLM takes its own.
        vllm_options (VLLMOptions | None): the vLLM engine settings (defaults when None).
    """
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    model_id = model_id or default_model_id(model_dir, adapter_dir)
    # The adapter's folder name only: what a client is told must not map the server's file system.
    adapter = Path(adapter_dir).name if adapter_dir is not None else None
    if backend == "vllm":
        from radlvlm.engine.vllm_engine import load_vllm_engine

        engine, spec = load_vllm_engine(
            model_dir,
            adapter_dir=adapter_dir,
            options=vllm_options,
            model_id=model_id,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            generation=generation,
        )
        info = {
            "id": model_id,
            "backend": "vllm",
            "architecture": {"vision": spec.vision_model, "text": spec.text_model, "image_tokens": spec.image_tokens},
            "adapter": adapter,
        }
        return engine, info

    from radlvlm.engine.torch_engine import TorchEngine
    from radlvlm.model.pretrained import load_pretrained
    from radlvlm.tasks.calibration import find_calibrations

    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    target = _torch_device(device)
    model, processor = load_pretrained(model_dir, adapter=adapter_dir, dtype=DTYPES[dtype])
    model = model.to(target)
    engine = TorchEngine(
        model,
        processor,
        model_id=model_id,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        generation=generation,
        calibrations=find_calibrations(model_dir, adapter_dir),
    )
    return engine, model_info(model, model_id, adapter)


def _torch_device(device: str) -> torch.device:
    try:
        target = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise InputError(f"device must be cpu, cuda or cuda:N, got {device!r}") from e
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but no CUDA GPU is visible")
    if target.type not in ("cpu", "cuda"):
        raise InputError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    return target
