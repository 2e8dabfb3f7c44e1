"""Metrics over predictions-file rows: NLG, clinical (CheXpert F1), error-check, judge error counts.

Every headline figure comes with a percentile bootstrap 95% CI over studies (:mod:`radlvlm.clinical_eval.stats`).
Functions take plain sequences aligned by study; no model is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from radlvlm.clinical_eval.judges import REXVAL, JudgeResult
from radlvlm.clinical_eval.stats import auroc, bootstrap
from radlvlm.reports.labeler import CHEXPERT_5, CHEXPERT_14, LabeledReport

__all__ = [
    "bleu_from_statistics",
    "bleu_statistics",
    "calibration",
    "clinical_metrics",
    "errorcheck_complex_metrics",
    "errorcheck_simple_metrics",
    "judge_metrics",
    "nlg_metrics",
    "prf_from_counts",
]

NONE_CLASS = "none"


def _check_aligned(*seqs: Sequence[Any]) -> int:
    lengths = {len(s) for s in seqs}
    if len(lengths) != 1:
        raise ValueError(f"metric inputs must be aligned by study, got lengths {sorted(lengths)}")
    n = lengths.pop()
    if n == 0:
        raise ValueError("no study to score")
    return n


def prf_from_counts(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """Precision, recall, F1 from counts (0 where undefined, as sklearn's ``zero_division=0``)."""
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def bleu_statistics(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """sacrebleu's per-study n-gram statistics (lower-cased, 13a tokens): ``[sys_len, ref_len, correct_1..4,
    total_1..4]`` per row, so any subset's corpus BLEU is a sum away."""
    from sacrebleu.metrics import BLEU  # noqa: PLC0415 - sacrebleu: only when BLEU is scored, not at `radlvlm` start-up

    _check_aligned(predictions, references)
    bleu = BLEU(lowercase=True, max_ngram_order=4)
    return np.asarray(bleu._extract_corpus_statistics(list(predictions), [list(references)]), dtype=float)


def bleu_from_statistics(stats: np.ndarray, order: int) -> Callable[[np.ndarray], float]:
    """A statistic for :func:`~radlvlm.clinical_eval.stats.bootstrap`: corpus BLEU-``order`` (0-1) of the
    studies an index array selects."""
    from sacrebleu.metrics import BLEU  # noqa: PLC0415 - sacrebleu: only when BLEU is scored, not at `radlvlm` start-up

    def statistic(idx: np.ndarray) -> float:
        s = stats[idx].sum(0)
        score = BLEU.compute_bleu(
            correct=list(s[2 : 2 + order]),
            total=list(s[6 : 6 + order]),
            sys_len=int(s[0]),
            ref_len=int(s[1]),
            max_ngram_order=order,
        )
        return score.score / 100

    return statistic


def nlg_metrics(
    predictions: Sequence[str], references: Sequence[str], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Corpus BLEU-1..4 (sacrebleu, lower-cased, 13a tokens, 0-1 scale) and mean ROUGE-L F1 (rouge-score).

    BLEU is resampled from per-study n-gram statistics, so each bootstrap replicate is a true corpus BLEU.
    """
    from rouge_score import rouge_scorer  # noqa: PLC0415 - rouge-score: only when ROUGE is scored, not at `radlvlm` start-up

    n = _check_aligned(predictions, references)
    stats = bleu_statistics(predictions, references)
    out: dict[str, dict[str, float]] = {}
    for order in range(1, 5):
        out[f"bleu_{order}"] = bootstrap(bleu_from_statistics(stats, order), n, n_boot=n_boot, seed=seed).as_dict()
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = np.array([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)])
    out["rouge_l"] = bootstrap(lambda idx: rouge[idx].mean(), n, n_boot=n_boot, seed=seed).as_dict()
    return out


def _label_counts(
    preds: Sequence[LabeledReport], refs: Sequence[LabeledReport], names: Sequence[str], uncertain: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = np.array([[n in r.positive(uncertain_as_positive=uncertain) for n in names] for r in preds], dtype=float)
    t = np.array([[n in r.positive(uncertain_as_positive=uncertain) for n in names] for r in refs], dtype=float)
    return p * t, p * (1 - t), (1 - p) * t


def clinical_metrics(
    predictions: Sequence[LabeledReport], references: Sequence[LabeledReport], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """CheXpert-14 and CheXpert-5 micro/macro F1, positive only and positive+uncertain, with per-label P/R/F1.

    Macro F1 averages over the labels with at least one positive reference in the scored set (a label no
    reference has would otherwise add a 0 that says nothing about the system); those labels are listed.
    """
    _check_aligned(predictions, references)
    out: dict[str, Any] = {}
    for uncertain, mode in ((False, "positive"), (True, "positive_or_uncertain")):
        tp, fp, fn = _label_counts(predictions, references, CHEXPERT_14, uncertain)
        out[f"per_label_{mode}"] = {
            name: _per_label(tp[:, j], fp[:, j], fn[:, j], n_boot=n_boot, seed=seed)
            for j, name in enumerate(CHEXPERT_14)
        }
        for subset_name, subset in (("chexpert14", CHEXPERT_14), ("chexpert5", CHEXPERT_5)):
            cols = [CHEXPERT_14.index(s) for s in subset]
            out[f"{subset_name}_{mode}"] = _micro_macro(tp[:, cols], fp[:, cols], fn[:, cols], subset, n_boot, seed)
    return out


def _per_label(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, *, n_boot: int, seed: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"support": int((tp + fn).sum()), "predicted": int((tp + fp).sum())}
    for k, key in enumerate(("precision", "recall", "f1")):

        def stat(idx: np.ndarray, k: int = k) -> float:
            return prf_from_counts(tp[idx].sum(), fp[idx].sum(), fn[idx].sum())[k]

        entry[key] = bootstrap(stat, len(tp), n_boot=n_boot, seed=seed).as_dict()
    return entry


def _micro_macro(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, names: Sequence[str], n_boot: int, seed: int
) -> dict[str, Any]:
    supported = [j for j in range(tp.shape[1]) if (tp[:, j] + fn[:, j]).sum() > 0]

    def micro(idx: np.ndarray) -> float:
        return prf_from_counts(tp[idx].sum(), fp[idx].sum(), fn[idx].sum())[2]

    def macro(idx: np.ndarray) -> float:
        if not supported:
            return float("nan")
        a, b, c = tp[idx].sum(0), fp[idx].sum(0), fn[idx].sum(0)
        return float(np.mean([prf_from_counts(a[j], b[j], c[j])[2] for j in supported]))

    n = len(tp)
    return {
        "micro_f1": bootstrap(micro, n, n_boot=n_boot, seed=seed).as_dict(),
        "macro_f1": bootstrap(macro, n, n_boot=n_boot, seed=seed).as_dict(),
        "labels_without_support": [names[j] for j in range(tp.shape[1]) if j not in supported],
    }


def calibration(y_true: Sequence[bool], confidence: Sequence[float], *, n_bins: int = 10) -> dict[str, Any]:
    """Reliability bins (mean confidence vs observed error rate) and expected calibration error."""
    y = np.asarray(y_true, dtype=float)
    c = np.asarray(confidence, dtype=float)
    bins = np.minimum((c * n_bins).astype(int), n_bins - 1)
    table, ece = [], 0.0
    for b in range(n_bins):
        mask = bins == b
        if not mask.any():
            continue
        mean_c, rate = float(c[mask].mean()), float(y[mask].mean())
        ece += mask.mean() * abs(mean_c - rate)
        table.append({"bin": b, "n": int(mask.sum()), "mean_confidence": mean_c, "observed_rate": rate})
    return {"ece": float(ece), "bins": table}


def errorcheck_simple_metrics(
    y_true: Sequence[bool],
    y_pred: Sequence[bool],
    confidence: Sequence[float] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """SIMPLE error-check: accuracy, precision, recall, F1 (error = positive class), AUROC when confidences
    exist, the 2x2 confusion matrix and calibration."""
    n = _check_aligned(y_true, y_pred)
    t = np.asarray(y_true, dtype=bool)
    p = np.asarray(y_pred, dtype=bool)

    def prf(k: int):
        return lambda idx: prf_from_counts((t[idx] & p[idx]).sum(), (~t[idx] & p[idx]).sum(), (t[idx] & ~p[idx]).sum())[
            k
        ]

    out: dict[str, Any] = {
        "accuracy": bootstrap(lambda idx: float((t[idx] == p[idx]).mean()), n, n_boot=n_boot, seed=seed).as_dict(),
        "precision": bootstrap(prf(0), n, n_boot=n_boot, seed=seed).as_dict(),
        "recall": bootstrap(prf(1), n, n_boot=n_boot, seed=seed).as_dict(),
        "f1": bootstrap(prf(2), n, n_boot=n_boot, seed=seed).as_dict(),
        "confusion_matrix": {
            "labels": ["no_error", "error"],
            "matrix": [[int((~t & ~p).sum()), int((~t & p).sum())], [int((t & ~p).sum()), int((t & p).sum())]],
        },
        "n_true_error": int(t.sum()),
    }
    if confidence is not None:
        _check_aligned(y_true, confidence)
        c = np.asarray(confidence, dtype=float)
        out["auroc"] = bootstrap(lambda idx: auroc(t[idx], c[idx]), n, n_boot=n_boot, seed=seed).as_dict()
        out["calibration"] = calibration(t, c)
    return out


def _overlaps(true_span: Sequence[int] | None, pred_span: Sequence[int] | None) -> bool:
    if true_span is None or pred_span is None:
        return False
    (ts, te), (ps, pe) = true_span, pred_span
    if ts == te:  # a removal leaves a zero-width span: the prediction must cover that point
        return ps <= ts <= pe
    return ps < te and ts < pe


def errorcheck_complex_metrics(
    true_categories: Sequence[str | None],
    predicted_categories: Sequence[str | None],
    true_spans: Sequence[Sequence[int] | None] | None = None,
    predicted_spans: Sequence[Sequence[int] | None] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """COMPLEX error-check: exact type accuracy (``None`` = no error), per-type accuracy (recall per true type),
    macro-F1 over the classes in the reference, the confusion matrix, and span localisation accuracy (share of
    true errors whose predicted span overlaps the injected one)."""
    n = _check_aligned(true_categories, predicted_categories)
    t = np.array([c or NONE_CLASS for c in true_categories], dtype=object)
    p = np.array([c or NONE_CLASS for c in predicted_categories], dtype=object)
    classes = [NONE_CLASS, *[c.value for c in REXVAL], "negation_flip"]
    classes = [c for c in classes if c in set(t) or c in set(p)]
    classes += sorted(set(p) - set(classes))  # e.g. "unparseable": every study stays in the matrix
    in_truth = [c for c in classes if c in set(t)]

    def macro(idx: np.ndarray) -> float:
        ti, pi = t[idx], p[idx]
        return float(
            np.mean(
                [
                    prf_from_counts(
                        ((ti == c) & (pi == c)).sum(), ((ti != c) & (pi == c)).sum(), ((ti == c) & (pi != c)).sum()
                    )[2]
                    for c in in_truth
                ]
            )
        )

    per_type = {}
    for c in in_truth:
        rows = np.flatnonzero(t == c)
        per_type[c] = bootstrap(
            lambda idx, rows=rows, c=c: float((p[rows[idx]] == c).mean()), len(rows), n_boot=n_boot, seed=seed
        ).as_dict()
    out: dict[str, Any] = {
        "accuracy": bootstrap(lambda idx: float((t[idx] == p[idx]).mean()), n, n_boot=n_boot, seed=seed).as_dict(),
        "macro_f1": bootstrap(macro, n, n_boot=n_boot, seed=seed).as_dict(),
        "per_type_accuracy": per_type,
        "confusion_matrix": {
            "labels": classes,
            "matrix": [[int(((t == a) & (p == b)).sum()) for b in classes] for a in classes],
        },
    }
    if true_spans is not None and predicted_spans is not None:
        _check_aligned(true_categories, true_spans, predicted_spans)
        errors = np.flatnonzero(t != NONE_CLASS)
        if errors.size:
            hit = np.array([_overlaps(true_spans[i], predicted_spans[i]) for i in errors], dtype=float)
            out["localization_accuracy"] = bootstrap(
                lambda idx: float(hit[idx].mean()), len(hit), n_boot=n_boot, seed=seed
            ).as_dict()
    return out


def judge_metrics(results: Sequence[JudgeResult], *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean errors per report (all, clinically significant), per ReXVal category and significance, with CIs."""
    n = _check_aligned(results)
    columns: dict[str, np.ndarray] = {
        "errors_per_report": np.array([r.count() for r in results], dtype=float),
        "significant_errors_per_report": np.array([r.count(significant=True) for r in results], dtype=float),
        "share_reports_without_significant_error": np.array(
            [r.count(significant=True) == 0 for r in results], dtype=float
        ),
    }
    out: dict[str, Any] = {
        k: bootstrap(lambda idx, v=v: float(v[idx].mean()), n, n_boot=n_boot, seed=seed).as_dict()
        for k, v in columns.items()
    }
    per_category = {}
    for c in REXVAL:
        sig = np.array([r.count(c, significant=True) for r in results], dtype=float)
        insig = np.array([r.count(c, significant=False) for r in results], dtype=float)
        per_category[c.value] = {
            "significant": bootstrap(lambda idx, v=sig: float(v[idx].mean()), n, n_boot=n_boot, seed=seed).as_dict(),
            "insignificant": bootstrap(
                lambda idx, v=insig: float(v[idx].mean()), n, n_boot=n_boot, seed=seed
            ).as_dict(),
        }
    out["per_category"] = per_category
    out["judge"] = results[0].judge
    return out
