"""Baselines: most-common-normal, nearest neighbour (indication text, embeddings), majority class,
findings-vs-impression consistency checker."""

from __future__ import annotations

import json

import numpy as np
import pytest
from testsupport import shared_path

from radlvlm.clinical_eval.baselines import (
    check_consistency,
    consistency_predictions,
    majority_class_predictions,
    most_common_normal_report,
    nearest_neighbour_by_embedding,
    nearest_neighbour_by_indication,
)
from radlvlm.errors import EvaluationInputError
from radlvlm.reports.consistency import comparison_without_prior, says_no_prior
from radlvlm.reports.sections import ReportSections
from radlvlm.tasks import build_errorcheck_set, parse_complex_answer

NORMAL = "The heart is normal in size. The lungs are clear."
TRAIN = [
    {"uid": 1, "indication": "chest pain", "findings": NORMAL, "impression": "No acute disease."},
    {
        "uid": 2,
        "indication": "cough and fever",
        "findings": "Right lower lobe consolidation.",
        "impression": "Pneumonia.",
    },
    {"uid": 3, "indication": "chest pain", "findings": NORMAL, "impression": "No acute disease."},
    {"uid": 4, "indication": "dyspnea", "findings": "The lungs are clear.", "impression": "Normal chest."},
    {"uid": 5, "indication": "XXXX", "findings": "Mild cardiomegaly.", "impression": "Cardiomegaly."},
]


def test_most_common_normal_report() -> None:
    assert most_common_normal_report(TRAIN) == f"{NORMAL} No acute disease."
    with pytest.raises(EvaluationInputError, match="no normal report"):
        most_common_normal_report([TRAIN[1]])


def test_nearest_neighbour_by_indication() -> None:
    targets = [{"uid": 9, "indication": "Fever and productive cough."}, {"uid": 10, "indication": "XXXX XXXX"}]
    rows, counts = nearest_neighbour_by_indication(TRAIN, targets)
    assert rows[0]["prediction"] == "Right lower lobe consolidation. Pneumonia." and rows[0]["id"] == "9"
    assert rows[1]["prediction"] == f"{NORMAL} No acute disease."  # nothing to match: fallback, counted
    assert counts == {"retrieved": 1, "fallback_most_common_normal": 1}


def test_nearest_neighbour_by_embedding() -> None:
    train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert nearest_neighbour_by_embedding(train, ["a", "b", "c"], np.array([[0.1, 2.0], [3.0, 2.9]])) == ["b", "c"]
    with pytest.raises(EvaluationInputError, match="embedding shapes"):
        nearest_neighbour_by_embedding(train, ["a"], np.zeros((1, 2)))


def test_majority_class() -> None:
    train = [{"has_error": True, "category": "wrong_location"}] * 3 + [{"has_error": False, "category": None}]
    rows = majority_class_predictions(train, [{"id": "x"}, {"id": "y"}])
    answer = parse_complex_answer(rows[0]["prediction"])
    assert answer.has_error and answer.category.value == "wrong_location" and rows[1]["confidence"] == 0.75


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("FINDINGS: Small left pleural effusion.\nIMPRESSION: Small left pleural effusion.", []),
        ("FINDINGS: Small left pleural effusion.\nIMPRESSION: Small right pleural effusion.", ["laterality"]),
        ("FINDINGS: No pleural effusion.\nIMPRESSION: Small left pleural effusion.", ["contradiction"]),
        ("FINDINGS: The lungs are clear.\nIMPRESSION: Right pneumothorax.", ["impression_only"]),
        ("FINDINGS: Mild cardiomegaly.\nIMPRESSION: No acute disease.", ["findings_only"]),
        ("FINDINGS: Mild cardiomegaly.\nIMPRESSION: Severe cardiomegaly.", ["severity"]),
        # A change needs a prior study: with COMPARISON saying there is none, "interval"/"unchanged" is unsupported.
        (
            "COMPARISON: None.\nFINDINGS: Interval resolution of the left effusion.\nIMPRESSION: Normal chest.",
            ["comparison_without_prior"],
        ),
        ("COMPARISON: None available\nIMPRESSION: Unchanged exam.", ["comparison_without_prior"]),
        ("COMPARISON: 01/02/2020\nFINDINGS: Heart size unchanged.\nIMPRESSION: No acute disease.", []),
        ("FINDINGS: Heart size unchanged.\nIMPRESSION: No acute disease.", []),
        ("COMPARISON: None.\nFINDINGS: Prior granulomatous disease.\nIMPRESSION: No acute disease.", []),
        # A denial that carves out exceptions, or covers the other lung, denies nothing stated elsewhere ...
        ("FINDINGS: Left basilar opacity. The lungs are otherwise clear.\nIMPRESSION: Left basilar opacity.", []),
        ("FINDINGS: Left basilar opacity. The right lung is clear.\nIMPRESSION: Left basilar opacity.", []),
        (
            "FINDINGS: Right basilar opacity. The right lung is clear.\nIMPRESSION: Right basilar opacity.",
            ["contradiction"],
        ),
        # ... and a denial of acute airspace disease says nothing of scarring, unlike one of any opacity.
        ("FINDINGS: Biapical scarring. No focal infiltrate.\nIMPRESSION: Biapical scarring.", []),
        ("FINDINGS: Patchy left basilar opacity. No focal infiltrate.\nIMPRESSION: Left opacity.", ["contradiction"]),
        (
            "FINDINGS: The lungs are clear without focal consolidation.\nIMPRESSION: Diffuse reticular opacities.",
            ["contradiction"],
        ),
        # An impression that names the diagnosis for what the findings describe is consistent, on the same side.
        ("FINDINGS: Right lower lobe airspace disease.\nIMPRESSION: Right lower lobe pneumonia.", []),
        (
            "FINDINGS: Right lower lobe airspace disease.\nIMPRESSION: Left lower lobe pneumonia.",
            ["findings_only", "impression_only"],
        ),
        ("FINDINGS: Right apical scarring.\nIMPRESSION: Right upper lobe pneumonia.", ["impression_only"]),
        # A chronic finding left out of the impression is routine; an acute one under a normal impression is not.
        ("FINDINGS: Old healed right rib fractures.\nIMPRESSION: No acute disease.", []),
        ("FINDINGS: Acute right rib fracture.\nIMPRESSION: No acute disease.", ["findings_only"]),
    ],
)
def test_consistency_checker(text: str, kinds: list[str]) -> None:
    assert [f["kind"] for f in check_consistency(text)] == kinds


