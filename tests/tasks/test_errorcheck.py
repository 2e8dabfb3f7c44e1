"""Error-check tasks: prompts, answer parsers, and the balanced, seeded, split-safe set builder."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from testsupport import shared_path

from radlvlm.errors import InputError
from radlvlm.tasks import (
    AnswerParseError,
    ErrorCategory,
    ErrorCheckTask,
    InjectedError,
    build_errorcheck_set,
    compose_report,
    errorcheck_prompt,
    errorcheck_target,
    parse_complex_answer,
    parse_simple_answer,
)

FINDINGS = [
    "There is mild cardiomegaly. Small left pleural effusion. No pneumothorax.",
    "The heart is normal in size. Right lower lobe opacity, stable compared to prior. No effusion.",
    "Mild degenerative changes of the spine. Calcified granuloma in the left upper lobe. No focal consolidation.",
    "Moderate right pleural effusion. There is bibasilar atelectasis. No pneumothorax.",
]


def _rows(n: int, split: str | None = "train") -> list[dict]:
    rows = []
    for i in range(n):
        row = {"uid": str(1000 + i), "findings": FINDINGS[i % 4], "impression": "No acute disease."}
        if split:
            row["split"] = split
        rows.append(row)
    return rows


def test_prompts_and_targets_round_trip() -> None:
    assert "REPORT:\nabc" in errorcheck_prompt(ErrorCheckTask.SIMPLE, "abc")
    assert "wrong_location" in errorcheck_prompt("complex", "abc")
    row = {"has_error": True, "category": "wrong_location", "span": [3, 8]}
    assert errorcheck_target("simple", row) == "yes"
    answer = parse_complex_answer(errorcheck_target("complex", row))
    assert (answer.has_error, answer.category, answer.span) == (True, ErrorCategory.WRONG_LOCATION, (3, 8))
    assert parse_complex_answer(errorcheck_target("complex", {"has_error": False})).category is None


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("yes", True), ("Yes, the side is wrong.", True), (" no.", False), ("No error", False), ("TRUE", True)],
)
def test_parse_simple(answer: str, expected: bool) -> None:
    assert parse_simple_answer(answer) is expected


@pytest.mark.parametrize("answer", ["maybe", "", "The report is fine"])
def test_parse_simple_rejects(answer: str) -> None:
    with pytest.raises(AnswerParseError):
        parse_simple_answer(answer)


def test_parse_complex_accepts_fence_and_rejects_bad() -> None:
    fenced = '```json\n{"has_error": true, "category": "Wrong Severity", "span": null}\n```'
    assert parse_complex_answer(fenced).category is ErrorCategory.WRONG_SEVERITY
    for bad in [
        "not json",
        "[1]",
        '{"has_error": "yes"}',
        '{"has_error": true, "category": "typo"}',
        '{"has_error": true, "category": null, "span": [1]}',
    ]:
        with pytest.raises(AnswerParseError):
            parse_complex_answer(bad)


def test_build_is_balanced_seeded_and_reversible() -> None:
    rows = _rows(40, "train") + [dict(r, uid=str(int(r["uid"]) + 100), split="test") for r in _rows(20)]
    built, summary = build_errorcheck_set(rows, seed=7)
    assert summary["splits"] == {"test": {"n": 20, "n_error": 10}, "train": {"n": 40, "n_error": 20}}
    assert len({r["uid"] for r in built}) == 60  # each study once: clean or corrupted, never both
    counts = Counter(r["category"] for r in built if r["has_error"])
    assert max(counts.values()) - min(counts.values()) <= 2 and len(counts) >= 6
    by_uid = {r["uid"]: r for r in rows}
    for row in built:
        original = compose_report(by_uid[row["uid"]]["findings"], by_uid[row["uid"]]["impression"])
        if row["has_error"]:
            assert InjectedError.from_dict(row).revert(row["text"]) == original
            assert parse_simple_answer(row["simple_target"]) is True
        else:
            assert row["text"] == original and row["category"] is None
    again, _ = build_errorcheck_set(rows, seed=7)
    assert again == built
    other, _ = build_errorcheck_set(rows, seed=8)
    assert other != built


def test_build_with_split_fractions_and_category_subset() -> None:
    built, summary = build_errorcheck_set(
        _rows(60, None), seed=0, split_fractions={"train": 0.5, "test": 0.5}, categories=["negation_flip"]
    )
    assert set(summary["splits"]) == {"train", "test"}
    assert {r["category"] for r in built if r["has_error"]} == {"negation_flip"}


def test_build_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="every study must appear once"):
        build_errorcheck_set([*_rows(3), _rows(1, "test")[0]])
    with pytest.raises(InputError, match="no 'split'"):
        build_errorcheck_set(_rows(3, None))
    with pytest.raises(InputError, match="no uid"):
        build_errorcheck_set([{"findings": "x"}])
    with pytest.raises(InputError, match="error_fraction"):
        build_errorcheck_set(_rows(3), error_fraction=1.0)


def test_build_on_real_iu_splits() -> None:
    rows = []
    for split in ("validation", "test"):
        rows += [json.loads(line) for line in shared_path("iu_xray", f"{split}.jsonl").read_text().splitlines()]
    built, summary = build_errorcheck_set(rows, seed=0)
    splits_of: dict[str, set[str]] = {}
    for row in built:
        splits_of.setdefault(row["uid"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    for split, info in summary["splits"].items():
        assert info["n_error"] == round(info["n"] / 2), split
    assert len(summary["categories"]) == len(ErrorCategory)


def test_build_does_not_depend_on_the_hash_seed() -> None:
    import os
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from radlvlm.tasks import build_errorcheck_set\n"
        "rows = json.loads(sys.stdin.read())\n"
        "print(json.dumps(build_errorcheck_set(rows, seed=3)[0], sort_keys=True))\n"
    )
    outputs = set()
    for hash_seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(_rows(40)),
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=True,
        )
        outputs.add(done.stdout)
    assert len(outputs) == 1


# ------------------------------------------------------------------------------------------------ training set
def test_training_set_variants_balance_families_and_revert() -> None:
    from radlvlm.tasks import FAMILIES, build_errorcheck_training_set

    rows = _rows(40, "train")
    built, summary = build_errorcheck_training_set(rows, seed=3, variants_per_report=8)
    assert len(built) == summary["n_rows"] == 320 and summary["n_studies"] == 40
    assert Counter(r["uid"] for r in built) == {r["uid"]: 8 for r in rows}
    assert summary["splits"] == {"train": {"n": 320, "n_error": 160}}
    for uid in {r["uid"] for r in built}:  # each study: 4 errored and 4 clean variants
        assert sum(r["has_error"] for r in built if r["uid"] == uid) == 4
    assert {r["variant"] for r in built} == set(range(8))
    families = Counter(r["family"] for r in built if r["has_error"])
    assert sum(families.values()) == 160 and len(families) >= 10
    assert summary["families"] == {f: families.get(f, 0) for f in FAMILIES}
    by_uid = {r["uid"]: r for r in rows}
    texts = set()
    for row in built:
        assert (
            row["family"] is None if not row["has_error"] else FAMILIES[row["family"]].category.value == row["category"]
        )
        if row["has_error"]:
            clean = InjectedError.from_dict(row).revert(row["text"])
            assert clean.startswith("FINDINGS: ")
        elif row["variant"] == 0:
            source = by_uid[row["uid"]]
            assert row["text"] == compose_report(source["findings"], source["impression"])
        texts.add(row["text"])
    assert len(texts) > 100  # 4 distinct reports in _rows: the variants differ in surface form
    assert build_errorcheck_training_set(rows, seed=3, variants_per_report=8) == (built, summary)
    assert build_errorcheck_training_set(rows, seed=4, variants_per_report=8)[0] != built


def test_training_set_keeps_splits_and_validates() -> None:
    from radlvlm.tasks import build_errorcheck_training_set

    rows = _rows(10, "train") + [dict(r, uid=str(int(r["uid"]) + 100), split="test") for r in _rows(6)]
    built, summary = build_errorcheck_training_set(rows, seed=0, variants_per_report=3)
    split_of = {r["uid"]: r["split"] for r in rows}
    assert all(row["split"] == split_of[row["uid"]] for row in built)
    assert summary["splits"]["train"]["n"] == 30 and summary["splits"]["test"]["n"] == 18
    with pytest.raises(InputError, match="variants_per_report"):
        build_errorcheck_training_set(rows, seed=0, variants_per_report=0)
    with pytest.raises(InputError, match="error family"):
        build_errorcheck_training_set(rows, seed=0, families=["typo"])
    with pytest.raises(InputError, match="no 'split'"):
        build_errorcheck_training_set(_rows(2, None), seed=0)
    only, _ = build_errorcheck_training_set(rows, seed=0, variants_per_report=4, families=["laterality"])
    assert {r["family"] for r in only} <= {None, "laterality"}


def test_training_set_on_the_iu_train_split_is_large_and_varied() -> None:
    # No time limit here: a test asserts behaviour, and a shared CPU decides a timing (it failed at 61 s beside a
    # training run).
    from radlvlm.tasks import build_errorcheck_training_set

    rows = [json.loads(line) for line in shared_path("iu_xray", "train.jsonl").read_text().splitlines()]
    built, summary = build_errorcheck_training_set(rows, seed=0, variants_per_report=8)
    assert summary["n_rows"] > 20_000 and abs(summary["splits"]["train"]["n_error"] / summary["n_rows"] - 0.5) < 0.01
    assert all(summary["families"].values()) and len(summary["categories"]) == len(ErrorCategory)
    assert {r["split"] for r in built} == {"train"}


def test_evaluation_set_rows_carry_the_family() -> None:
    built, _ = build_errorcheck_set(_rows(20), seed=1)
    assert all((r["family"] is None) == (not r["has_error"]) for r in built)
