"""Row files: a JSONL or Parquet file of JSON objects, one per study. One reader for every such file radlvlm
takes (``eval predict`` manifests, predictions and references files), so the pipeline and the evaluation read
them alike without one importing the other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from radlvlm.errors import EvaluationInputError

__all__ = ["load_rows"]

_SHOW = 5  # offending lines named in an error message


def load_rows(path: Path | str) -> list[dict[str, Any]]:
    """Read a JSONL (``.jsonl``/``.json``/``.ndjson``) or Parquet (``.parquet``/``.pq``) file into row dicts.

    Raises:
        EvaluationInputError: the file is missing, has an unknown suffix, holds malformed JSON or a line that is
            not a JSON object (the first offending line numbers are named), or is empty.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq  # noqa: PLC0415 - pyarrow: only for Parquet row files

            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise EvaluationInputError(f"{path}: cannot read Parquet ({type(e).__name__})") from e
    elif suffix in (".jsonl", ".json", ".ndjson"):
        rows, bad = [], []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    bad.append(f"line {number}")
                    continue
                if not isinstance(row, dict):
                    bad.append(f"line {number} (not an object)")
                    continue
                row["_row"] = number
                rows.append(row)
        if bad:
            shown = ", ".join(bad[:_SHOW]) + (f" and {len(bad) - _SHOW} more" if len(bad) > _SHOW else "")
            raise EvaluationInputError(f"{path}: {len(bad)} malformed JSON line(s): {shown}")
    else:
        raise EvaluationInputError(f"{path}: unknown file type {suffix!r} (use .jsonl or .parquet)")
    for index, row in enumerate(rows, start=1):
        row.setdefault("_row", index)
    if not rows:
        raise EvaluationInputError(f"{path}: no rows")
    return rows
