"""Baselines every model must beat, written as ordinary predictions rows.

Report generation: the most common normal report of the training split, and nearest-neighbour retrieval of a
training report (by indication text with TF-IDF where a split has no images, as IU-Xray here; by an image
embedding the caller computes where it has images). Error-check: the majority class, and a rule-based
findings-vs-impression consistency checker built on the labeler.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from radlvlm.clinical_eval.predictions import errorcheck_reference_text, report_reference
from radlvlm.errors import EvaluationInputError
from radlvlm.reports import normalize_text
from radlvlm.reports.consistency import RULE_CHECKER_THRESHOLD, ConsistencyFinding, check_consistency
from radlvlm.reports.labeler import Label, label_report
from radlvlm.tasks.calibration import RULE_KIND_CATEGORY

__all__ = [
    "ConsistencyFinding",
    "check_consistency",
    "consistency_predictions",
    "majority_class_predictions",
    "most_common_normal_predictions",
    "most_common_normal_report",
    "nearest_neighbour_by_embedding",
    "nearest_neighbour_by_indication",
    "nearest_neighbour_image_predictions",
]


def _id(row: Mapping[str, Any]) -> str:
    return str(row.get("id", row.get("uid")))


def most_common_normal_report(train_rows: Sequence[Mapping[str, Any]]) -> str:
    """The most frequent report (findings + impression, compared after normalisation) among training reports
    the labeler calls "No Finding"; ties go to the report seen first.

    Raises:
        EvaluationInputError: no training report is normal.
    """
    counts: Counter[str] = Counter()
    first_text: dict[str, str] = {}
    for row in train_rows:
        text = report_reference(row)
        if not text:
            continue
        key = normalize_text(text, lowercase=True)
        if label_report(text).labels["No Finding"] is Label.POSITIVE:
            counts[key] += 1
            first_text.setdefault(key, normalize_text(text))
    if not counts:
        raise EvaluationInputError(
            "no normal report in the training rows: cannot build the most-common-normal baseline"
        )
    best = max(counts.items(), key=lambda kv: kv[1])[0]  # max keeps the first of equal counts
    return first_text[best]


def most_common_normal_predictions(
    train_rows: Sequence[Mapping[str, Any]], target_rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Predictions rows giving every target study the most common normal training report."""
    text = most_common_normal_report(train_rows)
    return [{"id": _id(r), "prediction": text, "model": "baseline:most-common-normal"} for r in target_rows]


_REDACTED = re.compile(r"\bX{2,}\b")


def _indication(row: Mapping[str, Any]) -> str:
    return _REDACTED.sub(" ", str(row.get("indication") or "")).strip()


