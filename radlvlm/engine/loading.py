"""Start the configured backend on a model directory: what the service, the CLI and offline runs share.

``torch`` loads a radlvlm model directory (dense, LoRA or MoLE; CPU or any CUDA GPU, V100 included). ``vllm``
serves an HF Llava export with a CLIP or SigLIP tower on an A100/H100-class GPU (see ``vllm_engine``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, get_args

import psutil
import torch

from radlvlm.engine.batching import BatchingEngine
from radlvlm.engine.torch_engine import TorchEngine
from radlvlm.engine.vllm_engine import load_vllm_engine
from radlvlm.errors import InputError, ModelError
from radlvlm.model.generation import GenerationSettings
from radlvlm.model.pretrained import load_pretrained

Backend = Literal["torch", "vllm"]
BACKENDS: tuple[str, ...] = get_args(Backend)
logger = logging.getLogger(__name__)
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


# Text tokens a request's sequence is budgeted for beside its image tokens and its new tokens: the prompt with an
# indication, or a report to check. The KV cache of a batch of such sequences is what grows with the batch.
TEXT_TOKEN_BUDGET = 512
# The share of the memory free after loading the weights that batches' KV caches may take (the rest: activations,
# the allocator's slack, and for the CPU everything else the machine runs).
KV_CACHE_SHARE = 0.5


def kv_cache_bytes_per_sequence(config: Any, new_tokens: int, dtype: torch.dtype) -> int:
    """Bytes of KV cache one sequence of image + text budget + ``new_tokens`` takes in ``config``'s LM."""
    text = getattr(config, "text_config", config)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    tokens = (getattr(config, "image_seq_length", None) or 0) + TEXT_TOKEN_BUDGET + new_tokens
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * text.num_hidden_layers * kv_heads * head_dim * tokens * element


def free_memory_bytes(device: torch.device) -> int:
    """Memory free on ``device`` now: the GPU's (after the weights were loaded) or the machine's available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])

    return int(psutil.virtual_memory().available)


def memory_bound_batch_size(configured: int, per_sequence: int, free_bytes: int) -> int:
    """The configured ``max_batch_size``, lowered (never below 1) to what ``KV_CACHE_SHARE`` of the free memory
    holds: a batch of 8 long sequences on a 16 GB V100 holding a 7B model in float16 would not fit."""
    return max(1, min(configured, int(free_bytes * KV_CACHE_SHARE // max(per_sequence, 1))))


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
        return _load_vllm(
            model_dir,
            adapter_dir,
            adapter,
            model_id,
            vllm_options,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            generation=generation,
        )
    return _load_torch(
        model_dir,
        adapter_dir,
        adapter,
        model_id,
        device,
        dtype,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        generation=generation,
    )


def _load_vllm(
    model_dir: str | Path,
    adapter_dir: str | Path | None,
    adapter: str | None,
    model_id: str,
    vllm_options: Any,
    *,
    max_batch_size: int,
    max_wait_ms: float,
    max_queue: int,
    generation: GenerationSettings | None,
) -> tuple[BatchingEngine, dict[str, Any]]:
    """vLLM's engine on an HF Llava export; the model's description comes from the export's own config."""
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


def _load_torch(
    model_dir: str | Path,
    adapter_dir: str | Path | None,
    adapter: str | None,
    model_id: str,
    device: str,
    dtype: str,
    *,
    max_batch_size: int,
    max_wait_ms: float,
    max_queue: int,
    generation: GenerationSettings | None,
) -> tuple[BatchingEngine, dict[str, Any]]:
    """The torch engine on a radlvlm model directory, its batch size capped by the memory free after loading."""
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    target = _torch_device(device)
    model, processor = load_pretrained(model_dir, adapter=adapter_dir, dtype=DTYPES[dtype])
    model = model.to(target)
    new_tokens = (generation or GenerationSettings()).max_new_tokens
    batch_size = _fitting_batch_size(model.config, max_batch_size, new_tokens, DTYPES[dtype], target)
    engine = TorchEngine(
        model,
        processor,
        model_id=model_id,
        max_batch_size=batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        generation=generation,
    )
    return engine, model_info(model, model_id, adapter)


def _fitting_batch_size(
    config: Any, max_batch_size: int, new_tokens: int, dtype: torch.dtype, target: torch.device
) -> int:
    """``max_batch_size``, or fewer when the batches' KV caches would not fit the free memory (said in the log)."""
    per_sequence = kv_cache_bytes_per_sequence(config, new_tokens, dtype)
    batch_size = memory_bound_batch_size(max_batch_size, per_sequence, free_memory_bytes(target))
    if batch_size < max_batch_size:
        logger.warning(
            "max_batch_size lowered from %d to %d: a sequence's KV cache takes %.0f MB and %d%% of the free "
            "memory holds %d of them",
            max_batch_size,
            batch_size,
            per_sequence / 2**20,
            round(KV_CACHE_SHARE * 100),
            batch_size,
        )
    return batch_size


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
