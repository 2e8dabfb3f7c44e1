"""Label-preserving surface variation of reports (training data only)."""

from __future__ import annotations

import json

from testsupport import shared_path

from radlvlm.reports.labeler import label_report
from radlvlm.tasks import compose_report, expand_abbreviations, vary_report

FINDINGS = "The heart size is normal. No pneumothorax. No pleural effusion. No focal consolidation. Lungs are clear."
IMPRESSION = "No acute cardiopulmonary abnormality."


def test_variation_is_deterministic_and_varies_with_the_seed() -> None:
    assert vary_report(FINDINGS, IMPRESSION, seed=4) == vary_report(FINDINGS, IMPRESSION, seed=4)
    variants = {vary_report(FINDINGS, IMPRESSION, seed=s) for s in range(30)}
    assert len(variants) > 10
    impressions = {i for _, i in variants}
    assert impressions <= {
        "No acute cardiopulmonary abnormality.",
        "No acute cardiopulmonary process.",
        "No acute cardiopulmonary disease.",
        "No acute cardiopulmonary findings.",
        "No active disease.",
    }
    assert len(impressions) > 1
    findings = [f for f, _ in variants]
    assert any("PTX" in f for f in findings)
    assert any(" or " in f for f in findings)  # "No pneumothorax. No pleural effusion." merged into a list
    assert any(not f.startswith("The heart") for f in findings)  # sentences shuffled within the section


def test_lists_split_but_qualified_lists_are_kept() -> None:
    split = [
        vary_report("No focal airspace disease, pleural effusion or pneumothorax.", "", seed=s)[0] for s in range(40)
    ]
    assert any(f.count("No ") == 3 for f in split)
    kept = {vary_report("No large pleural effusion or pneumothorax.", "", seed=s)[0] for s in range(40)}
    assert all(" or " in f and f.count("No ") == 1 for f in kept)  # "large" may qualify both: never split


def test_sentences_leaning_back_move_with_their_antecedent() -> None:
    findings = "Small left pleural effusion. This is unchanged. Mild cardiomegaly. No pneumothorax."
    for seed in range(30):
        varied, _ = vary_report(findings, "", seed=seed)
        index = varied.find("This is unchanged.")
        assert index > 0 and varied[:index].rstrip().endswith(("effusion.", "effusions."))


def test_variation_keeps_the_chexpert_labels_of_iu_reports() -> None:
    """The labeler's 14 labels of each clean IU report are unchanged by 4 variants each.

    Abbreviations the rule-based labeler does not know ("PTX", "RLL") are written out before labelling; that is
    the labeler's vocabulary, not a change of meaning. No other mismatch is tolerated beyond 0.5 %.
    """
    rows = [json.loads(line) for line in shared_path("iu_xray", "validation.jsonl").read_text().splitlines()]
    n = changed = 0
    for row in rows:
        findings, impression = row["findings"] or "", row["impression"] or ""
        original = compose_report(findings, impression)
        if not original:
            continue
        labels = label_report(original).labels
        for variant in range(4):
            varied = compose_report(*vary_report(findings, impression, seed=1000 * variant + int(row["uid"])))
            n += 1
            changed += label_report(expand_abbreviations(varied)).labels != labels
    assert n > 1000 and changed <= 0.005 * n, (changed, n)
