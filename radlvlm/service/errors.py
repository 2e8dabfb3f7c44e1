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

from radlvlm.engine.base import EngineClosed, EngineOverloaded
from radlvlm.errors import (
    DecodeError,
    DeidentificationError,
    GuardrailViolation,
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

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; the incident was logged without request data")


def _public_message(exc: Exception) -> str:
    """Upload paths in radlvlm errors are the server's temp names; keep only the reason."""
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith(("upload", "<")) and ": " in text else text
