"""Calibrated SIMPLE verdicts: fitted P(error), an operating point from validation, JSON that round-trips."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from radlvlm.errors import InputError, ModelError
from radlvlm.reports.consistency import check_consistency
from radlvlm.tasks.calibration import (
    CALIBRATION_FILE,
    MODEL_FEATURE,
    RULE_FEATURES,
    CheckCalibration,
    CheckCalibrations,
    find_calibrations,
    fit_calibration,
    rule_features,
)

CLEAN = [
    "FINDINGS: The lungs are clear. Heart size is normal.\nIMPRESSION: No acute cardiopulmonary abnormality.",
    "FINDINGS: Small left pleural effusion.\nIMPRESSION: Small left pleural effusion.",
    "FINDINGS: No pneumothorax or effusion.\nIMPRESSION: Normal chest.",
]
WRONG = [
    "FINDINGS: Large right pneumothorax.\nIMPRESSION: No pneumothorax.",
    "FINDINGS: No pleural effusion.\nIMPRESSION: Large left pleural effusion.",
    "FINDINGS: Right lower lobe consolidation.\nIMPRESSION: Left lower lobe consolidation.",
]


def test_rule_features_count_the_checkers_inconsistencies() -> None:
    assert sum(rule_features(CLEAN[0]).values()) == 0
    assert rule_features(WRONG[0])["contradiction"] >= 1
    assert set(rule_features(WRONG[2])) == set(RULE_FEATURES)


def _data(n: int, seed: int) -> tuple[list[str], list[bool], list[float]]:
    rng = random.Random(seed)
    reports, labels, odds = [], [], []
    for i in range(n):
        wrong = i % 2 == 1
        reports.append(rng.choice(WRONG if wrong else CLEAN))
        labels.append(wrong)
        odds.append(rng.gauss(1.0 if wrong else -1.0, 1.5))  # an informative but noisy model score
    return reports, labels, odds


def test_fitted_calibration_separates_and_picks_its_threshold_out_of_fold(tmp_path: Path) -> None:
    reports, labels, odds = _data(200, 0)
    fitted = fit_calibration(reports, labels, model_log_odds=odds, source="synthetic")
    assert fitted.features == (MODEL_FEATURE, *RULE_FEATURES)
    assert 0 < fitted.threshold < 1 and fitted.fitted_on["n"] == 200 and fitted.fitted_on["errors"] == 100
    assert fitted.fitted_on["out_of_fold_auroc"] > 0.9  # the rule features separate these reports
    assert fitted.probability(3.0, WRONG[0]) > fitted.threshold > fitted.probability(-3.0, CLEAN[0])
    # The model's score moves P(error) in the direction it points.
    assert fitted.probability(3.0, CLEAN[1]) > fitted.probability(-3.0, CLEAN[1])
    saved = CheckCalibrations(text_only=fitted).save(tmp_path / CALIBRATION_FILE)
    loaded = CheckCalibrations.load(saved)
    assert loaded.text_only == fitted and loaded.image is None
    assert find_calibrations(tmp_path) == loaded
    assert find_calibrations(tmp_path / "base-without", adapter_dir=None) is None


def test_the_adapters_calibration_comes_before_the_bases(tmp_path: Path) -> None:
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir(), adapter.mkdir()
    rules = CheckCalibration(RULE_FEATURES, (1.0,) * len(RULE_FEATURES), -1.0, 0.4)
    model = CheckCalibration((MODEL_FEATURE,), (1.0,), 0.0, 0.6)
    CheckCalibrations(text_only=rules).save(base / CALIBRATION_FILE)
    CheckCalibrations(text_only=model).save(adapter / CALIBRATION_FILE)
    assert find_calibrations(base, adapter).text_only == model
    assert find_calibrations(base).text_only == rules
    with pytest.raises(InputError, match="log-odds"):
        model.probability(None, CLEAN[0])


def test_bad_calibrations_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="threshold"):
        CheckCalibration((MODEL_FEATURE,), (1.0,), 0.0, 1.5)
    with pytest.raises(ModelError, match="bad features"):
        CheckCalibration(("age",), (1.0,), 0.0, 0.5)
    (tmp_path / "bad.json").write_text('{"text_only": {"features": ["model_log_odds"]}}')
    with pytest.raises(ModelError, match="malformed"):
        CheckCalibrations.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"ct": {}}')
    with pytest.raises(ModelError, match="text_only"):
        CheckCalibrations.load(tmp_path / "other.json")
    with pytest.raises(InputError, match="at least"):
        fit_calibration(CLEAN, [False, False, True])
    with pytest.raises(InputError, match="same length"):
        fit_calibration(CLEAN, [False, True])


def test_a_rule_floor_flags_whatever_the_rule_checker_flags(tmp_path: Path) -> None:
    """A model score that says "no" with confidence cannot overrule a contradiction the rules see; a report the
    rules find clean is judged by the fitted probability alone."""
    reports, labels, _ = _data(200, 1)
    rng = random.Random(1)
    odds = [rng.gauss(0.0, 1.0) for _ in reports]  # a model that knows nothing: the rules decide
    floored = fit_calibration(reports, labels, model_log_odds=odds, rule_floor=True, source="synthetic")
    assert floored.rule_floor is not None and 0.9 <= floored.rule_floor <= 1.0  # every flagged one here is wrong
    for report in WRONG:
        assessed = floored.assess(-3.0, report)
        assert assessed.has_error and assessed.error_probability >= floored.rule_floor
        assert check_consistency(report) and list(assessed.rule_findings) == check_consistency(report)
    clean = floored.assess(0.0, CLEAN[0])
    assert not clean.has_error and not clean.rules_decided and not clean.rule_findings
    assert floored.fitted_on["out_of_fold_sensitivity"] == 1.0  # every wrong report here is one the rules flag
    loaded = CheckCalibrations.load(CheckCalibrations(text_only=floored).save(tmp_path / CALIBRATION_FILE))
    assert loaded.text_only == floored
    plain = fit_calibration(reports, labels, model_log_odds=odds, source="synthetic")
    assert plain.rule_floor is None
    with pytest.raises(ModelError, match="rule_floor"):
        CheckCalibration((MODEL_FEATURE,), (1.0,), 0.0, 0.5, rule_floor=1.5)


def test_the_operating_point_can_be_chosen_on_the_errors_a_check_can_find() -> None:
    reports, labels, odds = _data(200, 3)
    # Half the errors leave no trace the check can see: their model score looks like a correct report's.
    hidden = [wrong and k % 4 == 1 for k, wrong in enumerate(labels)]
    odds = [random.Random(k).gauss(-1.0, 1.5) if h else o for k, (h, o) in enumerate(zip(hidden, odds, strict=True))]
    every = fit_calibration(reports, labels, model_log_odds=odds, use_rules=False, source="synthetic")
    findable = fit_calibration(
        reports,
        labels,
        model_log_odds=odds,
        use_rules=False,
        source="synthetic",
        operating_rows=[not h for h in hidden],
        operating_rows_are="correct reports and findable errors",
    )
    assert findable.coefficients == every.coefficients  # the weights learn from every row
    assert findable.fitted_on["operating_rows_n"] == 200 - sum(hidden)
    assert "findable errors" in findable.fitted_on["operating_point"]
    assert findable.fitted_on["operating_rows_sensitivity"] >= findable.fitted_on["out_of_fold_sensitivity"]
    with pytest.raises(InputError, match="operating_rows"):
        fit_calibration(reports, labels, model_log_odds=odds, operating_rows=[not w for w in labels])
