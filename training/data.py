"""The dataset layer of training: sources → validated records → a seeded task mixture of examples.

```python
from radlvlm.training.data import TaskMixture, build_examples, write_manifest
from radlvlm.training.sources import CovidSource, IUXraySource, NIHSource
from radlvlm.training.pseudo_pairs import LabelMatchedPairs

iu, nih = IUXraySource("shared/data/iu_xray"), NIHSource("shared/data/nih_cxr14/manifest.jsonl")
sources = [iu, nih, CovidSource("shared/data/covid_chestxray/manifest.jsonl"), LabelMatchedPairs(nih, iu)]
train, report = build_examples(sources, mixture=TaskMixture(), split="train", seed=0)
print(report.to_table())  # counts kept and dropped per source, with reasons, before training starts
write_manifest(train, "runs/x/train.manifest.jsonl")
```

Tasks (prompts and targets from :mod:`radlvlm.tasks`):

* ``draft`` — image (+ indication) → ``FINDINGS: … IMPRESSION: …``. Needs a record with an image.
* ``check_simple`` / ``check_complex`` — a report with, for ``error_fraction`` of the studies, one injected
  error (:func:`radlvlm.tasks.build_errorcheck_set`) → yes/no, or JSON with category and span. The image is
  attached when the record has one (hospital studies); IU reports without images give text-only checks. With
  ``check_variants > 1`` the train split draws from up to that many rows per study
  (:func:`radlvlm.tasks.build_errorcheck_training_set`: varied surface forms, clean and errored, errors of many
  families), and the check pools count those rows; validation and test keep one row per study.
* ``check_image`` — a SIMPLE check against the image: for a record whose image has finding labels (NIH), a
  report faithful to the labels and one with a finding added, removed or negated
  (:func:`radlvlm.tasks.image_checks.image_check_reports`). Both read consistently as text; only the image
  tells them apart. Each labelled image gives the pool two rows.

Mixture: the weights are the shares of each task in the dataset. Each task draws from its own pool (every
record that can serve it, once); the dataset is the largest one whose shares fit in every pool (and at most
``max_examples``), so nothing is repeated to fill a share and the larger pools are down-sampled by a seeded
hash. The two check tasks draw from the same pool independently: one study may be asked both questions,
never in two splits. A task with weight > 0 and an empty pool is an error, raised before training.

Splits are the sources' (by patient, or by study where a source has no patient id); ``build_examples``
checks every record of every split and raises if a patient or study id appears in two splits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from radlvlm.errors import InputError
from radlvlm.tasks import build_errorcheck_set, build_errorcheck_training_set, errorcheck_prompt
from radlvlm.tasks.drafting import draft_prompt, draft_target
from radlvlm.tasks.image_checks import image_check_reports
from radlvlm.training.sources import SPLITS, TASKS, Drop, ImageRef, Note, Record, Source

__all__ = [
    "TASKS",
    "DatasetReport",
    "Example",
    "ExampleDataset",
    "SourceCounts",
    "TaskMixture",
    "build_examples",
    "write_manifest",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One training example, as the trainer consumes it.

    Args:
        study_id (`str`): pseudonymous id (never a name or MRN).
        task (`str`): ``"draft"``, ``"check_simple"`` or ``"check_complex"``.
        instruction (`str`): the user instruction, without chat template and without ``<image>``.
        response (`str`): the target answer.
        image (`torch.Tensor | None`): display pixels ``(rows, columns)`` float32 in [0, 1], or None.
        split (`str`): ``"train"``, ``"validation"`` or ``"test"``.
        source (`str`): the source's name (``"iu_xray"``, ``"covid"``, ``"nih_cxr14"``, ``"hospital"`` …).
    """

    study_id: str
    task: str
    instruction: str
    response: str
    image: torch.Tensor | None
    split: str
    source: str


