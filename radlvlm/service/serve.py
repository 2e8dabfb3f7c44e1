"""``radlvlm serve`` (the service on the runtime built from settings) and ``radlvlm apikey``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from radlvlm.cli_support import fail, run_guarded, stderr
from radlvlm.settings import SCOPES, Settings, load_settings


def build_app(
    settings: Settings, *, load_in_background: bool = False, on_load_failure: Callable[[], None] | None = None
) -> Any:
    """The runtime of ``settings`` (engine, project key, audit trail, archive) wrapped in the HTTP app.

    With ``load_in_background`` the model is loaded after the server starts listening (see
    :func:`radlvlm.service.app.create_app`); what can be checked without loading it (the model and adapter
    paths, the audit trail, the key) is checked here, so a wrong path still stops the start at once."""
    from radlvlm.integrations.dicomweb import archive_from_settings
    from radlvlm.pipeline.runtime import build_runtime, check_before_loading
    from radlvlm.service.app import create_app

    if load_in_background:
        check_before_loading(settings)
    runtime = build_runtime(settings, lazy=load_in_background, archive=archive_from_settings(settings))
    return create_app(settings, runtime, load_in_background=load_in_background, on_load_failure=on_load_failure)


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
    # The service's own lifecycle (the model loaded and ready, after how long) is worth a line without -v.
    logging.getLogger("radlvlm.service").setLevel(logging.INFO)
    server: uvicorn.Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    app = run_guarded(lambda: build_app(settings, load_in_background=True, on_load_failure=stop))
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", access_log=False)
    )
    stderr.print(
        f"radlvlm serving on http://{settings.host}:{settings.port} (docs at /docs); "
        "the model loads now: GET /readyz says when it is ready",
        highlight=False,
    )
    server.run()
    failure = app.state.radlvlm.load_failure
    if failure is not None:
        raise fail(f"the model did not load: {failure}", code=1)


def apikey_command(
    scopes: Annotated[str, typer.Option(help=f"Comma-separated scopes from {', '.join(SCOPES)}.")] = "draft,check",
) -> None:
    """Create an API key: prints the key (give it to the client) and the entry for RADLVLM_API_KEYS (store it)."""
    from radlvlm.service.security import new_key

    key, entry = run_guarded(lambda: new_key(tuple(s.strip() for s in scopes.split(",") if s.strip())))
    typer.echo(f"key:   {key}")
    typer.echo(f"entry: {entry}")
