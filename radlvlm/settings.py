"""radlvlm's configuration from ``RADLVLM_*`` environment variables (pydantic-settings): the model and the
engine that runs it, the project key and the audit trail, and the service's limits.

Every door reads the same settings (the service, ``radlvlm draft``/``check``, the PACS worker, ``eval predict``),
so one environment gives the same engine, the same pseudonyms and the same audit trail whichever door is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from radlvlm.errors import InputError

SCOPES = ("draft", "check", "deid", "admin")


# The vLLM engine's settings live here, with the rest of the configuration, so that reading the configuration
# imports no engine (and no torch).
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


def state_dir() -> Path:
    """Where radlvlm keeps its own state (the project key, the audit trail) unless told otherwise:
    ``$RADLVLM_HOME``, else ``$XDG_DATA_HOME/radlvlm``, else ``~/.local/share/radlvlm`` — never the working
    directory, so a key is not created (or a different one found) wherever a command happens to run."""
    if os.environ.get("RADLVLM_HOME"):
        return Path(os.environ["RADLVLM_HOME"]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser() / "radlvlm"


class Settings(BaseSettings):
    """Everything radlvlm reads at start-up.

    API keys are configured as ``sha256:<hex digest of the key>:<scope>[,<scope>…]`` entries (comma-free
    digests, ``;``-separated in ``RADLVLM_API_KEYS``), so the configuration never holds a usable key.
    ``radlvlm apikey`` prints such an entry for a new key.
    """

    model_config = SettingsConfigDict(env_prefix="RADLVLM_", env_file=None, extra="forbid")

    host: str = Field(default="127.0.0.1", description="Address the service listens on")
    port: int = Field(default=8080, ge=1, le=65535, description="Port the service listens on")
    model_dir: Path | None = Field(default=None, description="A radlvlm model directory; default: the embedded model")
    adapter_dir: Path | None = Field(
        default=None, description="A MoLE or peft LoRA adapter on top of the model (vllm: peft LoRA only)"
    )
    findings_model: Path | None = Field(
        default=None,
        description="A finding classifier directory (radlvlm embedded findings), or a model whose vision tower is "
        "one; default: the one that travels with the model (its findings/ folder, or its own tower), if any. Drafts "
        "are given its findings and image checks compare with them",
    )
    findings_disabled: bool = Field(
        default=False, description="Use no finding classifier, even one beside the model (image checks then refuse)"
    )
    backend: Literal["torch", "vllm"] = Field(
        default="torch",
        description="torch: any radlvlm model (MoLE too) on CPU or any GPU; vllm: an HF Llava export with a "
        "CLIP/SigLIP tower on an A100/H100-class GPU (the [vllm] extra, in its own environment)",
    )
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:[0-9]+)?)$", description="Where the torch backend runs")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="The torch backend's precision (float16 on V100, which has no bfloat16)"
    )
    vllm_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="vLLM's precision"
    )
    vllm_gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Share of the GPU's memory vLLM takes (weights and KV cache)"
    )
    vllm_max_model_len: int | None = Field(
        default=None, ge=1, description="vLLM's context length; default: the model's"
    )
    vllm_max_num_seqs: int | None = Field(
        default=None, ge=1, description="Sequences vLLM decodes at once; default: vLLM's"
    )
    vllm_prefix_caching: bool = Field(default=True, description="Reuse the KV cache of a shared prompt prefix")
    vllm_ngram_speculative_tokens: int = Field(
        default=0, ge=0, le=16, description="n-gram speculative decoding: draft tokens per step (0: off)"
    )
    vllm_ngram_lookup_min: int = Field(default=2, ge=1, description="n-gram speculative decoding: shortest match")
    vllm_ngram_lookup_max: int = Field(default=4, ge=1, description="n-gram speculative decoding: longest match")
    api_keys: str = Field(default="", description="';'-separated sha256:<digest>:<scopes> entries")
    auth_disabled: bool = Field(default=False, description="Only for local demos: every request gets every scope")
    max_body_bytes: int = Field(default=64 * 2**20, ge=1024, description="Largest request body accepted (413 above it)")
    request_timeout_s: float = Field(
        default=120.0, gt=0, description="A request still waiting for the model after this answers 504"
    )
    rate_limit_per_minute: int = Field(default=120, ge=1, description="Requests per API key per minute (429 above)")
    cors_origins: str = Field(default="", description="','-separated origins; empty keeps CORS off")
    max_batch_size: int = Field(default=8, ge=1, description="Requests the engine runs together")
    max_wait_ms: float = Field(
        default=25.0, ge=0, description="How long the engine waits for a batch to fill before it runs"
    )
    max_queue: int = Field(default=64, ge=1, description="Requests waiting for the engine; beyond it, 503 busy")
    max_new_tokens: int = Field(default=256, ge=1, le=4096, description="Token budget of a draft")
    dicomweb_url: str | None = Field(default=None, description="The archive drafts may name studies in (DICOMweb root)")
    dicomweb_authorization: str | None = Field(default=None, description="Authorization header for the archive")
    audit_path: Path = Field(
        default_factory=lambda: state_dir() / "audit.jsonl", description="The audit trail (JSON lines, hash-chained)"
    )
    deid_key_path: Path = Field(
        default_factory=lambda: state_dir() / "deid.key",
        description="Project key for pseudonyms, UIDs and the audit MAC (created 0600 when absent)",
    )

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard_with_keys(cls, value: str) -> str:
        if "*" in value.split(","):
            raise ValueError("a wildcard CORS origin is refused: list the PACS viewer origins explicitly")
        return value

    @model_validator(mode="after")
    def _valid_vllm_options(self) -> Settings:
        try:  # VLLMOptions holds the rules; checked here too so a bad value fails at start, whatever the backend
            self.vllm_options()
        except InputError as e:
            raise ValueError(str(e)) from None
        return self

    def vllm_options(self) -> VLLMOptions:
        """The vLLM engine settings named by ``RADLVLM_VLLM_*``."""
        return VLLMOptions(
            dtype=self.vllm_dtype,
            gpu_memory_utilization=self.vllm_gpu_memory_utilization,
            max_model_len=self.vllm_max_model_len,
            max_num_seqs=self.vllm_max_num_seqs,
            enable_prefix_caching=self.vllm_prefix_caching,
            ngram_speculative_tokens=self.vllm_ngram_speculative_tokens,
            ngram_lookup_min=self.vllm_ngram_lookup_min,
            ngram_lookup_max=self.vllm_ngram_lookup_max,
        )

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]


def load_settings(**overrides: object) -> Settings:
    """The ``RADLVLM_*`` settings with a command's options on top (None means "not given"); a bad value is an
    ``InputError`` of one line naming each field, so every door refuses it the same way."""
    try:
        return Settings(**{name: value for name, value in overrides.items() if value is not None})  # type: ignore[arg-type]
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}" for error in e.errors()
        )
        raise InputError(f"invalid configuration: {problems}") from None
