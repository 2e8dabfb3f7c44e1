"""Shared dependencies: the service state, authentication with scopes, and the per-key rate limit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from radlvlm.pipeline import check_report, deidentify_dicom, deidentify_text, draft_study, start_draft_stream
from radlvlm.service.errors import ApiError
from radlvlm.service.security import Principal
from radlvlm.service.state import ServiceState

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key issued by the operator")
bearer = HTTPBearer(auto_error=False, description="The same API key as a bearer token")


def get_state(request: Request) -> ServiceState:
    return request.app.state.radlvlm


@dataclass(frozen=True)
class UseCases:
    """The use cases the routers call (:mod:`radlvlm.pipeline`'s, which every door shares), as one dependency: a
    router's own job (reading the form, refusing bad input, shaping the answer) is then testable without a model,
    by FastAPI's ``dependency_overrides``."""

    draft: Callable[..., Any] = draft_study
    start_draft_stream: Callable[..., Any] = start_draft_stream
    check: Callable[..., Any] = check_report
    deidentify_dicom: Callable[..., Any] = deidentify_dicom
    deidentify_text: Callable[..., Any] = deidentify_text


def get_use_cases() -> UseCases:
    return UseCases()


@cache  # one dependency per scope, so a test can override require("draft") by that very object
def require(scope: str) -> Callable[..., Principal]:
    """A dependency granting access to callers whose key carries ``scope``.

    The API's paths were admitted from their headers already (:mod:`radlvlm.service.admission`: key, scope,
    rate limit, queue room, before the body is read); this reads the admitted principal and checks the scope
    again, so a route can never be reached with too little.
    """

    def dependency(
        request: Request,
        api_key: str | None = Depends(api_key_header),
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> Principal:
        principal = getattr(request.state, "principal", None)
        if principal is None:
            raise ApiError(401, "unauthorized", "missing API key (X-API-Key header or Bearer token)")
        if scope not in principal.scopes:
            raise ApiError(403, "forbidden", f"this key lacks the '{scope}' scope")
        return principal

    return dependency


async def one_part_each(request: Request) -> None:
    """Refuse a form that repeats a field (two files, two reports): a form parser keeps only the last, so the
    answer would be about a part the caller may not have meant."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        return
    form = await request.form()
    repeated = sorted({name for name in form if len(form.getlist(name)) > 1})
    if repeated:
        raise ApiError(422, "invalid_request", f"give each field once; repeated: {', '.join(repeated)}")
