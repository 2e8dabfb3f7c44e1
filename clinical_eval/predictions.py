"""Predictions and references files (JSONL or Parquet) with strict validation.

A predictions file has one row per study: ``id`` and ``prediction`` (the generated report, or the model's
answer for an error-check task); optional ``model``, ``confidence`` (probability that the report has an
error, for SIMPLE error-check) and ``reference``. A references file has ``id`` and ``reference`` for report
generation, or error-check rows (``has_error``, ``category``, ``span`` as written by ``make-errorcheck``);
IU-Xray manifest rows (``uid``, ``findings``, ``impression``) are accepted as report references.

Nothing is dropped silently: malformed rows, missing or duplicate ids, empty text and ids present on one side
only raise :class:`~radlvlm.errors.EvaluationInputError` naming the first offending rows (row numbers and study
ids, never report text). With ``allow_missing=True`` unmatched ids are dropped instead, and counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radlvlm.errors import EvaluationInputError
from radlvlm.rowfiles import load_rows
from radlvlm.tasks.errorcheck import compose_report

__all__ = [
    "ScoringSet",
    "errorcheck_reference_text",
    "is_errorcheck_reference",
    "load_rows",
    "match_rows",
    "read_scoring_set",
    "report_reference",
]

_SHOW = 5  # offending rows named in an error message


def _first(items: Sequence[str], what: str) -> str:
    shown = ", ".join(items[:_SHOW])
    more = f" and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"{len(items)} {what}: {shown}{more}"


def _id_of(row: Mapping[str, Any]) -> str | None:
    value = row.get("id", row.get("uid"))
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def report_reference(row: Mapping[str, Any]) -> str:
    """The reference report of a row: ``reference``, or findings + impression of an IU-Xray manifest row."""
    if "reference" in row:
        value = row["reference"]
        return value if isinstance(value, str) else ""
    findings, impression = str(row.get("findings") or ""), str(row.get("impression") or "")
    return f"{findings.strip()} {impression.strip()}".strip()


@dataclass
class ScoringSet:
    """Matched prediction/reference rows ready for scoring, and the counts that explain the denominator.

    Args:
        ids (`list[str]`): study ids, in references order.
        predictions (`list[dict]`): prediction rows, aligned with ``ids``.
        references (`list[dict]`): reference rows, aligned with ``ids``.
        counts (`dict[str, int]`): ``predictions_in``, ``references_in``, ``scored``, ``dropped`` and the
            reasons for drops.
        dropped_ids (`dict[str, list[str]]`): dropped study ids by reason.
    """

    ids: list[str]
    predictions: list[dict[str, Any]]
    references: list[dict[str, Any]]
    counts: dict[str, int]
    dropped_ids: dict[str, list[str]] = field(default_factory=dict)

    def counts_line(self) -> str:
        c = self.counts
        return (
            f"predictions in: {c['predictions_in']}, references in: {c['references_in']}, "
            f"scored: {c['scored']}, dropped: {c['dropped']}"
        )


def _validate(
    rows: list[dict[str, Any]], name: str, text_field: str | None, *, drop_empty: bool = False
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Rows by id; ids whose text is empty are returned apart when ``drop_empty`` (else they raise)."""
    missing, empty, duplicate, empty_ids = [], [], [], []
    by_id: dict[str, dict[str, Any]] = {}
    for index, row in enumerate(rows, start=1):
        row.setdefault("_row", index)  # rows built in code rather than read from a file
        rid = _id_of(row)
        where = f"row {row['_row']}"
        if rid is None:
            missing.append(where)
            continue
        if rid in by_id:
            duplicate.append(f"id {rid} (rows {by_id[rid]['_row']} and {row['_row']})")
            continue
        if text_field is not None:
            value = row.get(text_field) if text_field != "reference" else report_reference(row)
            if not isinstance(value, str) or not value.strip():
                empty.append(f"{where} (id {rid})")
                empty_ids.append(rid)
                if drop_empty:
                    continue
        by_id[rid] = row
    problems = []
    if missing:
        problems.append(_first(missing, "row(s) without an id"))
    if duplicate:
        problems.append(_first(duplicate, "duplicate id(s)"))
    if empty and not drop_empty:
        problems.append(_first(empty, f"row(s) with empty or non-text '{text_field}'"))
    if problems:
        raise EvaluationInputError(f"{name}: " + "; ".join(problems))
    return by_id, (empty_ids if drop_empty else [])


