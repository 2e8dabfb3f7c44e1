"""A hospital's own studies: a folder or zip of DICOM plus a reports file, de-identification enforced
(a header not de-identified is dropped unless radlvlm de-identifies it on the way in, and a report that still
holds a header's identifying value is dropped by safety's one leak rule)."""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radlvlm.errors import InputError, RadlvlmError
from radlvlm.reports import parse_report

if TYPE_CHECKING:
    from radlvlm.safety.dicom_deid import DicomDeidentifier
    from radlvlm.safety.pseudonyms import PseudonymMap
    from radlvlm.safety.text_deid import ReportDeidentifier

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from radlvlm.imaging import read_image_file
from radlvlm.imaging.dicom import is_plain_image
from radlvlm.safety.dicom_deid import identifying_values, leaked_value, quiet_pydicom
from radlvlm.training.sources.base import (
    SPLITS,
    Drop,
    ImageRef,
    Item,
    Note,
    Record,
    Source,
    _read_rows,
    _require_file,
    _text,
    assign_split,
)

_REPORT_COLUMNS = {"study_instance_uid", "accession_number", "report", "indication", "split"}


def is_deidentified(ds: Any) -> bool:
    """True when the header says it was de-identified: Patient Identity Removed YES and a method recorded."""
    removed = str(ds.get("PatientIdentityRemoved", "") or "").strip().upper() == "YES"
    method = bool(ds.get("DeidentificationMethod")) or bool(ds.get("DeidentificationMethodCodeSequence"))
    return removed and method


@dataclass
class _Study:
    key: str  # original StudyInstanceUID (in memory only, never written)
    images: list[tuple[Any, ImageRef, int, str]] = field(default_factory=list)  # (View, ref, number, SOP UID)
    patient: str = ""  # pseudonymous patient id
    study_id: str = ""  # pseudonymous study UID
    accession: str = ""  # original accession (in memory only, for matching)
    refused: str | None = None
    # The headers' identifying values (in memory only): a report that still holds one after de-identification is
    # dropped, by the de-identifier's own leak rule (radlvlm.safety.dicom_deid.leaked_value).
    phi: dict[str, str] = field(default_factory=dict)
    phi_names: set[str] = field(default_factory=set)
    date_offset: int | None = None