def test_consistency_checker_beats_chance_on_real_injected_errors() -> None:
    rows = [json.loads(line) for line in shared_path("iu_xray", "test.jsonl").read_text().splitlines()]
    built, _ = build_errorcheck_set(rows, seed=0)
    predicted = [parse_complex_answer(p["prediction"]).has_error for p in consistency_predictions(built)]
    truth = [r["has_error"] for r in built]
    flagged_errors = sum(p and t for p, t in zip(predicted, truth, strict=True))
    flagged_clean = sum(p and not t for p, t in zip(predicted, truth, strict=True))
    # it is a weak baseline, but it must flag corrupted reports more often than clean ones
    assert flagged_errors > 1.3 * flagged_clean


def test_a_correct_report_without_a_prior_is_rarely_called_a_made_up_comparison() -> None:
    """The COMPARISON rule on real reports written with no prior study (IU train and validation: where its cues
    were chosen; test is left to the errorcheck study): a made-up change is flagged, correct ones seldom are."""
    rows = [
        json.loads(line)
        for split in ("train", "validation")
        for line in shared_path("iu_xray", f"{split}.jsonl").read_text().splitlines()
    ]
    without_prior = [r for r in rows if says_no_prior(r.get("comparison") or "")]
    assert len(without_prior) > 1000
    sections = [
        ReportSections(comparison=r["comparison"], findings=r["findings"], impression=r["impression"])
        for r in without_prior
    ]
    flagged = sum(comparison_without_prior(s) > 0 for s in sections)
    assert flagged / len(without_prior) < 0.03
    made_up = ReportSections(comparison="None.", findings="The previously seen right effusion has resolved.")
    assert comparison_without_prior(made_up) == 1


def test_image_retrieval_rows_need_an_embedding_per_target() -> None:
    from radlvlm.clinical_eval.baselines import nearest_neighbour_image_predictions

    vectors = np.eye(3)
    rows = nearest_neighbour_image_predictions(
        TRAIN[:2], [{"uid": 7}], ["1", "2", "7"], vectors + np.array([0, 0.9, 0])
    )
    assert rows == [
        {"id": "7", "prediction": TRAIN[1]["findings"] + " Pneumonia.", "model": "baseline:nearest-neighbour-image"}
    ]
    with pytest.raises(EvaluationInputError, match="1 target studies have no embedding: 8"):
        nearest_neighbour_image_predictions(TRAIN[:2], [{"uid": 8}], ["1", "2", "7"], vectors)
    with pytest.raises(EvaluationInputError, match="must be"):
        nearest_neighbour_image_predictions(TRAIN[:2], [{"uid": 7}], ["1", "2"], vectors)
