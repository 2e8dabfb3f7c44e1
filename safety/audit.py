"""Append-only, tamper-evident audit trail: who asked what of which pseudonymous study, and what came back.

Each entry is one JSON line holding hashes of the request and the response (never their text), the
pseudonymous study UID, the actor and the action, the previous entry's hash and its own hash over all of that
(a hash chain, as in Certificate Transparency or git). Changing, removing, inserting or reordering an entry
breaks the chain at that line, and :func:`verify_audit_trail` says where. A chain can be rewritten whole by
someone who can write the file, so two further guards exist: an optional HMAC key (entries then carry a MAC
only the key holder can make) and :meth:`AuditTrail.head`, the last hash, to be copied somewhere the writer
cannot reach (a ticket, another system's log) and compared later with ``expected_head``.

Values are checked before they are written: the study must be a pseudonymous ``2.25.`` UID or a radlvlm
pseudonym, and actor, action and details must be short codes, so no name or free text can enter the trail.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from radlvlm.errors import AuditIntegrityError, InputError

__all__ = ["AuditEntry", "AuditTrail", "AuditVerification", "sha256_hex", "verify_audit_trail"]

GENESIS = "0" * 64
_CODE = re.compile(r"^[A-Za-z0-9_.:@/\-]{1,64}$")
_STUDY = re.compile(r"^(?:2\.25\.\d{1,39}|(?:PATIENT|PERSON|PID|ACC|TXT)-[A-Z0-9]{6,12})$")
_FIELDS = ("seq", "time", "actor", "action", "study", "request_sha256", "response_sha256", "details", "prev")


def sha256_hex(data: bytes | str) -> str:
    """Hex SHA-256 of ``data`` (text is UTF-8 encoded); what the trail stores instead of the text."""
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: str
    actor: str
    action: str
    study: str
    request_sha256: str
    response_sha256: str
    details: dict[str, str | int | float | bool]
    prev: str
    hash: str
    mac: str | None = None

    def body(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in _FIELDS}


@dataclass(frozen=True)
class AuditVerification:
    """A verified trail: how many entries and the last hash (to compare with one kept elsewhere)."""

    entries: int
    head: str
    authenticated: bool  # True: every MAC was checked with the key; False: the hash chain only


def _entry_hash(body: dict[str, object]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _mac(key: bytes, entry_hash: str) -> str:
    return hmac.new(key, entry_hash.encode("ascii"), hashlib.sha256).hexdigest()


class AuditTrail:
    """Appends entries to a JSON-lines file; safe for several processes (an exclusive lock per append).

    Args:
        path (Path): the trail file; created on first append, readable by its owner only.
        key (bytes | None, default None): HMAC key; when given, every entry carries a MAC over its hash and the
            request/response content is stored as an HMAC under it (not a plain, guessable hash).
    """

    def __init__(self, path: Path, key: bytes | None = None) -> None:
        self.path = Path(path)
        self._key = key

    def record(
        self,
        *,
        actor: str,
        action: str,
        study: str,
        request: bytes | str,
        response: bytes | str,
        details: dict[str, str | int | float | bool] | None = None,
    ) -> AuditEntry:
        """Append one entry; the request and response are stored as SHA-256 hashes only.

        Args:
            actor (str): who asked (a user or service id code, not a name).
            action (str): what was asked, e.g. ``draft``, ``check``, ``deid``.
            study (str): the pseudonymous study (a ``2.25.`` UID from the pseudonym map).
            request (bytes | str): the request as sent; hashed.
            response (bytes | str): what was returned; hashed.
            details (dict | None): short codes and numbers (model version, timings); no free text.
        """
        for name, value in (("actor", actor), ("action", action)):
            if not _CODE.match(value):
                raise InputError(f"audit {name} must be a short code (letters, digits, _.:@/-), not free text")
        if not _STUDY.match(study):
            raise InputError("audit study must be a pseudonymous 2.25. UID or radlvlm pseudonym")
        details = dict(details or {})
        for name, value in details.items():
            if not _CODE.match(name) or (isinstance(value, str) and not _CODE.match(value)):
                raise InputError(f"audit detail {name!r} must be a short code or a number, not free text")
            if not isinstance(value, (str, int, float, bool)):
                raise InputError(f"audit detail {name!r} must be a string code, a number or a boolean")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Created owner-only (0600): the trail says who asked what of which study, when.
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with open(descriptor, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                seq, prev = _last(handle)
                body: dict[str, object] = {
                    "seq": seq + 1,
                    "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
                    "actor": actor,
                    "action": action,
                    "study": study,
                    "request_sha256": self._content_digest(request),
                    "response_sha256": self._content_digest(response),
                    "details": details,
                    "prev": prev,
                }
                entry_hash = _entry_hash(body)
                line: dict[str, object] = {**body, "hash": entry_hash}
                if self._key is not None:
                    line["mac"] = _mac(self._key, entry_hash)
                handle.seek(0, os.SEEK_END)
                handle.write((json.dumps(line, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii"))
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return AuditEntry(**line)  # type: ignore[arg-type]

    def _content_digest(self, data: bytes | str) -> str:
        """What the trail stores for request or response content: HMAC-SHA-256 under the trail's key when it
        has one, since a plain hash of a short text (a name, an MRN) is found again by trying guesses."""
        if self._key is None:
            return sha256_hex(data)
        return hmac.new(self._key, data.encode("utf-8") if isinstance(data, str) else data, hashlib.sha256).hexdigest()

    def head(self) -> str:
        """The last entry's hash (the genesis value for an empty trail)."""
        if not self.path.exists():
            return GENESIS
        if not self.path.is_file():
            raise AuditIntegrityError(f"{self.path}: not a file")
        with open(self.path, "rb") as handle:
            return _last(handle)[1]

    def check(self) -> None:
        """Raise ``AuditIntegrityError`` when the next entry cannot be appended (a torn or unreadable last line,
        a folder where the file should be): the service checks this at start, in ``/readyz`` and before it runs
        the model for a request, so no request is answered that the trail cannot record."""
        self.head()