def _check_errorcheck_reference(by_id: Mapping[str, Mapping[str, Any]], name: str) -> None:
    bad = [f"row {r['_row']} (id {i})" for i, r in by_id.items() if not isinstance(r.get("has_error"), bool)]
    if bad:
        raise EvaluationInputError(f"{name}: " + _first(bad, "error-check row(s) without a boolean 'has_error'"))


def _check_confidence(by_id: Mapping[str, Mapping[str, Any]], name: str) -> None:
    bad = []
    for rid, row in by_id.items():
        value = row.get("confidence")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
            bad.append(f"row {row['_row']} (id {rid})")
    if bad:
        raise EvaluationInputError(f"{name}: " + _first(bad, "row(s) with 'confidence' not a number in [0, 1]"))


def match_rows(
    prediction_rows: list[dict[str, Any]],
    reference_rows: list[dict[str, Any]],
    *,
    errorcheck: bool,
    allow_missing: bool = False,
    names: tuple[str, str] = ("predictions", "references"),
) -> ScoringSet:
    """Validate both sides and pair them by study id.

    Args:
        prediction_rows (`list[dict]`): rows of the predictions file.
        reference_rows (`list[dict]`): rows of the references file.
        errorcheck (`bool`): references are error-check rows (need ``has_error``) rather than report text.
        allow_missing (`bool`, defaults to `False`): drop (and count) ids found on one side only, and references
            with empty text, instead of raising.
        names (`tuple[str, str]`): how the two files are named in messages.

    Raises:
        EvaluationInputError: see the module docstring.
    """
    pred_name, ref_name = names
    preds, _ = _validate(prediction_rows, pred_name, "prediction")
    _check_confidence(preds, pred_name)
    refs, empty_refs = _validate(
        reference_rows, ref_name, None if errorcheck else "reference", drop_empty=allow_missing
    )
    if errorcheck:
        _check_errorcheck_reference(refs, ref_name)
    no_prediction = [i for i in refs if i not in preds]
    no_reference = [i for i in preds if i not in refs and i not in empty_refs]
    empty_reference = [i for i in preds if i in empty_refs]
    if (no_prediction or no_reference) and not allow_missing:
        problems = []
        if no_prediction:
            problems.append(_first([f"id {i}" for i in no_prediction], f"reference id(s) missing from {pred_name}"))
        if no_reference:
            problems.append(_first([f"id {i}" for i in no_reference], f"prediction id(s) not in {ref_name}"))
        raise EvaluationInputError("ids do not match: " + "; ".join(problems) + " (use allow_missing to drop them)")
    ids = [i for i in refs if i in preds]
    if not ids:
        raise EvaluationInputError(f"no study id is in both {pred_name} and {ref_name}")
    counts = {
        "predictions_in": len(prediction_rows),
        "references_in": len(reference_rows),
        "scored": len(ids),
        "dropped": len(no_prediction) + len(no_reference) + len(empty_reference),
        "dropped_no_prediction": len(no_prediction),
        "dropped_no_reference": len(no_reference),
        "dropped_empty_reference": len(empty_reference),
    }
    return ScoringSet(
        ids=ids,
        predictions=[preds[i] for i in ids],
        references=[refs[i] for i in ids],
        counts=counts,
        dropped_ids={"no_prediction": no_prediction, "no_reference": no_reference, "empty_reference": empty_reference},
    )


def is_errorcheck_reference(rows: Iterable[Mapping[str, Any]]) -> bool:
    """True when reference rows look like error-check rows (they carry ``has_error``)."""
    return any("has_error" in r for r in rows)


def read_scoring_set(
    predictions: Path | str, references: Path | str, *, errorcheck: bool | None = None, allow_missing: bool = False
) -> ScoringSet:
    """Load and match a predictions file with a references file (task detected from the references if not given)."""
    prediction_rows = load_rows(predictions)
    reference_rows = load_rows(references)
    if errorcheck is None:
        errorcheck = is_errorcheck_reference(reference_rows)
    return match_rows(
        prediction_rows,
        reference_rows,
        errorcheck=errorcheck,
        allow_missing=allow_missing,
        names=(Path(predictions).name, Path(references).name),
    )


def errorcheck_reference_text(row: Mapping[str, Any]) -> str:
    """The report text of an error-check row (``text``, else findings + impression under headers)."""
    if isinstance(row.get("text"), str):
        return row["text"]
    return compose_report(str(row.get("findings") or ""), str(row.get("impression") or ""))
