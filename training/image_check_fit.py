"""Fitting the image check's fusion (:class:`radlvlm.tasks.image_check.ImageCheckFusion`) out of fold over train.

    radlvlm embedded image-check --data ../shared/data --classifier runs/findings/classifier --work runs/findings
        [--model DIR]

The fit set is NIH **train** radiographs, each read by the classifier's fold model that did not train on it
(``oof.pt``), paired with IU **train** reports that agree or disagree with it (:mod:`radlvlm.tasks.image_pairs`);
each report is used once each way. Features are the comparison's evidence (:func:`compare_report`) and, with a
model that checks text, the log-odds of its calibrated text probability. Two logistic fits are saved next to the
classifier (``image_check.json``): with the text score (for that model) and image-only (any other model). The
verdict threshold maximises Youden's J on the fit set. Validation and test images are not touched.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from radlvlm.errors import InputError
from radlvlm.model.default import choose_model, classifier_beside, embedded_model
from radlvlm.tasks import compose_report
from radlvlm.tasks.calibration import find_calibrations
from radlvlm.tasks.image_check import FEATURES, ImageCheckFusion, compare_report
from radlvlm.tasks.image_pairs import image_report_pairs, pair_image, pair_report

logger = logging.getLogger(__name__)

__all__ = ["fit_image_check", "iu_pair_reports", "nih_pair_images"]


def nih_pair_images(data: Path, split: str) -> dict[str, Any]:
    """NIH radiographs of ``split`` as pairing candidates, keyed by file path."""
    manifest = data / "nih_cxr14" / "manifest.jsonl"
    out = {}
    for line in manifest.read_text("utf-8").splitlines():
        row = json.loads(line)
        if row["split"] != split:
            continue
        path = str(manifest.parent / row["file"])
        image = pair_image(path, f"nih-{row['patient_id']}", row["labels"])
        if image is not None:
            out[path] = image
    return out


def iu_pair_reports(data: Path, split: str) -> list[Any]:
    """IU reports of ``split`` (findings and impression) as pairing candidates."""
    out = []
    for line in (data / "iu_xray" / f"{split}.jsonl").read_text("utf-8").splitlines():
        row = json.loads(line)
        text = compose_report(str(row.get("findings") or ""), str(row.get("impression") or ""))
        if not text:
            continue
        report = pair_report(f"iu-{row['uid']}", text, row.get("problems") or None)
        if report is not None:
            out.append(report)
    return out


def _fit(features: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - scikit-learn: only when the fusion is fitted
    from sklearn.metrics import roc_auc_score, roc_curve  # noqa: PLC0415 - scikit-learn: only when the fusion is fitted

    model = LogisticRegression(C=1.0, max_iter=1000).fit(features, labels)
    p = model.predict_proba(features)[:, 1]
    fpr, tpr, cut = roc_curve(labels, p)
    best = int(np.argmax(tpr - fpr))
    return {
        "weights": {name: round(float(w), 6) for name, w in zip(names, model.coef_[0], strict=True)},
        "bias": round(float(model.intercept_[0]), 6),
        "threshold": float(np.clip(cut[best], 1e-3, 1 - 1e-3)),
        "auroc": round(float(roc_auc_score(labels, p)), 4),
        "sensitivity": round(float(tpr[best]), 4),
        "specificity": round(float(1 - fpr[best]), 4),
    }


def fit_image_check(data: Path, classifier_work: Path, *, model: Path | None = None, seed: int = 0) -> dict[str, Any]:
    """Fit and save ``classifier_work/classifier/image_check.json``; returns the fit's figures."""
    from radlvlm.training.findings import out_of_fold_findings  # noqa: PLC0415 - torch, MONAI (training.findings): only when the fusion is fitted

    oof = out_of_fold_findings(classifier_work)
    images = {path: image for path, image in nih_pair_images(data, "train").items() if path in oof}
    reports = iu_pair_reports(data, "train")
    pairs = image_report_pairs(list(images.values()), reports, seed=seed)
    if len(pairs) < 50:
        raise InputError(f"only {len(pairs)} image/report pairs could be built: too few to fit the image check")
    comparisons = [compare_report(pair.report.text, oof[pair.image.id]) for pair in pairs]
    image_names = [name for name in FEATURES if name != "text"]
    image_x = np.array([[c.features[name] for name in image_names] for c in comparisons])
    labels = np.array([pair.has_error for pair in pairs], dtype=int)
    image_only = _fit(image_x, labels, image_names)
    kinds = {kind: sum(p.kind == kind for p in pairs) for kind in ("agree", "normal_vs_abnormal", "single_finding")}
    fitted_on = {
        "pairs": len(pairs),
        "kinds": kinds,
        "reports": len({p.report.id for p in pairs}),
        "images": len({p.image.id for p in pairs}),
        "source": "NIH train radiographs (out-of-fold classifier readings) x IU train reports",
        "seed": seed,
    }
    fusion = ImageCheckFusion(
        weights=image_only["weights"],
        bias=image_only["bias"],
        threshold=image_only["threshold"],
        fitted_on={**fitted_on, **{k: image_only[k] for k in ("auroc", "sensitivity", "specificity")}},
    )
    summary: dict[str, Any] = {"image_only": image_only, "fitted_on": fitted_on}
    if model is not None:
        text_p, model_id = _text_probabilities(model, sorted({p.report.text for p in pairs}))
        usable = [i for i, p in enumerate(pairs) if text_p.get(p.report.text) is not None]
        logit = lambda q: float(np.log(max(q, 1e-4) / max(1 - q, 1e-4)))  # noqa: E731
        x = np.array(
            [[logit(text_p[pairs[i].report.text])] + [comparisons[i].features[n] for n in image_names] for i in usable]
        )
        with_text = _fit(x, labels[usable], ["text", *image_names])
        summary["with_text"] = {**with_text, "model": model_id, "pairs": len(usable)}
        fusion = ImageCheckFusion(
            weights=with_text["weights"],
            bias=with_text["bias"],
            threshold=with_text["threshold"],
            text_model=model_id,
            image_only=fusion,
            fitted_on={**fitted_on, **{k: with_text[k] for k in ("auroc", "sensitivity", "specificity")}},
        )
    fusion.save(classifier_work / "classifier")
    installed = classifier_beside(choose_model(model, None)) if model is not None else None
    if installed is not None:
        fusion.save(installed)  # the installed classifier (findings/, or base/ when it is the tower) of that model
    (classifier_work / "image_check_fit.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _text_probabilities(model: Path, reports: list[str]) -> tuple[dict[str, float | None], str]:
    """The model's calibrated text-check probability of each report (None where it cannot check one)."""
    from radlvlm.engine.loading import load_engine  # noqa: PLC0415 - torch, transformers: only when a model scores the reports
    from radlvlm.pipeline.task_engine import TaskEngine  # noqa: PLC0415 - torch (pipeline.task_engine): only when a model scores the reports
    from radlvlm.tasks.checking import CheckRequest  # noqa: PLC0415 - torch (tasks.checking): only when a model scores the reports

    choice = choose_model(model, None) if (model / "config.json").is_file() else _shipped_layout(model)
    loaded, _ = load_engine("torch", choice.base, adapter_dir=choice.adapter, model_id=choice.model_id, max_queue=10**6)
    engine = TaskEngine(loaded, find_calibrations(choice.base, choice.adapter))  # verdicts as users get them
    try:
        results = engine.run_all([CheckRequest(report=text) for text in reports])
    finally:
        engine.close()
    out = {text: (r.error_probability if r.answer_valid else None) for text, r in zip(reports, results, strict=True)}
    return out, choice.model_id


def _shipped_layout(root: Path) -> Any:
    return embedded_model(root)