@dataclass(frozen=True)
class TaskMixture:
    """Shares of the tasks in a dataset, and how error-check sets are built.

    Args:
        draft (`float`, defaults to `1.0`): weight of report drafting.
        check_simple (`float`, defaults to `0.5`): weight of yes/no error checking.
        check_complex (`float`, defaults to `0.5`): weight of error type + span checking.
        check_image (`float`, defaults to `0.0`): weight of yes/no checks of label-derived reports against the
            image.
        error_fraction (`float`, defaults to `0.5`): share of check examples whose report carries an
            injected error, in (0, 1).
        max_examples (`int | None`, defaults to `None`): cap on the dataset's size (shares kept).
        with_indication (`bool`, defaults to `True`): put the clinical indication into drafting prompts.
        check_variants (`int`, defaults to `1`): for the ``train`` split, how many rows each study may give
            each check task (:func:`radlvlm.tasks.build_errorcheck_training_set`: varied surface forms, clean and
            with one error of many families). 1 keeps one row per study (:func:`radlvlm.tasks.build_errorcheck_set`,
            as the validation and test splits always do).

    Weights must be finite and non-negative with a positive sum; only their ratios matter.
    """

    draft: float = 1.0
    check_simple: float = 0.5
    check_complex: float = 0.5
    check_image: float = 0.0
    error_fraction: float = 0.5
    max_examples: int | None = None
    with_indication: bool = True
    check_variants: int = 1

    def __post_init__(self) -> None:
        for name in TASKS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InputError(f"mixture weight {name} must be a finite number >= 0, got {value!r}")
        if sum(self.weights.values()) <= 0:
            raise InputError("mixture weights must not all be 0")
        if not isinstance(self.error_fraction, int | float) or not 0.0 < self.error_fraction < 1.0:
            raise InputError(f"error_fraction must be in (0, 1), got {self.error_fraction!r}")
        if self.max_examples is not None and (
            isinstance(self.max_examples, bool) or not isinstance(self.max_examples, int) or self.max_examples < 1
        ):
            raise InputError(f"max_examples must be a positive integer or None, got {self.max_examples!r}")
        if isinstance(self.check_variants, bool) or not isinstance(self.check_variants, int) or self.check_variants < 1:
            raise InputError(f"check_variants must be a positive integer, got {self.check_variants!r}")

    @property
    def weights(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in TASKS}

    @property
    def shares(self) -> dict[str, float]:
        """Each task's share of the dataset (weights over their sum)."""
        total = sum(self.weights.values())
        return {name: weight / total for name, weight in self.weights.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskMixture:
        """Build from a recipe's mapping; unknown keys raise ``InputError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown mixture key(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------- report
@dataclass
class SourceCounts:
    """What one source gave for the split being built.

    Args:
        kept (`int`): records of this split kept (before the mixture picks among them).
        dropped (`Counter[str]`): records of this split left out, by reason; refusals made before a split
            could be known ("not de-identified" …) are counted in every split's report.
        notes (`Counter[str]`): records kept with a restriction ("no image: check tasks only" …).
        other_splits (`int`): records kept for the other splits.
    """

    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)
    other_splits: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "notes": dict(sorted(self.notes.items())),
            "other_splits": self.other_splits,
        }


@dataclass
class DatasetReport:
    """Counts kept and dropped per source with reasons, the task pools and the examples built.

    Printable as a table (``str(report)`` / :meth:`to_table`) and as JSON (:meth:`to_json`); PHI-free.
    """

    split: str
    seed: int
    mixture: dict[str, Any]
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    pools: dict[str, int] = field(default_factory=dict)
    examples: dict[str, dict[str, int]] = field(default_factory=dict)  # source → task → n

    @property
    def n_examples(self) -> int:
        return sum(sum(tasks.values()) for tasks in self.examples.values())

    def task_counts(self) -> dict[str, int]:
        return {task: sum(tasks.get(task, 0) for tasks in self.examples.values()) for task in TASKS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "seed": self.seed,
            "mixture": self.mixture,
            "sources": {name: counts.to_dict() for name, counts in self.sources.items()},
            "pools": dict(self.pools),
            "examples": {name: dict(tasks) for name, tasks in self.examples.items()},
            "task_counts": self.task_counts(),
            "n_examples": self.n_examples,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_table(self) -> str:
        """A fixed-width table: one line per source (kept, dropped by reason, notes), then examples per task."""
        header = ["source", "kept", "other splits", "dropped", *TASKS, "notes"]
        lines = []
        for name, counts in self.sources.items():
            dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.dropped.items())) or "-"
            notes = ", ".join(f"{note} {n}" for note, n in sorted(counts.notes.items())) or "-"
            built = self.examples.get(name, {})
            lines.append(
                [
                    name,
                    str(counts.kept),
                    str(counts.other_splits),
                    dropped,
                    *(str(built.get(t, 0)) for t in TASKS),
                    notes,
                ]
            )
        totals = self.task_counts()
        lines.append(["total", str(sum(c.kept for c in self.sources.values())), "", "", *map(str, totals.values()), ""])
        lines.append(["pool", "", "", "", *(str(self.pools.get(t, 0)) for t in TASKS), ""])
        widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
        render = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in [header, *lines]]
        title = f"dataset split={self.split} seed={self.seed}: {self.n_examples} examples"
        return "\n".join([title, *render])

    def __str__(self) -> str:
        return self.to_table()


# --------------------------------------------------------------------------------------------- dataset
@dataclass(frozen=True)
class _Entry:
    """An example without pixels: text, a lazy image reference and PHI-free metadata."""

    study_id: str
    patient_id: str
    task: str
    instruction: str
    response: str
    image: ImageRef | None
    split: str
    source: str
    meta: Mapping[str, Any] = field(default_factory=dict)


class ExampleDataset(Dataset):
    """A map-style dataset of :class:`Example`; images are read from their files on each access.

    Holds text and file references only (no pixels). The order is fixed at build time (seeded), so the same
    sources, mixture and seed give the same dataset, index for index.
    """

    def __init__(self, entries: Sequence[_Entry]) -> None:
        self._entries = list(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> Example:
        entry = self._entries[index]
        image = entry.image.load() if entry.image is not None else None
        return Example(entry.study_id, entry.task, entry.instruction, entry.response, image, entry.split, entry.source)

    def metadata(self, index: int) -> dict[str, Any]:
        """PHI-free metadata of example ``index`` (what :func:`write_manifest` writes, without the text)."""
        entry = self._entries[index]
        return {
            "study_id": entry.study_id,
            "patient_id": entry.patient_id,
            "task": entry.task,
            "split": entry.split,
            "source": entry.source,
            "image": entry.image.image_id if entry.image is not None else None,
            **entry.meta,
        }

    def text(self, index: int) -> tuple[str, str]:
        """(instruction, response) of example ``index`` without reading its image."""
        entry = self._entries[index]
        return entry.instruction, entry.response

    def has_image(self, index: int) -> bool:
        return self._entries[index].image is not None

    def task_counts(self) -> dict[str, int]:
        counts = Counter(entry.task for entry in self._entries)
        return {task: counts.get(task, 0) for task in TASKS}


class SplitRegistry:
    """Which split each patient and study was seen in: a second split for either is leakage and refused."""

    def __init__(self) -> None:
        self._seen: dict[str, dict[str, tuple[str, str]]] = {"patient": {}, "study": {}}

    def check(self, item: Record) -> None:
        for what, value in (("patient", item.patient_id), ("study", item.study_id)):
            seen = self._seen[what].setdefault(value, (item.split, item.source))
            if seen[0] != item.split:
                raise InputError(
                    f"{what} {value} is in split {seen[0]!r} ({seen[1]}) and {item.split!r} ({item.source}): "
                    "splits must not share patients or studies"
                )


def write_manifest(dataset: ExampleDataset, path: str | Path, *, include_text: bool = True) -> Path:
    """Write one JSON line per example: ids, task, split, source, image id, error metadata (+ text).

    No pixels and no PHI: ids are pseudonymous, images are named by a public relative path or a
    de-identified UID (never a hospital file name), and text is the de-identified instruction and response.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for index in range(len(dataset)):
            row = {"index": index, **dataset.metadata(index)}
            if include_text:
                row["instruction"], row["response"] = dataset.text(index)
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------------- building
def _rank(*parts: object) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:16], 16)


