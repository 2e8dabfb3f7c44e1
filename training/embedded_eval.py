"""Validation of a trained model on the public data it was trained from, next to the evaluation baselines.

    radlvlm embedded evaluate --data ../shared/data --model DIR [--adapter DIR] --out runs/eval

What it scores (each with bootstrap 95% CIs through :func:`radlvlm.clinical_eval.runner.run_validation_study`,
and a paired comparison with the strongest baseline):

- **drafting on images**: the NIH ChestX-ray14 split's images against their label-templated reference
  (CheXpert-14 F1 is the meaningful figure: the labels are the only truth there is) and the COVID-19 split's
  images against the radiographic sentences of their notes. Baselines: the most common normal IU report, and
  retrieval of the nearest training image's text by the model's own vision-tower embedding;
- **error checking, text only** (findings vs impression) on the IU-Xray split, built by ``make-errorcheck``'s
  builder with the same seed: SIMPLE (yes/no, with the model's probability of "yes") and COMPLEX. Baselines:
  the majority class and the labeler-based consistency checker;
- **the router**: tokens per expert and layer for each task while the model ran (MoLE only).

Everything written (predictions, references, metrics) holds ids, labels and public report text only.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from radlvlm.clinical_eval import baselines
from radlvlm.clinical_eval.runner import headline, run_validation_study
from radlvlm.engine.torch_engine import TorchEngine
from radlvlm.errors import InputError
from radlvlm.model.generation import GenerationSettings
from radlvlm.model.pretrained import load_pretrained
from radlvlm.pipeline.task_engine import TaskEngine
from radlvlm.tasks.calibration import find_calibrations
from radlvlm.tasks.checking import CheckRequest
from radlvlm.tasks.drafting import DraftRequest
from radlvlm.tasks.errorcheck import ErrorCheckTask, build_errorcheck_set
from radlvlm.training.sources import CovidSource, IUXraySource, NIHSource, Record

DRAFT_SETS = ("nih_cxr14", "covid")


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def _records(source: Any, split: str) -> list[Any]:
    return [r for r in source.records() if isinstance(r, Record) and r.split == split and r.image is not None]


def _reference_row(record: Any) -> dict[str, Any]:
    return {"id": record.study_id, "findings": record.findings, "impression": record.impression, "split": record.split}


def _progress(items: Sequence[Any], what: str) -> Iterator[Any]:
    yield from tqdm(items, desc=what, unit="study", file=sys.stderr)


def draft_predictions(engine: Any, records: Sequence[Any], model_name: str) -> list[dict[str, Any]]:
    """One drafting request per record, submitted together so the engine batches them."""
    futures = [
        engine.submit(DraftRequest(image=r.image.load(), indication=r.indication or None))
        for r in _progress(records, "draft")
    ]
    rows = []
    for record, future in zip(records, futures, strict=True):
        result = future.result()
        text = "\n".join(
            part
            for part in (
                f"FINDINGS: {result.findings}" if result.findings else "",
                f"IMPRESSION: {result.impression}" if result.impression else "",
            )
            if part
        )
        rows.append({"id": record.study_id, "prediction": text or result.text, "model": model_name})
    return rows


def check_predictions(engine: Any, rows: Sequence[dict[str, Any]], mode: str, model_name: str) -> list[dict[str, Any]]:
    """Text-only error checks of ``make-errorcheck`` rows; SIMPLE rows carry the probability of an error."""
    futures = [engine.submit(CheckRequest(report=r["text"], mode=ErrorCheckTask(mode))) for r in rows]
    out = []
    for row, future in zip(_progress(rows, f"check ({mode})"), futures, strict=True):
        result = future.result()
        prediction: dict[str, Any] = {"id": row["id"], "prediction": result.raw_answer, "model": model_name}
        if result.confidence is not None and result.has_error is not None:
            prediction["confidence"] = result.confidence if result.has_error else 1.0 - result.confidence
        out.append(prediction)
    return out


@torch.inference_mode()
def image_embeddings(model: Any, processor: Any, records: Sequence[Any], batch_size: int = 32) -> np.ndarray:
    """The vision tower's CLS embedding per record (what the contrastive pretraining shaped), L2-normalised."""
    tower = model.get_base_model().model.vision_tower if hasattr(model, "get_base_model") else model.model.vision_tower
    vectors = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        pixels = processor.pixel_values([r.image.load() for r in chunk])
        cls = tower(pixel_values=pixels.to(next(tower.parameters()).dtype)).last_hidden_state[:, 0]
        vectors.append(torch.nn.functional.normalize(cls.float(), dim=-1).numpy())
    return np.concatenate(vectors) if vectors else np.zeros((0, 1))


