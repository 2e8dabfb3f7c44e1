"""Reader study: blinded, randomized grading packets for radiologists, grade import, and agreement.

Each case is one (study, system) pair under a random code; readers see the reference report and a candidate
report, never the system's name. Every reader grades every case (agreement needs it) in their own random order.
The key (code → study, system) and the case texts stay in ``coordinator/``, which is not for readers.

Grades per case: error counts in the six ReXVal categories, split into clinically significant and not, and an
overall acceptability from 1 (acceptable as is) to 4 (unacceptable).
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, select_autoescape

from radlvlm.clinical_eval.judges import REXVAL, Judge
from radlvlm.clinical_eval.predictions import match_rows, report_reference
from radlvlm.clinical_eval.stats import cohen_kappa, fleiss_kappa, kendall_tau
from radlvlm.errors import EvaluationInputError

__all__ = [
    "ACCEPTABILITY",
    "GRADE_COLUMNS",
    "Grade",
    "import_grades",
    "make_reader_packets",
    "reader_agreement",
]

ACCEPTABILITY = {
    1: "acceptable as is",
    2: "acceptable after minor edits",
    3: "needs major edits",
    4: "unacceptable",
}
COUNT_COLUMNS = [f"{c.value}_{s}" for c in REXVAL for s in ("significant", "insignificant")]
GRADE_COLUMNS = ["case", *COUNT_COLUMNS, "acceptability", "comment"]
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_SHOW = 5


@dataclass(frozen=True)
class Grade:
    """One reader's grade of one case."""

    counts: dict[str, int]
    acceptability: int

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def significant(self) -> int:
        return sum(v for k, v in self.counts.items() if k.endswith("_significant"))


def _codes(rng: random.Random, n: int) -> list[str]:
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: codes are read and typed by people
    codes: list[str] = []  # a list, not a set: a set's order would change with PYTHONHASHSEED
    while len(codes) < n:
        code = "".join(rng.choice(alphabet) for _ in range(6))
        if code not in codes:
            codes.append(code)
    return codes


def _packet_html(reader: str, cases: list[dict[str, Any]]) -> str:
    template = resources.files("radlvlm.clinical_eval").joinpath("templates/reader_packet.html.j2").read_text("utf-8")
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    categories = [c.value.replace("_", " ") for c in REXVAL]
    return env.from_string(template).render(
        reader=reader, cases=cases, categories=categories, acceptability=ACCEPTABILITY, columns=GRADE_COLUMNS
    )


