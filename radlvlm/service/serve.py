"""``radlvlm serve`` (the service on the runtime built from settings) and ``radlvlm apikey``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from radlvlm.cli_support import fail, run_guarded, stderr
from radlvlm.settings import SCOPES, Settings, load_settings


def build_app(settings: Settings) -> Any:
    """The runtime of ``settings`` (engine, project key, audit trail, archive) wrapped in the HTTP app."""
    from radlvlm.pipeline.runtime import build_runtime
    from radlvlm.service.app import create_app

    return create_app(settings, build_runtime(settings))


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

    settings = run_guarded(
        lambda: load_settings(host=host, port=port, model_dir=model, adapter_dir=adapter, backend=backend)
    )
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
