"""Service configuration from ``RADLVLM_*`` environment variables or a ``.env``-style file (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SCOPES = ("draft", "check", "deid", "admin")


class ServiceSettings(BaseSettings):
    """Everything the service reads at start-up.

    API keys are configured as ``sha256:<hex digest of the key>:<scope>[,<scope>…]`` entries (comma-free
    digests, ``;``-separated in ``RADLVLM_API_KEYS``), so the configuration never holds a usable key.
    ``radlvlm apikey`` prints such an entry for a new key.
    """

    model_config = SettingsConfigDict(env_prefix="RADLVLM_", env_file=None, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    model_dir: Path | None = Field(default=None, description="A radlvlm model directory; default: the embedded model")
    adapter_dir: Path | None = None
    backend: Literal["torch", "vllm"] = Field(
        default="torch",
        description="torch: any radlvlm model (MoLE too) on CPU or any GPU; vllm: an HF Llava export with a "
        "CLIP/SigLIP tower on an A100/H100-class GPU (the [vllm] extra, in its own environment)",
    )
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:[0-9]+)?)$", description="Where the torch backend runs")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="The torch backend's precision (float16 on V100, which has no bfloat16)"
    )
    vllm_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    vllm_gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    vllm_max_model_len: int | None = Field(default=None, ge=1)
    vllm_max_num_seqs: int | None = Field(default=None, ge=1)
    vllm_prefix_caching: bool = Field(default=True, description="Reuse the KV cache of a shared prompt prefix")
    vllm_ngram_speculative_tokens: int = Field(
        default=0, ge=0, le=16, description="n-gram speculative decoding: draft tokens per step (0: off)"
    )
    vllm_ngram_lookup_min: int = Field(default=2, ge=1)
    vllm_ngram_lookup_max: int = Field(default=4, ge=1)
    api_keys: str = Field(default="", description="';'-separated sha256:<digest>:<scopes> entries")
    auth_disabled: bool = Field(default=False, description="Only for local demos: every request gets every scope")
    max_body_bytes: int = Field(default=64 * 2**20, ge=1024)
    request_timeout_s: float = Field(default=120.0, gt=0)
    rate_limit_per_minute: int = Field(default=120, ge=1)
    cors_origins: str = Field(default="", description="','-separated origins; empty keeps CORS off")
    max_batch_size: int = Field(default=8, ge=1)
    max_wait_ms: float = Field(default=5.0, ge=0)
    max_queue: int = Field(default=64, ge=1)
    max_new_tokens: int = Field(default=256, ge=1, le=4096)
    dicomweb_url: str | None = Field(default=None, description="The archive drafts may name studies in (DICOMweb root)")
    dicomweb_authorization: str | None = Field(default=None, description="Authorization header for the archive")
    audit_path: Path = Path("radlvlm-audit.jsonl")
    deid_key_path: Path = Field(default=Path("radlvlm-deid.key"), description="Project key for pseudonyms and UIDs")

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard_with_keys(cls, value: str) -> str:
        if "*" in value.split(","):
            raise ValueError("a wildcard CORS origin is refused: list the PACS viewer origins explicitly")
        return value

    @model_validator(mode="after")
    def _ngram_window(self) -> ServiceSettings:
        if self.vllm_ngram_lookup_min > self.vllm_ngram_lookup_max:
            raise ValueError("vllm_ngram_lookup_min must not exceed vllm_ngram_lookup_max")
        return self

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]