def make_reader_packets(
    references: Sequence[Mapping[str, Any]],
    systems: Mapping[str, Sequence[Mapping[str, Any]]],
    readers: Sequence[str],
    out_dir: Path | str,
    *,
    n_studies: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write blinded, randomized packets (``packet_<reader>.html`` + ``grades_<reader>.csv``) and the
    coordinator's key.

    Args:
        references (`Sequence[Mapping]`): reference rows (``id`` + ``reference``, or IU-Xray manifest rows).
        systems (`Mapping[str, Sequence[Mapping]]`): predictions rows per system name.
        readers (`Sequence[str]`): reader names (letters, digits, ``-``, ``_``); at least one.
        out_dir (`Path`): created if needed.
        n_studies (`int`, *optional*): studies to sample (seeded) from those every system covers; all if omitted.
        seed (`int`, defaults to `0`): seeds sampling, codes and per-reader order.

    Returns:
        Summary: studies, systems, cases, readers, paths.
    """
    if not readers or len(set(readers)) != len(readers) or not all(_SAFE_NAME.match(r) for r in readers):
        raise EvaluationInputError("readers must be distinct names of letters, digits, '-' or '_' (1-40 chars)")
    if not systems:
        raise EvaluationInputError("no system to grade")
    ref_rows = [dict(r) for r in references]
    texts, common = _system_texts(ref_rows, systems)
    reference_by_id = {str(r.get("id", r.get("uid"))): report_reference(r) for r in ref_rows}
    # One stream, drawn in a fixed order (sample, then codes): the same seed gives the same packets.
    rng = random.Random(f"radlvlm-reader:{seed}")
    study_ids = _sample_studies(sorted(common), n_studies, rng)
    pairs = [(s, name) for s in study_ids for name in sorted(systems)]
    codes = _codes(rng, len(pairs))
    cases = [
        {"case": code, "study_id": s, "system": name, "reference": reference_by_id[s], "candidate": texts[name][s]}
        for code, (s, name) in zip(codes, pairs, strict=True)
    ]
    out = Path(out_dir)
    _write_coordinator_files(out / "coordinator", cases)
    for k, reader in enumerate(readers):
        _write_reader_files(out, reader, cases, seed=seed, index=k)
    return {
        "studies": len(study_ids),
        "systems": sorted(systems),
        "cases": len(cases),
        "readers": list(readers),
        "out_dir": str(out),
    }


def _system_texts(
    ref_rows: list[dict[str, Any]], systems: Mapping[str, Sequence[Mapping[str, Any]]]
) -> tuple[dict[str, dict[str, str]], set[str]]:
    """Each system's candidate text by study id, and the ids every system and the references cover."""
    texts: dict[str, dict[str, str]] = {}
    common: set[str] | None = None
    for name, rows in systems.items():
        data = match_rows(
            [dict(r) for r in rows],
            ref_rows,
            errorcheck=False,
            allow_missing=True,
            names=(f"predictions of {name}", "references"),
        )
        texts[name] = {i: p["prediction"] for i, p in zip(data.ids, data.predictions, strict=True)}
        common = set(data.ids) if common is None else common & set(data.ids)
    return texts, common or set()


def _sample_studies(study_ids: list[str], n_studies: int | None, rng: random.Random) -> list[str]:
    """``n_studies`` of the (sorted) study ids drawn with ``rng``, or all of them; never none."""
    if n_studies is not None:
        if n_studies < 1:
            raise EvaluationInputError("n_studies must be at least 1")
        study_ids = sorted(rng.sample(study_ids, min(n_studies, len(study_ids))))
    if not study_ids:
        raise EvaluationInputError("no study is covered by every system and the references")
    return study_ids


def _write_coordinator_files(coordinator: Path, cases: list[dict[str, Any]]) -> None:
    """The key (case code → study, system) and the cases, which un-blind the study: not for readers."""
    coordinator.mkdir(parents=True, exist_ok=True)
    with (coordinator / "key.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "study_id", "system"])
        for c in sorted(cases, key=lambda c: c["case"]):
            writer.writerow([c["case"], c["study_id"], c["system"]])
    with (coordinator / "cases.jsonl").open("w") as handle:
        for c in cases:
            handle.write(json.dumps(c) + "\n")
    (coordinator / "README.txt").write_text(
        "Coordinator only: these files un-blind the study (which system wrote which case). Do not give them to "
        "readers. Give each reader their packet_<reader>.html and grades_<reader>.csv.\n"
    )


def _write_reader_files(out: Path, reader: str, cases: list[dict[str, Any]], *, seed: int, index: int) -> None:
    """One reader's packet and empty grade sheet, with the cases in an order of their own.

    Each case's place is drawn from a stream seeded by the seed, the reader's position and the case code, so a
    reader's order stays the same when readers are added after them.
    """
    order = sorted(cases, key=lambda c: random.Random(f"radlvlm-reader:{seed}:{index}:{c['case']}").random())
    (out / f"packet_{reader}.html").write_text(_packet_html(reader, order), encoding="utf-8")
    with (out / f"grades_{reader}.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(GRADE_COLUMNS)
        for c in order:
            writer.writerow([c["case"], *[""] * (len(GRADE_COLUMNS) - 1)])


def _load_cases(packet_dir: Path) -> list[dict[str, Any]]:
    path = packet_dir / "coordinator" / "cases.jsonl"
    if not path.is_file():
        raise EvaluationInputError(f"{path}: no such file (is {packet_dir} a reader-packets folder?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _first(items: list[str], what: str) -> str:
    more = f" and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"{len(items)} {what}: {', '.join(items[:_SHOW])}{more}"


def import_grades(packet_dir: Path | str, grade_files: Sequence[Path | str]) -> dict[str, dict[str, Grade]]:
    """Read readers' filled-in grade sheets (reader name from ``grades_<reader>.csv``) and check them.

    Raises:
        EvaluationInputError: a missing column, an unknown, repeated or missing case, or a count that is not a
            whole number >= 0, or an acceptability outside 1-4; the first offending rows are named.
    """
    packet_dir = Path(packet_dir)
    known = {c["case"] for c in _load_cases(packet_dir)}
    out: dict[str, dict[str, Grade]] = {}
    for file in map(Path, grade_files):
        match = re.fullmatch(r"grades_([A-Za-z0-9_-]+)\.csv", file.name)
        if not match or not file.is_file():
            raise EvaluationInputError(f"{file}: expected an existing file named grades_<reader>.csv")
        reader = match.group(1)
        with file.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            header = rows[0].keys() if rows else []
        missing_cols = [c for c in GRADE_COLUMNS[:-1] if c not in header]
        if missing_cols:
            raise EvaluationInputError(f"{file.name}: missing column(s) {', '.join(missing_cols)}")
        grades: dict[str, Grade] = {}
        bad, unknown, repeated = [], [], []
        for number, row in enumerate(rows, start=2):  # row 1 is the header
            code = (row.get("case") or "").strip()
            if code not in known:
                unknown.append(f"row {number}")
                continue
            if code in grades:
                repeated.append(f"row {number} (case {code})")
                continue
            try:
                counts = {c: int(str(row[c]).strip() or "x") for c in COUNT_COLUMNS}
                acceptability = int(str(row["acceptability"]).strip())
            except ValueError:
                bad.append(f"row {number} (case {code})")
                continue
            if any(v < 0 for v in counts.values()) or acceptability not in ACCEPTABILITY:
                bad.append(f"row {number} (case {code})")
                continue
            grades[code] = Grade(counts, acceptability)
        not_graded = sorted(known - set(grades) - {(r.get("case") or "").strip() for r in rows})
        problems = []
        if unknown:
            problems.append(_first(unknown, "row(s) with an unknown case code"))
        if repeated:
            problems.append(_first(repeated, "repeated case(s)"))
        if bad:
            problems.append(_first(bad, "row(s) with a blank or invalid count or acceptability (1-4)"))
        if not_graded:
            problems.append(_first([f"case {c}" for c in not_graded], "case(s) missing"))
        if problems:
            raise EvaluationInputError(f"{file.name}: " + "; ".join(problems))
        out[reader] = grades
    if not out:
        raise EvaluationInputError("no grade file given")
    return out


def reader_agreement(
    packet_dir: Path | str, grades: Mapping[str, Mapping[str, Grade]], judges: Sequence[Judge] = ()
) -> dict[str, Any]:
    """Inter-reader agreement and judge-reader agreement.

    Cohen's kappa per reader pair (acceptability unweighted and quadratic-weighted; "any significant error"),
    Fleiss' kappa over all readers, and Kendall's tau-b between each judge's per-case error count (all and
    significant) and the readers' mean count; per-system mean reader grades.
    """
    cases = _load_cases(Path(packet_dir))
    codes = [c["case"] for c in cases]
    readers = sorted(grades)
    out: dict[str, Any] = {"readers": readers, "n_cases": len(codes), "pairs": {}}
    accept = {r: [grades[r][c].acceptability for c in codes] for r in readers}
    anysig = {r: [int(grades[r][c].significant > 0) for c in codes] for r in readers}
    for i, a in enumerate(readers):
        for b in readers[i + 1 :]:
            out["pairs"][f"{a}~{b}"] = {
                "acceptability_kappa": cohen_kappa(accept[a], accept[b]),
                "acceptability_kappa_quadratic": cohen_kappa(accept[a], accept[b], weights="quadratic"),
                "any_significant_error_kappa": cohen_kappa(anysig[a], anysig[b]),
            }
    if len(readers) >= 2:
        out["fleiss_kappa"] = {
            "acceptability": fleiss_kappa([[accept[r][k] for r in readers] for k in range(len(codes))]),
            "any_significant_error": fleiss_kappa([[anysig[r][k] for r in readers] for k in range(len(codes))]),
        }
    mean_total = [float(np.mean([grades[r][c].total for r in readers])) for c in codes]
    mean_sig = [float(np.mean([grades[r][c].significant for r in readers])) for c in codes]
    out["judges"] = {}
    for judge in judges:
        results = [judge.judge(c["candidate"], c["reference"]) for c in cases]
        out["judges"][judge.name] = {
            "kendall_tau_total_errors": kendall_tau([r.count() for r in results], mean_total),
            "kendall_tau_significant_errors": kendall_tau([r.count(significant=True) for r in results], mean_sig),
        }
    per_system: dict[str, Any] = {}
    for system in sorted({c["system"] for c in cases}):
        mine = [c["case"] for c in cases if c["system"] == system]
        per_system[system] = {
            "n_cases": len(mine),
            "mean_acceptability": float(np.mean([grades[r][c].acceptability for r in readers for c in mine])),
            "mean_errors": float(np.mean([grades[r][c].total for r in readers for c in mine])),
            "mean_significant_errors": float(np.mean([grades[r][c].significant for r in readers for c in mine])),
        }
    out["per_system"] = per_system
    return out
