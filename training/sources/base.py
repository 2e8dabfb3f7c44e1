"""What every training source shares: the records and drops it yields, the ``Source`` interface, the
split rule, and the manifest readers that name the file, the line and the key of a problem."""

from __future__ import annotations

import abc
import csv
import hashlib
import io
import json
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from radlvlm.errors import InputError
from radlvlm.imaging import read_image_file
from radlvlm.reports import normalize_text

if TYPE_CHECKING:
    pass


SPLITS: tuple[str, ...] = ("train", "validation", "test")
TASKS: tuple[str, ...] = ("draft", "check_simple", "check_complex", "check_image")
_DRAFT = frozenset({"draft"})
# Records whose image has finding labels: reports that agree or disagree with them (radlvlm.tasks.image_checks).
_IMAGE_CHECK = frozenset({"check_image"})
_CHECK = frozenset({"check_simple", "check_complex"})


@dataclass(frozen=True)
class ImageRef:
    """Where one image lives, read only when asked (no pixels are held).

    Args:
        path (`str`): the file, or the zip archive holding it.
        image_id (`str`): a PHI-free name for manifests and errors (a relative path of a public set, or the
            de-identified SOP Instance UID of a hospital image).
        member (`str | None`, defaults to `None`): the member inside the zip at ``path``.
    """

    path: str
    image_id: str
    member: str | None = None

    def load(self) -> torch.Tensor:
        """Display pixels ``(rows, columns)``, float32 in [0, 1], through :func:`radlvlm.imaging.read_image_file`."""
        try:
            if self.member is None:
                image = read_image_file(self.path, name=self.image_id)
            else:
                with zipfile.ZipFile(self.path) as archive:
                    data = archive.read(self.member)
                image = read_image_file(io.BytesIO(data), name=self.image_id)
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise InputError(f"image {self.image_id}: cannot be read ({type(e).__name__})") from e
        return image.pixels


@dataclass(frozen=True)
class Record:
    """One study (or one image of a public set) ready to become examples.

    Args:
        study_id (`str`): pseudonymous study id, unique within the source (``iu-12``, a de-identified UID …).
        patient_id (`str`): pseudonymous patient id the split is keyed on (the study id when the source has no
            patient ids).
        split (`str`): ``train``, ``validation`` or ``test``.
        source (`str`): the source's name.
        findings (`str`, defaults to `""`): findings section (or the drafting target's findings).
        impression (`str`, defaults to `""`): impression section.
        indication (`str`, defaults to `""`): clinical indication (goes into the drafting prompt).
        image (`ImageRef | None`, defaults to `None`): the frontal image, or None for a text-only record.
        tasks (`frozenset[str]`, defaults to all three): the tasks this record may serve.
        labels (`tuple[str, ...]`, defaults to `()`): finding labels (NIH) for label matching.
        extra (`Mapping[str, str]`, defaults to `{}`): PHI-free metadata copied into manifests.
    """

    study_id: str
    patient_id: str
    split: str
    source: str
    findings: str = ""
    impression: str = ""
    indication: str = ""
    image: ImageRef | None = None
    tasks: frozenset[str] = frozenset(TASKS)
    labels: tuple[str, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Drop:
    """A study left out, with a reason from a small fixed vocabulary (never a value from the data).

    ``split`` is None when the study was refused before its split could be known (a file that is not
    de-identified has no pseudonymous patient id yet).
    """

    source: str
    reason: str
    split: str | None = None


@dataclass(frozen=True)
class Note:
    """A record kept with a restriction (e.g. "no image: check tasks only"), counted in the report."""

    source: str
    note: str
    split: str | None = None


Item = Record | Drop | Note


def _take(per_split: dict[str, int], split: str, limit: int | None) -> bool:
    """Count a row towards its split; False once the split already holds ``limit`` rows (quick runs)."""
    if limit is not None and per_split.get(split, 0) >= limit:
        return False
    per_split[split] = per_split.get(split, 0) + 1
    return True


class Source(abc.ABC):
    """Base of every source: a ``name``, ``validate()`` (raises ``InputError``) and ``records()``."""

    name: str = "source"

    def validate(self) -> None:  # noqa: B027 - a source without files to check has nothing to do here
        """Check the files up front; raise :class:`~radlvlm.errors.InputError` naming the file and row."""

    @abc.abstractmethod
    def records(self) -> Iterator[Item]:
        """Yield :class:`Record`, :class:`Drop` and :class:`Note` items, in a deterministic order."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def assign_split(key: str, fractions: Mapping[str, float], *, salt: str = "radlvlm-training:split") -> str:
    """The split of ``key`` (a patient id) by a hash bucket, as the shared data's READMEs do it."""
    bucket = int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:8], 16) % 10_000 / 10_000
    cumulative = 0.0
    for name, fraction in fractions.items():
        cumulative += fraction
        if bucket < cumulative:
            return name
    return list(fractions)[-1]


# --------------------------------------------------------------------------------------------- manifests
def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"{path}: {what} not found")
    if not path.is_file():
        raise InputError(f"{path}: {what} is not a file")


def _read_rows(path: Path, list_keys: Iterable[str] = ()) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a JSONL or CSV manifest with their line numbers; CSV list columns are split on ``|``."""
    rows: list[tuple[int, dict[str, Any]]] = []
    suffix = path.suffix.lower()
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            if suffix == ".jsonl":
                for line_no, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputError(f"{path}: line {line_no} is not JSON (column {e.colno})") from None
                    if not isinstance(row, dict):
                        raise InputError(f"{path}: line {line_no} is not a JSON object")
                    rows.append((line_no, row))
            elif suffix == ".csv":
                reader = csv.DictReader(handle)
                lists = set(list_keys)
                for line_no, row in enumerate(reader, start=2):
                    if None in row:
                        raise InputError(f"{path}: line {line_no} has more fields than the header")
                    parsed: dict[str, Any] = dict(row)
                    for key in lists & parsed.keys():
                        parsed[key] = [v for v in (parsed[key] or "").split("|") if v]
                    rows.append((line_no, parsed))
            else:
                raise InputError(f"{path}: manifest must be .jsonl or .csv, not {suffix or 'no suffix'}")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({type(e).__name__})") from None
    if not rows:
        raise InputError(f"{path}: manifest is empty")
    return rows


def _check_keys(path: Path, line_no: int, row: Mapping[str, Any], known: set[str], required: set[str]) -> None:
    unknown = sorted(set(row) - known)
    if unknown:
        raise InputError(f"{path}: line {line_no}: unknown key(s) {unknown}")
    missing = sorted(required - set(row))
    if missing:
        raise InputError(f"{path}: line {line_no}: missing key(s) {missing}")


def _check_split(path: Path, line_no: int, split: object) -> str:
    if split not in SPLITS:
        raise InputError(f"{path}: line {line_no}: split must be one of {list(SPLITS)}")
    return str(split)


def _text(value: object) -> str:
    return normalize_text(str(value)) if value is not None and str(value).strip() else ""
