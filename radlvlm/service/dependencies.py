"""Shared dependencies: the service state, authentication with scopes, and the per-key rate limit."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from radlvlm.service.errors import ApiError
from radlvlm.service.security import Principal
from radlvlm.service.state import ServiceState

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key issued by the operator")
bearer = HTTPBearer(auto_error=False, description="The same API key as a bearer token")


def get_state(request: Request) -> ServiceState:
    return request.app.state.radlvlm


def require(scope: str) -> Callable[..., Principal]:
    """A dependency granting access to callers whose key carries ``scope``, within their rate limit."""

    def dependency(
        request: Request,
        api_key: str | None = Depends(api_key_header),
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> Principal:
        state = get_state(request)
        if state.settings.auth_disabled:
            principal = Principal("anonymous", frozenset({"draft", "check", "deid", "admin"}))
        else:
            key = api_key or (credentials.credentials if credentials else None)
            if not key:
                raise ApiError(
                    401,
                    "unauthorized",
                    "missing API key (X-API-Key header or Bearer token)",
                    {"WWW-Authenticate": "Bearer"},
                )
            found = state.keys.authenticate(key)
            if found is None:
                raise ApiError(401, "unauthorized", "invalid API key", {"WWW-Authenticate": "Bearer"})
            principal = found
        if scope not in principal.scopes:
            raise ApiError(403, "forbidden", f"this key lacks the '{scope}' scope")
        allowed, wait = state.limiter.allow(principal.key_id)
        if not allowed:
            raise ApiError(429, "rate_limited", "rate limit exceeded", {"Retry-After": str(max(1, round(wait + 0.5)))})
        request.state.principal = principal
        return principal

    return dependency