def _plan(mixture: TaskMixture, pools: Mapping[str, int], split: str) -> dict[str, int]:
    """How many examples of each task: the largest dataset whose shares fit every pool."""
    shares = {task: share for task, share in mixture.shares.items() if share > 0}
    for task in shares:
        if pools.get(task, 0) == 0:
            hint = " (drafting needs images: IU-Xray without image_root gives check examples only)"
            raise InputError(
                f"mixture asks for {task!r} examples but no source gives any for split {split!r}"
                + (hint if task == "draft" else "")
            )
    total = min(math.floor(pools[task] / share + 1e-9) for task, share in shares.items())
    if mixture.max_examples is not None:
        total = min(total, mixture.max_examples)
    return {task: min(pools.get(task, 0), round(total * shares[task])) if task in shares else 0 for task in TASKS}


def build_examples(
    sources: Iterable[Source], *, mixture: TaskMixture, split: str, seed: int
) -> tuple[ExampleDataset, DatasetReport]:
    """Validate every source, read all records, check splits for leakage and build ``split``'s examples.

    Args:
        sources (`Iterable[Source]`): the sources (names must be unique).
        mixture (`TaskMixture`): task shares and error fraction.
        split (`str`): ``"train"``, ``"validation"`` or ``"test"``.
        seed (`int`): seeds the down-sampling, error injection and order.

    Returns:
        ``(dataset, report)``.

    Raises:
        InputError: an unknown split, no or duplicate sources, a source's file problem (from its
            ``validate``), a source that keeps no record in any split, a patient or study in two splits,
            or a task the mixture asks for with nothing to draw from.
    """
    sources = _checked_sources(sources, mixture, split)
    report = DatasetReport(split=split, seed=seed, mixture=mixture.to_dict())
    records = _read_records(sources, split, report)
    draft_pool = [r for r in records if "draft" in r.tasks and r.image is not None and (r.findings or r.impression)]
    check_pool = [r for r in records if r.tasks & {"check_simple", "check_complex"} and (r.findings or r.impression)]
    # Training check pools count rows: each study may give up to ``check_variants`` varied rows per check task.
    variants = mixture.check_variants if split == "train" else 1
    image_pool = [r for r in records if "check_image" in r.tasks and r.image is not None and r.labels]
    pools = {
        "draft": len(draft_pool),
        "check_simple": variants * sum("check_simple" in r.tasks for r in check_pool),
        "check_complex": variants * sum("check_complex" in r.tasks for r in check_pool),
        "check_image": 2 * len(image_pool),
    }
    report.pools = pools
    plan = _plan(mixture, pools, split)

    entries = _draft_entries(draft_pool, plan["draft"], mixture, split, seed)
    for task, kind in (("check_simple", "simple"), ("check_complex", "complex")):
        if plan[task] == 0:
            continue
        entries += _check_entries(check_pool, task, kind, plan[task], variants, mixture, split, seed)
    if plan["check_image"]:
        entries += _image_check_entries(image_pool, plan["check_image"], split, seed)
    entries.sort(key=lambda e: _rank(seed, "order", e.task, e.source, e.study_id))
    for entry in entries:
        report.examples.setdefault(entry.source, {task: 0 for task in TASKS})[entry.task] += 1
    return ExampleDataset(entries), report


