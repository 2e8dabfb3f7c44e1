"""Predictions/references files: strict validation naming the first offending rows, never report text."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from radlvlm.clinical_eval.predictions import load_rows, read_scoring_set
from radlvlm.errors import EvaluationInputError

SECRET = "Patient John Secret has a left effusion."


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def refs(tmp_path: Path) -> Path:
    return _jsonl(tmp_path / "refs.jsonl", [{"id": f"s{i}", "reference": f"{SECRET} {i}"} for i in range(8)])


def _preds(tmp_path: Path, rows: list[object]) -> Path:
    return _jsonl(tmp_path / "preds.jsonl", rows)


def _good(i: int) -> dict:
    return {"id": f"s{i}", "prediction": f"{SECRET} {i}", "model": "m"}


def _error(tmp_path: Path, pred_rows: list[object], refs: Path, **kwargs: object) -> str:
    with pytest.raises(EvaluationInputError) as info:
        read_scoring_set(_preds(tmp_path, pred_rows), refs, **kwargs)
    message = str(info.value)
    assert "Secret" not in message  # never report text in an error
    return message


def test_good_file_counts(tmp_path: Path, refs: Path) -> None:
    data = read_scoring_set(_preds(tmp_path, [_good(i) for i in reversed(range(8))]), refs)
    assert data.ids == [f"s{i}" for i in range(8)]  # references order
    assert data.counts == {
        "predictions_in": 8,
        "references_in": 8,
        "scored": 8,
        "dropped": 0,
        "dropped_no_prediction": 0,
        "dropped_no_reference": 0,
        "dropped_empty_reference": 0,
    }
    assert data.counts_line() == "predictions in: 8, references in: 8, scored: 8, dropped: 0"


def test_malformed_json_lists_lines(tmp_path: Path, refs: Path) -> None:
    rows = [_good(0), "{not json", _good(2), "[1, 2]", '{"id": "s4", "prediction": ']
    message = _error(tmp_path, rows, refs)
    assert "3 malformed JSON line(s): line 2, line 4 (not an object), line 5" in message


def test_missing_ids_duplicates_and_empty_text(tmp_path: Path, refs: Path) -> None:
    rows = [
        _good(0),
        {"prediction": "x"},
        _good(1),
        _good(1),
        {"id": "s2", "prediction": "  "},
        {"id": "s3", "prediction": None},
        {"id": "", "prediction": "y"},
    ]
    message = _error(tmp_path, rows, refs)
    assert "2 row(s) without an id: row 2, row 7" in message
    assert "1 duplicate id(s): id s1 (rows 3 and 4)" in message
    assert "2 row(s) with empty or non-text 'prediction': row 5 (id s2), row 6 (id s3)" in message


def test_mismatched_ids_raise_or_are_counted(tmp_path: Path, refs: Path) -> None:
    rows = [_good(i) for i in range(2, 8)] + [{"id": f"x{i}", "prediction": "p"} for i in range(7)]
    message = _error(tmp_path, rows, refs)
    assert "2 reference id(s) missing from preds.jsonl: id s0, id s1" in message
    assert "7 prediction id(s) not in refs.jsonl: id x0, id x1, id x2, id x3, id x4 and 2 more" in message
    data = read_scoring_set(tmp_path / "preds.jsonl", refs, allow_missing=True)
    assert data.counts["scored"] == 6 and data.counts["dropped"] == 9
    assert data.dropped_ids["no_prediction"] == ["s0", "s1"]


def test_empty_references_and_confidence(tmp_path: Path) -> None:
    refs = _jsonl(
        tmp_path / "iu.jsonl",
        [{"uid": 1, "findings": "Clear.", "impression": ""}, {"uid": 2, "findings": "", "impression": ""}],
    )
    message = _error(tmp_path, [{"id": "1", "prediction": "a"}, {"id": "2", "prediction": "b"}], refs)
    assert "with empty or non-text 'reference': row 2 (id 2)" in message
    data = read_scoring_set(tmp_path / "preds.jsonl", refs, allow_missing=True)
    assert data.counts["scored"] == 1 and data.counts["dropped_empty_reference"] == 1
    message = _error(tmp_path, [{"id": "1", "prediction": "a", "confidence": 1.5}], refs, allow_missing=True)
    assert "'confidence' not a number in [0, 1]: row 1 (id 1)" in message


def test_errorcheck_references_need_boolean_has_error(tmp_path: Path) -> None:
    refs = _jsonl(tmp_path / "ec.jsonl", [{"id": "a", "has_error": True}, {"id": "b", "has_error": "yes"}])
    message = _error(tmp_path, [{"id": "a", "prediction": "yes"}, {"id": "b", "prediction": "no"}], refs)
    assert "without a boolean 'has_error': row 2 (id b)" in message


def test_parquet_and_file_errors(tmp_path: Path, refs: Path) -> None:
    table = pa.table({"id": ["s0", "s1"], "prediction": ["a", "b"], "confidence": [0.1, None]})
    pq.write_table(table, tmp_path / "p.parquet")
    rows = load_rows(tmp_path / "p.parquet")
    assert [r["id"] for r in rows] == ["s0", "s1"] and rows[1]["_row"] == 2
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(EvaluationInputError, match="cannot read Parquet"):
        load_rows(tmp_path / "bad.parquet")
    with pytest.raises(EvaluationInputError, match="no such file"):
        load_rows(tmp_path / "absent.jsonl")
    with pytest.raises(EvaluationInputError, match="unknown file type"):
        load_rows(refs.with_suffix(".csv").write_text("x") and refs.with_suffix(".csv"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(EvaluationInputError, match="no rows"):
        load_rows(tmp_path / "empty.jsonl")
