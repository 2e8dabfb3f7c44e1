"""The independent (evaluation-only) error injector on hand-written chest X-ray reports and on IU-Xray."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from radlvlm.clinical_eval.independent_injection import (
    CATEGORIES,
    FAMILIES,
    INJECTOR,
    InjectedReport,
    build_independent_set,
    inject_independent,
)
from radlvlm.errors import InputError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

# A report with something for every family: findings with side, size, a measurement, a device and a change.
RICH_FINDINGS = (
    "Right internal jugular central venous catheter with tip in the SVC. Mild cardiomegaly. "
    "Small left pleural effusion, increased compared to the prior study. 8 mm nodule in the right upper lobe. "
    "No pneumothorax. XXXX degenerative changes of the spine."
)
RICH_IMPRESSION = "1. Small left pleural effusion. 2. Mild cardiomegaly."
NORMAL_FINDINGS = "Heart size is normal. The lungs are clear. No pneumothorax or pleural effusion. XXXX are intact."
NORMAL_IMPRESSION = "No acute cardiopulmonary abnormality."

EXPECTED_CATEGORY = {
    "false_prediction": {"false_finding"},
    "false_negation": {"negation_flip"},
    "added_contradiction": {"negation_flip"},
    "severity_change": {"wrong_severity"},
    "location_change": {"wrong_location"},
    "measurement_change": {"wrong_severity"},
    "device_change": {"false_finding", "wrong_location"},
    "omitted_finding": {"omitted_finding"},
    "unsupported_comparison": {"unsupported_comparison"},
    "omitted_comparison": {"omitted_comparison"},
}


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _rows(n: int, split: str, start: int = 0) -> list[dict]:
    reports = [(RICH_FINDINGS, RICH_IMPRESSION), (NORMAL_FINDINGS, NORMAL_IMPRESSION)]
    return [
        {"uid": start + k, "split": split, "findings": reports[k % 2][0], "impression": reports[k % 2][1]}
        for k in range(n)
    ]


def test_families_and_categories_are_declared() -> None:
    assert set(FAMILIES) == set(EXPECTED_CATEGORY)
    assert len(set(FAMILIES)) == len(FAMILIES)
    assert all(cat in CATEGORIES for cats in EXPECTED_CATEGORY.values() for cat in cats)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_changes_a_report_that_allows_it(family: str) -> None:
    for seed in range(5):
        rep = inject_independent(RICH_FINDINGS, RICH_IMPRESSION, seed=seed, family=family)
        assert isinstance(rep, InjectedReport)
        assert rep.family == family
        assert rep.category in EXPECTED_CATEGORY[family]
        assert rep.section in ("findings", "impression")
        assert rep.description
        # Exactly the named section changed; the other is the input, whitespace-collapsed.
        changed = {
            "findings": rep.findings != _collapse(RICH_FINDINGS),
            "impression": rep.impression != _collapse(RICH_IMPRESSION),
        }
        assert changed[rep.section]
        assert not changed["impression" if rep.section == "findings" else "findings"]


def test_same_seed_same_output_and_seeds_vary() -> None:
    first = inject_independent(RICH_FINDINGS, RICH_IMPRESSION, seed=3)
    again = inject_independent(RICH_FINDINGS, RICH_IMPRESSION, seed=3)
    assert first == again
    outputs = {inject_independent(RICH_FINDINGS, RICH_IMPRESSION, seed=s) for s in range(20)}
    assert len(outputs) > 5
    assert len({o.family for o in outputs if o}) > 3


def test_normal_report_still_gets_errors_from_several_families() -> None:
    fams = {
        f
        for f in FAMILIES
        for s in range(3)
        if inject_independent(NORMAL_FINDINGS, NORMAL_IMPRESSION, seed=s, family=f) is not None
    }
    assert {"false_prediction", "added_contradiction", "device_change", "unsupported_comparison"} <= fams
    # Nothing is asserted, so nothing can be negated, resized, moved or omitted.
    assert not fams & {"false_negation", "severity_change", "location_change", "omitted_finding"}


def test_negated_sentences_are_not_laterality_or_severity_swapped() -> None:
    findings = "No left pleural effusion. No large right pneumothorax. Mild cardiomegaly."
    for seed in range(30):
        assert inject_independent(findings, "", seed=seed, family="location_change") is None
        rep = inject_independent(findings, "", seed=seed, family="severity_change")
        assert rep is not None
        assert rep.findings.startswith("No left pleural effusion. No large right pneumothorax. ")
        assert "Mild cardiomegaly" not in rep.findings
    # With an asserted finding present, only that sentence moves; the denial stays put.
    findings = "No left pleural effusion. Small right pleural effusion."
    for seed in range(30):
        rep = inject_independent(findings, "", seed=seed, family="location_change")
        assert rep is not None
        assert rep.findings == "No left pleural effusion. Small left pleural effusion."


def test_location_swap_is_consistent_within_a_sentence() -> None:
    rep = inject_independent("Bilateral effusions, right greater than left.", "", seed=0, family="location_change")
    assert rep is not None
    assert rep.findings != "Bilateral effusions, right greater than left."
    assert "left greater than left" not in rep.findings
    assert "right greater than right" not in rep.findings


def test_specific_edits() -> None:
    rep = inject_independent(
        "Small left pleural effusion.", "Small left pleural effusion.", seed=0, family="false_negation"
    )
    assert rep is not None
    assert "effusion" in getattr(rep, rep.section).lower()
    assert re.search(r"\bno\b", getattr(rep, rep.section), re.IGNORECASE)

    rep = inject_independent("There is a 2 cm nodule in the left upper lobe.", "", seed=1, family="measurement_change")
    assert rep is not None
    assert "2 cm" not in rep.findings and re.search(r"\d+(\.\d)? ?(mm|cm)", rep.findings)

    rep = inject_independent("Endotracheal tube terminates 4 cm above the carina.", "", seed=0, family="device_change")
    assert rep is not None and rep.category == "wrong_location"
    assert "above the carina" not in rep.findings

    rep = inject_independent("Nasogastric tube with tip in the stomach.", "", seed=0, family="device_change")
    assert rep is not None and "esophagus" in rep.findings

    rep = inject_independent("Left chest wall pacemaker.", "", seed=2, family="device_change")
    assert rep is not None and rep.findings != "Left chest wall pacemaker."

    rep = inject_independent(
        "Moderate right pleural effusion, increased since the prior study.", "", seed=0, family="omitted_comparison"
    )
    assert rep is not None
    assert rep.findings == "Moderate right pleural effusion."

    rep = inject_independent(
        "Mild cardiomegaly.", "No acute disease. Mild cardiomegaly.", seed=0, family="omitted_finding"
    )
    assert rep is not None
    assert getattr(rep, rep.section).count("cardiomegaly") == 0 or rep.section == "findings"


def test_numbered_impression_stays_numbered() -> None:
    for seed in range(10):
        for family in ("false_prediction", "device_change", "omitted_finding"):
            rep = inject_independent("", RICH_IMPRESSION, seed=seed, family=family)
            if rep is None:
                continue
            numbers = [int(n) for n in re.findall(r"(?:^|\s)(\d)\. ", rep.impression)]
            assert numbers == list(range(1, len(numbers) + 1)), rep.impression


def test_no_family_applies_to_an_empty_report_and_unknown_family_is_rejected() -> None:
    assert inject_independent("", "  ", seed=0) is None
    with pytest.raises(InputError, match="unknown family"):
        inject_independent(RICH_FINDINGS, RICH_IMPRESSION, seed=0, family="swap_everything")


def test_build_text_format_clean_rows_and_summary() -> None:
    rows = [
        *_rows(10, "validation"),
        {"uid": 100, "split": "validation", "findings": "  Lungs   are clear. ", "impression": ""},
        {"uid": 101, "split": "validation", "findings": "", "impression": "No acute\n disease."},
        {"uid": 102, "split": "validation", "findings": " ", "impression": None},
    ]
    out, summary = build_independent_set(rows, seed=0, error_fraction=0.5)
    assert [r["uid"] for r in out] == [*range(10), 100, 101]  # input order, the empty study skipped
    assert summary["skipped_empty"] == 1 and summary["per_split"]["validation"]["skipped_empty"] == 1
    assert summary["rows"] == 12 and summary["errored"] == 6
    by_uid = {r["uid"]: r for r in out}
    for r in out:
        assert r["injector"] == INJECTOR and r["id"] == f"indep-{r['uid']}"
        assert set(r) == {"id", "uid", "split", "text", "has_error", "family", "category", "section", "injector"}
        if r["has_error"]:
            assert r["family"] in FAMILIES and r["category"] in CATEGORIES
        else:
            assert r["family"] is r["category"] is r["section"] is None
    clean = [r for r in out if not r["has_error"] and r["uid"] < 10]
    for r in clean:
        src = rows[r["uid"]]
        assert r["text"] == f"FINDINGS: {_collapse(src['findings'])}\nIMPRESSION: {_collapse(src['impression'])}"
    if not by_uid[100]["has_error"]:
        assert by_uid[100]["text"] == "FINDINGS: Lungs are clear."
    if not by_uid[101]["has_error"]:
        assert by_uid[101]["text"] == "IMPRESSION: No acute disease."
    for r in out:
        lines = r["text"].split("\n")
        assert 1 <= len(lines) <= 2
        assert all(re.match(r"^(FINDINGS|IMPRESSION): \S", line) for line in lines)
    assert sum(summary["per_family"].values()) == summary["errored"] == sum(summary["per_category"].values())


def test_build_is_deterministic_and_balanced_across_splits() -> None:
    rows = [*_rows(40, "train"), *_rows(20, "validation", 1000), *_rows(21, "test", 2000)]
    out, summary = build_independent_set(rows, seed=7, error_fraction=0.5)
    assert build_independent_set(rows, seed=7, error_fraction=0.5) == (out, summary)
    assert build_independent_set(rows, seed=8, error_fraction=0.5)[0] != out
    assert {s: v["errored"] for s, v in summary["per_split"].items()} == {"train": 20, "validation": 10, "test": 10}
    assert set(summary["per_family"]) <= set(FAMILIES)
    # Where every family fits every study, each split's errors spread evenly over the families.
    rich = [
        {"uid": k, "split": split, "findings": RICH_FINDINGS, "impression": RICH_IMPRESSION}
        for k, split in enumerate(["train"] * 60 + ["test"] * 41)
    ]
    out, _ = build_independent_set(rich, seed=1, error_fraction=0.5)
    for split in ("train", "test"):
        counts = Counter(r["family"] for r in out if r["has_error"] and r["split"] == split)
        assert set(counts) == set(FAMILIES)
        assert max(counts.values()) - min(counts.values()) <= 1
    assert build_independent_set(rows, error_fraction=0.0)[1]["errored"] == 0
    assert build_independent_set(rows, error_fraction=1.0)[1]["errored"] == len(rows)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), "half", True])
def test_bad_fraction_is_rejected(fraction: object) -> None:
    with pytest.raises(InputError, match="error_fraction"):
        build_independent_set(_rows(2, "test"), error_fraction=fraction)  # type: ignore[arg-type]


def test_missing_or_duplicate_uid_is_rejected() -> None:
    with pytest.raises(InputError, match="no uid"):
        build_independent_set([{"split": "test", "findings": "Clear lungs.", "impression": ""}])
    with pytest.raises(InputError, match="duplicate uid"):
        build_independent_set([*_rows(2, "test"), *_rows(1, "validation")])
    with pytest.raises(InputError, match="no split"):
        build_independent_set([{"uid": 1, "findings": "Clear lungs.", "impression": ""}])


def test_iu_xray_validation_coverage() -> None:
    path = DATA / "iu_xray" / "validation.jsonl"
    if not path.is_file():
        pytest.skip(f"IU-Xray manifest not present at {path}")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    both = [r for r in rows if (r.get("findings") or "").strip() and (r.get("impression") or "").strip()]
    assert both
    injectable = sum(inject_independent(r["findings"], r["impression"], seed=0) is not None for r in both)
    assert injectable >= 0.9 * len(both)
    out, summary = build_independent_set(rows, seed=0)
    assert set(summary["per_family"]) == set(FAMILIES)
    assert abs(summary["errored"] - 0.5 * summary["rows"]) <= 1
    for r in out:  # redaction tokens survive and every row keeps the layout
        assert r["text"].startswith(("FINDINGS: ", "IMPRESSION: "))
