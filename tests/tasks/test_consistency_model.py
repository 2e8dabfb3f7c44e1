"""The learned text-consistency scorer: labeler features, trees fitted on injected errors, safe save and load,
and its place in a calibration."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from radlvlm.errors import ModelError
from radlvlm.reports.consistency_features import CONSISTENCY_FEATURE_NAMES, consistency_features
from radlvlm.tasks.calibration import (
    CALIBRATION_FILE,
    CONSISTENCY_FEATURE,
    MODEL_FEATURE,
    RULE_FEATURES,
    CheckCalibrations,
    fit_calibration,
)
from radlvlm.tasks.consistency_model import CONSISTENCY_MODEL_FILE, ConsistencyModel, fit_consistency_model
from radlvlm.tasks.errorcheck import build_errorcheck_training_set

FINDINGS = [
    ("Small left pleural effusion.", "Small left pleural effusion."),
    ("Right lower lobe consolidation.", "Right lower lobe pneumonia."),
    ("Moderate cardiomegaly. Mild pulmonary edema.", "Cardiomegaly with mild edema."),
    ("Large right pneumothorax.", "Large right pneumothorax."),
    ("Calcified granuloma in the left upper lobe.", "No acute cardiopulmonary abnormality."),
]
NORMAL_FINDINGS = [
    "The lungs are clear. Heart size is normal. No pleural effusion or pneumothorax.",
    "Heart size within normal limits. No focal airspace disease. No pneumothorax or effusion.",
    "Clear lungs. Normal cardiomediastinal silhouette. No effusion.",
]
NORMAL_IMPRESSIONS = ["No acute cardiopulmonary abnormality.", "Normal chest.", "No active disease."]


def _studies(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        if k % 2:
            findings, impression = rng.choice(FINDINGS)
            findings = f"{findings} {rng.choice(['Heart size is normal.', 'No pneumothorax.', ''])}".strip()
        else:
            findings, impression = rng.choice(NORMAL_FINDINGS), rng.choice(NORMAL_IMPRESSIONS)
        rows.append({"uid": f"s{k}", "split": "train", "findings": findings, "impression": impression})
    return rows


@pytest.fixture(scope="module")
def fitted() -> ConsistencyModel:
    rows, _ = build_errorcheck_training_set(_studies(120, 0), seed=0, variants_per_report=4)
    return fit_consistency_model([r["text"] for r in rows], [r["has_error"] for r in rows], source="synthetic")


def test_features_are_named_and_read_each_section() -> None:
    features = consistency_features("FINDINGS: Large right pneumothorax.\nIMPRESSION: No pneumothorax.")
    assert tuple(features) == CONSISTENCY_FEATURE_NAMES
    assert features["findings:Pneumothorax:positive"] == 1.0 and features["findings:Pneumothorax:right"] == 1.0
    assert features["impression:Pneumothorax:negative"] == 1.0
    assert features["Pneumothorax:stated_and_denied"] == 1.0 and features["rule:contradiction"] >= 1.0
    sized = consistency_features("FINDINGS: A 4 mm nodule and a 2.5 cm mass.\nIMPRESSION: Mass.")
    assert sized["findings:measurements"] == 2.0 and sized["findings:largest_cm"] == pytest.approx(2.5)
    assert consistency_features("IMPRESSION: Normal chest.")["has_findings"] == 0.0
    tube = consistency_features("FINDINGS: Endotracheal tube tip 4 cm above the carina.\nIMPRESSION: Tube in place.")
    assert tube["findings:measurements"] == 0.0  # a device's position is not a finding's size


def test_scorer_ranks_a_contradiction_above_the_consistent_report(fitted: ConsistencyModel) -> None:
    pairs = [
        ("Large right pneumothorax.", "Large right pneumothorax.", "No pneumothorax."),
        ("Small left pleural effusion.", "Small left pleural effusion.", "Small right pleural effusion."),
    ]
    for findings, agree, wrong in pairs:
        scored = fitted.log_odds(f"FINDINGS: {findings}\nIMPRESSION: {wrong}")
        assert scored > fitted.log_odds(f"FINDINGS: {findings}\nIMPRESSION: {agree}")
    assert fitted.fitted_on["n"] == 480 and 0 < fitted.fitted_on["errors"] < 480


def test_saved_scorer_loads_with_the_same_scores_and_nothing_else(fitted: ConsistencyModel, tmp_path: Path) -> None:
    path = fitted.save(tmp_path / CONSISTENCY_MODEL_FILE)
    loaded = ConsistencyModel.load(path)
    reports = ["FINDINGS: Small left pleural effusion.\nIMPRESSION: Normal chest.", _studies(1, 3)[0]["findings"]]
    assert loaded.log_odds_many(reports) == pytest.approx(fitted.log_odds_many(reports))
    assert json.loads(path.with_suffix(".json").read_text())["fitted_on"]["source"] == "synthetic"

    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    skops.io.dump(FunctionTransformer(func=print), tmp_path / "other.skops")  # a file that would call code
    (tmp_path / "other.json").write_text(json.dumps({"feature_names": list(CONSISTENCY_FEATURE_NAMES)}))
    with pytest.raises(ModelError, match="holds types it should not"):
        ConsistencyModel.load(tmp_path / "other.skops")
    (tmp_path / "stale.json").write_text(json.dumps({"feature_names": ["a", "b"]}))
    skops.io.dump(fitted.classifier, tmp_path / "stale.skops")
    with pytest.raises(ModelError, match="refit"):
        ConsistencyModel.load(tmp_path / "stale.skops")


def test_calibration_weighs_the_scorer_and_finds_it_beside_its_json(fitted: ConsistencyModel, tmp_path: Path) -> None:
    rows, _ = build_errorcheck_training_set(_studies(60, 1), seed=1, variants_per_report=2)
    reports, labels = [r["text"] for r in rows], [r["has_error"] for r in rows]
    odds = [0.0] * len(reports)  # an uninformative model score
    calibration = fit_calibration(reports, labels, model_log_odds=odds, consistency=fitted, source="synthetic")
    assert calibration.features == (MODEL_FEATURE, CONSISTENCY_FEATURE, *RULE_FEATURES)
    report = "FINDINGS: Large right pneumothorax.\nIMPRESSION: No pneumothorax."
    p = calibration.probability(0.0, report)

    folder = tmp_path / "adapter"
    folder.mkdir()
    CheckCalibrations(text_only=calibration).save(folder / CALIBRATION_FILE)
    with pytest.raises(ModelError, match=CONSISTENCY_MODEL_FILE):  # the JSON alone cannot score
        CheckCalibrations.load(folder / CALIBRATION_FILE)
    fitted.save(folder / CONSISTENCY_MODEL_FILE)
    loaded = CheckCalibrations.load(folder / CALIBRATION_FILE).text_only
    assert loaded is not None and loaded.probability(0.0, report) == pytest.approx(p)
