"""Statistics for validation studies: bootstrap CIs over studies, paired comparisons, agreement coefficients.

All resampling uses ``numpy.random.default_rng(seed)``, so a study's numbers are reproducible from its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Estimate",
    "auroc",
    "bootstrap",
    "cohen_kappa",
    "expected_calibration_error",
    "fleiss_kappa",
    "grouped_bootstrap",
    "kendall_tau",
    "mcnemar",
    "paired_bootstrap",
]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a percentile bootstrap CI over studies.

    Args:
        value (`float`): the statistic on all studies.
        low (`float`): lower CI bound.
        high (`float`): upper CI bound.
        n (`int`): number of studies.
        level (`float`): CI level (0.95).
    """

    value: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high, "n": self.n}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap(
    statistic: Callable[[np.ndarray], float], n: int, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """Percentile bootstrap over ``n`` studies.

    Args:
        statistic (`Callable[[np.ndarray], float]`): maps an index array (which studies, with repeats) to the
            statistic; called once with ``arange(n)`` for the point estimate.
        n (`int`): number of studies (must be positive).
        n_boot (`int`, defaults to `1000`): resamples.
        seed (`int`, defaults to `0`): resampling seed.
        level (`float`, defaults to `0.95`): CI level.
    """
    if n <= 0:
        raise ValueError("bootstrap needs at least one study")
    value = float(statistic(np.arange(n)))
    samples = np.array([statistic(idx) for idx in _indices(n, n_boot, seed)], dtype=float)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return Estimate(value, float("nan"), float("nan"), n, level)
    alpha = (1 - level) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    # A percentile interval can miss a point estimate on a skewed statistic; widen to include it.
    return Estimate(value, float(min(low, value)), float(max(high, value)), n, level)


def grouped_bootstrap(
    statistic: Callable[[np.ndarray], float],
    groups: Sequence[object],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """Percentile bootstrap that resamples whole groups (patients), not rows: a patient's images are not
    independent, so a CI over images would be too narrow. ``statistic`` takes row indices, as in :func:`bootstrap`.
    """
    keys = list(dict.fromkeys(groups))
    if not keys:
        raise ValueError("grouped bootstrap needs at least one group")
    rows: dict[object, list[int]] = {key: [] for key in keys}
    for index, group in enumerate(groups):
        rows[group].append(index)
    members = [np.array(rows[key]) for key in keys]
    value = float(statistic(np.arange(len(groups))))
    draws = np.random.default_rng(seed).integers(0, len(keys), size=(n_boot, len(keys)))
    samples = np.array([statistic(np.concatenate([members[k] for k in draw])) for draw in draws], dtype=float)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return Estimate(value, float("nan"), float("nan"), len(groups), level)
    alpha = (1 - level) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    return Estimate(value, float(min(low, value)), float(max(high, value)), len(groups), level)


def expected_calibration_error(
    labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray, *, bins: int = 10
) -> float:
    """Expected calibration error: the share-weighted mean |observed rate - mean probability| over equal-width
    probability bins (Guo et al. 2017); NaN without rows."""
    y = np.asarray(labels, dtype=float)
    p = np.asarray(probabilities, dtype=float)
    if y.size == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            total += chosen.mean() * abs(y[chosen].mean() - p[chosen].mean())
    return float(total)


def paired_bootstrap(
    statistic_a: Callable[[np.ndarray], float],
    statistic_b: Callable[[np.ndarray], float],
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Paired bootstrap of ``a - b`` on the same resampled studies (Koehn 2004).

    Returns:
        ``{"difference", "ci_low", "ci_high", "p_value", "n"}``; ``p_value`` is two-sided: twice the share of
        resamples on the other side of zero, at least ``1 / n_boot``.
    """
    if n <= 0:
        raise ValueError("paired bootstrap needs at least one study")
    full = np.arange(n)
    difference = float(statistic_a(full) - statistic_b(full))
    diffs = np.array([statistic_a(i) - statistic_b(i) for i in _indices(n, n_boot, seed)], dtype=float)
    alpha = (1 - level) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    # Resampling cannot show p below 1/n_boot; report that bound rather than an impossible 0.
    p = max(2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)), 1 / n_boot)
    return {
        "difference": difference,
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": float(min(p, 1.0)),
        "n": n,
    }


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, float]:
    """Exact McNemar test on paired binary outcomes (scipy's two-sided binomial test on the discordant pairs).

    Returns:
        ``{"a_only", "b_only", "p_value"}``: studies only A got right, only B got right, and the p-value.
    """
    from scipy.stats import binomtest  # noqa: PLC0415 - scipy: only when a McNemar test runs, not at `radlvlm` start-up

    if len(correct_a) != len(correct_b):
        raise ValueError(f"McNemar needs paired outcomes, got {len(correct_a)} and {len(correct_b)}")
    b = sum(bool(x) and not bool(y) for x, y in zip(correct_a, correct_b, strict=True))
    c = sum(bool(y) and not bool(x) for x, y in zip(correct_a, correct_b, strict=True))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"a_only": b, "b_only": c, "p_value": p}


def auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn); NaN when only one class is present (a bootstrap resample can
    draw one), where scikit-learn would raise."""
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415 - scikit-learn: only when an AUROC is computed, not at `radlvlm` start-up

    y = np.asarray(labels, dtype=bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores, dtype=float)))


def cohen_kappa(a: Sequence[object], b: Sequence[object], *, weights: str | None = None) -> float:
    """Cohen's kappa between two raters' labels over the same items (scikit-learn).

    Args:
        a, b (`Sequence`): the two raters' labels (same length).
        weights (`str`, *optional*): ``"linear"`` or ``"quadratic"`` for ordinal integer grades; every grade
            from the lowest to the highest given is a category, so the weights follow the grades' distances.

    Returns 1.0 when both raters use one identical label throughout (perfect, no variance), NaN for no items.
    """
    from sklearn.metrics import cohen_kappa_score  # noqa: PLC0415 - scikit-learn: only when a kappa is computed, not at `radlvlm` start-up

    if len(a) != len(b):
        raise ValueError(f"kappa needs paired labels, got {len(a)} and {len(b)}")
    if not a:
        return float("nan")
    cats = sorted(set(a) | set(b), key=str)
    if len(cats) == 1:
        return 1.0
    if weights is None:
        return float(cohen_kappa_score([str(x) for x in a], [str(y) for y in b]))
    grades = [int(x) for x in cats]  # type: ignore[call-overload]
    labels = list(range(min(grades), max(grades) + 1))
    return float(cohen_kappa_score([int(x) for x in a], [int(y) for y in b], labels=labels, weights=weights))  # type: ignore[call-overload]


def fleiss_kappa(ratings: Sequence[Sequence[object]]) -> float:
    """Fleiss' kappa: ``ratings[item]`` lists every rater's label for that item (same rater count per item).

    Written here because neither scikit-learn nor scipy has it (statsmodels does, but is not a dependency)."""
    if not ratings:
        return float("nan")
    n_raters = len(ratings[0])
    if n_raters < 2 or any(len(r) != n_raters for r in ratings):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings for every item")
    cats = sorted({x for r in ratings for x in r}, key=str)
    counts = np.array([[sum(1 for x in r if x == c) for c in cats] for r in ratings], dtype=float)
    p_item = ((counts**2).sum(1) - n_raters) / (n_raters * (n_raters - 1))
    p_cat = counts.sum(0) / counts.sum()
    p_bar, p_e = p_item.mean(), (p_cat**2).sum()
    return 1.0 if p_e == 1 else float((p_bar - p_e) / (1 - p_e))


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Kendall's tau-b between two score lists (scipy), with its p-value."""
    from scipy.stats import kendalltau  # noqa: PLC0415 - scipy: only when a Kendall tau is computed, not at `radlvlm` start-up

    if len(x) != len(y):
        raise ValueError(f"Kendall tau needs paired scores, got {len(x)} and {len(y)}")
    result = kendalltau(x, y)
    return {"tau": float(result.statistic), "p_value": float(result.pvalue), "n": len(x)}
