"""Calibrated SIMPLE error-check verdicts: P(error) from the model's yes/no scores and the report's own
consistency findings, with an operating point chosen on validation data.

The model's answer to "does this report contain an error?" is one forward pass: the log-odds of " yes" over
" no". Read at 0.5 it is neither calibrated nor a good operating point (a small model trained on balanced data
can rank errors above chance and still say "no" to everything). A :class:`CheckCalibration` turns it into a
probability with a scikit-learn logistic regression fitted on a held-out validation set, optionally together
with the rule consistency checker's findings (:func:`radlvlm.reports.consistency.check_consistency`) and the
learned text-consistency scorer's log-odds (:mod:`radlvlm.tasks.consistency_model`), and holds the threshold
chosen on that set. It is stored as JSON next to the weights (``check_calibration.json``): a handful of numbers
that anyone can read and that load without unpickling code; the scorer, when a calibration uses it, is the
skops file beside it.

The engines apply it to every SIMPLE check, whichever door the check came through.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from radlvlm.errors import InputError, ModelError
from radlvlm.reports.consistency import RULE_CHECKER_THRESHOLD, ConsistencyFinding, check_consistency
from radlvlm.tasks.consistency_model import CONSISTENCY_MODEL_FILE, ConsistencyModel
from radlvlm.tasks.taxonomy import ErrorCategory

__all__ = [
    "CALIBRATION_FILE",
    "CONSISTENCY_FEATURE",
    "MODEL_FEATURE",
    "RULE_FEATURES",
    "RULE_KIND_CATEGORY",
    "Assessment",
    "CheckCalibration",
    "CheckCalibrations",
    "find_calibrations",
    "fit_calibration",
    "rule_checker_flags",
    "rule_features",
]

CALIBRATION_FILE = "check_calibration.json"
MODEL_FEATURE = "model_log_odds"
CONSISTENCY_FEATURE = "consistency_log_odds"  # the learned text-consistency scorer's log-odds
# The rule checker's findings, by kind; "findings_only" splits by weight: an acute finding under an impression
# that calls the study normal (weight 1) is a contradiction, other findings left out of the impression (0.5)
# are common in correct reports.
RULE_FEATURES = (
    "contradiction",
    "laterality",
    "severity",
    "impression_only",
    "findings_only_acute",
    "findings_only_other",
    "comparison_without_prior",
)
# The error category each kind of rule-checker inconsistency points to.
RULE_KIND_CATEGORY = {
    "contradiction": ErrorCategory.NEGATION_FLIP,
    "laterality": ErrorCategory.WRONG_LOCATION,
    "severity": ErrorCategory.WRONG_SEVERITY,
    "impression_only": ErrorCategory.FALSE_FINDING,
    "findings_only": ErrorCategory.OMITTED_FINDING,
    "comparison_without_prior": ErrorCategory.UNSUPPORTED_COMPARISON,
}
CheckKind = Literal["text_only", "image"]
_LOG_ODDS_CLIP = 30.0  # a saturated softmax gives +-inf log-odds; the fit only needs "very sure"


def rule_features(report: str | Sequence[ConsistencyFinding]) -> dict[str, float]:
    """How many inconsistencies of each kind the rule checker finds in ``report`` (or its findings, already
    read)."""
    counts = dict.fromkeys(RULE_FEATURES, 0.0)
    for finding in check_consistency(report) if isinstance(report, str) else report:
        kind = str(finding["kind"])
        if kind == "findings_only":
            kind = "findings_only_acute" if float(finding["weight"]) >= 1.0 else "findings_only_other"
        counts[kind] += 1.0
    return counts


def rule_checker_flags(found: Sequence[ConsistencyFinding]) -> bool:
    """The rule checker's own verdict: its inconsistencies' weights reach :data:`RULE_CHECKER_THRESHOLD`."""
    return sum(float(f["weight"]) for f in found) >= RULE_CHECKER_THRESHOLD


def _row(
    features: Sequence[str],
    model_log_odds: float | None,
    report: str | Sequence[ConsistencyFinding],
    consistency_log_odds: float | None = None,
) -> list[float]:
    values: dict[str, float] = {}
    if any(name in RULE_FEATURES for name in features):
        values.update(rule_features(report))
    if CONSISTENCY_FEATURE in features:
        if consistency_log_odds is None:
            raise InputError("this calibration needs the consistency scorer's log-odds")
        values[CONSISTENCY_FEATURE] = float(consistency_log_odds)
    if MODEL_FEATURE in features:
        if model_log_odds is None:
            raise InputError("this calibration needs the model's yes/no log-odds")
        values[MODEL_FEATURE] = max(-_LOG_ODDS_CLIP, min(_LOG_ODDS_CLIP, float(model_log_odds)))
    return [values[name] for name in features]


@dataclass(frozen=True)
class Assessment:
    """One report's calibrated verdict: P(error), the verdict, and the rule checker's inconsistencies."""

    error_probability: float
    has_error: bool
    rule_findings: tuple[ConsistencyFinding, ...]
    rules_decided: bool  # the verdict is "error" because the rule checker flags it (the rule floor)


@dataclass(frozen=True)
class CheckCalibration:
    """A fitted logistic model of P(error) and the threshold at which a verdict says "error".

    Args:
        features: the inputs, in order (:data:`MODEL_FEATURE`, :data:`CONSISTENCY_FEATURE` and/or names of
            :data:`RULE_FEATURES`).
        coefficients, intercept: the logistic regression's weights.
        threshold: P(error) at or above which the verdict is "error" (chosen on the validation set).
        fitted_on: what it was fitted on (counts, source, the validation figures), for the model card.
        rule_floor: when set, the verdict is also "error" wherever the rule checker alone flags the report
            (:func:`rule_checker_flags`), so the fused check never misses what the shipped rules catch; P(error)
            is then at least ``rule_floor`` (the share of errors among the validation reports the rules flag).
        consistency: the learned scorer behind :data:`CONSISTENCY_FEATURE` (stored beside the JSON, not in it).
    """

    features: tuple[str, ...]
    coefficients: tuple[float, ...]
    intercept: float
    threshold: float
    fitted_on: dict[str, Any] = field(default_factory=dict)
    rule_floor: float | None = None
    consistency: ConsistencyModel | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        known = (MODEL_FEATURE, CONSISTENCY_FEATURE, *RULE_FEATURES)
        unknown = [name for name in self.features if name not in known]
        if unknown or len(self.features) != len(self.coefficients) or not self.features:
            raise ModelError(
                f"check calibration: bad features {list(self.features)} for {len(self.coefficients)} weights"
            )
        if CONSISTENCY_FEATURE in self.features and self.consistency is None:
            raise ModelError(
                f"check calibration: uses {CONSISTENCY_FEATURE} but no {CONSISTENCY_MODEL_FILE} came with it"
            )
        if not 0.0 < self.threshold < 1.0:
            raise ModelError(f"check calibration: threshold must be in (0, 1), got {self.threshold}")
        if self.rule_floor is not None and not 0.0 <= self.rule_floor <= 1.0:
            raise ModelError(f"check calibration: rule_floor must be in [0, 1], got {self.rule_floor}")

    @property
    def uses_model(self) -> bool:
        return MODEL_FEATURE in self.features

    def _probability(self, model_log_odds: float | None, found: Sequence[ConsistencyFinding], report: str) -> float:
        uses_scorer = self.consistency is not None and CONSISTENCY_FEATURE in self.features
        scored = self.consistency.log_odds(report, found) if uses_scorer else None
        row = _row(self.features, model_log_odds, found, scored)
        z = self.intercept + sum(w * x for w, x in zip(self.coefficients, row, strict=True))
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def probability(self, model_log_odds: float | None, report: str) -> float:
        """Calibrated P(error) of one report."""
        return self.assess(model_log_odds, report).error_probability

    def assess(self, model_log_odds: float | None, report: str) -> Assessment:
        """P(error) and the verdict of one report (the rule checker reads it once)."""
        found = tuple(check_consistency(report))
        fitted = self._probability(model_log_odds, found, report)
        if self.rule_floor is None or not rule_checker_flags(found):
            return Assessment(fitted, fitted >= self.threshold, found, rules_decided=False)
        return Assessment(max(fitted, self.rule_floor), True, found, rules_decided=fitted < self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "coefficients": list(self.coefficients),
            "intercept": self.intercept,
            "threshold": self.threshold,
            "fitted_on": self.fitted_on,
            "rule_floor": self.rule_floor,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], consistency: ConsistencyModel | None = None) -> CheckCalibration:
        try:
            return cls(
                features=tuple(data["features"]),
                coefficients=tuple(float(w) for w in data["coefficients"]),
                intercept=float(data["intercept"]),
                threshold=float(data["threshold"]),
                fitted_on=dict(data.get("fitted_on", {})),
                rule_floor=None if data.get("rule_floor") is None else float(data["rule_floor"]),
                consistency=consistency if CONSISTENCY_FEATURE in data["features"] else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"check calibration: malformed entry ({type(e).__name__}: {e})") from e


@dataclass(frozen=True)
class CheckCalibrations:
    """The calibrations of one model: text-only checks and checks against the image score differently."""

    text_only: CheckCalibration | None = None
    image: CheckCalibration | None = None

    def for_check(self, *, with_image: bool) -> CheckCalibration | None:
        return self.image if with_image else self.text_only

    def save(self, path: Path) -> Path:
        data = {kind: c.to_dict() for kind, c in (("text_only", self.text_only), ("image", self.image)) if c}
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> CheckCalibrations:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"{path}: unreadable check calibration ({type(e).__name__})") from e
        if not isinstance(data, dict) or not set(data) <= {"text_only", "image"}:
            raise ModelError(f"{path}: a check calibration has 'text_only' and/or 'image' entries only")
        scorer = path.parent / CONSISTENCY_MODEL_FILE
        uses_scorer = any(CONSISTENCY_FEATURE in (entry or {}).get("features", ()) for entry in data.values())
        consistency = ConsistencyModel.load(scorer) if uses_scorer and scorer.is_file() else None
        return cls(**{kind: CheckCalibration.from_dict(entry, consistency) for kind, entry in data.items()})


def find_calibrations(model_dir: str | Path, adapter_dir: str | Path | None = None) -> CheckCalibrations | None:
    """The calibration that belongs to this model: next to the adapter (it was fitted on the adapted model),
    else next to the base weights; None when the model has none (verdicts are then the raw yes/no at 0.5)."""
    for folder in ([Path(adapter_dir)] if adapter_dir else []) + [Path(model_dir)]:
        if (folder / CALIBRATION_FILE).is_file():
            return CheckCalibrations.load(folder / CALIBRATION_FILE)
    return None


def fit_calibration(
    reports: Sequence[str],
    labels: Sequence[bool],
    *,
    model_log_odds: Sequence[float] | None = None,
    consistency: ConsistencyModel | None = None,
    use_rules: bool = True,
    source: str = "",
    folds: int = 5,
    seed: int = 0,
    rule_floor: bool = False,
    operating_rows: Sequence[bool] | None = None,
    operating_rows_are: str = "",
) -> CheckCalibration:
    """Fit P(error) on a validation set and choose the operating point on it.

    The threshold maximises Youden's J (sensitivity + specificity - 1) over out-of-fold probabilities
    (``folds``-fold cross-validation), so it is not chosen on the very predictions it was fitted to; the
    final weights are then fitted on the whole set. With ``rule_floor`` every report the rule checker flags is
    flagged (see :class:`CheckCalibration`) and the threshold is chosen for the rest. With ``operating_rows`` the
    threshold is chosen on those rows only (``operating_rows_are`` says which, for the record): the weights still
    learn from every row, while the verdict is set for the errors a check can be asked to find.
    """
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - scikit-learn: only when a calibration is fitted
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415 - scikit-learn: only when a calibration is fitted
    from sklearn.model_selection import StratifiedKFold, cross_val_predict  # noqa: PLC0415 - scikit-learn: only when a calibration is fitted

    features = (
        ((MODEL_FEATURE,) if model_log_odds is not None else ())
        + ((CONSISTENCY_FEATURE,) if consistency is not None else ())
        + (RULE_FEATURES if use_rules else ())
    )
    if not features:
        raise InputError("a calibration needs the model's log-odds, the consistency scorer, the rule features, or more")
    if len(reports) != len(labels) or (model_log_odds is not None and len(model_log_odds) != len(reports)):
        raise InputError("reports, labels and log-odds must have the same length")
    y = np.array([bool(v) for v in labels], dtype=int)
    if y.sum() < folds or (len(y) - y.sum()) < folds:
        raise InputError(f"need at least {folds} reports with and {folds} without an error to calibrate")
    odds = list(model_log_odds) if model_log_odds is not None else [None] * len(reports)
    found = [tuple(check_consistency(r)) for r in reports]
    scored = consistency.log_odds_many(reports, found) if consistency is not None else [None] * len(reports)
    x = np.array([_row(features, o, f, c) for o, f, c in zip(odds, found, scored, strict=True)], dtype=float)
    model = LogisticRegression(C=1.0, max_iter=1000)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    out_of_fold = cross_val_predict(model, x, y, cv=splitter, method="predict_proba")[:, 1]
    flagged = np.array([rule_floor and rule_checker_flags(f) for f in found], dtype=bool)
    floor = float(y[flagged].mean()) if flagged.any() else None
    if floor is not None:
        out_of_fold = np.where(flagged, np.maximum(out_of_fold, floor), out_of_fold)
    rows = np.ones(len(y), dtype=bool) if operating_rows is None else np.array(operating_rows, dtype=bool)
    if len(rows) != len(y) or y[rows].sum() < 1 or (1 - y[rows]).sum() < 1:
        raise InputError("operating_rows must mark, row by row, a subset with reports with and without an error")
    threshold = _youden_threshold(y[rows], out_of_fold[rows], flagged[rows])
    model.fit(x, y)
    verdicts = (out_of_fold >= threshold) | flagged
    chosen_on: dict[str, Any] = {}
    if operating_rows is not None:
        chosen_on = {
            "operating_rows": operating_rows_are,
            "operating_rows_n": int(rows.sum()),
            "operating_rows_sensitivity": round(float(verdicts[rows & (y == 1)].mean()), 4),
            "operating_rows_specificity": round(float((~verdicts[rows & (y == 0)]).mean()), 4),
        }
    return CheckCalibration(
        features=features,
        coefficients=tuple(float(w) for w in model.coef_[0]),
        intercept=float(model.intercept_[0]),
        threshold=threshold,
        rule_floor=None if floor is None else round(floor, 4),
        consistency=consistency,
        fitted_on={
            "source": source,
            "n": len(y),
            "errors": int(y.sum()),
            "out_of_fold_auroc": round(float(roc_auc_score(y, out_of_fold)), 4),
            "out_of_fold_sensitivity": round(float(verdicts[y == 1].mean()), 4),
            "out_of_fold_specificity": round(float((~verdicts[y == 0]).mean()), 4),
            "rule_checker_flags": int(flagged.sum()),
            "operating_point": "max Youden J over out-of-fold probabilities"
            + (f" of {operating_rows_are or 'the marked rows'}" if operating_rows is not None else "")
            + (", every report the rule checker flags counted as flagged" if floor is not None else ""),
            **chosen_on,
        },
    )


def _youden_threshold(y: Any, probability: Any, always: Any) -> float:
    """The P(error) threshold with the best sensitivity + specificity, the rows in ``always`` being flagged
    whatever their probability (the rule floor)."""
    candidates = np.unique(probability)
    positives, negatives = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    best, best_j = 0.5, -np.inf
    for t in candidates:
        flagged = (probability >= t) | always
        j = flagged[y == 1].sum() / positives - flagged[y == 0].sum() / negatives
        if j > best_j:
            best, best_j = float(t), j
    return float(min(max(best, 1e-6), 1 - 1e-6))
