"""Building the running service from settings: model → engine → safety → app, and ``radlvlm serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from radlvlm.cli_support import fail, run_guarded, stderr
from radlvlm.service.settings import SCOPES, ServiceSettings


def vllm_options(settings: ServiceSettings) -> Any:
    """The vLLM engine settings named by ``RADLVLM_VLLM_*``."""
    from radlvlm.engine.vllm_engine import VLLMOptions

    return VLLMOptions(
        dtype=settings.vllm_dtype,
        gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
        max_model_len=settings.vllm_max_model_len,
        max_num_seqs=settings.vllm_max_num_seqs,
        enable_prefix_caching=settings.vllm_prefix_caching,
        ngram_speculative_tokens=settings.vllm_ngram_speculative_tokens,
        ngram_lookup_min=settings.vllm_ngram_lookup_min,
        ngram_lookup_max=settings.vllm_ngram_lookup_max,
    )


def build_engine(settings: ServiceSettings) -> tuple[Any, dict[str, Any]]:
    """The configured backend (``RADLVLM_BACKEND``) started on the configured model, and its model info."""
    from radlvlm.engine.loading import load_engine
    from radlvlm.model.default import choose_model
    from radlvlm.model.generation import GenerationSettings

    # No model configured: the embedded default model shipped in the package (demonstration only).
    choice = choose_model(settings.model_dir, settings.adapter_dir)
    engine, info = load_engine(
        settings.backend,
        choice.base,
        adapter_dir=choice.adapter,
        model_id=choice.model_id,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        generation=GenerationSettings(max_new_tokens=settings.max_new_tokens),
        device=settings.device,
        dtype=settings.dtype,
        vllm_options=vllm_options(settings) if settings.backend == "vllm" else None,
    )
    info["embedded_default"] = choice.embedded
    return engine, info


def build_app(settings: ServiceSettings) -> Any:
    """Start the configured engine on the model, and wire de-identification and audit around it."""
    from radlvlm.safety.audit import AuditTrail
    from radlvlm.safety.dicom_deid import DicomDeidentifier
    from radlvlm.safety.pseudonyms import PseudonymMap, load_or_create_key
    from radlvlm.service.app import create_app

    engine, info = build_engine(settings)
    key, _ = load_or_create_key(settings.deid_key_path)
    # The service keeps no original→pseudonym record: nothing identifying accumulates in memory.
    deidentifier = DicomDeidentifier(PseudonymMap(key, record=False))
    audit = AuditTrail(settings.audit_path, key=key)
    dicomweb = None
    if settings.dicomweb_url:
        from radlvlm.integrations.dicomweb import DicomWebSettings, DicomWebSource

        headers = {"Authorization": settings.dicomweb_authorization} if settings.dicomweb_authorization else {}
        dicomweb = DicomWebSource(DicomWebSettings(settings.dicomweb_url, headers=headers))
    return create_app(settings, engine, model_info=info, audit=audit, deidentifier=deidentifier, dicomweb=dicomweb)


def serve_command(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default 127.0.0.1: behind a TLS reverse proxy).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080).")] = None,
    model: Annotated[Path | None, typer.Option(help="A radlvlm model directory (or RADLVLM_MODEL_DIR).")] = None,
    adapter: Annotated[Path | None, typer.Option(help="A MoLE or LoRA adapter directory on top of --model.")] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="torch (default; CPU or any GPU, MoLE) or vllm (A100/H100, HF Llava export, vllm extra)."),
    ] = None,
) -> None:
    """Run the HTTP service (uvicorn). Configuration: RADLVLM_* environment variables; options override them."""
    import uvicorn

    values = {"host": host, "port": port, "model_dir": model, "adapter_dir": adapter, "backend": backend}
    overrides = {k: v for k, v in values.items() if v is not None}
    try:
        settings = ServiceSettings(**overrides)
    except ValueError as e:
        raise fail(f"invalid configuration: {e}") from None
    if not settings.api_keys and not settings.auth_disabled:
        raise fail("no API keys configured: create one with `radlvlm apikey` and set RADLVLM_API_KEYS")
    app = run_guarded(lambda: build_app(settings))
    stderr.print(f"radlvlm serving on http://{settings.host}:{settings.port} (docs at /docs)", highlight=False)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)


def apikey_command(
    scopes: Annotated[str, typer.Option(help=f"Comma-separated scopes from {', '.join(SCOPES)}.")] = "draft,check",
) -> None:
    """Create an API key: prints the key (give it to the client) and the entry for RADLVLM_API_KEYS (store it)."""
    from radlvlm.service.security import new_key

    key, entry = run_guarded(lambda: new_key(tuple(s.strip() for s in scopes.split(",") if s.strip())))
    typer.echo(f"key:   {key}")
    typer.echo(f"entry: {entry}")