class HospitalSource(Source):
    """A hospital's DICOM studies (a folder, searched recursively, or a zip) plus a reports file.

    The reports file is CSV or JSONL with a ``report`` column and a ``study_instance_uid`` or
    ``accession_number`` column (optional: ``indication``, ``split``). Reports are matched to studies by
    those keys **before** de-identification; then header and report are de-identified consistently with
    one :class:`~radlvlm.safety.PseudonymMap`.

    Training refuses data that is not de-identified: a DICOM file whose header lacks Patient Identity
    Removed ``YES`` and a De-identification Method is refused (its study dropped, "not de-identified"),
    unless a ``deidentifier`` is given, which de-identifies every file on the way in (PS3.15 Annex E,
    fail closed) into ``work_dir``; a file it cannot de-identify drops its study ("de-identification
    failed"). Report text always goes through the :class:`~radlvlm.safety.ReportDeidentifier` (the
    deidentifier's own, or ``report_deidentifier``) before it becomes an example. On the de-identify-on-the-
    way-in path, the cleaned text is then checked for the original header's identifying values (name tokens,
    patient IDs, accession number, birth date, institution); a hit drops the study ("de-identification
    failed"), fail closed like the DICOM side.

    Drop reasons: "not de-identified", "de-identification failed", "unreadable image", "not DICOM",
    "lateral only" (every image is lateral), "no report" (a study no report row matches), "image missing"
    (a report row no study matches), "empty report", "no findings" (the report parses to no findings).
    Images of unknown view are used when a study has no frontal image. One record per study, on its first
    frontal image. Splits: the ``split`` column when present (a patient in two splits raises), else a hash
    of the pseudonymous Patient ID with ``split_fractions``.

    Args:
        images (`str | Path`): folder or zip of DICOM files.
        reports (`str | Path`): the reports file (``.csv`` or ``.jsonl``).
        deidentifier (`DicomDeidentifier | None`, defaults to `None`): de-identify on the way in.
        work_dir (`str | Path | None`, defaults to `None`): where de-identified files are written (a new
            temporary folder when None). Only de-identified data is written there.
        report_deidentifier (`ReportDeidentifier | None`, defaults to `None`): for report text when no
            ``deidentifier`` is given (a default one is built).
        pseudonyms (`PseudonymMap | None`, defaults to `None`): map for report text when no ``deidentifier``
            is given (None: identifiers become type tags).
        split_fractions (`Mapping[str, float]`, defaults to 0.8/0.1/0.1).
        name (`str`, defaults to `"hospital"`).
    """

    def __init__(
        self,
        images: str | Path,
        reports: str | Path,
        *,
        deidentifier: DicomDeidentifier | None = None,
        work_dir: str | Path | None = None,
        report_deidentifier: ReportDeidentifier | None = None,
        pseudonyms: PseudonymMap | None = None,
        split_fractions: Mapping[str, float] | None = None,
        name: str = "hospital",
    ) -> None:
        self.images = Path(images)
        self.reports = Path(reports)
        self.deidentifier = deidentifier
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self._report_deidentifier = report_deidentifier
        self.pseudonyms = deidentifier.pseudonyms if deidentifier is not None else pseudonyms
        self.split_fractions = dict(split_fractions or {"train": 0.8, "validation": 0.1, "test": 0.1})
        if set(self.split_fractions) - set(SPLITS) or abs(sum(self.split_fractions.values()) - 1.0) > 1e-6:
            raise InputError(f"split_fractions must use {list(SPLITS)} and sum to 1")
        self.name = name
        self._report_rows: list[tuple[int, dict[str, Any]]] | None = None
        self._key_column = ""
        self._cache: list[Item] | None = None

    @property
    def report_deidentifier(self) -> ReportDeidentifier:
        if self.deidentifier is not None:
            return self.deidentifier.text
        if self._report_deidentifier is None:
            from radlvlm.safety.text_deid import ReportDeidentifier  # noqa: PLC0415 - Presidio: loaded only when report text is de-identified

            self._report_deidentifier = ReportDeidentifier()
        return self._report_deidentifier

    # -------------------------------------------------------------- validation
    def validate(self) -> None:
        if not self.images.exists():
            raise InputError(f"{self.images}: DICOM folder or zip not found")
        if self.images.is_file() and not zipfile.is_zipfile(self.images):
            raise InputError(f"{self.images}: not a folder or a zip archive")
        _require_file(self.reports, "reports file")
        rows = _read_rows(self.reports)
        columns = set(rows[0][1])
        for line_no, row in rows:
            unknown = sorted(set(row) - _REPORT_COLUMNS)
            if unknown:
                raise InputError(f"{self.reports}: line {line_no}: unknown column(s) {unknown}")
            if "report" not in row:
                raise InputError(f"{self.reports}: line {line_no}: no 'report' column")
            if "split" in row and row["split"] not in (None, "") and row["split"] not in SPLITS:
                raise InputError(f"{self.reports}: line {line_no}: split must be one of {list(SPLITS)}")
        if "study_instance_uid" in columns:
            key = "study_instance_uid"
        elif "accession_number" in columns:
            key = "accession_number"
        else:
            raise InputError(f"{self.reports}: needs a 'study_instance_uid' or 'accession_number' column")
        seen: dict[str, int] = {}
        for line_no, row in rows:
            value = str(row.get(key) or "").strip()
            if not value:
                raise InputError(f"{self.reports}: line {line_no}: empty {key}")
            if value in seen:  # the value itself is not echoed: an accession number is an identifier
                raise InputError(f"{self.reports}: lines {seen[value]} and {line_no} have the same {key}")
            seen[value] = line_no
        self._report_rows, self._key_column = rows, key
        if not any(True for _ in self._entries()):
            raise InputError(f"{self.images}: no files in this folder or zip archive")

    # -------------------------------------------------------------- files
    def _entries(self) -> Iterator[tuple[str, Callable[[], bytes], str | None]]:
        """(label, read, zip member) for every candidate file, sorted; labels are never written out."""
        if self.images.is_dir():
            for path in sorted(p for p in self.images.rglob("*") if p.is_file()):
                relative = path.relative_to(self.images)
                if any(part.startswith(".") for part in relative.parts) or path.name.upper() == "DICOMDIR":
                    continue
                yield str(path), path.read_bytes, None
        else:
            with zipfile.ZipFile(self.images) as archive:
                members = sorted(m.filename for m in archive.infolist() if not m.is_dir())
            for member in members:
                if any(part.startswith(".") or part == "__MACOSX" for part in Path(member).parts):
                    continue
                if Path(member).name.upper() == "DICOMDIR":
                    continue
                yield f"{self.images}!{member}", _zip_reader(self.images, member), member

    def _scan(self) -> tuple[dict[str, _Study], list[Drop]]:
        studies: dict[str, _Study] = {}
        drops: list[Drop] = []
        work = self._work_dir() if self.deidentifier is not None else None
        for label, read, member in self._entries():
            data = read()
            if is_plain_image(data[:8]):
                drops.append(Drop(self.name, "not DICOM"))
                continue
            try:
                with quiet_pydicom():  # pydicom's warnings can quote header values
                    ds = dcmread(io.BytesIO(data), force=False)
            except (InvalidDicomError, ValueError, TypeError, EOFError, OSError, AttributeError, KeyError):
                drops.append(Drop(self.name, "not DICOM"))
                continue
            key = str(ds.get("StudyInstanceUID", "") or "").strip()
            if not key:
                drops.append(Drop(self.name, "unreadable image"))
                continue
            study = studies.setdefault(key, _Study(key))
            study.accession = study.accession or str(ds.get("AccessionNumber", "") or "").strip()
            if study.refused:
                continue
            if self.deidentifier is not None:
                assert work is not None
                found = identifying_values(ds)
                study.phi.update(found.values)
                study.phi_names |= found.names
                try:
                    result = self.deidentifier.deidentify_dataset(ds, name=f"file in study {len(studies)}")
                except RadlvlmError:
                    study.refused = "de-identification failed"
                    continue
                out = result.dataset
                study.date_offset = result.date_offset_days
                parts = [str(out.get(k, "") or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
                target = work.joinpath(*parts[:2], f"{parts[2]}.dcm")
                target.parent.mkdir(parents=True, exist_ok=True)
                out.save_as(target, enforce_file_format=True)
                ref = ImageRef(str(target), f"{self.name}/{parts[2]}")
                ds = out
            elif not is_deidentified(ds):
                study.refused = "not de-identified"
                continue
            else:
                sop = str(ds.get("SOPInstanceUID", "") or "")
                ref = ImageRef(str(self.images if member else label), f"{self.name}/{sop}", member)
            try:
                source = ref.path if self.deidentifier is not None else io.BytesIO(data)
                image = read_image_file(source, name=ref.image_id)
            except RadlvlmError:
                study.refused = "unreadable image"
                continue
            study.study_id = study.study_id or image.study_instance_uid
            study.patient = study.patient or str(ds.get("PatientID", "") or "").strip()
            study.images.append((image.view, ref, image.instance_number or 0, image.sop_instance_uid))
            del image
        return studies, drops

    def _work_dir(self) -> Path:
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="radlvlm-deid-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir

    # -------------------------------------------------------------- records
    def records(self) -> Iterator[Item]:
        """Scan, de-identify and match once per source object (later calls replay the result, no pixels held)."""
        if self._cache is None:
            self._cache = list(self._records())
        yield from self._cache

    def _records(self) -> Iterator[Item]:
        if self._report_rows is None:
            self.validate()
        assert self._report_rows is not None
        studies, drops = self._scan()
        yield from drops
        by_key: dict[str, _Study] = {}
        for study in studies.values():
            match = study.key if self._key_column == "study_instance_uid" else study.accession
            if match:
                by_key[match] = study
        matched: set[str] = set()
        pending: list[tuple[_Study, dict[str, Any], int]] = []
        for line_no, row in self._report_rows:
            study = by_key.get(str(row[self._key_column]).strip())
            if study is None:
                yield Drop(self.name, "image missing", _row_split(row))
                continue
            matched.add(study.key)
            pending.append((study, row, line_no))
        for study in studies.values():
            if study.key not in matched:
                yield Drop(self.name, "no report" if not study.refused else study.refused)
        splits: dict[str, tuple[str, int]] = {}
        for study, row, line_no in pending:
            if study.refused:
                yield Drop(self.name, study.refused, _row_split(row))
                continue
            patient = study.patient or study.study_id
            split = _row_split(row) or assign_split(patient, self.split_fractions)
            if patient in splits and splits[patient][0] != split:
                raise InputError(f"{self.reports}: lines {splits[patient][1]} and {line_no}: one patient in two splits")
            splits.setdefault(patient, (split, line_no))
            frontal = [i for i in study.images if i[0].is_frontal]
            unknown = [i for i in study.images if not i[0].is_frontal and not i[0].is_lateral]
            chosen = sorted(frontal or unknown, key=lambda i: (i[2], i[3]))
            if not chosen:
                yield Drop(self.name, "lateral only", split)
                continue
            report = str(row.get("report") or "")
            if not report.strip():
                yield Drop(self.name, "empty report", split)
                continue
            clean = self.report_deidentifier.deidentify(report, self.pseudonyms, date_offset_days=study.date_offset)
            indication = str(row.get("indication") or "")
            if indication.strip():
                indication = self.report_deidentifier.deidentify(
                    indication, self.pseudonyms, date_offset_days=study.date_offset
                ).text
            if leaked_value(clean.text + " " + indication, study.phi, study.phi_names) is not None:
                yield Drop(self.name, "de-identification failed", split)
                continue
            sections = parse_report(clean.text)
            findings, impression = _text(sections.findings), _text(sections.impression)
            if not findings:
                yield Drop(self.name, "no findings", split)
                continue
            if not frontal:
                yield Note(self.name, "view unknown", split)
            yield Record(
                study_id=study.study_id,
                patient_id=patient,
                split=split,
                source=self.name,
                findings=findings,
                impression=impression,
                indication=_text(indication or sections.indication),
                image=chosen[0][1],
            )


def _zip_reader(archive: Path, member: str) -> Callable[[], bytes]:
    def read() -> bytes:
        with zipfile.ZipFile(archive) as handle:
            return handle.read(member)

    return read


def _row_split(row: Mapping[str, Any]) -> str | None:
    value = row.get("split")
    return str(value) if value in SPLITS else None
