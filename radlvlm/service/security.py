"""API keys (stored as SHA-256 digests), scopes per endpoint, and per-key rate limits.

A key is a high-entropy random token, so a plain SHA-256 digest is the right store (as for GitHub tokens):
a slow password hash would only add latency per request. Digests are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from radlvlm.errors import InputError
from radlvlm.settings import SCOPES


@dataclass(frozen=True)
class Principal:
    """Who is calling: a pseudonymous key id (first 12 hex digits of the digest) and the scopes granted."""

    key_id: str
    scopes: frozenset[str]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(scopes: tuple[str, ...] = ("draft", "check")) -> tuple[str, str]:
    """A fresh key and its configuration entry ``sha256:<digest>:<scopes>``."""
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise InputError(f"unknown scope(s): {', '.join(sorted(unknown))}; known: {', '.join(SCOPES)}")
    if not scopes:
        raise InputError(f"a key needs at least one scope of {', '.join(SCOPES)}")
    key = secrets.token_urlsafe(32)
    return key, f"sha256:{hash_key(key)}:{','.join(scopes)}"


class KeyStore:
    """The configured keys: digest → scopes."""

    def __init__(self, entries: str) -> None:
        self._keys: dict[str, frozenset[str]] = {}
        for raw in (part.strip() for part in entries.split(";")):
            if not raw:
                continue
            parts = raw.split(":")
            if len(parts) != 3 or parts[0] != "sha256" or len(parts[1]) != 64:
                raise InputError("an API key entry must read sha256:<64 hex digits>:<scope>[,<scope>…]")
            scopes = frozenset(s.strip() for s in parts[2].split(",") if s.strip())
            unknown = scopes - set(SCOPES)
            if unknown or not scopes:
                raise InputError(f"API key entry with unknown or no scopes: {sorted(unknown) or '(none)'}")
            # admin: every scope (an operator's key for all the API does).
            self._keys[parts[1].lower()] = frozenset(SCOPES) if "admin" in scopes else scopes

    def __len__(self) -> int:
        return len(self._keys)

    def authenticate(self, key: str) -> Principal | None:
        digest = hash_key(key)
        for stored, scopes in self._keys.items():
            if hmac.compare_digest(stored, digest):
                return Principal(key_id=digest[:12], scopes=scopes)
        return None


class RateLimiter:
    """Token bucket per key: ``per_minute`` requests, refilled continuously."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key_id: str) -> tuple[bool, float]:
        """(allowed, seconds until the next token when refused)."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return True, 0.0
            self._buckets[key_id] = (tokens, now)
            return False, (1.0 - tokens) / self.rate
