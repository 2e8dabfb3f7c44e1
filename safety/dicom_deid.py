"""DICOM de-identification to PS3.15 Annex E (Basic Application Level Confidentiality Profile + options).

Every attribute of Table E.1-1 (``annex_e_table.json``) gets the action the profile and the options in force
give it, at every nesting depth. On top of the table, radlvlm is stricter where the table is silent:

* private attributes are removed unless Retain Safe Private is on and the (creator, group, element) is listed;
* any other person-name (PN) attribute is emptied, and any other UID that is not a registered DICOM UID
  (a SOP class, a transfer syntax) is remapped, since neither kind is needed to read the image;
* public attributes missing from pydicom's dictionary, group lengths, curves and overlays' data are removed.

Then the output is checked: every element, in every sequence, private or not, is compared with the
identifying values the input held; if one survives, or anything at all goes wrong, no output is written
(fail closed) and the error names the file and the attribute keyword, never the value.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import logging
import os
import re
import threading
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.datadict import dictionary_has_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.sr.coding import Code
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID_dictionary

import radlvlm
from radlvlm.errors import DeidentificationError, NotDicomError
from radlvlm.imaging.dicom import parse_dicom_bytes
from radlvlm.safety.burned_in import BurnedInPolicy, handle_burned_in
from radlvlm.safety.profile import OPTION_COLUMNS, DeidOptions, lookup_row, resolve_action
from radlvlm.safety.pseudonyms import PseudonymMap

if TYPE_CHECKING:
    from radlvlm.safety.text_deid import ReportDeidentifier

__all__ = ["DeidResult", "DicomDeidentifier", "FileOutcome"]

logger = logging.getLogger(__name__)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_TEXT_VRS = {"LO", "SH", "ST", "LT", "UT", "UC", "CS", "AE", "AS", "UR"}
_MAX_LENGTH = {"SH": 16, "CS": 16, "AE": 16, "LO": 64, "ST": 1024, "LT": 10240, "AS": 4}
_NUMERIC_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}
_BINARY_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}
# The header attributes whose replacement is a pseudonym from the shared map rather than a dummy, so that the
# same patient, ID and accession number read the same in the header and in the report text.
_PSEUDONYM_KIND = {"PatientName": "patient", "PatientID": "PID", "AccessionNumber": "ACC"}
_DUMMY = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000Y", "IS": "0", "DS": "0"}
# Attributes radlvlm itself writes: not compared with the input (a re-exported file would otherwise match).
_OWN_MARKS = {
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
}
# Words of radlvlm's own pseudonyms and dummies, ignored as single tokens for the same reason.
_OWN_TOKENS = {"PATIENT", "PERSON", "ANONYMIZED", "REDACTED", "LOCATION", "DATE"}
_NORMALIZE = re.compile(r"[^0-9A-Z]+")


@dataclass
class DeidResult:
    """A de-identified dataset and what was done, with counts only (no values)."""

    dataset: Dataset
    actions: Counter[str] = field(default_factory=Counter)
    date_offset_days: int | None = None
    burned_in: str = "none"


@dataclass(frozen=True)
class FileOutcome:
    """One input file's outcome: "written", "skipped" (already done) or "failed" with a PHI-free reason."""

    source: str
    status: str
    output: str | None = None
    reason: str | None = None
    actions: dict[str, int] = field(default_factory=dict)
    study: str | None = None  # the new (pseudonymous) Study Instance UID of a written file


