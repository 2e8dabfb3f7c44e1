"""``eval predict``'s door: the drafting and checking use cases over a manifest (a validation study's inputs) →
a predictions file for ``radlvlm eval run``.

A manifest is JSONL or Parquet with one row per study: ``id`` (or ``uid``), ``image`` (a DICOM, PNG or JPEG
path, absolute or relative to ``image_root``, else to the manifest's folder; required for drafts, optional for
checks), ``view`` (PA or AP: the view of a PNG/JPEG; without it a PNG/JPEG is taken as PA, flagged
``view_assumed``), ``indication`` (drafts, optional), and for error checks the report as ``text`` (what
``radlvlm eval make-errorcheck`` writes) or ``report``. A ``split`` column can be filtered on.

Each study takes the path it takes at every other door (:mod:`radlvlm.pipeline`: de-identification, input
guardrails, engine, output guardrails, audit), so a validation study measures what users get. Rows go to the
engine in chunks (prepared per chunk, so memory stays bounded); the vLLM backend runs each chunk on its batch
engine in one ``generate`` call. A study the guardrails refuse is left out of the predictions and named, with
the reason, in the summary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radlvlm.errors import EngineError, GuardrailViolation, InputError, ModelError, RadlvlmError
from radlvlm.pipeline.checking import CheckOutcome, PreparedCheck, finish_check, prepare_check
from radlvlm.pipeline.drafting import DraftOutcome, PreparedDraft, finish_draft, prepare_draft
from radlvlm.pipeline.ingest import StudyInput
from radlvlm.pipeline.runtime import Caller, Runtime
from radlvlm.rowfiles import load_rows
from radlvlm.tasks.checking import CheckResult
from radlvlm.tasks.drafting import DraftResult, draft_target
from radlvlm.tasks.errorcheck import ErrorCheckTask

TASKS = ("draft", "check-simple", "check-complex")
_SHOW = 5  # offending rows named in an error message


@dataclass(frozen=True)
class ManifestRow:
    id: str
    image: Path | None
    indication: str | None
    report: str | None
    view: str | None = None


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
    no_id, duplicate, no_image, missing_file, no_report, bad_view = [], [], [], [], [], []
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
        view = str(row["view"]).upper() if row.get("view") else None
        if view is not None and view not in ("PA", "AP"):
            bad_view.append(f"{where} ({study})")
        rows.append(
            ManifestRow(
                id=study,
                image=image,
                indication=str(indication) if indication else None,
                report=report if isinstance(report, str) else None,
                view=view,
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
            (bad_view, "row(s) whose 'view' is not PA or AP"),
        )
        if found
    ]
    if problems:
        raise InputError(f"{path}: " + "; ".join(problems))
    if not rows:
        raise InputError(f"{path}: no rows to predict" + (f" in split {split!r}" if split else ""))
    return rows


def _prepare(runtime: Runtime, row: ManifestRow, task: str) -> PreparedDraft | PreparedCheck:
    image = None
    if row.image is not None:
        try:
            image = StudyInput(data=row.image.read_bytes(), view=row.view, name=row.image.name)
        except OSError as e:
            raise InputError(f"study {row.id}: image unreadable ({type(e).__name__})") from e
    if task == "draft":
        assert image is not None
        return prepare_draft(runtime, image, indication=row.indication)
    return prepare_check(runtime, row.report or "", image=image, mode=task.removeprefix("check-"))


def prediction_row(row: ManifestRow, outcome: DraftOutcome | CheckOutcome) -> dict[str, Any]:
    """One predictions-file row: ``id``, ``prediction``, ``model`` (+ ``confidence``, the probability of an error).

    A check's prediction is written in the answer format ``eval run`` parses, with spans in the report as the
    manifest holds it (the use case maps them back from the de-identified text the model saw).
    """
    if isinstance(outcome, DraftOutcome):
        return {
            "id": row.id,
            "prediction": draft_target(outcome.findings, outcome.impression),
            "model": outcome.model_id,
        }
    out: dict[str, Any] = {"id": row.id, "model": outcome.model_id}
    if not outcome.answer_valid:
        out["prediction"] = f"(no answer: {outcome.reason or 'the answer did not follow the format'})"
        if outcome.reason is not None:
            out["reason"] = outcome.reason  # the check could not be done; scored as an invalid answer
    elif outcome.mode == ErrorCheckTask.SIMPLE.value:
        out["prediction"] = "yes" if outcome.has_error else "no"
    else:
        first = outcome.errors[0] if outcome.errors else None
        out["prediction"] = json.dumps(
            {
                "has_error": bool(outcome.has_error),
                "category": first.category if first and outcome.has_error else None,
                "span": list(first.span) if first and first.span and outcome.has_error else None,
            }
        )
    if outcome.error_probability is not None:
        out["confidence"] = outcome.error_probability
    return out


def predict(
    runtime: Runtime,
    rows: Sequence[ManifestRow],
    task: str,
    *,
    chunk_size: int = 256,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Predictions-file rows for ``rows`` (in order) and a summary (counts, refusals, seconds, studies per second)."""
    if chunk_size < 1:
        raise InputError(f"chunk_size must be positive, got {chunk_size}")
    caller = Caller("eval-predict", "eval")
    out: list[dict[str, Any]] = []
    refused: dict[str, str] = {}
    model_seconds = 0.0
    start = time.perf_counter()
    for begin in range(0, len(rows), chunk_size):
        ready: list[tuple[ManifestRow, PreparedDraft | PreparedCheck]] = []
        for row in rows[begin : begin + chunk_size]:
            try:
                ready.append((row, _prepare(runtime, row, task)))
            except GuardrailViolation as e:
                refused[row.id] = str(e)
            except (EngineError, ModelError):  # radlvlm's or the chosen model's fault, not the row's
                raise
            except RadlvlmError as e:
                raise InputError(f"study {row.id}: {e}") from e
        began = time.perf_counter()
        results = runtime.engine.run_all([prepared.request for _, prepared in ready])
        model_seconds += time.perf_counter() - began
        for (row, prepared), result in zip(ready, results, strict=True):
            if isinstance(prepared, PreparedDraft) and isinstance(result, DraftResult):
                outcome: DraftOutcome | CheckOutcome = finish_draft(runtime, prepared, result, caller)
            elif isinstance(prepared, PreparedCheck) and isinstance(result, CheckResult):
                outcome = finish_check(runtime, prepared, result, caller)
            else:
                raise EngineError(f"study {row.id}: the engine returned a {type(result).__name__}")
            out.append(prediction_row(row, outcome))
        if on_progress is not None:
            on_progress(len(out) + len(refused), len(rows))
    seconds = time.perf_counter() - start
    summary = {
        "task": task,
        "model": runtime.model_id,
        "studies": len(out),
        "refused": refused,
        "seconds": round(seconds, 2),
        "model_seconds": round(model_seconds, 2),
        "studies_per_s": round(len(out) / model_seconds, 3) if model_seconds > 0 else None,
    }
    return out, summary


def _first(items: Sequence[str], what: str) -> str:
    shown = ", ".join(items[:_SHOW])
    more = f" and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"{len(items)} {what}: {shown}{more}"
