"""One JSON error body for every failure: ``{"error": {"code": …, "message": …}}``, never a traceback.

Whose fault it is decides the status. 4xx only for what the caller can fix (its file, its report, its
parameters); the service's own faults are 5xx: the engine or model failing on a request, a misconfigured model,
a trail that cannot record (500/503), an overloaded or stopping engine (503 with Retry-After), a model too slow
(504). Every response carries an ``X-Request-ID``; a 5xx body repeats it as ``error.request_id`` and the log
line that records the incident names it (with the exception type only, never request content), so an operator
finds the incident from what the caller saw.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radlvlm.engine.base import EngineClosed, EngineOverloaded
from radlvlm.errors import (
    AuditIntegrityError,
    DecodeError,
    DeidentificationError,
    EngineError,
    GuardrailViolation,
    ImageTooLargeError,
    InputError,
    ModelError,
    ModelTimeout,
    NoArchiveError,
    NotDicomError,
    PacsError,
    RadlvlmError,
    UnsupportedTransferSyntaxError,
)

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the API answers with a given status and code."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


REQUEST_ID_HEADER = "X-Request-ID"


def request_id(scope: Scope) -> str | None:
    """The id :class:`CatchAll` gave this request (None outside the app, as in a bare router test)."""
    return scope.get("state", {}).get("request_id")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, *, scope: Scope | None = None
) -> JSONResponse:
    """The error body; a 5xx names the request id, and is logged with it (the caller quotes it to the operator)."""
    error: dict[str, str] = {"code": code, "message": message}
    rid = request_id(scope) if scope is not None else None
    if status >= 500 and rid is not None:
        error["request_id"] = rid
        route = scope.get("route") if scope is not None else None
        # A fault of ours is an error; a busy, starting or slow service, or an unreachable archive, a warning.
        level = logging.ERROR if status == 500 else logging.WARNING
        where = getattr(route, "path", scope and scope.get("path"))
        logger.log(level, "request %s answered %d %s on %s", rid, status, code, where)
    return JSONResponse({"error": error}, status_code=status, headers=headers)


_STATUS_BY_ERROR: list[tuple[type[Exception], int, str]] = [
    (AuditIntegrityError, 503, "audit_unavailable"),
    (ImageTooLargeError, 413, "image_too_large"),
    (NotDicomError, 415, "unsupported_file"),
    (UnsupportedTransferSyntaxError, 415, "unsupported_transfer_syntax"),
    (DecodeError, 422, "undecodable_image"),
    (GuardrailViolation, 422, "guardrail"),
    (DeidentificationError, 422, "deidentification_failed"),
    (NoArchiveError, 422, "no_archive"),
    (InputError, 422, "invalid_input"),
    (ModelTimeout, 504, "timeout"),
    # The engine or the served model failed on the request, or the model the operator configured cannot do
    # what it was asked: the service's fault, which the caller cannot fix by changing its request.
    (EngineError, 500, "engine_error"),
    (ModelError, 500, "model_error"),
]

# A server fault's cause stays in the log: a model path or a configuration detail is not the caller's business.
_SERVER_FAULT_MESSAGES = {
    "engine_error": "the model failed while answering this request; the incident was logged under its request id",
    "model_error": "the served model cannot answer this request; the incident was logged under its request id",
}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers, scope=request.scope)

    @app.exception_handler(EngineOverloaded)
    async def _overloaded(request: Request, exc: EngineOverloaded) -> JSONResponse:
        retry = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
        return error_response(503, "overloaded", "the model is busy; retry shortly", retry, scope=request.scope)

    @app.exception_handler(EngineClosed)
    async def _closed(request: Request, exc: EngineClosed) -> JSONResponse:
        retry = {"Retry-After": "5"}
        return error_response(503, "shutting_down", "the service is shutting down", retry, scope=request.scope)

    @app.exception_handler(PacsError)
    async def _pacs(request: Request, exc: PacsError) -> JSONResponse:
        if exc.status == 404:
            return error_response(404, "study_not_found", "the archive has no such study")
        return error_response(502, "archive_error", str(exc), scope=request.scope)

    @app.exception_handler(RadlvlmError)
    async def _radlvlm(request: Request, exc: RadlvlmError) -> JSONResponse:
        for kind, status, code in _STATUS_BY_ERROR:
            if isinstance(exc, kind):
                message = (
                    _public_message(exc) if status < 500 else _SERVER_FAULT_MESSAGES.get(code, _public_message(exc))
                )
                return error_response(status, code, message, scope=request.scope)
        return error_response(422, "invalid_input", _public_message(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors()[:5]:
            where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
            problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
        return error_response(422, "invalid_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))


class CatchAll:
    """Outermost of ours: gives every request its id (``X-Request-ID`` on the response; a random one, never the
    caller's, which could carry an accession number), and is the last resort inside Starlette's own: an unexpected
    exception becomes a 500 with a generic message, the request id, and one log line naming its type and the
    route. Starlette's error middleware would answer too, but it re-raises so the server logs the full traceback,
    whose frames can hold request content (a report, a header value)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception as exc:
            route = scope.get("route")
            logger.error(
                "request %s: unhandled %s on %s %s",
                rid,
                type(exc).__name__,
                scope.get("method"),
                getattr(route, "path", "?"),
            )
            if not started:
                response = JSONResponse(
                    {"error": {"code": "internal_error", "message": _INTERNAL, "request_id": rid}}, status_code=500
                )
                await response(scope, receive, tracked_send)


_INTERNAL = "internal error; the incident was logged under its request id, without request data"


def _public_message(exc: Exception) -> str:
    """Upload paths in radlvlm errors are the server's temp names; keep only the reason."""
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith(("upload", "<")) and ": " in text else text
