"""What every output (DICOM SR, FHIR, HL7) is built from: the draft's text and the study's identifiers.

The two are kept apart on purpose. ``DraftReport`` holds only what the model wrote (findings, impression) and
which model wrote it; that text goes out as text and nothing is ever read out of it. ``StudyIdentifiers`` holds
the original identifiers the receiving system needs to file the result (study UID, accession, patient ID …);
the worker takes them from the archive's own headers, never from the model. The PHI-bearing fields are left
out of ``repr`` so that a logged object shows no patient data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from radlvlm.errors import InputError

if TYPE_CHECKING:
    from radlvlm.tasks.drafting import DraftResult

#: The banner every output carries, in its title and as text, so no reader mistakes the draft for a report.
AI_DRAFT_NOTICE = "PRELIMINARY AI-GENERATED DRAFT - NOT VERIFIED BY A RADIOLOGIST"
#: Manufacturer / sending application / device manufacturer written into every output.
MANUFACTURER = "radlvlm"

# C0 controls other than tab, LF and CR break DICOM text VRs, XML/JSON consumers and HL7/MLLP framing.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InputError(f"{name} must be a string, got {type(value).__name__}")
    bad = _CONTROL.search(value)
    if bad:
        raise InputError(f"{name} contains control character U+{ord(bad.group()):04X} at offset {bad.start()}")
    return value


@dataclass(frozen=True)
class DraftReport:
    """The model's draft, as text only.

    Args:
        findings (`str`): the FINDINGS section as the model wrote it (may be empty if ``impression`` is not).
        impression (`str`): the IMPRESSION section (may be empty if ``findings`` is not).
        model_id (`str`): the model that wrote it; it becomes the observer device's name in the SR, the
            FHIR Device and the HL7 equipment identifier.
    """

    findings: str = field(repr=False)
    impression: str = field(repr=False)
    model_id: str

    def __post_init__(self) -> None:
        _check_text("findings", self.findings)
        _check_text("impression", self.impression)
        _check_text("model_id", self.model_id)
        if not self.findings.strip() and not self.impression.strip():
            raise InputError("draft has neither findings nor impression text")
        if not self.model_id.strip() or "\n" in self.model_id or "\r" in self.model_id:
            raise InputError("model_id must be one non-empty line")
        if len(self.model_id) > 64:  # DICOM LO, HL7 EI and the SR device name all hold 64 characters
            raise InputError(f"model_id has {len(self.model_id)} characters; at most 64")

    @classmethod
    def from_draft_result(cls, result: DraftResult) -> DraftReport:
        """The text of an engine ``DraftResult`` (findings, impression, model_id); nothing else is taken."""
        return cls(findings=result.findings, impression=result.impression, model_id=result.model_id)


_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_DATE = re.compile(r"^\d{8}$")


def check_uid(name: str, value: str) -> str:
    """``value`` if it is a valid DICOM UID (digits and dots, at most 64 characters), else ``InputError``."""
    if not isinstance(value, str) or not value or len(value) > 64 or not _UID.match(value):
        raise InputError(f"{name} is not a valid DICOM UID (digits and dots, at most 64 characters)")
    return value


@dataclass(frozen=True)
class StudyIdentifiers:
    """The original identifiers an output is filed under (taken from the archive's headers, never the model).

    Args:
        study_instance_uid (`str`): the study's StudyInstanceUID; required.
        patient_id (`str`): PatientID as the archive holds it; required for HL7 PID-3 and the FHIR subject.
        issuer_of_patient_id (`str`, default ``""``): IssuerOfPatientID, the PID-3 assigning authority and the
            FHIR identifier system (as ``urn:oid:`` when it is an OID).
        accession_number (`str`, default ``""``): AccessionNumber (OBR-18 / FHIR ServiceRequest identifier).
        patient_name (`str`, default ``""``): DICOM PN form ``Family^Given^Middle^Prefix^Suffix``.
        patient_birth_date (`str`, default ``""``): ``YYYYMMDD``.
        patient_sex (`str`, default ``""``): ``M``, ``F``, ``O`` or empty.
        placer_order_number (`str`, default ``""``): OBR-2 (defaults to the accession number in HL7).
        filler_order_number (`str`, default ``""``): OBR-3 (defaults to the accession number in HL7).
    """

    study_instance_uid: str
    patient_id: str = field(repr=False)
    issuer_of_patient_id: str = field(default="", repr=False)
    accession_number: str = field(default="", repr=False)
    patient_name: str = field(default="", repr=False)
    patient_birth_date: str = field(default="", repr=False)
    patient_sex: str = field(default="", repr=False)
    placer_order_number: str = field(default="", repr=False)
    filler_order_number: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        check_uid("study_instance_uid", self.study_instance_uid)
        for name in (
            "patient_id",
            "issuer_of_patient_id",
            "accession_number",
            "patient_name",
            "patient_birth_date",
            "patient_sex",
            "placer_order_number",
            "filler_order_number",
        ):
            value = _check_text(name, getattr(self, name))
            if "\n" in value or "\r" in value:
                raise InputError(f"{name} must be one line")
        if not self.patient_id.strip():
            raise InputError("patient_id is empty; outputs cannot be filed without the archive's patient ID")
        if self.patient_birth_date and not _DATE.match(self.patient_birth_date):
            raise InputError("patient_birth_date must be YYYYMMDD")
        if self.patient_sex not in ("", "M", "F", "O", "U"):
            raise InputError("patient_sex must be M, F, O, U or empty")

    @classmethod
    def from_dataset(cls, ds: Dataset, **overrides: Any) -> StudyIdentifiers:
        """Identifiers from an archive dataset's own headers (the original, not a de-identified copy)."""
        if "StudyInstanceUID" not in ds:
            raise InputError("dataset has no StudyInstanceUID")
        values: Mapping[str, Any] = {
            "study_instance_uid": str(ds.StudyInstanceUID),
            "patient_id": str(ds.get("PatientID", "") or ""),
            "issuer_of_patient_id": str(ds.get("IssuerOfPatientID", "") or ""),
            "accession_number": str(ds.get("AccessionNumber", "") or ""),
            "patient_name": str(ds.get("PatientName", "") or ""),
            "patient_birth_date": str(ds.get("PatientBirthDate", "") or ""),
            "patient_sex": str(ds.get("PatientSex", "") or ""),
        }
        return cls(**{**values, **overrides})


def device_uid(model_id: str) -> UID:
    """A UID for the observer device, the same for the same model id (SR device UID, FHIR Device identifier)."""
    return generate_uid(entropy_srcs=[MANUFACTURER, model_id])


__all__ = ["AI_DRAFT_NOTICE", "MANUFACTURER", "DraftReport", "StudyIdentifiers", "check_uid", "device_uid"]