def nearest_neighbour_by_indication(
    train_rows: Sequence[Mapping[str, Any]], target_rows: Sequence[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Retrieve, for each target study, the report of the training study with the most similar indication.

    TF-IDF (word 1-2-grams, sublinear tf) over training indications with IU's ``XXXX`` redactions removed;
    cosine similarity; ties go to the earliest training row. A target with no indication word the training
    vocabulary knows gets the most common normal report (counted in the returned ``fallbacks``).

    Returns:
        ``(rows, counts)`` with ``counts = {"retrieved", "fallback_most_common_normal"}``.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: PLC0415 - scikit-learn: only when the retrieval baseline runs

    pool = [r for r in train_rows if report_reference(r) and _indication(r)]
    if not pool:
        raise EvaluationInputError("no training row has both an indication and a report: cannot retrieve")
    vectorizer = TfidfVectorizer(lowercase=True, ngram_range=(1, 2), sublinear_tf=True)
    train_matrix = vectorizer.fit_transform([_indication(r) for r in pool])
    target_matrix = vectorizer.transform([_indication(r) for r in target_rows])
    similarity = (target_matrix @ train_matrix.T).toarray()  # rows are L2-normalised: dot = cosine
    fallback = most_common_normal_report(train_rows)
    rows, n_fallback = [], 0
    for i, target in enumerate(target_rows):
        if similarity.shape[1] and similarity[i].max() > 0:
            text = normalize_text(report_reference(pool[int(np.argmax(similarity[i]))]))
        else:
            text, n_fallback = fallback, n_fallback + 1
        rows.append({"id": _id(target), "prediction": text, "model": "baseline:nearest-neighbour-indication"})
    return rows, {"retrieved": len(rows) - n_fallback, "fallback_most_common_normal": n_fallback}


def nearest_neighbour_by_embedding(
    train_embeddings: np.ndarray, train_reports: Sequence[str], target_embeddings: np.ndarray
) -> list[str]:
    """Retrieve the training report whose image embedding is closest (cosine) to each target embedding.

    Args:
        train_embeddings (`np.ndarray`): ``(n_train, d)`` embeddings of training studies (e.g. the vision tower's
            pooled output, computed by the caller; nothing here loads a model).
        train_reports (`Sequence[str]`): the training reports, aligned with ``train_embeddings``.
        target_embeddings (`np.ndarray`): ``(n_target, d)`` embeddings of the studies to report.
    """
    a = np.asarray(train_embeddings, dtype=float)
    b = np.asarray(target_embeddings, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) != len(train_reports) or not len(a):
        raise EvaluationInputError(
            f"embedding shapes do not fit: train {a.shape} with {len(train_reports)} reports, target {b.shape}"
        )
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return [train_reports[int(j)] for j in np.argmax(b @ a.T, axis=1)]


def nearest_neighbour_image_predictions(
    train_rows: Sequence[Mapping[str, Any]],
    target_rows: Sequence[Mapping[str, Any]],
    ids: Sequence[str],
    embeddings: np.ndarray,
) -> list[dict[str, Any]]:
    """Predictions rows of image-embedding retrieval: each target gets the report of the training study whose
    embedding is closest. ``ids``/``embeddings`` hold one vector per study (train and target), computed by the
    caller (e.g. the vision tower's pooled output saved with ``numpy.savez``).

    Raises:
        EvaluationInputError: a target study has no embedding (the first ids are named), or no training study
            has both a report and an embedding.
    """
    index = {str(i): k for k, i in enumerate(ids)}
    vectors = np.asarray(embeddings, dtype=float)
    if vectors.ndim != 2 or len(vectors) != len(index):
        raise EvaluationInputError(f"embeddings must be (n_ids, d); got {vectors.shape} for {len(index)} ids")
    missing = [_id(r) for r in target_rows if _id(r) not in index]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise EvaluationInputError(f"{len(missing)} target studies have no embedding: {shown}")
    pool = [r for r in train_rows if report_reference(r) and _id(r) in index]
    if not pool:
        raise EvaluationInputError("no training study has both a report and an embedding")
    texts = nearest_neighbour_by_embedding(
        vectors[[index[_id(r)] for r in pool]],
        [normalize_text(report_reference(r)) for r in pool],
        vectors[[index[_id(r)] for r in target_rows]],
    )
    return [
        {"id": _id(r), "prediction": t, "model": "baseline:nearest-neighbour-image"}
        for r, t in zip(target_rows, texts, strict=True)
    ]


def majority_class_predictions(
    train_rows: Sequence[Mapping[str, Any]], target_rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Error-check majority class: the training split's most common answer (has-error, then category) for every
    target row, with the training error rate as confidence. Ties favour "no error"."""
    if not train_rows:
        raise EvaluationInputError("no training error-check rows for the majority-class baseline")
    rate = sum(bool(r["has_error"]) for r in train_rows) / len(train_rows)
    has_error = rate > 0.5
    category = None
    if has_error:
        category = Counter(r["category"] for r in train_rows if r["has_error"]).most_common(1)[0][0]
    answer = json.dumps({"has_error": has_error, "category": category, "span": None})
    return [
        {"id": _id(r), "prediction": answer, "confidence": rate, "model": "baseline:majority-class"}
        for r in target_rows
    ]


def consistency_predictions(
    target_rows: Sequence[Mapping[str, Any]], *, threshold: float = RULE_CHECKER_THRESHOLD
) -> list[dict[str, Any]]:
    """Error-check predictions of the consistency checker: error when the summed weights reach ``threshold``;
    the category is that of the heaviest inconsistency; confidence is ``1 - exp(-score)``."""
    rows = []
    for row in target_rows:
        found = check_consistency(errorcheck_reference_text(row))
        score = sum(f["weight"] for f in found)
        has_error = score >= threshold
        category = None
        if has_error:
            heaviest = max(found, key=lambda f: f["weight"])  # first of equal weights, in observation order
            category = RULE_KIND_CATEGORY[heaviest["kind"]].value
        rows.append(
            {
                "id": _id(row),
                "prediction": json.dumps({"has_error": has_error, "category": category, "span": None}),
                "confidence": 1 - math.exp(-score),
                "model": "baseline:consistency-checker",
            }
        )
    return rows
