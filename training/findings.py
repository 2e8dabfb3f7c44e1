"""Training the finding classifier (:class:`radlvlm.model.findings.FindingClassifier`) from labelled radiographs.

    radlvlm embedded findings --data ../shared/data --work runs/findings [--folds 3] [--steps 700]

Data rules (issue 33): training uses the train splits only (NIH ChestX-ray14 train, COVID-19 collection train);
every calibration and threshold is fitted on **out-of-fold** predictions over train (folds grouped by patient),
so the validation split stays a check and the test split is touched once, by the evaluation study.

- NIH images: all fifteen labels known (``Abnormal`` = not "No Finding").
- COVID-19 collection: laterals and rows still filed "todo" are dropped; "No Finding" images are negative for
  every label; other rows are ``Abnormal``, ``Pneumonia`` when the diagnosis is an infectious pneumonia, and
  ``Infiltration``/``Consolidation`` where their notes describe an opacity/consolidation on the radiograph;
  every label their notes say nothing about is masked out of the loss, not counted negative.
- Shortcut: stored size predicts labels (pneumonia images are 512 px, pneumothorax/emphysema/mass 64 px
  thumbnails). Half the batches' images are sent through a 64 px round trip, so a thumbnail's look carries no
  label; the evaluation reports every AUROC within each stored size.

Each fold trains one residual CNN; the shipped classifier is their ensemble (averaged logits), calibrated per label
by Platt scaling on the out-of-fold logits. Resumable: a finished fold leaves ``fold{k}/done.json``; an
interrupted one resumes from ``fold{k}/checkpoint.pt`` (written every ``checkpoint_every`` steps).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import binomtest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve
from sklearn.model_selection import GroupKFold

from radlvlm.errors import InputError
from radlvlm.imaging import read_image_file
from radlvlm.model.default import FINDINGS_DIR
from radlvlm.model.findings import (
    ABNORMAL,
    FINDING_LABELS,
    FindingClassifier,
    FindingClassifierConfig,
    ImageFindings,
)
from radlvlm.tasks.image_check import IMAGE_CHECK_FILE
from radlvlm.training.pretrain import VisionSettings, augment_batch, load_image_tensors

logger = logging.getLogger(__name__)

__all__ = [
    "ClassifierExample",
    "FindingRecipe",
    "classifier_examples",
    "out_of_fold_findings",
    "train_finding_classifier",
]

# COVID-19 collection diagnoses that are an infectious or aspiration pneumonia (the NIH "Pneumonia" label).
_COVID_PNEUMONIA = re.compile(
    r"covid|pneumo(?!thorax)|strepto|klebsiella|mycoplasma|legionella|lipoid|varicella|e\.coli|bacterial|"
    r"influenza|sars|mers|chlamydophila|staphylococcus",
    re.IGNORECASE,
)
_COVID_OPACITY = re.compile(r"opacit|infiltrat|ground[- ]glass|air[- ]?space", re.IGNORECASE)
_COVID_CONSOLIDATION = re.compile(r"consolidat", re.IGNORECASE)
_LATERAL_VIEWS = {"L", "LL", "LATERAL", "RL"}


@dataclass(frozen=True)
class ClassifierExample:
    """One radiograph: where it is, its label vector over :data:`FINDING_LABELS`, which labels are known, its
    patient (folds and CIs group by it), split, source and stored size (``64``, ``512`` or ``other``)."""

    path: str
    labels: tuple[float, ...]
    known: tuple[float, ...]
    patient: str
    split: str
    source: str
    stored_size: str


def _size_bucket(width: int, height: int) -> str:
    side = max(width, height)
    return "64" if side <= 64 else "512" if side >= 512 else "other"


def classifier_examples(data: Path, *, covid: bool = True) -> list[ClassifierExample]:
    """Every usable radiograph of the NIH and (with ``covid``) COVID-19 manifests under ``data``, all splits."""
    out = []
    nih = data / "nih_cxr14" / "manifest.jsonl"
    if not nih.is_file():
        raise InputError(f"{nih}: the NIH ChestX-ray14 manifest is missing")
    for line in nih.read_text("utf-8").splitlines():
        row = json.loads(line)
        path = nih.parent / row["file"]
        if not path.is_file() or str(row.get("view", "")).upper() in _LATERAL_VIEWS:
            continue
        present = {label for label in row["labels"] if label != "No Finding"}
        vector = [float(bool(present))] + [float(label in present) for label in FINDING_LABELS[1:]]
        width, height = row.get("stored_size") or (0, 0)
        out.append(
            ClassifierExample(
                str(path),
                tuple(vector),
                (1.0,) * len(FINDING_LABELS),
                f"nih-{row['patient_id']}",
                row["split"],
                "nih",
                _size_bucket(int(width), int(height)),
            )
        )
    covid_manifest = data / "covid_chestxray" / "manifest.jsonl"
    if covid and covid_manifest.is_file():
        seen: set[str] = set()
        for line in covid_manifest.read_text("utf-8").splitlines():
            row = json.loads(line)
            finding = str(row.get("finding") or "").strip()
            view = str(row.get("view") or "").strip().upper()
            path = covid_manifest.parent / row["image_file"]
            if row["image_file"] in seen or view in _LATERAL_VIEWS or finding.lower() in ("todo", ""):
                continue
            if not path.is_file():
                continue
            seen.add(row["image_file"])
            labels = [0.0] * len(FINDING_LABELS)
            known = [0.0] * len(FINDING_LABELS)
            if finding.lower() == "no finding":
                known = [1.0] * len(FINDING_LABELS)
            else:
                notes = f"{row.get('clinical_notes') or ''} {row.get('other_notes') or ''}"
                labels[0] = known[0] = 1.0
                for label, rule, text in (
                    ("Pneumonia", _COVID_PNEUMONIA, finding),
                    ("Infiltration", _COVID_OPACITY, notes),
                    ("Consolidation", _COVID_CONSOLIDATION, notes),
                ):
                    if rule.search(text):
                        j = FINDING_LABELS.index(label)
                        labels[j] = known[j] = 1.0
            out.append(
                ClassifierExample(
                    str(path),
                    tuple(labels),
                    tuple(known),
                    f"covid-{row['patientid']}",
                    row["split"],
                    "covid",
                    _size_bucket(int(row.get("width") or 0), int(row.get("height") or 0)),
                )
            )
    return out


@dataclass(frozen=True)
class FindingRecipe:
    """How the classifier is trained.

    Args:
        folds (int, default 3): patient-grouped folds over train; the ensemble has one model per fold.
        steps (int, default 1000): optimiser steps per fold (~41 epochs of a fold's images; 1,500 steps at 128 px
            and weight decay 1e-4 overfitted: out-of-fold abnormal AUROC 0.689 against 0.703 at 700 steps, 160 px).
        batch_size (int, default 48), learning_rate (float, default 2e-3), weight_decay (float, default 0.05).
        image_size (int, default 288: out of fold over NIH train, against 224 px, abnormal 0.720 against 0.702,
            pneumonia 0.907 against 0.833, pleural thickening 0.746 against 0.677; 224 px had beaten 160 px).
        low_resolution_p (float, default 0.5): share of images sent through a 64 px round trip in training (the
            size shortcut).
        max_pos_weight (float, default 10.0): cap of the positive-class weight (1 - p) / p per label.
        min_positive_patients (int, default 10), min_auroc (float, default 0.65): a label is *validated* (its
            accuracy is known well enough to act on) when its out-of-fold AUROC over NIH train reaches ``min_auroc``
            with at least this many positive patients.
        min_precision (float, default 0.25): a validated label is *called* present (stated in drafts, compared with
            reports by the image check) only at thresholds where at least this share of the out-of-fold calls were
            right, over at least ``MIN_CALLS`` calls; the F1-best such threshold is used. A label no threshold
            reaches has no threshold: every answer still gives its probability, but it is never stated and an
            image check lists it as not checked. At their F1-best thresholds pleural thickening, emphysema and
            fibrosis were called on 16-33% of NIH train radiographs and right on 5-6% of them.
        abnormal_specificity (float, default 0.70): the Abnormal gate (normal vs abnormal draft) is the most
            sensitive threshold whose specificity on NIH validation is at least this **with 95% confidence** (the
            one-sided Wilson bound over the normals counted). A gate chosen at the point estimate (0.75 on 48
            normals, release 0.9) gave 0.65 on unseen patients.
        covid (bool, default True): train on the COVID-19 collection's train split too.
        seed (int, default 0), checkpoint_every (int, default 250).
    """

    folds: int = 3
    steps: int = 1000
    batch_size: int = 48
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    image_size: int = 288
    hidden_sizes: tuple[int, ...] = (32, 64, 128, 256)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    low_resolution_p: float = 0.5
    max_pos_weight: float = 10.0
    min_positive_patients: int = 10
    min_auroc: float = 0.65
    min_precision: float = 0.25
    abnormal_specificity: float = 0.70
    covid: bool = True
    seed: int = 0
    checkpoint_every: int = 250
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.folds < 2 or self.steps < 1 or self.batch_size < 2:
            raise InputError("folds must be >= 2, steps >= 1 and batch_size >= 2")
        if not 0 < self.abnormal_specificity < 1 or not 0 <= self.low_resolution_p <= 1:
            raise InputError("abnormal_specificity must be in (0, 1) and low_resolution_p in [0, 1]")
        if not 0 <= self.min_precision < 1:
            raise InputError("min_precision must be in [0, 1)")

    def model_config(self, **kwargs: Any) -> FindingClassifierConfig:
        return FindingClassifierConfig(
            image_size=self.image_size, hidden_sizes=self.hidden_sizes, depths=self.depths, **kwargs
        )


def _fold_of_patients(examples: Sequence[ClassifierExample], folds: int, seed: int) -> list[int]:
    """Patient-grouped fold index per training example (sklearn's GroupKFold over a seeded patient order)."""
    patients = sorted({e.patient for e in examples})
    order = np.random.default_rng(seed).permutation(len(patients))
    rank = {patients[i]: r for r, i in enumerate(order)}
    groups = [rank[e.patient] for e in examples]
    fold = [0] * len(examples)
    splitter = GroupKFold(n_splits=folds)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(examples)), groups=groups)):
        for i in held:
            fold[i] = k
    return fold


