"""The FastAPI application: routers, error bodies, limits, metrics, and the engine's lifecycle."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radlvlm import __version__
from radlvlm.errors import RadlvlmError
from radlvlm.pipeline.runtime import Runtime
from radlvlm.service.admission import Admission
from radlvlm.service.errors import CatchAll, error_response, install_error_handlers
from radlvlm.service.routers import checks, deid, drafts, meta, page
from radlvlm.service.security import KeyStore, RateLimiter
from radlvlm.service.state import Metrics, ServiceState
from radlvlm.settings import Settings

logger = logging.getLogger(__name__)


class BodySizeLimit:
    """Refuse request bodies over ``limit`` bytes with 413, by Content-Length and while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await error_response(413, "payload_too_large", f"request body over {self.limit} bytes")(
                scope, receive, send
            )
            return
        seen = 0
        refused = started = False

        async def limited_receive() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # Once the body is over the limit, whatever the app makes of the interrupted read (a form parser
            # answers 400) is not sent: the answer is the 413 below.
            nonlocal started
            if not refused:
                started = started or message["type"] == "http.response.start"
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            refused = True
        if refused and not started:
            await error_response(413, "payload_too_large", f"request body over {self.limit} bytes")(
                scope, receive, send
            )


class _TooLarge(Exception):
    pass


def _one_line(error: Exception) -> str:
    """A load failure in one line: radlvlm's own message (written to be read), else the type and first line.
    Loading touches model files only, never patient data, so the message can be logged."""
    if isinstance(error, RadlvlmError):
        return str(error)
    first = (str(error).strip().splitlines() or [""])[0][:300]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _model_loader(state: ServiceState, on_load_failure: Callable[[], None] | None) -> Callable[[], None]:
    """The job that warms the model up and builds the report de-identifier, then marks the service ready.

    A failure is caught, whatever it is, and reported the one way (a log line, ``state.load_failure`` for
    ``/readyz``, ``on_load_failure``): the loader may run on a thread of its own, where nothing else would see it.
    """
    runtime = state.runtime
    engine = runtime.engine
    model_info = runtime.model_info

    def load() -> None:
        started = time.perf_counter()
        try:
            engine.warmup()
            runtime.report_deidentifier  # noqa: B018 - built now, not on the first request
        except Exception as e:  # any failure to load is reported the same way, then stops the server
            state.load_failure = _one_line(e)
            logger.error("the model did not load: %s", state.load_failure)
            if on_load_failure is not None:
                on_load_failure()
            return
        state.ready = True
        logger.info("model %s ready after %.1f s", model_info.get("id"), time.perf_counter() - started)

    return load


def _lifespan(
    state: ServiceState, load: Callable[[], None], *, load_in_background: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Load the model before serving (or on a thread while serving), and close the engine at shutdown."""
    engine = state.runtime.engine

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = None
        if load_in_background:
            loader = threading.Thread(target=load, name="radlvlm-model-loader", daemon=True)
            loader.start()
        else:
            await run_in_threadpool(load)
            if state.load_failure is not None:
                raise RuntimeError(f"the model did not load: {state.load_failure}")
        yield
        state.ready = False
        if loader is not None:
            await run_in_threadpool(loader.join)  # a load under way finishes before the engine is closed
        await run_in_threadpool(engine.close)

    return lifespan


def _add_middleware(app: FastAPI, settings: Settings, state: ServiceState) -> None:
    """Metrics, CORS, the body limit, admission and the catch-all, in this order.

    Starlette runs the middleware added last first, so the order here is the reverse of the order a request
    meets them in.
    """

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")  # the route template, never the raw URL
        state.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        state.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
        )
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    app.add_middleware(Admission, state=state)  # outside the body limit: refusals cost no body read at all
    app.add_middleware(CatchAll)  # added last: outermost of ours, so nothing escapes it


def create_app(
    settings: Settings,
    runtime: Runtime,
    *,
    load_in_background: bool = False,
    on_load_failure: Callable[[], None] | None = None,
) -> FastAPI:
    """The app around a runtime (:func:`radlvlm.pipeline.build_runtime`).

    By default the model is warmed up (and the report de-identifier built) before the server takes requests.
    With ``load_in_background`` (``radlvlm serve``, on a lazy runtime) the server listens at once: ``/healthz``
    answers (liveness) while a loader thread loads and warms the model; ``/readyz`` and every ``/v1`` path answer
    503 "starting" until it is done. A load that fails is logged in one line, ``/readyz`` says so, and
    ``on_load_failure`` is called (``radlvlm serve`` stops the server with it).
    """
    state = ServiceState(
        settings=settings,
        runtime=runtime,
        keys=KeyStore(settings.api_keys),
        limiter=RateLimiter(settings.rate_limit_per_minute),
        metrics=Metrics(),
    )
    load = _model_loader(state, on_load_failure)
    app = FastAPI(
        title="radlvlm",
        version=__version__,
        description=(
            "Chest X-ray report drafting and report error checking. Every input is de-identified before it "
            "reaches the model; every answer is a preliminary AI draft for radiologist review, not a diagnosis."
        ),
        lifespan=_lifespan(state, load, load_in_background=load_in_background),
    )
    app.state.radlvlm = state
    install_error_handlers(app)
    for module in (drafts, checks, deid, meta, page):
        app.include_router(module.router)
    _add_middleware(app, settings, state)
    return app
