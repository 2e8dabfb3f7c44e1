"""The worker's durable memory: which studies it has seen, drafted, is retrying, or gave up on (SQLite).

A study is drafted exactly once: it is claimed in a transaction before the work starts and marked done only
after its outputs were accepted, so a worker killed mid-study finds it ``running`` at restart and redoes it,
and a finished study is never drafted again. Failures are retried with exponential back-off and moved to the
dead-letter state after ``max_attempts``. Only pseudonym-free facts are stored: UIDs the archive already uses,
states, counts and short error codes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PENDING, RUNNING, DONE, FAILED, DEAD, SKIPPED = "pending", "running", "done", "failed", "dead", "skipped"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    output_uid TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cursor (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class StudyRecord:
    study_uid: str
    state: str
    attempts: int
    last_error: str | None
    output_uid: str | None


class StudyLedger:
    """Args:
    path (Path): the SQLite file (created on first use).
    max_attempts (int, default 5): failures before a study goes to the dead-letter state.
    backoff_s (float, default 30): first retry delay; doubles with every failure.
    """

    def __init__(self, path: Path, *, max_attempts: int = 5, backoff_s: float = 30.0) -> None:
        self.path = Path(path)
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            # A study left 'running' belongs to a worker that died: it is due again.
            db.execute("UPDATE studies SET state = ? WHERE state = ?", (PENDING, RUNNING))
        finally:
            db.close()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: concurrent workers queue instead of racing)."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.close()

    def add(self, study_uid: str) -> bool:
        """Record a newly seen study; False if it was already known (in any state)."""
        with self._connect() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO studies (study_uid, state, updated) VALUES (?, ?, ?)",
                (study_uid, PENDING, time.time()),
            )
            return cursor.rowcount == 1

    def claim(self, now: float | None = None) -> str | None:
        """Take the next due study (pending, or failed and past its back-off) and mark it running."""
        now = time.time() if now is None else now
        with self._connect() as db:
            row = db.execute(
                "SELECT study_uid FROM studies WHERE state IN (?, ?) AND next_attempt <= ? "
                "ORDER BY next_attempt, updated LIMIT 1",
                (PENDING, FAILED, now),
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE studies SET state = ?, updated = ? WHERE study_uid = ?", (RUNNING, now, row[0]))
            return str(row[0])

    def done(self, study_uid: str, output_uid: str | None = None) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE studies SET state = ?, output_uid = ?, last_error = NULL, updated = ? WHERE study_uid = ?",
                (DONE, output_uid, time.time(), study_uid),
            )

    def failed(self, study_uid: str, error_code: str, *, permanent: bool = False, skipped: bool = False) -> str:
        """Record a failure; returns the new state: failed (retried after a back-off), dead (dead letter), or
        skipped (a study the model is not for: not an error, never retried)."""
        with self._connect() as db:
            row = db.execute("SELECT attempts FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            attempts = (row[0] if row else 0) + 1
            state = SKIPPED if skipped else DEAD if permanent or attempts >= self.max_attempts else FAILED
            delay = self.backoff_s * 2 ** (attempts - 1)
            db.execute(
                "UPDATE studies SET state = ?, attempts = ?, next_attempt = ?, last_error = ?, updated = ? "
                "WHERE study_uid = ?",
                (state, attempts, time.time() + delay, error_code[:200], time.time(), study_uid),
            )
            return state

    def get(self, study_uid: str) -> StudyRecord | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT study_uid, state, attempts, last_error, output_uid FROM studies WHERE study_uid = ?",
                (study_uid,),
            ).fetchone()
        return StudyRecord(*row) if row else None

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall()
        return {state: 0 for state in (PENDING, RUNNING, DONE, FAILED, DEAD, SKIPPED)} | {s: int(n) for s, n in rows}

    def dead_letters(self) -> list[StudyRecord]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT study_uid, state, attempts, last_error, output_uid FROM studies WHERE state = ?", (DEAD,)
            ).fetchall()
        return [StudyRecord(*row) for row in rows]

    def get_cursor(self, name: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT value FROM cursor WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    def set_cursor(self, name: str, value: str) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO cursor (name, value) VALUES (?, ?)", (name, value))
