"""Seeded error injection: every (category, edit) on hand-made and real reports, reversible and deterministic."""

from __future__ import annotations

import json
import re

import pytest
from testsupport import shared_path

from radlvlm.errors import InputError
from radlvlm.tasks import (
    VALID_EDITS,
    EditKind,
    ErrorCategory,
    InjectedError,
    InjectionNotApplicableError,
    applicable_edits,
    compose_report,
    inject_error,
    sentence_spans,
)

REPORT = (
    "FINDINGS: There is mild cardiomegaly. Small left pleural effusion is again seen, stable compared to prior. "
    "A 1.5 cm nodule in the right upper lobe. No pneumothorax.\n"
    "IMPRESSION: Mild cardiomegaly and small left pleural effusion, unchanged."
)
PLAIN = "FINDINGS: The heart is normal in size. The lungs are clear.\nIMPRESSION: No acute disease."


def test_taxonomy_values_and_parse() -> None:
    assert len(ErrorCategory.rexval()) == 6 and ErrorCategory.NEGATION_FLIP not in ErrorCategory.rexval()
    assert ErrorCategory.parse("Wrong Location") is ErrorCategory.WRONG_LOCATION
    assert ErrorCategory.parse(ErrorCategory.FALSE_FINDING) is ErrorCategory.FALSE_FINDING
    with pytest.raises(ValueError, match="unknown error category"):
        ErrorCategory.parse("typo")
    assert set(VALID_EDITS) == set(ErrorCategory)


def test_sentence_spans_skip_headers_and_keep_decimals() -> None:
    sentences = [REPORT[s:e] for s, e in sentence_spans(REPORT)]
    assert sentences[0] == "There is mild cardiomegaly."
    assert "A 1.5 cm nodule in the right upper lobe." in sentences
    assert sentences[-1] == "Mild cardiomegaly and small left pleural effusion, unchanged."
    assert not any(s.startswith(("FINDINGS", "IMPRESSION")) for s in sentences)


def test_every_category_and_edit_reverts_exactly() -> None:
    pairs = applicable_edits(REPORT)
    assert set(pairs) == {(c, e) for c, edits in VALID_EDITS.items() for e in edits} - {
        (ErrorCategory.UNSUPPORTED_COMPARISON, EditKind.INSERT)  # the report already compares with a prior
    }
    for category, edit in pairs:
        for seed in range(5):
            corrupted, record = inject_error(REPORT, category, edit, seed=seed)
            assert corrupted != REPORT
            assert (record.category, record.edit) == (category, edit)
            assert corrupted[record.start : record.end] == record.replacement
            assert record.revert(corrupted) == REPORT
            assert InjectedError.from_dict(json.loads(json.dumps(record.to_dict()))) == record
            assert "FINDINGS:" in corrupted and "IMPRESSION:" in corrupted  # headers are never edited


@pytest.mark.parametrize(
    ("category", "edit", "check"),
    [
        (
            ErrorCategory.WRONG_LOCATION,
            EditKind.SUBSTITUTE,
            lambda r: {r.original.lower(), r.replacement.lower()} <= {"left", "right", "upper", "lower"},
        ),
        (
            ErrorCategory.WRONG_SEVERITY,
            EditKind.SUBSTITUTE,
            lambda r: r.original.lower() in {"mild", "small", "1.5 cm"},
        ),
        (ErrorCategory.OMITTED_FINDING, EditKind.REMOVE, lambda r: r.replacement == "" and r.original.strip()),
        (
            ErrorCategory.NEGATION_FLIP,
            EditKind.SUBSTITUTE,
            lambda r: bool(re.search(r"\bno\b", r.original, re.I)) != bool(re.search(r"\bno\b", r.replacement, re.I)),
        ),
    ],
)
def test_edits_are_clinically_plausible(category, edit, check) -> None:
    for seed in range(8):
        _, record = inject_error(REPORT, category, edit, seed=seed)
        assert check(record), record


def test_same_seed_same_edit_and_seeds_vary() -> None:
    first = inject_error(REPORT, ErrorCategory.FALSE_FINDING, seed=3)
    assert inject_error(REPORT, ErrorCategory.FALSE_FINDING, seed=3) == first
    assert len({inject_error(REPORT, ErrorCategory.FALSE_FINDING, seed=s)[0] for s in range(10)}) > 3


def test_not_applicable_and_invalid_edit() -> None:
    with pytest.raises(InjectionNotApplicableError):
        inject_error(PLAIN, ErrorCategory.WRONG_LOCATION, seed=0)  # no laterality or zone word
    with pytest.raises(InjectionNotApplicableError):
        inject_error(PLAIN, ErrorCategory.OMITTED_COMPARISON, seed=0)
    with pytest.raises(InputError, match="cannot produce"):
        inject_error(REPORT, ErrorCategory.OMITTED_FINDING, EditKind.INSERT, seed=0)
    corrupted, record = inject_error(PLAIN, ErrorCategory.UNSUPPORTED_COMPARISON, seed=0)
    with pytest.raises(InputError, match="recorded span"):
        record.revert("x" + corrupted)


def test_injection_on_real_iu_reports_reverts() -> None:
    rows = [json.loads(line) for line in shared_path("iu_xray", "test.jsonl").read_text().splitlines()[:60]]
    n_injected = 0
    for row in rows:
        text = compose_report(row["findings"], row["impression"])
        for category, edit in applicable_edits(text):
            corrupted, record = inject_error(text, category, edit, seed=int(row["uid"]))
            assert record.revert(corrupted) == text
            n_injected += 1
    assert n_injected > 150
