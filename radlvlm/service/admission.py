"""Admission before the body: who is asking, may they, within their rate, and is there room for the work — all
decided from the headers, before a byte of the upload is read, de-identified or decoded. Every refused request
to the API leaves one audit entry (no request content in it).

An unauthenticated 60 MB upload used to be read in full before its 401, and a request learnt of a full model
queue only after upload, de-identification and decoding; under overload the service then spent its CPU on work
it would refuse (successful throughput fell from ~7 to 0.94 requests/s).
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radlvlm.errors import RadlvlmError
from radlvlm.service.errors import error_response
from radlvlm.service.security import Principal

logger = logging.getLogger(__name__)

# The scope each API path needs; paths that run the model also need room in its queue.
PATH_SCOPES = {
    "/v1/drafts": "draft",
    "/v1/drafts/stream": "draft",
    "/v1/render": "draft",
    "/v1/models": "draft",
    "/v1/checks": "check",
    "/v1/deid": "deid",
}
MODEL_PATHS = frozenset({"/v1/drafts", "/v1/drafts/stream", "/v1/checks"})
REFUSAL_STUDY = "2.25.0"  # refused requests name no study: the trail's placeholder UID


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _presented_key(scope: Scope) -> str | None:
    key = _header(scope, b"x-api-key")
    if key:
        return key
    authorization = _header(scope, b"authorization") or ""
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Admission:
    """ASGI middleware: authentication, scope, rate limit and queue room for the API's paths, from headers only.

    ``state`` is the service's :class:`~radlvlm.service.state.ServiceState` (read at call time). The principal
    it admits is left in the request's state for the routes.
    """

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") == "OPTIONS"  # CORS preflight: the CORS middleware answers it
            or not str(scope.get("path", "")).startswith("/v1/")
        ):
            await self.app(scope, receive, send)
            return
        path = str(scope["path"]).rstrip("/") or "/"
        principal, refusal = self._admit(scope, path)

        async def audited_send(message: Message) -> None:
            # A refusal is recorded before its answer leaves: whoever sees the answer finds the entry.
            if message["type"] == "http.response.start" and int(message["status"]) >= 400:
                self._record_refusal(principal, path, int(message["status"]))
            await send(message)

        if refusal is not None:
            await refusal(scope, receive, audited_send)
            # The route's own measurement never sees a request refused here.
            self.state.metrics.requests.labels(path, str(refusal.status_code)).inc()
        else:
            scope.setdefault("state", {})["principal"] = principal
            await self.app(scope, receive, audited_send)

    def _admit(self, scope: Scope, path: str) -> tuple[Principal | None, Any]:
        state = self.state
        needed = PATH_SCOPES.get(path)
        if needed is None:
            return None, None  # not an API path: the router answers (404, 405)
        if state.settings.auth_disabled:
            principal: Principal | None = Principal("anonymous", frozenset(PATH_SCOPES.values()))
        else:
            key = _presented_key(scope)
            principal = state.keys.authenticate(key) if key else None
            if principal is None:
                # Unauthenticated callers are rate-limited too, by address, so guessing keys costs time.
                client = scope.get("client") or ("unknown", 0)
                allowed, wait = state.limiter.allow(f"addr:{client[0]}")
                if not allowed:
                    return None, _too_many(wait)
                message = "invalid API key" if key else "missing API key (X-API-Key header or Bearer token)"
                return None, error_response(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})
        if needed not in principal.scopes:
            return principal, error_response(403, "forbidden", f"this key lacks the '{needed}' scope")
        if not state.ready:  # the model loads in the background (radlvlm serve): nothing to run the work on yet
            if state.load_failure is not None:
                return principal, error_response(
                    503, "unavailable", "the model did not load; see the server log", scope=scope
                )
            return principal, error_response(
                503,
                "starting",
                "the model is loading; retry shortly (GET /readyz says when)",
                {"Retry-After": "2"},
                scope=scope,
            )
        allowed, wait = state.limiter.allow(principal.key_id)
        if not allowed:
            return principal, _too_many(wait)
        if path in MODEL_PATHS and scope.get("method") == "POST":
            queued = int(state.engine.stats().get("queue_depth", 0))
            if queued >= state.settings.max_queue:
                return principal, error_response(
                    503, "overloaded", "the model is busy; retry shortly", {"Retry-After": "1"}, scope=scope
                )
        return principal, None

    def _record_refusal(self, principal: Principal | None, path: str, code: int) -> None:
        """One audit entry for a refused request: who (the key id, or anonymous), which path, which status."""
        runtime = self.state.runtime
        if runtime.audit is None:
            return
        try:
            runtime.audit.record(
                actor=principal.key_id if principal else "anonymous",
                action="refused",
                study=REFUSAL_STUDY,
                request=runtime.digest(path),
                response=runtime.digest(str(code)),
                details={"door": "http", "endpoint": path, "status": code},
            )
        except RadlvlmError as e:  # a trail that cannot take the entry is reported by /readyz; the answer stands
            logger.warning("refused request not audited: %s", type(e).__name__)


def _too_many(wait: float) -> Any:
    retry = str(max(1, round(wait + 0.5)))
    return error_response(429, "rate_limited", "rate limit exceeded", {"Retry-After": retry})
