"""The recipe step that fits a model's SIMPLE-check calibration on validation data (never on test data).

Text-only checks: the IU-Xray validation split, each study twice, as written and with one error of the
training injector's families (:func:`radlvlm.tasks.build_errorcheck_training_set`). Checks against the
image: NIH validation images with a report faithful to their labels and one with an error relative to them
(:func:`radlvlm.tasks.image_checks.image_check_reports`). For each, logistic models are fitted — the
model's yes/no log-odds alone, the rule checker's findings alone, both — and the one with the best
out-of-fold AUROC is kept (for text-only checks, one of those with the rule findings), with its operating
point (:func:`radlvlm.tasks.calibration.fit_calibration`). Text-only checks also weigh the learned
consistency scorer (:mod:`radlvlm.tasks.consistency_model`), fitted first on the IU-Xray TRAIN split with the
training injector, so the validation split it is calibrated on stays unseen by it. Their operating point is
chosen on the correct reports and the errors their own text reveals
(:func:`radlvlm.clinical_eval.text_evidence.text_reveals_error`): an error no reader of the text could find (a
device added to a normal study) cannot be caught by any text-only threshold, and choosing it over such errors
only lowers the bar for false alarms. The result is written next to the adapter, where the engines find it.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

from radlvlm.clinical_eval.text_evidence import edit_reveals_error
from radlvlm.errors import InputError
from radlvlm.reports.sections import with_comparison
from radlvlm.tasks.calibration import CALIBRATION_FILE, CheckCalibrations, fit_calibration
from radlvlm.tasks.consistency_model import CONSISTENCY_MODEL_FILE, ConsistencyModel, fit_consistency_model
from radlvlm.tasks.errorcheck import build_errorcheck_training_set
from radlvlm.tasks.image_checks import image_check_reports

__all__ = ["calibrate_checks"]


def _log_odds(engine: Any, reports: list[str], images: list[Any]) -> tuple[list[str], list[bool], list[float], int]:
    from radlvlm.tasks.checking import CheckRequest  # noqa: PLC0415 - torch (tasks.checking): only when a model is calibrated

    results = engine.run_all([CheckRequest(report=r, image=i) for r, i in zip(reports, images, strict=True)])
    kept = [(k, res.model_log_odds) for k, res in enumerate(results) if res.model_log_odds is not None]
    return [reports[k] for k, _ in kept], [k for k, _ in kept], [float(v) for _, v in kept], len(results) - len(kept)


def _choose(
    reports: list[str],
    labels: list[bool],
    odds: list[float],
    source: str,
    seed: int,
    *,
    keep_rules: bool,
    rule_floor: bool = False,
    consistency: ConsistencyModel | None = None,
    operating_rows: list[bool] | None = None,
) -> tuple[Any, dict]:
    """The best fit by out-of-fold AUROC; with ``keep_rules`` only fits that include the rule checker's findings
    may win (the model can then add to the rules but never replace them); with ``rule_floor`` the verdict also
    flags every report the rule checker flags; with ``consistency`` the learned scorer joins two more fits."""
    common: dict[str, Any] = {"source": source, "seed": seed, "rule_floor": rule_floor}
    if operating_rows is not None:
        common |= {"operating_rows": operating_rows, "operating_rows_are": "correct reports and text-revealed errors"}
    candidates = {
        "model": fit_calibration(reports, labels, model_log_odds=odds, use_rules=False, **common),
        "rules": fit_calibration(reports, labels, use_rules=True, **common),
        "model+rules": fit_calibration(reports, labels, model_log_odds=odds, use_rules=True, **common),
    }
    if consistency is not None:
        candidates["consistency+rules"] = fit_calibration(reports, labels, consistency=consistency, **common)
        candidates["model+consistency+rules"] = fit_calibration(
            reports, labels, model_log_odds=odds, consistency=consistency, **common
        )
    scores = {name: c.fitted_on for name, c in candidates.items()}
    eligible = [name for name in candidates if not keep_rules or "rules" in name]
    best = max(eligible, key=lambda name: candidates[name].fitted_on["out_of_fold_auroc"])
    return candidates[best], {"chosen": best, "candidates": scores}


def _fit_consistency(train_studies: list[dict[str, Any]], *, seed: int, limit: int | None) -> ConsistencyModel:
    """The learned consistency scorer, fitted on IU-Xray train reports: eight variants of each study, half with one
    error of the training injector's families, each with its COMPARISON section as written."""
    rows, _ = build_errorcheck_training_set(train_studies, seed=seed, variants_per_report=8)
    rows = rows[:: max(1, len(rows) // limit)][:limit] if limit else rows
    comparison = {str(r["uid"]): r.get("comparison") for r in train_studies}
    texts = [with_comparison(r["text"], comparison[str(r["uid"])]) for r in rows]
    return fit_consistency_model(
        texts, [bool(r["has_error"]) for r in rows], source="IU-Xray train, training injector, 8 variants", seed=seed
    )


def calibrate_checks(
    data: Path, model_dir: Path, adapter: Path | None, *, seed: int = 0, limit: int | None = None
) -> dict[str, Any]:
    """Fit and save ``check_calibration.json`` for the model at ``model_dir`` (+ ``adapter``); returns a summary."""
    from radlvlm.engine.torch_engine import TorchEngine  # noqa: PLC0415 - torch, transformers: only when a model is calibrated
    from radlvlm.model.pretrained import load_pretrained  # noqa: PLC0415 - torch, transformers: only when a model is calibrated
    from radlvlm.pipeline.task_engine import TaskEngine  # noqa: PLC0415 - torch (pipeline.task_engine): only when a model is calibrated
    from radlvlm.training.sources import IUXraySource, NIHSource, Record  # noqa: PLC0415 - torch, MONAI (training.sources): only when a model is calibrated

    for folder in ("iu_xray", "nih_cxr14"):
        if not (data / folder).is_dir():
            raise InputError(f"{data / folder}: missing (calibration needs the IU-Xray and NIH validation splits)")
    model, processor = load_pretrained(model_dir, adapter=adapter)
    # No calibration is loaded here: what is fitted is the model's raw score.
    engine = TaskEngine(TorchEngine(model, processor, model_id=model_dir.name, max_queue=100_000))
    summary: dict[str, Any] = {"seed": seed}
    target = (adapter or model_dir) / CALIBRATION_FILE
    try:
        iu_rows = list(IUXraySource(data / "iu_xray").rows())
        consistency = _fit_consistency([r for r in iu_rows if r.get("split") == "train"], seed=seed, limit=limit)
        consistency.save(target.parent / CONSISTENCY_MODEL_FILE)
        summary["consistency_model"] = consistency.fitted_on
        # Each validation study as written and once more with one error of the training injector's families.
        studies = [r for r in iu_rows if r.get("split") == "validation"]
        rows, _ = build_errorcheck_training_set(studies, seed=seed, variants_per_report=2)
        rows = rows[:: max(1, len(rows) // limit)][:limit] if limit else rows
        # Each report as a radiologist writes it: with its study's COMPARISON section, when it has one.
        comparison = {str(r["uid"]): r.get("comparison") for r in studies}
        texts = [with_comparison(r["text"], comparison[str(r["uid"])]) for r in rows]
        reports, kept, odds, skipped = _log_odds(engine, texts, [None] * len(rows))
        labels = [bool(rows[k]["has_error"]) for k in kept]
        revealed = [
            not rows[k]["has_error"] or edit_reveals_error(rows[k], comparison[str(rows[k]["uid"])]) for k in kept
        ]
        # A text-only check never drops the rule checker's findings, and flags whatever the rule checker flags
        # (the rule floor): the served check must not miss what the rules catch.
        text_only, summary["text_only"] = _choose(
            reports,
            labels,
            odds,
            "IU-Xray validation, training injector",
            seed,
            keep_rules=True,
            rule_floor=True,
            consistency=consistency,
            operating_rows=revealed,
        )
        summary["text_only"]["unanswerable"] = skipped

        images = [
            r
            for r in NIHSource(data / "nih_cxr14" / "manifest.jsonl").records()
            if isinstance(r, Record) and r.split == "validation" and r.image is not None
        ][:limit]
        pairs = [
            (r, checked)
            for r in images
            for checked in image_check_reports(r.labels, seed=zlib.crc32(f"{seed}:{r.study_id}".encode()))
        ]
        pixels = {r.study_id: r.image.load() for r in images}
        reports, kept, odds, skipped = _log_odds(
            engine, [c.text for _, c in pairs], [pixels[r.study_id] for r, _ in pairs]
        )
        labels = [pairs[k][1].has_error for k in kept]
        image, summary["image"] = _choose(
            reports, labels, odds, "NIH validation images, label-derived reports", seed, keep_rules=False
        )
        summary["image"]["unanswerable"] = skipped
    finally:
        engine.close()
    CheckCalibrations(text_only=text_only, image=image).save(target)
    summary["file"] = str(target)
    return json.loads(json.dumps(summary, default=str))