def _train_fold(
    recipe: FindingRecipe,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    known: torch.Tensor,
    out: Path,
    fold: int,
) -> FindingClassifier:
    """Train one model on the given rows; resumes from ``out/checkpoint.pt``."""
    torch.manual_seed(recipe.seed + fold)
    model = FindingClassifier(recipe.model_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.learning_rate, total_steps=recipe.steps, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(recipe.seed * 1000 + fold)
    step = 0
    checkpoint = out / "checkpoint.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        step = state["step"]
        logger.info("fold %d: resuming at step %d", fold, step)
    positives = (labels * known).sum(0)
    counted = known.sum(0).clamp(min=1)
    prevalence = (positives / counted).clamp(1e-3, 1 - 1e-3)
    pos_weight = ((1 - prevalence) / prevalence).clamp(max=recipe.max_pos_weight)
    augment = VisionSettings(low_resolution_p=recipe.low_resolution_p, low_resolution=64)
    model.train()
    started, losses = time.perf_counter(), []
    while step < recipe.steps:
        index = torch.randint(len(pixels), (recipe.batch_size,), generator=generator)
        batch = augment_batch(pixels[index].float(), augment, generator)
        logits = model(batch)
        loss = F.binary_cross_entropy_with_logits(logits, labels[index], pos_weight=pos_weight, reduction="none")
        loss = (loss * known[index]).sum() / known[index].sum().clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == recipe.steps:
            rate = (time.perf_counter() - started) / max(1, len(losses))
            logger.info(
                "fold %d step %d/%d loss %.4f (%.2f s/step)", fold, step, recipe.steps, np.mean(losses[-50:]), rate
            )
        if step % recipe.checkpoint_every == 0 and step < recipe.steps:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "step": step,
                },
                checkpoint,
            )
    model.eval()
    return model