def _last(handle) -> tuple[int, str]:
    """(seq, hash) of the last line; reads only the file's tail (as bytes: a stray non-ASCII byte is damage to
    report, not a crash)."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    if size == 0:
        return 0, GENESIS
    handle.seek(max(0, size - 65536))
    tail = handle.read()
    if not tail.endswith(b"\n"):
        raise AuditIntegrityError(
            "audit trail: the last entry is incomplete (a write was cut off); run 'radlvlm audit verify'"
        )
    lines = [line for line in tail.splitlines() if line.strip()]
    try:
        last = json.loads(lines[-1].decode("ascii"))
        return int(last["seq"]), str(last["hash"])
    except (ValueError, KeyError, IndexError, TypeError) as e:  # UnicodeDecodeError is a ValueError
        raise AuditIntegrityError("audit trail: the last entry is unreadable; run 'radlvlm audit verify'") from e


def verify_audit_trail(
    path: Path, key: bytes | None = None, expected_head: str | None = None, *, chain_only: bool = False
) -> AuditVerification:
    """Check every entry's hash, its link to the previous one, the sequence, and (with ``key``) every MAC.

    Without a key only the chain can be checked, and a chain can be recomputed by whoever can write the file:
    a trail whose entries carry MACs is then refused unless ``chain_only`` says that a chain check is what is
    wanted. A trail where some entries carry a MAC and others do not is refused whatever the key (entries
    appended by someone without it). Raises ``AuditIntegrityError`` naming the first line that fails and why.
    """
    path = Path(path)
    if not path.exists():
        raise AuditIntegrityError(f"{path}: no audit trail")
    if not path.is_file():
        raise AuditIntegrityError(f"{path}: not a file")
    prev, count = GENESIS, 0
    macs: set[bool] = set()
    with open(path, "rb") as handle:
        for number, line_bytes in enumerate(handle, 1):
            try:
                raw = line_bytes.decode("ascii")
            except UnicodeDecodeError as e:
                raise AuditIntegrityError(f"{path}: line {number} holds bytes an audit entry never has") from e
            if not raw.endswith("\n"):
                raise AuditIntegrityError(f"{path}: line {number} is incomplete (a write was cut off)")
            if not raw.strip():
                raise AuditIntegrityError(f"{path}: line {number} is empty")
            try:
                line = json.loads(raw)
                body = {name: line[name] for name in _FIELDS}
                stored = line["hash"]
            except (ValueError, KeyError, TypeError) as e:
                raise AuditIntegrityError(f"{path}: line {number} is not an audit entry") from e
            if set(line) - set(_FIELDS) - {"hash", "mac"}:
                raise AuditIntegrityError(f"{path}: line {number} has fields that are not part of an entry")
            if body["seq"] != number:
                raise AuditIntegrityError(f"{path}: line {number} has sequence {body['seq']}; entries removed or moved")
            if body["prev"] != prev:
                raise AuditIntegrityError(f"{path}: line {number} does not link to the entry before it")
            if _entry_hash(body) != stored:
                raise AuditIntegrityError(f"{path}: line {number} was altered (its hash does not match)")
            macs.add("mac" in line)
            if len(macs) > 1:
                raise AuditIntegrityError(f"{path}: line {number}: some entries carry a MAC and others do not")
            if key is not None and not hmac.compare_digest(str(line.get("mac", "")), _mac(key, stored)):
                raise AuditIntegrityError(f"{path}: line {number} has a missing or wrong MAC")
            prev, count = stored, number
    if key is None and macs == {True} and not chain_only:
        raise AuditIntegrityError(
            f"{path}: the entries carry MACs but no key was given, and without it a rewritten chain passes; "
            "give the key, or ask for a chain-only check"
        )
    if expected_head is not None and not hmac.compare_digest(prev, expected_head):
        raise AuditIntegrityError(f"{path}: the last hash differs from the one kept elsewhere; trail rewritten")
    return AuditVerification(entries=count, head=prev, authenticated=key is not None)
