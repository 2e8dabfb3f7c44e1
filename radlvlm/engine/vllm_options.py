"""The vLLM engine's settings, apart from the engine so that reading the configuration imports no torch."""

from __future__ import annotations

from dataclasses import dataclass

from radlvlm.errors import InputError


@dataclass(frozen=True)
class VLLMOptions:
    """vLLM engine settings radlvlm exposes (everything else keeps vLLM's defaults).

    Args:
        dtype (str, default "bfloat16"): weight and activation dtype.
        gpu_memory_utilization (float, default 0.9): share of GPU memory vLLM takes (weights + KV cache).
        max_model_len (int | None, default None): context length; None keeps the model's.
        max_num_seqs (int | None, default None): most sequences decoded together; None keeps vLLM's default.
        enable_prefix_caching (bool, default True): reuse the KV cache of a shared prompt prefix. A study's image
            comes first in the prompt, so this pays off when one study is asked twice (a draft, then a check),
            not across studies; it never changes greedy outputs.
        ngram_speculative_tokens (int, default 0): n-gram (prompt lookup) speculative decoding with this many
            draft tokens per step; 0 turns it off. Greedy outputs are unchanged by construction (drafts are
            verified by the model); whether it gains is measured by ``benchmarks/gpu.py``.
        ngram_lookup_min (int, default 2) and ngram_lookup_max (int, default 4): n-gram sizes to match.
        enforce_eager (bool, default False): no CUDA graphs (slower; for debugging).
        seed (int, default 0): the engine's seed (sampling only; greedy ignores it).
    """

    dtype: str = "bfloat16"
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    enable_prefix_caching: bool = True
    ngram_speculative_tokens: int = 0
    ngram_lookup_min: int = 2
    ngram_lookup_max: int = 4
    enforce_eager: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise InputError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise InputError(f"max_model_len must be positive, got {self.max_model_len}")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise InputError(f"max_num_seqs must be positive, got {self.max_num_seqs}")
        if self.ngram_speculative_tokens < 0:
            raise InputError(f"ngram_speculative_tokens must be >= 0, got {self.ngram_speculative_tokens}")
        if not 1 <= self.ngram_lookup_min <= self.ngram_lookup_max:
            raise InputError(
                f"need 1 <= ngram_lookup_min <= ngram_lookup_max, got {self.ngram_lookup_min}, {self.ngram_lookup_max}"
            )
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise InputError(f"dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}")
