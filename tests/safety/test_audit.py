"""Audit trail: hash chain, tamper detection, MAC, no free text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radlvlm.errors import AuditIntegrityError, InputError
from radlvlm.safety.audit import AuditTrail, sha256_hex, verify_audit_trail

STUDY = "2.25.118243628268925044101457150580518057441"


def fill(path: Path, n: int = 5, key: bytes | None = None) -> AuditTrail:
    trail = AuditTrail(path, key=key)
    for i in range(n):
        trail.record(
            actor="svc-draft",
            action="draft",
            study=STUDY,
            request=f"request {i}",
            response=f"FINDINGS: report text {i}",
            details={"model": "radlvlm-0.1", "ms": 12.5 + i},
        )
    return trail


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def rewrite(path: Path, entries: list[dict]) -> None:
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def test_chain_verifies_and_stores_hashes_only(tmp_path) -> None:
    trail = fill(tmp_path / "audit.jsonl")
    result = verify_audit_trail(tmp_path / "audit.jsonl")
    assert result.entries == 5 and result.head == trail.head()
    text = (tmp_path / "audit.jsonl").read_text()
    assert "report text" not in text and sha256_hex("FINDINGS: report text 0") in text


@pytest.mark.parametrize("tamper", ["alter", "delete", "insert", "swap", "truncate_head"])
def test_tampering_is_detected(tmp_path, tamper) -> None:
    path = tmp_path / "audit.jsonl"
    trail = fill(path)
    head = trail.head()
    entries = lines(path)
    if tamper == "alter":
        entries[2]["actor"] = "someone-else"
    elif tamper == "delete":
        del entries[2]
    elif tamper == "insert":
        entries.insert(2, dict(entries[2]))
    elif tamper == "swap":
        entries[1], entries[2] = entries[2], entries[1]
    elif tamper == "truncate_head":
        entries = entries[:-1]  # a cut tail is only visible against a head kept elsewhere
    rewrite(path, entries)
    with pytest.raises(AuditIntegrityError):
        verify_audit_trail(path, expected_head=head)


def test_recomputed_chain_is_caught_by_the_mac(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path, key=b"k" * 32)
    verify_audit_trail(path, key=b"k" * 32)
    entries = lines(path)
    # An attacker who edits an entry and recomputes every hash, but has no key:
    from radlvlm.safety.audit import GENESIS, _entry_hash

    entries[0]["actor"] = "forged"
    prev = GENESIS
    for entry in entries:
        entry["prev"] = prev
        body = {k: v for k, v in entry.items() if k not in ("hash", "mac")}
        entry["hash"] = prev = _entry_hash(body)
    rewrite(path, entries)
    verify_audit_trail(path, chain_only=True)  # the bare chain is consistent again...
    with pytest.raises(AuditIntegrityError, match="MAC"):
        verify_audit_trail(path, key=b"k" * 32)  # ...but the MACs are not
    with pytest.raises(AuditIntegrityError, match="no key was given"):
        verify_audit_trail(path)  # and without the key nobody is told "ok" unless a chain check is what they asked


def test_entries_appended_without_the_key_are_refused_even_without_it(tmp_path) -> None:
    """The issue's forgery: entries appended with a recomputed chain and no MAC, the MACs of the rest stripped
    or kept. A trail mixing entries with and without a MAC is refused by any check; one with every MAC stripped
    passes only a check that says it looked at the chain alone."""
    from radlvlm.safety.audit import _entry_hash

    path = tmp_path / "audit.jsonl"
    fill(path, key=b"k" * 32)
    entries = lines(path)
    forged = {**entries[-1], "seq": len(entries) + 1, "actor": "forger", "prev": entries[-1]["hash"]}
    forged.pop("mac")
    forged.pop("hash")
    forged["hash"] = _entry_hash(forged)
    rewrite(path, [*entries, forged])
    with pytest.raises(AuditIntegrityError, match="some entries carry a MAC"):
        verify_audit_trail(path, chain_only=True)
    rewrite(path, [{k: v for k, v in e.items() if k != "mac"} for e in [*entries, forged]])
    result = verify_audit_trail(path, chain_only=True)
    assert result.authenticated is False  # what `radlvlm audit verify --chain-only` prints as "chain only"
    with pytest.raises(AuditIntegrityError, match="missing or wrong MAC"):
        verify_audit_trail(path, key=b"k" * 32)


def test_content_digests_are_keyed_and_the_file_is_owner_only(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    AuditTrail(path, key=b"k" * 32).record(
        actor="u1", action="deid_text", study=STUDY, request="MRN 16550", response="MRN [ID]"
    )
    entry = lines(path)[0]
    # A plain SHA-256 of "MRN 16550" is found by trying guesses; the keyed digest is not.
    assert entry["request_sha256"] != sha256_hex("MRN 16550")
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("damage", [b'{"seq": 6, "time": "2026', b"\xff\xfe garbage\n"])
def test_a_damaged_tail_is_reported_not_crashed_on(tmp_path, damage: bytes) -> None:
    path = tmp_path / "audit.jsonl"
    trail = fill(path, key=b"k" * 32)
    with open(path, "ab") as handle:
        handle.write(damage)
    with pytest.raises(AuditIntegrityError, match="last entry"):
        trail.check()
    with pytest.raises(AuditIntegrityError, match="line 6"):
        verify_audit_trail(path, key=b"k" * 32)
    with pytest.raises(AuditIntegrityError):  # nothing is appended after damage
        trail.record(actor="u1", action="draft", study=STUDY, request="r", response="a")


def test_free_text_and_real_identifiers_are_refused(tmp_path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    with pytest.raises(InputError):
        trail.record(actor="Dr John Smith", action="draft", study=STUDY, request="", response="")
    with pytest.raises(InputError):
        trail.record(actor="u1", action="draft", study="1.2.840.113619.2.55.3", request="", response="")
    with pytest.raises(InputError):
        trail.record(actor="u1", action="draft", study=STUDY, request="", response="", details={"note": "pt Smith"})
    assert not (tmp_path / "audit.jsonl").exists()


def test_appends_continue_the_chain(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    fill(path, 2)
    fill(path, 3)  # a new AuditTrail object, e.g. another process, continues the same chain
    assert verify_audit_trail(path).entries == 5
