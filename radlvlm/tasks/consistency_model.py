"""The learned text check: gradient-boosted trees over the labeler's readings of a report
(:func:`radlvlm.reports.consistency_features.consistency_features`), fitted on training reports with injected
errors, scoring how likely a report's sections disagree.

Why trees over the labeler's readings and not another language model: no pretrained clinical language model can
be had here, and the embedded LM, trained from scratch on 2,827 reports, reads cross-section disagreement weakly
(its yes/no score alone is near the rule checker). Trees learn which combinations matter (a finding stated in
the findings, absent from an impression that calls the study normal, is an error for an effusion and routine for
a granuloma) from tens of thousands of injected examples, and the features carry no wording to overfit.

The fitted trees are saved with skops (scikit-learn's safe persistence: loading a file runs no code, and only the
types listed in :data:`_TRUSTED_TYPES` are accepted), never with pickle, since model folders come from outside.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radlvlm.errors import InputError, ModelError
from radlvlm.reports.consistency import ConsistencyFinding
from radlvlm.reports.consistency_features import CONSISTENCY_FEATURE_NAMES, consistency_features

__all__ = ["CONSISTENCY_MODEL_FILE", "ConsistencyModel", "fit_consistency_model"]

CONSISTENCY_MODEL_FILE = "consistency_model.skops"
_META_SUFFIX = ".json"
# What a saved model may contain beyond what skops trusts by default: the fitted trees of the classifier.
_TRUSTED_TYPES = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)
# Trees deep and many enough for pairwise readings (finding x section x status), regularised so ~20k rows do not
# memorise one injector's choices; not tuned on any evaluation set (the same figures held within 0.01 AUROC over
# 200-600 trees, 7-31 leaves on IU validation).
_TREES = {"max_iter": 300, "learning_rate": 0.05, "max_leaf_nodes": 15, "l2_regularization": 1.0}
_LOG_ODDS_CLIP = 30.0


@dataclass(frozen=True)
class ConsistencyModel:
    """A fitted text-consistency scorer: ``log_odds(report)`` of an error from the report's sections alone."""

    classifier: Any
    feature_names: tuple[str, ...] = CONSISTENCY_FEATURE_NAMES
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if tuple(self.feature_names) != CONSISTENCY_FEATURE_NAMES:
            raise ModelError(
                "consistency model: fitted on other features than this version reads; refit it "
                "(radlvlm embedded calibrate)"
            )

    def log_odds(self, report: str, rule_findings: Sequence[ConsistencyFinding] | None = None) -> float:
        """The model's log-odds that ``report`` holds an error, clipped to +-30 (``rule_findings``: the rule
        checker's on it, when already read)."""
        return self.log_odds_many([report], None if rule_findings is None else [rule_findings])[0]

    def log_odds_many(
        self, reports: Sequence[str], rule_findings: Sequence[Sequence[ConsistencyFinding]] | None = None
    ) -> list[float]:
        import numpy as np  # noqa: PLC0415 - numpy: scored only where a calibration uses this model

        found = rule_findings if rule_findings is not None else [None] * len(reports)
        x = np.array(
            [list(consistency_features(r, f).values()) for r, f in zip(reports, found, strict=True)], dtype=float
        )
        p = self.classifier.predict_proba(x)[:, 1]
        return [max(-_LOG_ODDS_CLIP, min(_LOG_ODDS_CLIP, math.log(max(v, 1e-13) / max(1 - v, 1e-13)))) for v in p]

    def save(self, path: Path) -> Path:
        import skops.io  # noqa: PLC0415 - skops: only when a model is fitted

        skops.io.dump(self.classifier, path)
        meta = {"feature_names": list(self.feature_names), "fitted_on": self.fitted_on}
        path.with_suffix(_META_SUFFIX).write_text(json.dumps(meta, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> ConsistencyModel:
        import skops.io  # noqa: PLC0415 - skops: only where a calibration uses this model

        try:
            meta = json.loads(path.with_suffix(_META_SUFFIX).read_text())
            untrusted = skops.io.get_untrusted_types(file=path)
        except (OSError, ValueError) as e:
            raise ModelError(f"{path}: unreadable consistency model ({type(e).__name__})") from e
        unexpected = sorted(set(untrusted) - set(_TRUSTED_TYPES))
        if unexpected:
            raise ModelError(f"{path}: consistency model holds types it should not ({', '.join(unexpected)})")
        classifier = skops.io.load(path, trusted=list(untrusted))
        if not hasattr(classifier, "predict_proba"):
            raise ModelError(f"{path}: not a fitted classifier")
        return cls(classifier, tuple(meta.get("feature_names", ())), dict(meta.get("fitted_on", {})))


def fit_consistency_model(
    reports: Sequence[str], labels: Sequence[bool], *, source: str, seed: int = 0
) -> ConsistencyModel:
    """Fit the scorer on training reports (each with ``labels[k]`` True where it carries an injected error)."""
    import numpy as np  # noqa: PLC0415 - numpy, scikit-learn: only when a model is fitted
    from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: PLC0415 - scikit-learn: only when a model is fitted

    if len(reports) != len(labels):
        raise InputError("reports and labels must have the same length")
    y = np.array([bool(v) for v in labels], dtype=int)
    if y.sum() < 10 or (len(y) - y.sum()) < 10:
        raise InputError("need at least 10 reports with and 10 without an error to fit a consistency model")
    x = np.array([list(consistency_features(r).values()) for r in reports], dtype=float)
    classifier = HistGradientBoostingClassifier(**_TREES, random_state=seed).fit(x, y)
    return ConsistencyModel(classifier, fitted_on={"source": source, "n": len(y), "errors": int(y.sum()), **_TREES})
