"""The worker's ledger: each study claimed once, back-off, dead letters, recovery after a kill."""

from __future__ import annotations

from pathlib import Path

from radlvlm.integrations.ledger import DEAD, DONE, FAILED, PENDING, SKIPPED, StudyLedger


def test_claims_are_exclusive_and_done_is_final(tmp_path: Path) -> None:
    ledger = StudyLedger(tmp_path / "l.sqlite")
    assert ledger.add("1.2.3") and not ledger.add("1.2.3")
    assert ledger.claim() == "1.2.3" and ledger.claim() is None
    ledger.done("1.2.3", "2.25.9")
    assert ledger.get("1.2.3").state == DONE and ledger.get("1.2.3").output_uid == "2.25.9"
    assert not ledger.add("1.2.3") and ledger.claim() is None


def test_running_studies_of_a_dead_worker_are_due_again(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    first = StudyLedger(path)
    first.add("1.2.3")
    assert first.claim() == "1.2.3"  # the worker dies here
    restarted = StudyLedger(path)
    assert restarted.get("1.2.3").state == PENDING and restarted.claim() == "1.2.3"


def test_back_off_then_dead_letter_and_skips(tmp_path: Path) -> None:
    ledger = StudyLedger(tmp_path / "l.sqlite", max_attempts=3, backoff_s=100)
    ledger.add("1.1")
    ledger.claim()
    assert ledger.failed("1.1", "PacsError: HTTP 503") == FAILED
    assert ledger.claim() is None  # backing off
    now = __import__("time").time()
    assert ledger.claim(now=now + 150) == "1.1"
    assert ledger.failed("1.1", "PacsError") == FAILED
    assert ledger.claim(now=now + 1000) == "1.1"
    assert ledger.failed("1.1", "PacsError") == DEAD
    assert [r.study_uid for r in ledger.dead_letters()] == ["1.1"]
    ledger.add("2.2")
    ledger.claim()
    assert ledger.failed("2.2", "not_for_model: not_chest", skipped=True) == SKIPPED
    assert ledger.counts() | {} == {"pending": 0, "running": 0, "done": 0, "failed": 0, "dead": 1, "skipped": 1}
    ledger.set_cursor("orthanc_changes", "42")
    assert StudyLedger(tmp_path / "l.sqlite").get_cursor("orthanc_changes") == "42"
