"""Building the running service from settings: model → engine → safety → app, and ``radlvlm serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from radlvlm.cli_support import fail, run_guarded, stderr
from radlvlm.errors import ModelError
from radlvlm.service.settings import SCOPES, ServiceSettings


def model_info(model: Any, model_id: str, adapter: str | None) -> dict[str, Any]:
    config = getattr(model, "config", None)
    vision = getattr(config, "vision_config", None)
    text = getattr(config, "text_config", None)
    return {
        "id": model_id,
        "backend": "torch",
        "architecture": {
            "vision": getattr(vision, "model_type", None),
            "text": getattr(text, "model_type", None),
            "image_tokens": getattr(config, "image_seq_length", None),
        },
        "adapter": adapter,
    }


def build_app(settings: ServiceSettings) -> Any:
    """Load the configured model, start the torch engine, and wire de-identification and audit around it."""
    from radlvlm.engine.torch_engine import TorchEngine
    from radlvlm.model.generation import GenerationSettings
    from radlvlm.model.pretrained import load_pretrained
    from radlvlm.safety.audit import AuditTrail
    from radlvlm.safety.dicom_deid import DicomDeidentifier
    from radlvlm.safety.pseudonyms import PseudonymMap, load_or_create_key
    from radlvlm.service.app import create_app

    if settings.model_dir is None:
        raise ModelError(
            "no model configured: pass --model DIR or set RADLVLM_MODEL_DIR to a radlvlm model directory "
            "(convert a LLaVA-Rad checkpoint with `radlvlm convert llava-rad`)"
        )
    model, processor = load_pretrained(settings.model_dir, adapter=settings.adapter_dir)
    model_id = Path(settings.model_dir).name + (f"+{Path(settings.adapter_dir).name}" if settings.adapter_dir else "")
    engine = TorchEngine(
        model,
        processor,
        model_id=model_id,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        generation=GenerationSettings(max_new_tokens=settings.max_new_tokens),
    )
    key, _ = load_or_create_key(settings.deid_key_path)
    # The service keeps no original→pseudonym record: nothing identifying accumulates in memory.
    deidentifier = DicomDeidentifier(PseudonymMap(key, record=False))
    audit = AuditTrail(settings.audit_path, key=key)
    info = model_info(model, model_id, str(settings.adapter_dir) if settings.adapter_dir else None)
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
) -> None:
    """Run the HTTP service (uvicorn). Configuration: RADLVLM_* environment variables; options override them."""
    import uvicorn

    overrides = {
        k: v
        for k, v in {"host": host, "port": port, "model_dir": model, "adapter_dir": adapter}.items()
        if v is not None
    }
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
