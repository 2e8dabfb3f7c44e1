"""radlvlm's configuration from ``RADLVLM_*`` environment variables (pydantic-settings): the model and the
engine that runs it, the project key and the audit trail, and the service's limits.

Every door reads the same settings (the service, ``radlvlm draft``/``check``, the PACS worker, ``eval predict``),
so one environment gives the same engine, the same pseudonyms and the same audit trail whichever door is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from radlvlm.engine.vllm_options import VLLMOptions
    from radlvlm.model.generation import GenerationSettings

SCOPES = ("draft", "check", "deid", "admin")


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

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    model_dir: Path | None = Field(default=None, description="A radlvlm model directory; default: the embedded model")
    adapter_dir: Path | None = None
    findings_model: Path | None = Field(
        default=None,
        description="A finding classifier directory (radlvlm embedded findings); default: the one that travels with "
        "the model (its findings/ folder), if any. Drafts are given its findings and image checks compare with them",
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
    max_wait_ms: float = Field(default=25.0, ge=0)
    max_queue: int = Field(default=64, ge=1)
    max_new_tokens: int = Field(default=256, ge=1, le=4096)
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
        from radlvlm.errors import InputError

        try:  # VLLMOptions holds the rules; checked here too so a bad value fails at start, whatever the backend
            self.vllm_options()
        except InputError as e:
            raise ValueError(str(e)) from None
        return self

    def vllm_options(self) -> VLLMOptions:
        """The vLLM engine settings named by ``RADLVLM_VLLM_*``."""
        from radlvlm.engine.vllm_options import VLLMOptions

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

    def generation(self) -> GenerationSettings:
        from radlvlm.model.generation import GenerationSettings

        return GenerationSettings(max_new_tokens=self.max_new_tokens)

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]


def load_settings(**overrides: object) -> Settings:
    """The ``RADLVLM_*`` settings with a command's options on top (None means "not given"); a bad value is an
    ``InputError`` of one line naming each field, so every door refuses it the same way."""
    from pydantic import ValidationError

    from radlvlm.errors import InputError

    try:
        return Settings(**{name: value for name, value in overrides.items() if value is not None})  # type: ignore[arg-type]
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}" for error in e.errors()
        )
        raise InputError(f"invalid configuration: {problems}") from None