@torch.inference_mode()
def _logits(model: FindingClassifier, pixels: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    model.eval()
    return torch.cat([model(pixels[i : i + batch_size].float()) for i in range(0, len(pixels), batch_size)])


def _auroc(truth: np.ndarray, score: np.ndarray) -> float | None:
    if truth.min() == truth.max():
        return None
    return float(roc_auc_score(truth, score))


MIN_CALLS = 10  # a precision measured over fewer calls is luck


def _precise_threshold(
    truth: np.ndarray, probability: np.ndarray, min_precision: float
) -> tuple[float, float, float] | None:
    """The F1-best threshold among those whose calls (probability >= threshold, at least ``MIN_CALLS`` of them)
    are right at least ``min_precision`` of the time → (threshold, F1, precision); None when none is."""
    best: tuple[float, float, float] | None = None
    positives = int((truth > 0).sum())
    for t in np.unique(np.round(probability, 4)):
        calls = probability >= t
        n = int(calls.sum())
        if n < MIN_CALLS:
            continue
        hits = int((calls & (truth > 0)).sum())
        f1 = 2 * hits / (n + positives)
        if hits / n >= min_precision and (best is None or f1 > best[1]):
            best = (float(np.clip(t, 1e-4, 1 - 1e-4)), f1, hits / n)
    return best


def most_sensitive_gate(truth: np.ndarray, probability: np.ndarray, specificity: float) -> dict[str, float]:
    """The most sensitive threshold whose specificity is at least ``specificity`` with 95% confidence: the
    one-sided lower Wilson bound over the normals counted (scipy's ``binomtest``), so a gate chosen on a few dozen
    normals keeps its promise on unseen patients rather than only on average."""
    normals = int((truth == 0).sum())
    fpr, tpr, cut = roc_curve(truth, probability)
    kept = np.round((1 - fpr) * normals).astype(int)
    bounds = [binomtest(int(k), normals).proportion_ci(confidence_level=0.90, method="wilson").low for k in kept]
    # roc_curve's first threshold calls nothing abnormal (specificity 1); sensitivity rises along the curve, so
    # the last threshold whose bound passes is the most sensitive.
    chosen = max((i for i, bound in enumerate(bounds) if bound >= specificity), default=0)
    return {
        "threshold": round(float(np.clip(cut[chosen], 1e-4, 1 - 1e-4)), 6),
        "sensitivity": round(float(tpr[chosen]), 4),
        "specificity": round(float(1 - fpr[chosen]), 4),
        "specificity_lower_95": round(float(bounds[chosen]), 4),
    }


def fit_calibration(recipe: FindingRecipe, examples: Sequence[ClassifierExample], oof: torch.Tensor) -> dict[str, Any]:
    """Platt scaling, thresholds and the validated labels, all from out-of-fold logits over train."""
    labels = np.array([e.labels for e in examples])
    known = np.array([e.known for e in examples])
    is_nih = np.array([e.source == "nih" for e in examples])
    patients = np.array([e.patient for e in examples])
    logits = oof.numpy()
    calibration: dict[str, list[float]] = {}
    thresholds: dict[str, float] = {}
    validated: dict[str, dict[str, Any]] = {}
    figures: dict[str, Any] = {}
    for j, label in enumerate(FINDING_LABELS):
        rows = known[:, j] > 0
        y, x = labels[rows, j], logits[rows, j]
        positive_patients = len(set(patients[rows][y > 0]))
        entry: dict[str, Any] = {"positives": int(y.sum()), "positive_patients": positive_patients}
        if y.min() == y.max() or y.sum() < 3:
            figures[label] = entry
            continue
        platt = LogisticRegression(C=100.0).fit(x.reshape(-1, 1), y)
        a, b = float(platt.coef_[0, 0]), float(platt.intercept_[0])
        calibration[label] = [round(a, 6), round(b, 6)]
        p = 1 / (1 + np.exp(-(a * x + b)))
        nih_rows = is_nih[rows]
        nih_y, nih_p = y[nih_rows], p[nih_rows]
        nih_positive_patients = len(set(patients[rows][nih_rows][nih_y > 0]))
        auroc = _auroc(nih_y, nih_p) if nih_y.size else None
        entry.update(
            {
                "oof_auroc_nih": None if auroc is None else round(auroc, 4),
                "nih_positive_patients": nih_positive_patients,
            }
        )
        threshold: float | None
        if label == ABNORMAL:
            gate = most_sensitive_gate(nih_y, nih_p, recipe.abnormal_specificity)
            threshold = gate["threshold"]
            entry.update(
                {
                    "rule": f"out-of-fold NIH specificity >= {recipe.abnormal_specificity} with 95% confidence",
                    "oof_sensitivity": gate["sensitivity"],
                    "oof_specificity": gate["specificity"],
                }
            )
        else:
            called = _precise_threshold(y, p, recipe.min_precision)
            if called is None:
                threshold = None
                entry["rule"] = (
                    f"never called present: no out-of-fold threshold with >= {MIN_CALLS} calls is right "
                    f">= {recipe.min_precision} of the time"
                )
            else:
                threshold, f1, precision = called
                entry.update(
                    {
                        "rule": f"F1-best out of fold among thresholds right >= {recipe.min_precision} of the time",
                        "oof_f1": round(f1, 4),
                        "oof_precision": round(precision, 4),
                    }
                )
        if threshold is not None:
            thresholds[label] = round(threshold, 6)
            entry["threshold"] = thresholds[label]
        if auroc is not None and auroc >= recipe.min_auroc and nih_positive_patients >= recipe.min_positive_patients:
            validated[label] = {"oof_auroc_nih": round(auroc, 4), "nih_positive_patients": nih_positive_patients}
        figures[label] = entry
    return {"calibration": calibration, "thresholds": thresholds, "validated": validated, "figures": figures}


def abnormal_threshold_on_validation(
    model: FindingClassifier, examples: Sequence[ClassifierExample], pixels: torch.Tensor, specificity: float
) -> dict[str, Any] | None:
    """The Abnormal gate of the shipped ensemble, chosen on the NIH **validation** radiographs: the most sensitive
    threshold whose specificity there is at least ``specificity`` with 95% confidence (:func:`most_sensitive_gate`).

    Why not out of fold: each fold model saw two thirds of train and the ensemble averages three of them, so the
    ensemble's scores sit lower on normal radiographs than a fold model's; a gate fitted on fold models reads far
    more specific (and less sensitive) on unseen patients than it was chosen to be. None when validation has too
    few normal or abnormal NIH radiographs (fewer than 10 of either) to choose on.
    """
    rows = [i for i, e in enumerate(examples) if e.source == "nih"]
    y = np.array([examples[i].labels[0] for i in rows])
    if min(int(y.sum()), int((1 - y).sum())) < 10:
        return None
    p = model.probabilities(_logits(model, pixels[rows])).numpy()[:, 0]
    gate = most_sensitive_gate(y, p, specificity)
    return {
        "threshold": gate["threshold"],
        "rule": f"NIH validation specificity >= {specificity} with 95% confidence (the ensemble's own scores)",
        "validation_sensitivity": gate["sensitivity"],
        "validation_specificity": gate["specificity"],
        "validation_specificity_lower_95": gate["specificity_lower_95"],
        "validation_images": len(rows),
    }


def evaluate_split(
    model: FindingClassifier, examples: Sequence[ClassifierExample], pixels: torch.Tensor
) -> dict[str, Any]:
    """AUROC of Abnormal and each label (overall and per stored size), with positives, and the Brier score (the
    evaluation study reports the expected calibration error per stored size)."""
    probabilities = model.probabilities(_logits(model, pixels)).numpy()
    labels = np.array([e.labels for e in examples])
    known = np.array([e.known for e in examples])
    sizes = np.array([e.stored_size for e in examples])
    patients = np.array([e.patient for e in examples])
    out: dict[str, Any] = {"n": len(examples)}
    for j, label in enumerate(FINDING_LABELS):
        rows = known[:, j] > 0
        entry: dict[str, Any] = {}
        for bucket in ("all", "512", "64"):
            chosen = rows if bucket == "all" else rows & (sizes == bucket)
            y, p = labels[chosen, j], probabilities[chosen, j]
            if y.size == 0:
                continue
            auc = _auroc(y, p)
            entry[bucket] = {
                "n": int(y.size),
                "positives": int(y.sum()),
                "positive_patients": len(set(patients[chosen][y > 0])),
                "auroc": None if auc is None else round(auc, 4),
                "brier": round(float(brier_score_loss(y, p)), 4),
            }
        out[label] = entry
    return out


def train_finding_classifier(data: Path, work: Path, recipe: FindingRecipe) -> dict[str, Any]:
    """Train the folds, fit calibration out of fold, assemble the ensemble into ``work/classifier``."""
    work.mkdir(parents=True, exist_ok=True)
    examples = classifier_examples(data, covid=recipe.covid)
    train = [e for e in examples if e.split == "train"]
    validation = [e for e in examples if e.split == "validation"]
    logger.info("examples: %d train, %d validation", len(train), len(validation))
    cache = work / f"pixels_{recipe.image_size}.pt"
    if cache.is_file():
        stored = torch.load(cache)
        if stored["paths"] != [e.path for e in examples]:
            stored = None
    else:
        stored = None
    if stored is None:
        loaders = [_loader(e.path) for e in examples]
        stored = {"paths": [e.path for e in examples], "pixels": load_image_tensors(loaders, recipe.image_size)}
        torch.save(stored, cache)
    pixels_all = stored["pixels"]
    index = {e.path: i for i, e in enumerate(examples)}
    train_pixels = pixels_all[[index[e.path] for e in train]]
    labels = torch.tensor([e.labels for e in train])
    known = torch.tensor([e.known for e in train])
    fold_of = _fold_of_patients(train, recipe.folds, recipe.seed)
    oof = torch.zeros(len(train), len(FINDING_LABELS))
    members = []
    seconds: dict[str, float] = {}
    for k in range(recipe.folds):
        out = work / f"fold{k}"
        out.mkdir(exist_ok=True)
        rows = [i for i, f in enumerate(fold_of) if f != k]
        held = [i for i, f in enumerate(fold_of) if f == k]
        if (out / "done.json").is_file():
            model = FindingClassifier.from_pretrained(out / "model")
            seconds[f"fold{k}"] = json.loads((out / "done.json").read_text())["seconds"]
        else:
            started = time.perf_counter()
            model = _train_fold(recipe, train_pixels[rows], labels[rows], known[rows], out, k)
            model.save_pretrained(out / "model")
            seconds[f"fold{k}"] = round(time.perf_counter() - started, 1)
            (out / "done.json").write_text(json.dumps({"seconds": seconds[f"fold{k}"], "steps": recipe.steps}))
            (out / "checkpoint.pt").unlink(missing_ok=True)
        oof[held] = _logits(model, train_pixels[held])
        members.append(model)
    torch.save({"paths": [e.path for e in train], "logits": oof}, work / "oof.pt")
    calibrated = fit_calibration(recipe, train, oof)
    config = recipe.model_config(
        ensemble=recipe.folds,
        calibration=calibrated["calibration"],
        thresholds=calibrated["thresholds"],
        validated=calibrated["validated"],
    )
    ensemble = FindingClassifier(config)
    for k, member in enumerate(members):
        ensemble.members[k].load_state_dict(member.members[0].state_dict())
    ensemble.eval()
    val_pixels = pixels_all[[index[e.path] for e in validation]]
    gate = abnormal_threshold_on_validation(ensemble, validation, val_pixels, recipe.abnormal_specificity)
    if gate is not None:
        ensemble.config.thresholds[ABNORMAL] = gate["threshold"]
        calibrated["figures"][ABNORMAL]["validation_gate"] = gate
    target = work / "classifier"
    ensemble.save_pretrained(target)
    summary = {
        "recipe": asdict(recipe),
        "examples": {"train": len(train), "validation": len(validation)},
        "train_by_source": {s: sum(e.source == s for e in train) for s in ("nih", "covid")},
        "out_of_fold": calibrated["figures"],
        "validated": calibrated["validated"],
        "validation": evaluate_split(ensemble, validation, val_pixels),
        "seconds": seconds,
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def out_of_fold_findings(work: Path) -> dict[str, ImageFindings]:
    """The trained ensemble's reading of each training image by the fold model that did not train on it
    (``work/oof.pt``, written by :func:`train_finding_classifier`), keyed by image path: what a writer trained on
    these images is given as their findings, so it learns from the classifier's real mistakes."""
    stored = torch.load(work / "oof.pt")
    classifier = FindingClassifier.from_pretrained(work / "classifier")
    found = classifier.read(classifier.probabilities(stored["logits"]), model_id="out-of-fold")
    return dict(zip(stored["paths"], found, strict=True))


def _loader(path: str) -> Any:
    def load() -> torch.Tensor:
        return torch.from_numpy(read_image_file(path).array)

    return load


def install_classifier(classifier: Path, model_root: Path) -> Path:
    """Install a trained classifier (``WORK/classifier``) beside a model as ``MODEL_ROOT/findings``, in float16
    (half the bytes; the runtime reads it back in float32), with its image-check fusion when fitted."""
    model = FindingClassifier.from_pretrained(classifier, dtype=torch.float32)
    target = model_root / FINDINGS_DIR
    staging = model_root / f".{FINDINGS_DIR}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    model.half().save_pretrained(staging)
    if (classifier / IMAGE_CHECK_FILE).is_file():
        shutil.copy2(classifier / IMAGE_CHECK_FILE, staging / IMAGE_CHECK_FILE)
    for path in staging.iterdir():  # package data: readable by everyone (safetensors writes 0600)
        path.chmod(0o644)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
