"""Seeded error injection: every (category, edit) on hand-made and real reports, reversible and deterministic."""

from __future__ import annotations

import json
import re

import pytest
from testsupport import shared_path

from radlvlm.errors import InputError
from radlvlm.reports.labeler import negates
from radlvlm.tasks import (
    FAMILIES,
    VALID_EDITS,
    EditKind,
    ErrorCategory,
    InjectedError,
    InjectionNotApplicableError,
    applicable_edits,
    applicable_families,
    compose_report,
    inject_error,
    inject_family,
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


# ------------------------------------------------------------------------------------------------ families
ABNORMAL = (
    "FINDINGS: There is a small left pleural effusion. Moderate right lower lobe consolidation. Mild cardiomegaly. "
    "An endotracheal tube terminates 4 cm above the carina. A 1.5 cm nodule in the right upper lobe is stable "
    "compared to prior. No pneumothorax.\n"
    "IMPRESSION: Small left pleural effusion and right lower lobe consolidation."
)


def test_every_family_maps_to_one_valid_category_and_all_categories_are_covered() -> None:
    assert {f.category for f in FAMILIES.values()} == set(ErrorCategory)
    for name, family in FAMILIES.items():
        assert family.name == name and family.edit in VALID_EDITS[family.category]
    assert set(applicable_families(ABNORMAL)) | set(applicable_families(PLAIN)) == set(FAMILIES)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_injects_and_reverts_exactly(family: str) -> None:
    text = ABNORMAL if family in applicable_families(ABNORMAL) else PLAIN
    outputs = set()
    for seed in range(6):
        corrupted, record = inject_family(text, family, seed=seed)
        assert corrupted != text and record.family == family
        assert (record.category, record.edit) == (FAMILIES[family].category, FAMILIES[family].edit)
        assert corrupted[record.start : record.end] == record.replacement
        assert record.revert(corrupted) == text
        assert InjectedError.from_dict(json.loads(json.dumps(record.to_dict()))) == record
        assert corrupted.count("FINDINGS:") == 1 and corrupted.count("IMPRESSION:") == 1
        assert inject_family(text, family, seed=seed) == (corrupted, record)
        outputs.add(corrupted)
    assert outputs


@pytest.mark.parametrize(
    ("family", "check"),
    [
        ("laterality", lambda r: {r.original.lower(), r.replacement.lower()} == {"left", "right"}),
        ("location_zone", lambda r: {r.original.lower(), r.replacement.lower()} <= {"upper", "lower"}),
        ("device_position", lambda r: r.replacement == "in the right mainstem bronchus"),
        ("measurement", lambda r: r.original in ("4 cm", "1.5 cm") and r.replacement != r.original),
        ("severity", lambda r: r.original.lower() in ("small", "moderate", "mild")),
        ("added_contradiction", lambda r: "IMPRESSION" in ABNORMAL[: r.start] and "pneumothorax" in r.replacement),
        ("contradicting_impression", lambda r: "IMPRESSION" in ABNORMAL[: r.start] and r.original.startswith("Small")),
        (
            "false_negation",
            lambda r: re.match(r"(?i)(no|there is no) ", r.replacement) and "small" not in r.replacement,
        ),
        ("negation_removed", lambda r: r.original == "No pneumothorax" and "no" not in r.replacement.lower()),
        ("missed_finding", lambda r: r.replacement == "" and "No pneumothorax" not in r.original),
    ],
)
def test_family_edits_are_what_they_say(family, check) -> None:
    for seed in range(8):
        _, record = inject_family(ABNORMAL, family, seed=seed)
        assert check(record), record


def test_families_respect_negation() -> None:
    negated = (
        "FINDINGS: No left pleural effusion. No large right pneumothorax. There is no upper lobe consolidation.\n"
        "IMPRESSION: No acute disease."
    )
    available = applicable_families(negated)
    for family in ("laterality", "location_zone", "severity", "false_negation", "missed_finding", "wrong_finding"):
        assert family not in available
        with pytest.raises(InjectionNotApplicableError):
            inject_family(negated, family, seed=0)
    # A finding asserted anywhere is not "contradicted" by asserting it again.
    assert "added_contradiction" not in applicable_families("FINDINGS: Small left effusion.\nIMPRESSION: No effusion.")


def test_family_edits_on_real_iu_reports_revert_and_never_touch_negated_sentences() -> None:
    rows = [json.loads(line) for line in shared_path("iu_xray", "test.jsonl").read_text().splitlines()[:120]]
    seen = set()
    for row in rows:
        text = compose_report(row["findings"], row["impression"])
        for family in applicable_families(text):
            corrupted, record = inject_family(text, family, seed=int(row["uid"]))
            assert record.revert(corrupted) == text
            seen.add(family)
            if family in ("laterality", "location_zone", "severity"):
                sentence = next(text[s:e] for s, e in sentence_spans(text) if s <= record.start < e)
                # Negated by the labeler's vocabulary ("no effusion"); "no change in the scarring" asserts it.
                assert not negates(sentence), sentence
    assert len(seen) >= 12


def test_unknown_family_and_legacy_rows_carry_a_family() -> None:
    with pytest.raises(InputError, match="unknown error family"):
        inject_family(REPORT, "typo", seed=0)
    _, record = inject_error(REPORT, ErrorCategory.WRONG_LOCATION, seed=0)
    assert record.family in ("laterality", "location_zone")
    legacy = InjectedError.from_dict({k: v for k, v in record.to_dict().items() if k != "family"})
    assert legacy.family is None