def _checked_sources(sources: Iterable[Source], mixture: TaskMixture, split: str) -> list[Source]:
    """The sources as a list, after the arguments are checked and every source validated: every layout problem
    surfaces before any record is read."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if not isinstance(mixture, TaskMixture):
        raise InputError(f"mixture must be a TaskMixture, got {type(mixture).__name__}")
    sources = list(sources)
    if not sources:
        raise InputError("no data source given")
    names = [source.name for source in sources]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InputError(f"source names must be unique; repeated: {duplicates}")
    for source in sources:
        source.validate()
    return sources


def _read_records(sources: list[Source], split: str, report: DatasetReport) -> list[Record]:
    """Every record of ``split``, source by source, counted in ``report``. Records of every split are read, so
    that a patient or study in two splits (of any sources) is refused, and a source that keeps nothing at all is
    an error naming its drop reasons."""
    records: list[Record] = []
    splits = SplitRegistry()
    for source in sources:
        report.sources[source.name] = counts = SourceCounts()
        kept_any: Counter[str] = Counter()
        for item in source.records():
            if isinstance(item, Drop):
                if item.split is None or item.split == split:
                    counts.dropped[item.reason] += 1
                continue
            if isinstance(item, Note):
                if item.split is None or item.split == split:
                    counts.notes[item.note] += 1
                continue
            kept_any[item.split] += 1
            splits.check(item)
            if item.split == split:
                counts.kept += 1
                records.append(item)
            else:
                counts.other_splits += 1
        if not kept_any:
            reasons = ", ".join(f"{r} {n}" for r, n in sorted(counts.dropped.items())) or "no records"
            raise InputError(f"source {source.name!r} kept no record in any split ({reasons})")
        logger.info("source %s: %d records kept for %s", source.name, counts.kept, split)
    return records


def _draft_entries(draft_pool: list[Record], wanted: int, mixture: TaskMixture, split: str, seed: int) -> list[_Entry]:
    """``wanted`` drafting examples: the first studies of the pool in a seeded order (a hash, so a study keeps its
    place whatever else the pool holds)."""
    entries: list[_Entry] = []
    chosen = sorted(draft_pool, key=lambda r: _rank(seed, "draft", r.source, r.study_id))[:wanted]
    for record in chosen:
        indication = record.indication if mixture.with_indication else None
        entries.append(
            _Entry(
                record.study_id,
                record.patient_id,
                "draft",
                draft_prompt(indication),
                draft_target(record.findings, record.impression),
                record.image,
                split,
                record.source,
                dict(record.extra),
            )
        )
    return entries


def _check_entries(
    check_pool: list[Record],
    task: str,
    kind: str,
    wanted: int,
    variants: int,
    mixture: TaskMixture,
    split: str,
    seed: int,
) -> list[_Entry]:
    """``wanted`` examples of error-check ``task`` (SIMPLE or COMPLEX ``kind``), in the order of their rows."""
    pool = [r for r in check_pool if task in r.tasks]
    ranked = sorted(pool, key=lambda r: _rank(seed, task, r.source, r.study_id))
    chosen, rows = _check_rows(ranked, task, wanted, variants, mixture.error_fraction, split, seed)
    by_id = {r.study_id: r for r in chosen}
    entries: list[_Entry] = []
    for row in rows:
        record = by_id[row["uid"]]
        meta = {**record.extra, "has_error": row["has_error"], "category": row["category"], "edit": row["edit"]}
        if variants > 1:
            meta.update(family=row["family"], variant=row["variant"])
        entries.append(
            _Entry(
                record.study_id,
                record.patient_id,
                task,
                errorcheck_prompt(kind, row["text"]),
                row[f"{kind}_target"],
                record.image,
                split,
                record.source,
                meta,
            )
        )
    return entries


def _check_rows(
    ranked: list[Record], task: str, wanted: int, variants: int, error_fraction: float, split: str, seed: int
) -> tuple[list[Record], list[dict[str, Any]]]:
    """The studies chosen for a check task and their error-check rows.

    With one variant, the first ``wanted`` studies each give one row (:func:`build_errorcheck_set`). With more,
    as many studies as the plan allows (breadth first), then as few variants each as fill the plan
    (:func:`build_errorcheck_training_set`); the rows are then down-sampled to the plan by a seeded hash, so
    shares stay shares of examples.
    """
    task_seed = _rank(seed, task) % (2**31)
    if variants == 1:
        chosen = ranked[:wanted]
        rows, _ = build_errorcheck_set(_report_rows(chosen, split), seed=task_seed, error_fraction=error_fraction)
        return chosen, rows
    chosen = ranked[: min(len(ranked), wanted)]
    per_study = min(variants, math.ceil(wanted / len(chosen)))
    rows, _ = build_errorcheck_training_set(
        _report_rows(chosen, split),
        seed=task_seed,
        variants_per_report=per_study,
        error_fraction=error_fraction,
    )
    return chosen, sorted(rows, key=lambda row: _rank(seed, task, "row", row["id"]))[:wanted]


def _report_rows(records: list[Record], split: str) -> list[dict[str, Any]]:
    """The report rows the error-check builders read (IU-Xray manifest layout)."""
    return [{"uid": r.study_id, "split": split, "findings": r.findings, "impression": r.impression} for r in records]


def _image_check_entries(image_pool: list[Record], wanted: int, split: str, seed: int) -> list[_Entry]:
    """``wanted`` SIMPLE checks against the image: per labelled image (seeded order) one report faithful to its
    labels and one wrong about a finding; an odd ``wanted`` leaves out the last image's second report."""
    ranked = sorted(image_pool, key=lambda r: _rank(seed, "check_image", r.source, r.study_id))
    image_entries: list[_Entry] = []
    for record in ranked[: math.ceil(wanted / 2)]:
        pair = image_check_reports(record.labels, seed=_rank(seed, "check_image", record.study_id) % 2**31)
        for checked in pair:
            meta = {**record.extra, "has_error": checked.has_error, "kind": checked.kind, "label": checked.label}
            image_entries.append(
                _Entry(
                    record.study_id,
                    record.patient_id,
                    "check_image",
                    errorcheck_prompt("simple", checked.text),
                    "yes" if checked.has_error else "no",
                    record.image,
                    split,
                    record.source,
                    meta,
                )
            )
    return image_entries[:wanted]