class DicomDeidentifier:
    """De-identifies DICOM datasets and files with one project's pseudonym map.

    Args:
        pseudonyms (PseudonymMap): the project's map (UIDs, names, IDs, date offsets).
        options (DeidOptions, default DeidOptions()): profile options and limits.
        text (ReportDeidentifier | None, default None): cleans descriptors (Clean Descriptors / Structured
            Content options); built on first use when None.
    """

    def __init__(
        self, pseudonyms: PseudonymMap, options: DeidOptions | None = None, text: ReportDeidentifier | None = None
    ) -> None:
        self.pseudonyms = pseudonyms
        self.options = options or DeidOptions()
        self._text = text

    @property
    def text(self) -> ReportDeidentifier:
        if self._text is None:
            # Imported here: Presidio's import loads transformers and torch (seconds), which de-identifying
            # DICOM without free-text cleaning never needs.
            from radlvlm.safety.text_deid import ReportDeidentifier, TextDeidConfig  # noqa: PLC0415 - Presidio: loaded only when text is de-identified or scanned

            self._text = ReportDeidentifier(TextDeidConfig())
        return self._text

    # ------------------------------------------------------------------ datasets
    def deidentify_dataset(self, ds: Dataset, *, name: str = "<dataset>") -> DeidResult:
        """Return a de-identified copy of ``ds``; raise ``DeidentificationError`` when that cannot be assured.

        Args:
            ds (Dataset): the input; it is not modified.
            name (str, default "<dataset>"): how the input is named in errors.
        """
        context = _Context(name=name)  # this call's own: an error names this dataset's attribute, no other's
        try:
            with quiet_pydicom():
                return self._deidentify(ds, name, context)
        except DeidentificationError:
            raise
        except Exception as e:  # any other failure is a doubt too; its message may quote values, so drop it
            raise DeidentificationError(
                f"{name}: de-identification failed at {context.keyword or 'start'} ({type(e).__name__})"
            ) from e

    def _deidentify(self, ds: Dataset, name: str, context: _Context) -> DeidResult:
        self._check_limits(ds, name)
        patient_name = str(ds.get("PatientName", "") or "")
        patient_key = str(ds.get("PatientID", "") or "") or patient_name or str(ds.get("StudyInstanceUID", ""))
        if patient_name:
            self.pseudonyms.register_patient(patient_name)
        if not patient_key and self.options.retain_long_modified_dates:
            raise DeidentificationError(f"{name}: no Patient ID, name or Study UID to key the date shift on")
        context.offset = self.pseudonyms.date_offset_days(patient_key) if patient_key else -1
        out = copy.deepcopy(ds)
        out.file_meta = _new_file_meta(ds)
        self._process(out, context, depth=0)
        if "SOPInstanceUID" in out:
            out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID  # already remapped
        self._mark(out)
        result = DeidResult(out, context.actions, context.offset if self.options.retain_long_modified_dates else None)
        result.burned_in = handle_burned_in(out, BurnedInPolicy(self.options.ocr, self.options.burned_in), name)
        if result.burned_in == "redacted":
            _add_method_code(out, Code("113101", "DCM", "Clean Pixel Data Option"))
        _verify(out, context.needles(), name, names=context.names)
        return result

    def _check_limits(self, ds: Dataset, name: str) -> None:
        count = 0

        def walk(dataset: Dataset, depth: int) -> None:
            nonlocal count
            if depth > self.options.max_depth:
                raise DeidentificationError(f"{name}: sequences nested deeper than {self.options.max_depth} levels")
            for elem in dataset:
                count += 1
                if count > self.options.max_elements:
                    raise DeidentificationError(
                        f"{name}: more than {self.options.max_elements} data elements and sequence items"
                    )
                if elem.VR == "SQ":
                    for item in elem.value or []:
                        count += 1  # an item counts too: a sequence of many empty items is as suspect
                        walk(item, depth + 1)

        walk(ds, 0)

    def _process(self, dataset: Dataset, context: _Context, depth: int) -> None:
        private_keep = self._safe_private_tags(dataset)
        for tag in list(dataset.keys()):
            elem = dataset[tag]
            keyword = elem.keyword or f"({tag.group:04X},{tag.element:04X})"
            context.keyword = keyword
            if tag.element == 0:
                del dataset[tag]  # group lengths: recomputed by writers, and stale after any change
                continue
            if tag.is_private:
                if tag.element <= 0x00FF and tag.element >= 0x0010:
                    # A private creator names a vendor's block, not a person; it goes with its block.
                    if tag not in private_keep:
                        del dataset[tag]
                    continue
                if tag in private_keep:
                    context.actions["K(safe private)"] += 1
                    if elem.VR == "SQ":
                        self._recurse(elem, context, depth)
                else:
                    context.add_phi(elem)
                    del dataset[tag]
                    context.actions["X(private)"] += 1
                continue
            row = lookup_row(tag)
            if row is not None:
                action = resolve_action(row, self.options)
            elif not dictionary_has_tag(tag):
                action = "X"  # a public tag pydicom does not know: its meaning cannot be vouched for
            elif elem.VR == "PN":
                action = "Z"
            elif elem.VR == "UI" and not _all_registered(elem.value):
                action = "U"
            else:
                action = "K"
            context.actions[action] += 1
            self._apply(dataset, elem, action, context, depth)

    def _apply(self, dataset: Dataset, elem: DataElement, action: str, context: _Context, depth: int) -> None:
        vr = elem.VR
        if action == "X":
            context.add_phi(elem)
            del dataset[elem.tag]
            return
        if vr == "SQ":
            if action in ("Z", "D"):
                context.add_phi(elem)
                elem.value = Sequence([])
            else:  # K, C, U: keep the sequence and apply the table inside it
                self._recurse(elem, context, depth)
            return
        if _is_empty(elem.value):
            return
        if action == "K":
            context.add_kept(elem)
            if elem.keyword == "PatientAge":
                elem.value = _cap_age(str(elem.value))
            return
        if action == "U":
            context.add_phi(elem)
            elem.value = _map_values(elem.value, self.pseudonyms.uid) if vr == "UI" else _dummy(vr)
            return
        if action in ("Z", "D"):
            context.add_phi(elem)
            kind = _PSEUDONYM_KIND.get(elem.keyword)
            if kind == "patient":
                elem.value = self.pseudonyms.register_patient(str(elem.value))
            elif kind is not None:
                elem.value = self.pseudonyms.identifier(str(elem.value), kind)
            elif action == "Z":
                elem.value = None if vr in _NUMERIC_VRS else (b"" if vr in _BINARY_VRS else "")
            elif vr == "PN":
                elem.value = _map_values(elem.value, lambda v: self.pseudonyms.person(str(v)))
            elif vr == "UI":
                elem.value = _map_values(elem.value, self.pseudonyms.uid)
            else:
                elem.value = _dummy(vr)
            return
        if action == "C":
            self._clean(elem, context)
            return
        raise DeidentificationError(f"{context.name}: no rule for action {action} on {context.keyword}")

    def _clean(self, elem: DataElement, context: _Context) -> None:
        """Annex E "C": replace with values of similar meaning that identify no one."""
        vr = elem.VR
        if vr in ("DA", "DT"):
            context.add_phi(elem)
            if self.options.retain_long_modified_dates:
                elem.value = _map_values(elem.value, lambda v: _shift(str(v), vr, context.offset))
            else:
                elem.value = ""
        elif vr == "TM":
            context.add_kept(elem)
            return  # whole-day shifts keep the time of day, as the Modified Dates option allows
        elif vr == "PN":
            context.add_phi(elem)
            elem.value = _map_values(elem.value, lambda v: self.pseudonyms.person(str(v)))
        elif vr == "AE":
            context.add_phi(elem)
            elem.value = _map_values(elem.value, lambda v: self.pseudonyms.identifier(str(v), "AE")[:16])
        elif vr == "UI":
            context.add_phi(elem)
            elem.value = _map_values(elem.value, self.pseudonyms.uid)
        elif vr in _TEXT_VRS:
            offset = context.offset if self.options.retain_long_modified_dates else None

            def clean_text(value: object) -> str:
                text = str(value)
                found = self.text.deidentify(text, self.pseudonyms, date_offset_days=offset)
                for span in found.spans:
                    context.add_value(text[span.start : span.end], name_min=4 if span.entity_type == "PERSON" else 0)
                # The cleaned text is what the profile keeps; a removed copy of it elsewhere (a vendor's private
                # duplicate of the history) is no leak when it reappears here.
                context.add_kept_text(found.text)
                if found.spans and vr in ("CS", "AS", "UR"):
                    return ""  # a coded value with PHI in it cannot hold a "[DATE]" tag: emptied
                return found.text[: _MAX_LENGTH.get(vr, len(found.text))]

            elem.value = _map_values(elem.value, clean_text)
        else:
            context.add_phi(elem)
            elem.value = None if vr in _NUMERIC_VRS else (b"" if vr in _BINARY_VRS else "")

    def _recurse(self, elem: DataElement, context: _Context, depth: int) -> None:
        keyword = context.keyword
        for item in elem.value or []:
            self._process(item, context, depth + 1)
        context.keyword = keyword

    def _safe_private_tags(self, dataset: Dataset) -> set[BaseTag]:
        if not self.options.retain_safe_private:
            return set()
        safe = {(creator.strip().upper(), group, element) for creator, group, element in self.options.safe_private}
        keep: set[BaseTag] = set()
        for tag in dataset.keys():  # noqa: SIM118 (iterating a Dataset yields elements, not tags)
            if not tag.is_private or tag.element < 0x1000:
                continue
            creator_tag = Tag(tag.group, tag.element >> 8)
            creator = str(dataset[creator_tag].value).strip().upper() if creator_tag in dataset else ""
            if creator and (creator, tag.group, tag.element & 0xFF) in safe:
                keep.update({tag, creator_tag})
        return keep

    def _mark(self, ds: Dataset) -> None:
        """Set Patient Identity Removed and the De-identification Method (Code Sequence) with the options used."""
        ds.PatientIdentityRemoved = "YES"
        names = [_OPTION_TITLES[name] for name in self.options.enabled]
        ds.DeidentificationMethod = [f"radlvlm {radlvlm.__version__} PS3.15 E.1 Basic Profile", *names]
        ds.DeidentificationMethodCodeSequence = Sequence()
        _add_method_code(ds, Code("113100", "DCM", "Basic Application Confidentiality Profile"))
        for name in self.options.enabled:
            _add_method_code(ds, OPTION_COLUMNS[name])
        if self.options.retain_long_full_dates:
            ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
        elif self.options.retain_long_modified_dates:
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"

    # ------------------------------------------------------------------ files
    def deidentify_file(
        self, source: Path, destination: Path, *, name: str | None = None, by_uid: bool = False
    ) -> FileOutcome:
        """De-identify one file; on any failure nothing is written (fail closed).

        Args:
            source (Path): the DICOM file.
            destination (Path): the output file, or with ``by_uid`` the output folder, under which the file
                is named ``<study>/<series>/<instance>.dcm`` from its new UIDs (input names can hold PHI).
            name (str | None, default None): how the file is named in outcomes and errors (default: the path).
            by_uid (bool, default False): see ``destination``.

        Files without pixel data are refused: radlvlm exports images, and a structured report or a
        presentation state would need the Clean Structured Content rules reviewed for its template.
        """
        label = name or str(source)
        with quiet_pydicom():
            return self._deidentify_file(source, destination, label, by_uid)

    def deidentify_bytes(self, data: bytes, *, name: str) -> tuple[bytes, DeidResult]:
        """De-identify a DICOM file's bytes for export: the output file's bytes and what was done.

        The one export rule, at every door (``radlvlm deid``, ``POST /v1/deid``): the input is read by
        :func:`radlvlm.imaging.dicom.parse_dicom_bytes`; a file without pixel data, with pixel data shorter
        than its header declares, or without its SOP UIDs is refused, and so is an output that cannot be
        encoded. Raises ``DeidentificationError`` naming the input and the reason, never a value.
        """
        try:
            ds = parse_dicom_bytes(data, name=name)
        except NotDicomError as e:
            raise DeidentificationError(str(e)) from e
        with quiet_pydicom():
            _check_exportable(ds, name)
            result = self.deidentify_dataset(ds, name=name)
            buffer = io.BytesIO()
            try:
                result.dataset.save_as(buffer, enforce_file_format=True)
            except Exception as e:  # a value that cannot be encoded: refuse, naming only the error type
                raise DeidentificationError(
                    f"{name}: de-identified dataset could not be written ({type(e).__name__})"
                ) from e
        return buffer.getvalue(), result

    def _deidentify_file(self, source: Path, destination: Path, label: str, by_uid: bool) -> FileOutcome:
        try:
            try:
                data = source.read_bytes()
            except FileNotFoundError as e:
                raise DeidentificationError(f"{label}: no such file") from e
            except OSError as e:
                raise DeidentificationError(f"{label}: unreadable ({type(e).__name__})") from e
            output, result = self.deidentify_bytes(data, name=label)
            if by_uid:
                out = result.dataset
                parts = [str(out.get(k, "") or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
                if not all(parts):
                    raise DeidentificationError(f"{label}: study, series or instance UID missing; not exported")
                destination = destination / parts[0] / parts[1] / f"{parts[2]}.dcm"
            _write_atomically(destination, output)
        except DeidentificationError as e:
            return FileOutcome(label, "failed", reason=str(e))
        except Exception as e:  # any other doubt is a failure too, reported without the message (it may quote values)
            logger.debug("de-identification of %s failed with %s", label, type(e).__name__)
            return FileOutcome(label, "failed", reason=f"{label}: de-identification failed ({type(e).__name__})")
        study = str(result.dataset.get("StudyInstanceUID", "") or "") or None
        return FileOutcome(label, "written", str(destination), actions=dict(result.actions), study=study)


def _check_exportable(ds: Dataset, name: str) -> None:
    """Refuse what radlvlm does not export: no pixel data (a structured report or a presentation state would
    need the Clean Structured Content rules reviewed for its template), pixel data shorter than the header
    declares (a truncated transfer), or no SOP Class/Instance UID."""
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise DeidentificationError(f"{name}: DICOM file has no pixel data; not exported")
    if not ds.get("SOPClassUID") or not ds.get("SOPInstanceUID"):
        raise DeidentificationError(f"{name}: SOPClassUID or SOPInstanceUID missing; not exported")
    if "PixelData" in ds:
        expected = _native_pixel_bytes(ds, name)
        if expected is not None and len(ds.PixelData) < expected:
            raise DeidentificationError(
                f"{name}: pixel data is shorter than Rows x Columns x frames declare (truncated); not exported"
            )
        if expected is None:  # encapsulated (compressed): the frames must decode
            try:
                ds.pixel_array  # noqa: B018 - decoding is the check
            except Exception as e:
                raise DeidentificationError(
                    f"{name}: compressed pixel data does not decode ({type(e).__name__}); not exported"
                ) from e


def _native_pixel_bytes(ds: Dataset, name: str) -> int | None:
    """The bytes native (uncompressed) pixel data must hold; None for an encapsulated transfer syntax."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_encapsulated:
        return None
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as e:
        raise DeidentificationError(f"{name}: image attributes missing or malformed; not exported") from e
    return (rows * columns * samples * frames * bits + 7) // 8


def _drop(record: logging.LogRecord) -> bool:
    return False


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: list = []


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and log records while PHI is handled: they quote values ("Invalid value
    for VR AS: '75Y'"), and radlvlm reports problems itself, by keyword.

    Warning filters are process-wide, and ``warnings.catch_warnings`` saves and restores them per call, which
    loses or leaks filters when threads overlap (the service de-identifies in a thread pool). So the silence
    is counted instead: the first thread in installs it, the last one out restores what was there before.
    """
    global _quiet_depth
    pydicom_logger = logging.getLogger("pydicom")
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved[:] = list(warnings.filters)
            warnings.simplefilter("ignore")
            pydicom_logger.addFilter(_drop)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                pydicom_logger.removeFilter(_drop)
                warnings.filters[:] = _quiet_saved
                warnings._filters_mutated()  # type: ignore[attr-defined]  # as catch_warnings does on exit


_OPTION_TITLES = {name: code.meaning.removesuffix(" Option") for name, code in OPTION_COLUMNS.items()}


@dataclass
class _Context:
    """Per-file state: the identifying values seen (for the final check), action counts, the date offset."""

    name: str
    offset: int = -1
    keyword: str = ""
    actions: Counter[str] = field(default_factory=Counter)
    phi: dict[str, str] = field(default_factory=dict)  # normalised value → keyword it came from

    names: set[str] = field(default_factory=set)  # the subset of ``phi`` that came from person names
    kept: set[str] = field(default_factory=set)  # normalised values (and their words) the profile retains
    kept_codes: set[str] = field(default_factory=set)  # retained coded strings (CS): defined terms

    def add_value(self, value: str, *, name_min: int = 0) -> None:
        """Remember a removed value; ``name_min`` > 0 marks a person name, whose words (that long or longer)
        are searched for one by one."""
        normalized = _normalize(value)
        # Values this short, or numbers below 5 digits (a weight, a size), identify no one on their own and
        # would match innocent numbers elsewhere; they are removed all the same, only not searched for.
        if len(normalized) < 3 or (normalized.replace(" ", "").isdigit() and len(normalized) < 5):
            return
        if normalized in _OWN_TOKENS:
            return
        self.phi.setdefault(normalized, self.keyword)
        if name_min:
            self.names.add(normalized)
            for token in normalized.split(" "):
                if len(token) >= name_min and not token.isdigit() and token not in _OWN_TOKENS:
                    self.phi.setdefault(token, self.keyword)
                    self.names.add(token)

    def add_phi(self, elem: DataElement) -> None:
        # The patient's own names are searched word by word from 3 letters ("LEE"), other people's from 4,
        # because short words of vendor strings written in PN attributes ("RIS") recur in coded values.
        name_min = 0 if elem.VR != "PN" else (3 if elem.keyword in _PATIENT_NAMES else 4)
        for value in _strings(elem):
            self.add_value(value, name_min=name_min)

    def add_kept(self, elem: DataElement) -> None:
        for value in _strings(elem):
            normalized = _normalize(value)
            self.kept.add(normalized)
            self.kept.update(normalized.split(" "))
            if elem.VR == "CS":
                self.kept_codes.update(normalized.split(" "))

    def add_kept_text(self, text: str) -> None:
        normalized = _normalize(text)
        self.kept.add(normalized)
        self.kept.update(normalized.split(" "))

    def needles(self) -> dict[str, str]:
        """Values to search the output for. A removed value other than a name that the profile keeps
        elsewhere in this input (a description word that is also in Image Type, a private value equal to
        a coded value) is not searched for; a name always is, except a single word of a name that is also a
        defined term the profile keeps (a test patient "Perfusion^MCA" and Image Type PERFUSION)."""
        return {
            v: k for v, k in self.phi.items() if (v in self.names and v not in self.kept_codes) or v not in self.kept
        }


_PATIENT_NAMES = {"PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName"}


def _strings(elem: DataElement) -> Iterator[str]:
    """Every text value in ``elem`` (items of sequences included); binary data is skipped."""
    if elem.VR == "SQ":
        for item in elem.value or []:
            for sub in item:
                yield from _strings(sub)
        return
    if elem.VR in _BINARY_VRS or elem.VR in _NUMERIC_VRS or elem.value is None:
        return
    values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
    for value in values:
        text = str(value)
        if text:
            yield text


_LETTER_OR_DIGIT_RUNS = re.compile(r"[^\W\d_]+|\d+")


def _normalize(value: str) -> str:
    return _NORMALIZE.sub(" ", value.upper()).strip()


def _verify(ds: Dataset, phi: dict[str, str], name: str, *, names: set[str] | frozenset[str] = frozenset()) -> None:
    """Fail closed when an identifying input value appears anywhere in the output (any depth, file meta too)."""
    if not phi:
        return
    for elem, inside_own in _walk(ds):
        if inside_own or elem.keyword in _OWN_MARKS:
            continue
        for value in _strings(elem) if elem.VR != "SQ" else ():
            source = leaked_value(value, phi, names)
            if source is not None:
                keyword = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
                raise DeidentificationError(
                    f"{name}: a value removed from {source} is still present in {keyword}; no output written"
                )


def leaked_value(text: str, phi: Mapping[str, str], names: set[str] | frozenset[str] = frozenset()) -> str | None:
    """The one PHI leak rule: the attribute an identifying value in ``phi`` (normalised value → attribute) came
    from when ``text`` still holds it, else None. Whole words after normalisation; also with letters and digits
    parted ("WETZEL16550" in a coded value hides the name "WETZEL" and the ID "16550"), but only for a person's
    name word (4+ letters) or a number of 5+ digits: shorter runs, and other words, recur in innocent codes."""
    padded = f" {_normalize(text)} "
    parted = " " + " ".join(_LETTER_OR_DIGIT_RUNS.findall(padded)) + " "
    for needle, source in phi.items():
        whole_run = (needle in names and needle.isalpha() and len(needle) >= 4) or (
            needle.isdigit() and len(needle) >= 5
        )
        if f" {needle} " in padded or (whole_run and f" {needle} " in parted):
            return source
    return None


# What a report about a study could quote from its header: the patient's and other people's names, the IDs, the
# birth date and the institution.
IDENTIFYING_KEYWORDS = (
    "PatientName",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "NameOfPhysiciansReadingStudy",
    "PatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "PatientBirthDate",
    "InstitutionName",
)


@dataclass(frozen=True)
class IdentifyingValues:
    """A header's identifying values, normalised as the de-identifier's own output check sees them: what a text
    derived from the study (a report) must not contain. Held in memory only, never stored or logged."""

    values: dict[str, str]  # normalised value -> the attribute it came from
    names: frozenset[str]  # the values that are person-name words

    def leak(self, text: str) -> str | None:
        """The attribute whose value ``text`` still holds (:func:`leaked_value`), or None."""
        return leaked_value(text, self.values, self.names) if self.values else None


def identifying_values(ds: Dataset) -> IdentifyingValues:
    """The values of ``ds``'s :data:`IDENTIFYING_KEYWORDS`, collected by the de-identifier's own rules (a patient's
    name words from 3 letters, other people's from 4; values that identify no one on their own are skipped)."""
    context = _Context(name="")
    for keyword in IDENTIFYING_KEYWORDS:
        if keyword in ds:
            context.keyword = keyword
            context.add_phi(ds.data_element(keyword))
    return IdentifyingValues(dict(context.phi), frozenset(context.names))


def _walk(ds: Dataset, inside_own: bool = False) -> Iterator[tuple[DataElement, bool]]:
    """Every element at every depth (file meta first), flagged when inside one of radlvlm's own sequences."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        for elem in meta:
            yield elem, False
    for elem in ds:
        yield elem, inside_own
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _walk_item(item, inside_own or elem.keyword in _OWN_MARKS)


def _walk_item(ds: Dataset, inside_own: bool) -> Iterator[tuple[DataElement, bool]]:
    for elem in ds:
        yield elem, inside_own
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _walk_item(item, inside_own or elem.keyword in _OWN_MARKS)


def _write_atomically(destination: Path, data: bytes) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".{destination.name}.partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, destination)
    finally:
        if tmp.exists():
            tmp.unlink()


def _new_file_meta(ds: Dataset) -> FileMetaDataset:
    """Fresh File Meta: only the transfer syntax is carried over (source AE titles and the like are dropped)."""
    meta = FileMetaDataset()
    old = getattr(ds, "file_meta", None)
    if old is not None and "TransferSyntaxUID" in old:
        meta.TransferSyntaxUID = old.TransferSyntaxUID
    else:  # a file without File Meta (or without the syntax in it): write it as it was read
        implicit, little = ds.original_encoding
        if not little:
            meta.TransferSyntaxUID = ExplicitVRBigEndian
        else:
            meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    if "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return meta


def _add_method_code(ds: Dataset, code: Code) -> None:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    if "DeidentificationMethodCodeSequence" not in ds:
        ds.DeidentificationMethodCodeSequence = Sequence()
    ds.DeidentificationMethodCodeSequence.append(item)


def _is_empty(value: object) -> bool:
    return value is None or value == "" or value == b"" or (isinstance(value, (list, MultiValue)) and not value)


def _map_values(value: object, function) -> object:
    if isinstance(value, (list, MultiValue)):
        return [function(v) for v in value]
    return function(value)


def _dummy(vr: str) -> object:
    if vr in _NUMERIC_VRS:
        return 0
    if vr in _BINARY_VRS:
        return b""
    return _DUMMY.get(vr, "ANONYMIZED")


def _all_registered(value: object) -> bool:
    values = value if isinstance(value, (list, MultiValue)) else [value]
    return all(str(v) in UID_dictionary for v in values if v)


def _cap_age(value: str) -> str:
    """Ages over 89 years are identifying (HIPAA Safe Harbor): report them as 090Y."""
    match = re.fullmatch(r"(\d{3})([DWMY])", value.strip())
    if match and match.group(2) == "Y" and int(match.group(1)) > 89:
        return "090Y"
    return value


def _shift(value: str, vr: str, offset: int) -> str:
    """Move a DA or DT value by ``offset`` days, keeping its precision and the rest of a DT (time, zone)."""
    value = value.strip()
    if not value:
        return value
    if "-" in value and vr == "DA":  # a range, as in queries
        return "-".join(_shift(part, vr, offset) for part in value.split("-"))
    digits = value[:8] if len(value) >= 8 else value
    try:
        if len(digits) == 8:
            shifted = dt.datetime.strptime(digits, "%Y%m%d").date() + dt.timedelta(days=offset)
            return shifted.strftime("%Y%m%d") + value[8:]
        if len(digits) == 6:
            shifted = dt.datetime.strptime(digits + "15", "%Y%m%d").date() + dt.timedelta(days=offset)
            return shifted.strftime("%Y%m") + value[6:]
        if len(digits) == 4:
            return f"{int(digits) + round(offset / 365.25):04d}"
    except ValueError:
        pass
    return ""  # a malformed date cannot be shifted; it is dropped instead