def evaluate(
    data: Path,
    model_dir: Path,
    out: Path,
    *,
    adapter: Path | None = None,
    split: str = "validation",
    n_boot: int = 1000,
    seed: int = 0,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    name: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Score the model at ``model_dir`` (+ ``adapter``) on ``split`` of the public sets; write ``summary.json``.

    ``limit`` keeps the first studies of each evaluated set (the recipe's tiny scale, for tests)."""
    for folder in ("iu_xray", "nih_cxr14", "covid_chestxray"):
        if not (data / folder).is_dir():
            raise InputError(f"{data / folder}: missing (the evaluation needs the IU-Xray, NIH and COVID-19 folders)")
    model, processor = load_pretrained(model_dir, adapter=adapter)
    model_name = name or model_dir.name + (f"+{adapter.name}" if adapter else "")
    mole = getattr(model, "_mole_adapter", None)
    engine = _task_engine(model, processor, model_dir, adapter, model_name, batch_size, max_new_tokens)
    iu = IUXraySource(data / "iu_xray")
    sources = {
        "nih_cxr14": NIHSource(data / "nih_cxr14" / "manifest.jsonl"),
        "covid": CovidSource(data / "covid_chestxray" / "manifest.jsonl"),
    }
    iu_train_rows = [r for r in iu.rows() if r.get("split") == "train"]
    summary: dict[str, Any] = {
        "model": model_name,
        "split": split,
        "seed": seed,
        "n_boot": n_boot,
        "limit": limit,
        "sets": {},
    }
    scoring = _Scoring(engine, model, processor, model_name, mole, out, n_boot, seed)
    started = time.perf_counter()
    try:
        for set_name in DRAFT_SETS:
            scored = _score_draft_set(scoring, set_name, sources[set_name], split, limit, iu_train_rows)
            summary["sets"][f"draft_{set_name}"] = scored
        summary["sets"].update(_score_check_sets(scoring, iu, split, limit))
    finally:
        engine.close()
    if mole is not None:
        summary["router"] = router_usage(mole.statistics())
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _task_engine(
    model: Any,
    processor: Any,
    model_dir: Path,
    adapter: Path | None,
    model_name: str,
    batch_size: int,
    max_new_tokens: int,
) -> Any:
    """The engine the service runs, over the loaded model: its batching, and the calibrated check verdicts."""
    return TaskEngine(
        TorchEngine(
            model,
            processor,
            model_id=model_name,
            max_batch_size=batch_size,
            max_queue=100_000,
            generation=GenerationSettings(max_new_tokens=max_new_tokens),
        ),
        calibrations=find_calibrations(model_dir, adapter),  # verdicts as the service gives them to users
    )


@dataclass(frozen=True)
class _Scoring:
    """The model under evaluation (behind its task engine), and where and how each set is scored."""

    engine: Any
    model: Any
    processor: Any
    model_name: str
    mole: Any  # the MoLE adapter, whose router usage is tracked per task; None for other adapters
    out: Path
    n_boot: int
    seed: int

    def tracking(self, task: str) -> AbstractContextManager[Any]:
        """Counts the router's tokens per expert under ``task`` while the model runs (MoLE only)."""
        return self.mole.routing_statistics(task) if self.mole is not None else nullcontext()


def _score_draft_set(
    scoring: _Scoring, name: str, source: Any, split: str, limit: int | None, iu_train_rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Drafting on the images of ``source``'s split against its references, next to the most common normal IU
    report and the text of the nearest training image (by the model's own vision-tower embedding)."""
    train, target = _records(source, "train"), _records(source, split)[:limit]
    folder = scoring.out / f"draft_{name}"
    references = _write_jsonl(folder / "references.jsonl", [_reference_row(r) for r in target])
    with scoring.tracking("draft"):
        predicted = draft_predictions(scoring.engine, target, scoring.model_name)
    predictions = _write_jsonl(folder / "predictions.jsonl", predicted)
    vectors = image_embeddings(scoring.model, scoring.processor, train + target)
    ids = [r.study_id for r in train + target]
    candidates = {
        "most_common_normal": baselines.most_common_normal_predictions(
            iu_train_rows, target_rows := [_reference_row(r) for r in target]
        ),
        "nearest_neighbour_image": baselines.nearest_neighbour_image_predictions(
            [_reference_row(r) for r in train], target_rows, ids, vectors
        ),
    }
    return _score_with_baselines(
        run_validation_study, predictions, references, folder, candidates, "report", name, scoring.n_boot, scoring.seed
    )


def _score_check_sets(scoring: _Scoring, iu: Any, split: str, limit: int | None) -> dict[str, dict[str, Any]]:
    """SIMPLE and COMPLEX text-only checks of the IU split's ``make-errorcheck`` set (same seed), next to the
    majority class (of the training split) and the labeler-based consistency checker."""
    rows, _ = build_errorcheck_set(iu.rows(), seed=scoring.seed)
    goal = [r for r in rows if r.get("split") == split]
    goal = goal[:: max(1, len(goal) // limit)][:limit] if limit else goal  # both classes when limited
    fit = [r for r in rows if r.get("split") == "train"]
    scored = {}
    for mode in ("simple", "complex"):
        folder = scoring.out / f"check_{mode}_iu_xray"
        references = _write_jsonl(folder / "references.jsonl", goal)
        with scoring.tracking(f"check_{mode}"):
            predicted = check_predictions(scoring.engine, goal, mode, scoring.model_name)
        predictions = _write_jsonl(folder / "predictions.jsonl", predicted)
        candidates = {
            "majority_class": baselines.majority_class_predictions(fit, goal),
            "consistency_checker": baselines.consistency_predictions(goal),
        }
        scored[f"check_{mode}_iu_xray"] = _score_with_baselines(
            run_validation_study,
            predictions,
            references,
            folder,
            candidates,
            "errorcheck",
            "iu",
            scoring.n_boot,
            scoring.seed,
        )
    return scored


def _score_with_baselines(
    run_validation_study: Any,
    predictions: Path,
    references: Path,
    folder: Path,
    candidates: dict[str, list[dict[str, Any]]],
    task: str,
    dataset: str,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """The model's headline metrics, each baseline's, and paired comparisons (model minus baseline)."""
    scored: dict[str, Any] = {}
    for name, rows in candidates.items():
        path = _write_jsonl(folder / f"baseline_{name}.jsonl", rows)
        result = run_validation_study(
            predictions,
            references,
            folder / f"vs_{name}",
            task=task,
            compare=path,
            dataset=dataset,
            n_boot=n_boot,
            seed=seed,
        )
        baseline = run_validation_study(
            path, references, folder / f"baseline_{name}", task=task, dataset=dataset, n_boot=n_boot, seed=seed
        )
        model_head = headline(result)
        scored.setdefault("model", {k: v for k, v in model_head.items() if k != "comparison"})
        scored[f"baseline_{name}"] = {k: v for k, v in headline(baseline).items() if k not in ("counts", "comparison")}
        scored[f"model_minus_{name}"] = model_head.get("comparison")
    return scored


def router_usage(statistics: dict[str, dict[str, list[int]]]) -> dict[str, Any]:
    """Per task: the share of tokens each expert received, summed over layers, and per layer."""
    out: dict[str, Any] = {}
    for task, layers in statistics.items():
        total = np.sum([np.asarray(c, dtype=float) for c in layers.values()], axis=0)
        out[task] = {
            "tokens": int(total.sum()),
            "share_per_expert": [round(float(x), 4) for x in total / max(total.sum(), 1.0)],
            "per_layer": {
                layer: [round(float(x), 4) for x in np.asarray(c, dtype=float) / max(sum(c), 1)]
                for layer, c in layers.items()
            },
        }
    return out
