"""Offline prediction over a manifest (a validation study's inputs) → a predictions file for ``radlvlm eval run``.

A manifest is JSONL or Parquet with one row per study: ``id`` (or ``uid``), ``image`` (a DICOM, PNG or JPEG
path, absolute or relative to ``image_root``, else to the manifest's folder; required for drafts, optional for
checks), ``indication`` (drafts, optional), and for error checks the report as ``text`` (what
``radlvlm eval make-errorcheck`` writes) or ``report``. A ``split`` column can be filtered on.

The images are read as they are: a manifest names de-identified data (a validation set), not live PACS studies.
Rows go to the engine in chunks (images are decoded per chunk, so memory stays bounded); the vLLM backend runs
each chunk on its batch engine in one ``generate`` call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radlvlm.engine.base import CheckRequest, CheckResult, DraftRequest, DraftResult, Request, Result
from radlvlm.engine.batching import BatchingEngine
from radlvlm.errors import InputError, RadlvlmError
from radlvlm.tasks.drafting import draft_target
from radlvlm.tasks.errorcheck import ErrorCheckTask

TASKS = ("draft", "check-simple", "check-complex")
_SHOW = 5  # offending rows named in an error message


@dataclass(frozen=True)
class ManifestRow:
    id: str
    image: Path | None
    indication: str | None
    report: str | None


def read_manifest(
    path: str | Path,
    *,
    task: str,
    image_root: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> list[ManifestRow]:
    """The manifest's rows for ``task``, checked: ids present and unique, images and reports where needed.

    Errors name the first offending rows (row numbers and ids, never report text).
    """
    from radlvlm.clinical_eval.predictions import load_rows

    if task not in TASKS:
        raise InputError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if limit is not None and limit < 1:
        raise InputError(f"limit must be a positive number of rows, got {limit}")
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    if image_root is not None and not root.is_dir():
        raise InputError(f"{root}: image folder not found")
    rows: list[ManifestRow] = []
    seen: set[str] = set()
    no_id, duplicate, no_image, missing_file, no_report = [], [], [], [], []
    for row in load_rows(path):
        if split is not None and str(row.get("split")) != split:
            continue
        where = f"row {row.get('_row', len(rows) + 1)}"
        raw_id = row.get("id", row.get("uid"))
        if raw_id is None or str(raw_id).strip() == "":
            no_id.append(where)
            continue
        study = str(raw_id)
        if study in seen:
            duplicate.append(f"{where} ({study})")
            continue
        seen.add(study)
        image = None
        if row.get("image"):
            image = Path(str(row["image"]))
            image = image if image.is_absolute() else root / image
            if not image.is_file():
                missing_file.append(f"{where} ({study})")
        elif task == "draft":
            no_image.append(f"{where} ({study})")
        report = row.get("text", row.get("report"))
        if task != "draft" and (not isinstance(report, str) or not report.strip()):
            no_report.append(f"{where} ({study})")
        indication = row.get("indication")
        rows.append(
            ManifestRow(
                id=study,
                image=image,
                indication=str(indication) if indication else None,
                report=report if isinstance(report, str) else None,
            )
        )
        if limit is not None and len(rows) >= limit:
            break
    problems = [
        _first(found, what)
        for found, what in (
            (no_id, "row(s) without an 'id'"),
            (duplicate, "duplicate id(s)"),
            (no_image, "row(s) without an 'image' (a draft needs one)"),
            (missing_file, "row(s) whose image file is not found"),
            (no_report, "row(s) without the report to check ('text' or 'report')"),
        )
        if found
    ]
    if problems:
        raise InputError(f"{path}: " + "; ".join(problems))
    if not rows:
        raise InputError(f"{path}: no rows to predict" + (f" in split {split!r}" if split else ""))
    return rows


def request_for(row: ManifestRow, task: str, *, max_new_tokens: int | None = None) -> Request:
    """The engine request of a manifest row (the image decoded here)."""
    from radlvlm.imaging.dicom import read_image_file

    image = None
    if row.image is not None:
        try:
            image = read_image_file(row.image, name=row.image.name)
        except RadlvlmError as e:
            raise InputError(f"study {row.id}: {e}") from e
    if task == "draft":
        assert image is not None
        return DraftRequest(image=image, indication=row.indication, max_new_tokens=max_new_tokens)
    mode = ErrorCheckTask.SIMPLE if task == "check-simple" else ErrorCheckTask.COMPLEX
    return CheckRequest(report=row.report or "", image=image, mode=mode)


def prediction_row(row: ManifestRow, result: Result) -> dict[str, Any]:
    """One predictions-file row: ``id``, ``prediction``, ``model`` (+ ``confidence``, the probability of an error)."""
    if isinstance(result, DraftResult):
        text = draft_target(result.findings, result.impression) or result.text
        return {"id": row.id, "prediction": text, "model": result.model_id}
    if isinstance(result, CheckResult):
        out: dict[str, Any] = {"id": row.id, "prediction": result.raw_answer, "model": result.model_id}
        if result.error_probability is not None:
            out["confidence"] = result.error_probability
        if result.reason is not None:
            out["reason"] = result.reason  # the check could not be done; scored as an invalid answer
        return out
    raise InputError(f"study {row.id}: the engine returned a {type(result).__name__}, not a draft or check result")


def predict(
    engine: BatchingEngine,
    rows: Sequence[ManifestRow],
    task: str,
    *,
    max_new_tokens: int | None = None,
    chunk_size: int = 256,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Predictions-file rows for ``rows`` (in order) and a summary (counts, seconds, studies per second)."""
    if chunk_size < 1:
        raise InputError(f"chunk_size must be positive, got {chunk_size}")
    out: list[dict[str, Any]] = []
    model_seconds = 0.0
    start = time.perf_counter()
    for begin in range(0, len(rows), chunk_size):
        chunk = rows[begin : begin + chunk_size]
        requests = [request_for(row, task, max_new_tokens=max_new_tokens) for row in chunk]
        began = time.perf_counter()
        results = engine.run_all(requests)
        model_seconds += time.perf_counter() - began
        out.extend(prediction_row(row, result) for row, result in zip(chunk, results, strict=True))
        if on_progress is not None:
            on_progress(len(out), len(rows))
    seconds = time.perf_counter() - start
    summary = {
        "task": task,
        "model": engine.model_id,
        "studies": len(out),
        "seconds": round(seconds, 2),
        "model_seconds": round(model_seconds, 2),
        "studies_per_s": round(len(out) / model_seconds, 3) if model_seconds > 0 else None,
    }
    return out, summary


def _first(items: Sequence[str], what: str) -> str:
    shown = ", ".join(items[:_SHOW])
    more = f" and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"{len(items)} {what}: {shown}{more}"
