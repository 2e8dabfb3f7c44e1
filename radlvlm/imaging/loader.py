"""A file, a folder or a zip of DICOM / PNG / JPEG → studies, with the bad files reported, not fatal.

``iter_images`` streams (one decoded image in memory at a time, for inspection of large folders);
``load_studies`` groups everything into ``Study`` objects by StudyInstanceUID.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radlvlm.errors import EmptyInputError, InputError, RadlvlmError
from radlvlm.imaging.dicom import read_image_file
from radlvlm.imaging.study import Image, Study, summarize_studies

logger = logging.getLogger(__name__)

# Files that are part of a DICOM media layout but hold no image.
_INDEX_FILES = {"DICOMDIR"}
# A zip member larger than this is refused rather than inflated into memory (zip-bomb guard).
MAX_ZIP_MEMBER_BYTES = 2 << 30


@dataclass(frozen=True)
class Failure:
    """A file that could not be read, with the error class and a PHI-free reason."""

    source: str
    error: str
    reason: str

    def summary(self) -> dict[str, str]:
        return {"source": self.source, "error": self.error, "reason": self.reason}


@dataclass
class LoadResult:
    studies: list[Study] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return sum(len(study.images) for study in self.studies)

    def summary(self) -> dict[str, Any]:
        return {
            "n_studies": len(self.studies),
            "n_images": self.n_images,
            "n_failed": len(self.failures),
            "studies": [study.summary() for study in self.studies],
            "failures": [failure.summary() for failure in self.failures],
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class _Entry:
    """One candidate file: a name for reports and a way to read its bytes."""

    name: str
    read: Callable[[], bytes]


ProgressCallback = Callable[[int, int], None]


def iter_images(
    path: str | Path,
    *,
    frame: int | None = None,
    on_progress: ProgressCallback | None = None,
    skipped: list[str] | None = None,
) -> Iterator[Image | Failure]:
    """Yield an ``Image`` or a ``Failure`` for every candidate file under ``path``.

    A single file that cannot be read raises its radlvlm error; inside a folder or zip the error becomes a
    ``Failure`` and the walk goes on. ``on_progress(done, total)`` is called after each file.
    """
    entries = list(_entries(Path(path), skipped if skipped is not None else []))
    total = len(entries)
    single_file = Path(path).is_file() and not zipfile.is_zipfile(path)
    for done, entry in enumerate(entries, start=1):
        try:
            yield read_image_file(_BytesSource(entry), name=entry.name, frame=frame)
        except RadlvlmError as e:
            if single_file:
                raise
            logger.info("skipping unreadable file: %s (%s)", entry.name, type(e).__name__)
            yield Failure(entry.name, type(e).__name__, str(e))
        finally:
            if on_progress is not None:
                on_progress(done, total)


def load_studies(
    path: str | Path, *, frame: int | None = None, on_progress: ProgressCallback | None = None
) -> LoadResult:
    """Read every image under ``path`` and group them into studies (sorted by StudyInstanceUID)."""
    result = LoadResult()
    by_uid: dict[str, Study] = {}
    for item in iter_images(path, frame=frame, on_progress=on_progress, skipped=result.skipped):
        if isinstance(item, Failure):
            result.failures.append(item)
            continue
        study = by_uid.setdefault(item.study_instance_uid, Study(item.study_instance_uid))
        study.add(item)
    result.studies = [by_uid[uid] for uid in sorted(by_uid)]
    return result


class _BytesSource:
    """File-like adapter so ``read_image_file`` reads folder files and zip members alike."""

    def __init__(self, entry: _Entry) -> None:
        self._entry = entry

    def read(self) -> bytes:
        return self._entry.read()


def _entries(path: Path, skipped: list[str]) -> Iterator[_Entry]:
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file():
        if zipfile.is_zipfile(path):
            yield from _zip_entries(path, skipped)
        else:
            yield _Entry(str(path), path.read_bytes)
        return
    files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
    if not files:
        raise EmptyInputError(f"{path}: folder contains no files")
    for file in files:
        if file.name.upper() in _INDEX_FILES:
            skipped.append(f"{file}: DICOMDIR index, not an image")
            continue
        yield _Entry(str(file), file.read_bytes)


def _zip_entries(path: Path, skipped: list[str]) -> Iterator[_Entry]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise InputError(f"{path}: damaged zip archive") from e
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not _hidden(Path(m.filename))]
        if not members:
            raise EmptyInputError(f"{path}: zip archive contains no files")
        for member in sorted(members, key=lambda m: m.filename):
            name = f"{path}!{member.filename}"
            if Path(member.filename).name.upper() in _INDEX_FILES:
                skipped.append(f"{name}: DICOMDIR index, not an image")
                continue
            if member.file_size > MAX_ZIP_MEMBER_BYTES:
                skipped.append(f"{name}: {member.file_size} bytes uncompressed, over the {MAX_ZIP_MEMBER_BYTES} limit")
                continue
            yield _Entry(name, _member_reader(archive.filename or str(path), member.filename))


def _member_reader(archive_path: str, member: str) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with zipfile.ZipFile(archive_path) as archive:
                return archive.read(member)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise InputError(f"{archive_path}!{member}: damaged zip member ({type(e).__name__})") from e

    return read


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in relative.parts)


def inspect_path(
    path: str | Path, *, frame: int | None = None, on_progress: ProgressCallback | None = None
) -> dict[str, Any]:
    """JSON summary of everything under ``path``, streaming: only one image's pixels are held at a time."""
    rows: list[tuple[str, str, dict[str, Any]]] = []
    failures: list[Failure] = []
    skipped: list[str] = []
    for item in iter_images(path, frame=frame, on_progress=on_progress, skipped=skipped):
        if isinstance(item, Failure):
            failures.append(item)
        else:
            rows.append((item.study_instance_uid, item.series_instance_uid, item.summary()))
    studies = summarize_studies(rows)
    return {
        "n_studies": len(studies),
        "n_images": len(rows),
        "n_failed": len(failures),
        "studies": studies,
        "failures": [failure.summary() for failure in failures],
        "skipped": skipped,
    }
