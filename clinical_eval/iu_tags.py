"""Agreement of the rule-based labeler with IU-Xray's own MeSH tags (an honest external check).

IU-Xray's MeSH tags were assigned by human indexers from the report text, so they are an independent
reading of the same text; the mapping to CheXpert observations is data in
``clinical_eval/data/iu_mesh_to_chexpert.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

from radlvlm.clinical_eval.stats import cohen_kappa
from radlvlm.reports.labeler import CHEXPERT_14, LabeledReport, label_report

__all__ = ["iu_tag_agreement", "iu_tag_labels"]


@cache
def _rules() -> list[dict[str, Any]]:
    text = resources.files("radlvlm.clinical_eval").joinpath("data/iu_mesh_to_chexpert.json").read_text("utf-8")
    return json.loads(text)["rules"]


def iu_tag_labels(mesh: Iterable[str]) -> set[str]:
    """CheXpert observations named by a study's IU MeSH tags (``"Opacity/lung/base/left"`` → Lung Opacity)."""
    out: set[str] = set()
    for tag in mesh:
        term, *qualifiers = [p.strip() for p in str(tag).split("/")]
        quals = {q.lower() for q in qualifiers}
        for rule in _rules():
            if term == rule["term"] and all(r in quals for r in rule.get("requires", [])):
                out.add(rule["label"])
    return out


def iu_tag_agreement(rows: Iterable[Mapping[str, Any]], *, uncertain_as_positive: bool = False) -> dict[str, Any]:
    """Per-observation agreement between the labeler (on findings + impression) and IU MeSH tags.

    Args:
        rows (`Iterable[Mapping]`): IU-Xray manifest rows (``findings``, ``impression``, ``mesh``).
        uncertain_as_positive (`bool`, defaults to `False`): count the labeler's uncertain as positive.

    Returns:
        ``{"n_reports", "per_label": {label: {n_tag, n_labeler, tp, precision, recall, f1, kappa, accuracy}},
        "micro": {...}, "macro_f1", "macro_kappa"}``; precision/recall take the tags as the reference.
    """
    pairs: list[tuple[LabeledReport, set[str]]] = []
    for row in rows:
        text = f"{row.get('findings') or ''} {row.get('impression') or ''}".strip()
        pairs.append((label_report(text), iu_tag_labels(row.get("mesh") or [])))
    per_label: dict[str, dict[str, float | int]] = {}
    total_tp = total_fp = total_fn = 0
    for name in CHEXPERT_14:
        truth = [int(name in tags) for _, tags in pairs]
        pred = [int(name in lab.positive(uncertain_as_positive=uncertain_as_positive)) for lab, _ in pairs]
        tp = sum(t and p for t, p in zip(truth, pred, strict=True))
        fp = sum(p and not t for t, p in zip(truth, pred, strict=True))
        fn = sum(t and not p for t, p in zip(truth, pred, strict=True))
        total_tp, total_fp, total_fn = total_tp + tp, total_fp + fp, total_fn + fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        per_label[name] = {
            "n_tag": sum(truth),
            "n_labeler": sum(pred),
            "tp": tp,
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "kappa": cohen_kappa(truth, pred),
            "accuracy": sum(t == p for t, p in zip(truth, pred, strict=True)) / max(len(pairs), 1),
        }
    micro_p = total_tp / (total_tp + total_fp) if total_tp + total_fp else 0.0
    micro_r = total_tp / (total_tp + total_fn) if total_tp + total_fn else 0.0
    scored = [v for v in per_label.values() if v["n_tag"] > 0]
    return {
        "n_reports": len(pairs),
        "uncertain_as_positive": uncertain_as_positive,
        "per_label": per_label,
        "micro": {
            "precision": micro_p,
            "recall": micro_r,
            "f1": 2 * micro_p * micro_r / (micro_p + micro_r) if micro_p + micro_r else 0.0,
        },
        "macro_f1": sum(v["f1"] for v in scored) / len(scored) if scored else 0.0,
        "macro_kappa": sum(v["kappa"] for v in scored) / len(scored) if scored else 0.0,
    }
