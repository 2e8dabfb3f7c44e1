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

import glob
import hashlib
import json
import os
import re
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
    position: int = 0  # the row's place among the manifest rows selected (a merged file keeps this order)


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
                position=len(rows),
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
    on_chunk: Callable[[list[tuple[ManifestRow, dict[str, Any]]], dict[str, str]], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Predictions-file rows for ``rows`` (in order) and a summary (counts, refusals, seconds, studies per second).

    With ``on_chunk``, each chunk's predictions (beside their manifest rows) and refusals go to it as soon as the
    chunk is done, and none is kept here (the list returned is empty): a long run holds one chunk in memory.
    """
    if chunk_size < 1:
        raise InputError(f"chunk_size must be positive, got {chunk_size}")
    caller = Caller("eval-predict", "eval")
    out: list[dict[str, Any]] = []
    refused: dict[str, str] = {}
    done = 0
    model_seconds = 0.0
    start = time.perf_counter()
    for begin in range(0, len(rows), chunk_size):
        ready: list[tuple[ManifestRow, PreparedDraft | PreparedCheck]] = []
        chunk_refused: dict[str, str] = {}
        for row in rows[begin : begin + chunk_size]:
            try:
                ready.append((row, _prepare(runtime, row, task)))
            except GuardrailViolation as e:
                chunk_refused[row.id] = str(e)
            except (EngineError, ModelError):  # radlvlm's or the chosen model's fault, not the row's
                raise
            except RadlvlmError as e:
                raise InputError(f"study {row.id}: {e}") from e
        began = time.perf_counter()
        results = runtime.engine.run_all([prepared.request for _, prepared in ready])
        model_seconds += time.perf_counter() - began
        chunk: list[tuple[ManifestRow, dict[str, Any]]] = []
        for (row, prepared), result in zip(ready, results, strict=True):
            if isinstance(prepared, PreparedDraft) and isinstance(result, DraftResult):
                outcome: DraftOutcome | CheckOutcome = finish_draft(runtime, prepared, result, caller)
            elif isinstance(prepared, PreparedCheck) and isinstance(result, CheckResult):
                outcome = finish_check(runtime, prepared, result, caller)
            else:
                raise EngineError(f"study {row.id}: the engine returned a {type(result).__name__}")
            chunk.append((row, prediction_row(row, outcome)))
        refused.update(chunk_refused)
        done += len(chunk)
        if on_chunk is not None:
            on_chunk(chunk, chunk_refused)
        else:
            out.extend(prediction for _, prediction in chunk)
        if on_progress is not None:
            on_progress(done + len(refused), len(rows))
    seconds = time.perf_counter() - start
    summary = {
        "task": task,
        "model": runtime.model_id,
        "studies": done,
        "refused": refused,
        "seconds": round(seconds, 2),
        "model_seconds": round(model_seconds, 2),
        "studies_per_s": round(done / model_seconds, 3) if model_seconds > 0 else None,
    }
    return out, summary


# -- long runs: streamed, resumed, split between processes ----------------------------------------------


@dataclass(frozen=True)
class Shard:
    """This process's share of a run split between ``world`` processes (``torchrun`` / ``accelerate launch``)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_environment(cls) -> Shard:
        """RANK and WORLD_SIZE as torchrun and accelerate launch set them; one process otherwise."""
        try:
            rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        except ValueError as e:
            raise InputError(f"RANK / WORLD_SIZE are not numbers ({e})") from e
        if world < 1 or not 0 <= rank < world:
            raise InputError(f"rank {rank} is not within a world of {world} processes")
        return cls(rank, world)

    def takes(self, study_id: str) -> bool:
        """Whether this process predicts ``study_id``: by a hash of the id, so a patient's or a site's studies,
        often neighbours in a manifest, are spread over the processes instead of landing on one."""
        digest = hashlib.sha256(study_id.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.world == self.rank

    def rows(self, rows: Sequence[ManifestRow]) -> list[ManifestRow]:
        return [row for row in rows if self.takes(row.id)] if self.world > 1 else list(rows)

    def part(self, out: Path) -> Path:
        """Where this process writes: ``out`` itself alone, else ``out.part-R-of-N.jsonl``."""
        return out if self.world == 1 else out.with_name(f"{out.name}.part-{self.rank}-of-{self.world}.jsonl")


class PredictionsFile:
    """A predictions file written as studies are predicted, so a killed run keeps what it did and resumes.

    Each chunk is appended and flushed to disk before the next starts. On opening, the rows already there are
    read (a last line cut by a kill is dropped from the file) and their studies are skipped. Studies the
    guardrails refused go to a file beside it (``…refused.jsonl``: id and reason), so a resumed run neither
    retries them nor forgets them. A part of a split run also records each row's place in the manifest, which
    the merge puts them back in.
    """

    def __init__(self, path: Path, *, positions: bool = False) -> None:
        self.path = path
        self.refused_path = refused_path_of(path)
        self.positions = positions
        rows = _read_complete_rows(path)
        self.done: set[str] = {row["id"] for row in rows}
        self.models: set[str] = {str(row.get("model")) for row in rows}
        self.refused: dict[str, str] = {row["id"]: row["reason"] for row in _read_complete_rows(self.refused_path)}

    def discard(self) -> None:
        """Start again: what the file and its refusals hold is removed."""
        for path in (self.path, self.refused_path):
            path.unlink(missing_ok=True)
        self.done, self.models, self.refused = set(), set(), {}

    def check_model(self, model_id: str) -> None:
        """Refuse to add one model's predictions to a file holding another's."""
        others = self.models - {model_id}
        if others:
            raise InputError(
                f"{self.path} holds predictions of {', '.join(sorted(map(str, others)))}, not {model_id}: give another "
                "--out, or --no-resume to start it again"
            )

    def remaining(self, rows: Sequence[ManifestRow]) -> list[ManifestRow]:
        return [row for row in rows if row.id not in self.done and row.id not in self.refused]

    def append(self, chunk: list[tuple[ManifestRow, dict[str, Any]]], refused: dict[str, str]) -> None:
        lines = []
        for row, prediction in chunk:
            record = {**prediction, "_position": row.position} if self.positions else prediction
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            self.done.add(row.id)
            self.models.add(str(prediction.get("model")))
        _append_durably(self.path, lines)
        if refused:
            _append_durably(
                self.refused_path,
                [json.dumps({"id": k, "reason": v}, ensure_ascii=False) + "\n" for k, v in refused.items()],
            )
            self.refused.update(refused)


def merge_parts(out: Path) -> dict[str, Any]:
    """Join the parts of a split run (``out.part-R-of-N.jsonl``) into ``out``, rows in manifest order, refusals
    beside it; refuses a missing part, parts of different splits, and a study predicted twice."""
    parts = sorted(out.parent.glob(f"{glob.escape(out.name)}.part-*-of-*.jsonl"))
    parts = [p for p in parts if not p.name.endswith(".refused.jsonl")]
    if not parts:
        raise InputError(f"{out}: no parts ({out.name}.part-R-of-N.jsonl) to merge")
    found: dict[int, set[int]] = {}
    for part in parts:
        match = re.fullmatch(re.escape(out.name) + r"\.part-(\d+)-of-(\d+)\.jsonl", part.name)
        if match is None:
            raise InputError(f"{part}: not a part file name")
        found.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    if len(found) != 1:
        raise InputError(f"{out}: parts of runs split {len(found)} ways ({sorted(found)}); keep one run's parts")
    ((world, ranks),) = found.items()
    missing = sorted(set(range(world)) - ranks)
    if missing:
        raise InputError(f"{out}: part(s) {missing} of {world} are missing (a process has not finished)")
    rows: list[dict[str, Any]] = []
    refused: dict[str, str] = {}
    for part in parts:
        rows.extend(_read_complete_rows(part))
        refused.update({row["id"]: row["reason"] for row in _read_complete_rows(refused_path_of(part))})
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        raise InputError(f"{out}: a study is in two parts; the parts are not from one split run")
    rows.sort(key=lambda row: int(row["_position"]))
    temporary = out.with_name(out.name + ".merging")
    temporary.write_text(
        "".join(
            json.dumps({k: v for k, v in row.items() if k != "_position"}, ensure_ascii=False) + "\n" for row in rows
        ),
        encoding="utf-8",
    )
    temporary.replace(out)
    if refused:
        refused_path_of(out).write_text(
            "".join(json.dumps({"id": k, "reason": v}, ensure_ascii=False) + "\n" for k, v in sorted(refused.items())),
            encoding="utf-8",
        )
    return {"out": str(out), "parts": world, "studies": len(rows), "refused": refused}


def refused_path_of(path: Path) -> Path:
    """Where the studies the guardrails refused are kept beside a predictions file."""
    return path.with_name(path.name.removesuffix(".jsonl") + ".refused.jsonl")


def _append_durably(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(lines)
        handle.flush()
        os.fsync(handle.fileno())


def _read_complete_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file written by :class:`PredictionsFile`; a last line cut short by a kill is removed
    from the file (its study is predicted again), and any other unreadable line is an error."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete, _, torn = data.rpartition(b"\n")
    if torn:
        with path.open("r+b") as handle:
            handle.truncate(len(complete) + 1 if complete else 0)
    rows = []
    for number, line in enumerate(complete.decode("utf-8").splitlines() if complete else [], start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: line {number} is not JSON; not a predictions file this run wrote") from e
        if not isinstance(row, dict) or "id" not in row:
            raise InputError(f"{path}: line {number} has no 'id'; not a predictions file this run wrote")
        rows.append(row)
    return rows


def _first(items: Sequence[str], what: str) -> str:
    shown = ", ".join(items[:_SHOW])
    more = f" and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"{len(items)} {what}: {shown}{more}"
