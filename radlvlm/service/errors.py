"""One JSON error body for every failure: ``{"error": {"code": …, "message": …}}``, never a traceback.

radlvlm errors map to 4xx by kind; an overloaded engine is 503 with Retry-After; anything unexpected is
logged (type only, no request content) and answered 500 with a generic message.
"""

from __future__ import annotations

import logging

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
    GuardrailViolation,
    ImageTooLargeError,
    InputError,
    ModelError,
    ModelTimeout,
    NoArchiveError,
    NotDicomError,
    RadlvlmError,
    UnsupportedTransferSyntaxError,
)
from radlvlm.integrations.dicomweb import PacsError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the API answers with a given status and code."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


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
    (ModelError, 422, "model_error"),
]

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
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(EngineOverloaded)
    async def _overloaded(request: Request, exc: EngineOverloaded) -> JSONResponse:
        retry = str(max(1, round(exc.retry_after_s)))
        return error_response(503, "overloaded", "the model is busy; retry shortly", {"Retry-After": retry})

    @app.exception_handler(EngineClosed)
    async def _closed(request: Request, exc: EngineClosed) -> JSONResponse:
        return error_response(503, "shutting_down", "the service is shutting down", {"Retry-After": "5"})

    @app.exception_handler(PacsError)
    async def _pacs(request: Request, exc: PacsError) -> JSONResponse:
        if exc.status == 404:
            return error_response(404, "study_not_found", "the archive has no such study")
        return error_response(502, "archive_error", str(exc))

    @app.exception_handler(RadlvlmError)
    async def _radlvlm(request: Request, exc: RadlvlmError) -> JSONResponse:
        for kind, status, code in _STATUS_BY_ERROR:
            if isinstance(exc, kind):
                return error_response(status, code, _public_message(exc))
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
    """The last resort, inside Starlette's own: an unexpected exception becomes a 500 with a generic message and
    one log line naming its type and the route. Starlette's error middleware would answer too, but it re-raises
    so the server logs the full traceback, whose frames can hold request content (a report, a header value)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception as exc:
            route = scope.get("route")
            logger.error("unhandled %s on %s %s", type(exc).__name__, scope.get("method"), getattr(route, "path", "?"))
            if not started:
                response = error_response(
                    500, "internal_error", "internal error; the incident was logged without request data"
                )
                await response(scope, receive, send)


def _public_message(exc: Exception) -> str:
    """Upload paths in radlvlm errors are the server's temp names; keep only the reason."""
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith(("upload", "<")) and ": " in text else text
