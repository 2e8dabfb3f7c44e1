"""The draft as a DICOM Structured Report, built with highdicom from the source images (the evidence).

IOD: Comprehensive SR (``highdicom.sr.ComprehensiveSR``). Template: TID 2000 "Basic Diagnostic Imaging Report"::

    CONTAINER (18748-4, LN, "Diagnostic Imaging Report")             TID 2000 root
      HAS CONCEPT MOD  Language of Content Item and Descendants        TID 1204 (en-US)
      HAS OBS CONTEXT  Observer Type = Device, Device Observer UID,   TID 1001 / 1004
                       Name = model id, Manufacturer = "radlvlm", Model Name = model id
      CONTAINS CONTAINER (55112-7, LN, "Summary")                     CID 7001 heading
        CONTAINS TEXT (121111, DCM, "Summary") = AI_DRAFT_NOTICE + model id
      CONTAINS CONTAINER (59776-5, LN, "Findings")
        CONTAINS TEXT (121071, DCM, "Finding") = findings
          INFERRED FROM IMAGE (121080, DCM, "Best illustration of finding") → each evidence image
      CONTAINS CONTAINER (19005-8, LN, "Impressions")
        CONTAINS TEXT (121073, DCM, "Impression") = impression
          INFERRED FROM IMAGE … → each evidence image

Every value type used (CONTAINER, TEXT, CODE, UIDREF, IMAGE) is also allowed in Basic Text SR, so a viewer
that only renders basic text shows it all. CompletionFlag is PARTIAL, VerificationFlag UNVERIFIED,
PreliminaryFlag PRELIMINARY, and the series description and the Summary section say it is an unverified AI
draft.

Identifiers: highdicom copies the patient and study modules (PatientID, PatientName, StudyInstanceUID,
AccessionNumber …) from the first evidence dataset. The SR goes back to the PACS and must file under the
original study, so the evidence given here is the archive's original headers (the worker keeps them aside
when it de-identifies its working copy); nothing in the SR comes from the model except the two texts.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from radlvlm import __version__
from radlvlm.errors import InputError

from .report import AI_DRAFT_NOTICE, MANUFACTURER, DraftReport, check_uid, device_uid

logger = logging.getLogger(__name__)

#: Root title (CID 7000) and the section headings / report elements (CID 7001 / 7002) of TID 2000.
DOCUMENT_TITLE = codes.LN.DiagnosticImagingReport  # 18748-4
SUMMARY_HEADING = codes.LN.Summary  # 55112-7
FINDINGS_HEADING = codes.LN.Findings  # 59776-5
IMPRESSIONS_HEADING = codes.LN.Impressions  # 19005-8
SUMMARY_ITEM = codes.DCM.Summary  # 121111
FINDING_ITEM = codes.DCM.Finding  # 121071
IMPRESSION_ITEM = codes.DCM.Impression  # 121073
IMAGE_PURPOSE = codes.DCM.BestIllustrationOfFinding  # 121080 (CID 7003)
LANGUAGE = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")

SERIES_DESCRIPTION = "AI DRAFT - PRELIMINARY - NOT VERIFIED"
DEFAULT_SERIES_NUMBER = 9901

# Type 1 attributes every evidence dataset must carry to be referenced.
_EVIDENCE_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
# Type 2 patient/study attributes highdicom copies from the evidence; absent ones are written empty.
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate")
_TYPE2 += ("StudyTime", "ReferringPhysicianName")


def _evidence_headers(evidence: Sequence[Dataset]) -> list[Dataset]:
    """Header-only copies of the evidence (no pixel data), checked and with absent Type 2 attributes empty."""
    if isinstance(evidence, Dataset) or len(evidence) == 0:
        raise InputError("an SR needs at least one evidence dataset (the source images); got none")
    headers = []
    study_uids = set()
    for i, ds in enumerate(evidence):
        if not isinstance(ds, Dataset):
            raise InputError(f"evidence[{i}] is a {type(ds).__name__}, not a pydicom Dataset")
        for keyword in _EVIDENCE_REQUIRED:
            if not ds.get(keyword):
                raise InputError(f"evidence[{i}] has no {keyword}; it cannot be referenced from the SR")
            check_uid(f"evidence[{i}].{keyword}", str(ds[keyword].value))
        study_uids.add(str(ds.StudyInstanceUID))
        header = Dataset()
        for element in ds:
            if element.tag.group < 0x7FE0:  # everything but pixel data and padding
                header.add(element)
        for keyword in _TYPE2:
            if keyword not in header:
                setattr(header, keyword, None)
        headers.append(header)
    if len(study_uids) > 1:
        raise InputError(f"evidence comes from {len(study_uids)} studies; one draft SR covers one study")
    return headers


def _content(report: DraftReport, evidence: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """The TID 2000 content tree (see the module docstring)."""
    inferred = hd.sr.RelationshipTypeValues.INFERRED_FROM
    contains = hd.sr.RelationshipTypeValues.CONTAINS

    def images() -> hd.sr.ContentSequence:
        return hd.sr.ContentSequence(
            [
                hd.sr.ImageContentItem(
                    name=IMAGE_PURPOSE,
                    referenced_sop_class_uid=ds.SOPClassUID,
                    referenced_sop_instance_uid=ds.SOPInstanceUID,
                    relationship_type=inferred,
                )
                for ds in evidence
            ]
        )

    def section(heading: pydicom.sr.coding.Code, item: pydicom.sr.coding.Code, text: str, refs: bool) -> Dataset:
        container = hd.sr.ContainerContentItem(name=heading, relationship_type=contains)
        text_item = hd.sr.TextContentItem(name=item, value=text, relationship_type=contains)
        if refs:
            text_item.ContentSequence = images()
        container.ContentSequence = hd.sr.ContentSequence([text_item])
        return container

    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(report.model_id),
            name=report.model_id,
            manufacturer_name=MANUFACTURER,
            model_name=report.model_id,
        ),
    )
    items: list[Dataset] = [
        *hd.sr.LanguageOfContentItemAndDescendants(language=LANGUAGE),
        *hd.sr.ObservationContext(observer_device_context=observer),
        section(SUMMARY_HEADING, SUMMARY_ITEM, f"{AI_DRAFT_NOTICE}. Drafted by model {report.model_id}.", False),
    ]
    if report.findings.strip():
        items.append(section(FINDINGS_HEADING, FINDING_ITEM, report.findings, True))
    if report.impression.strip():
        items.append(section(IMPRESSIONS_HEADING, IMPRESSION_ITEM, report.impression, True))
    root = hd.sr.ContainerContentItem(name=DOCUMENT_TITLE, template_id="2000")
    root.ContentSequence = hd.sr.ContentSequence(items)
    return root


def build_draft_sr(
    evidence: Sequence[Dataset],
    findings: str,
    impression: str,
    *,
    model_id: str,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = DEFAULT_SERIES_NUMBER,
    instance_number: int = 1,
    institution_name: str | None = None,
    institutional_department_name: str | None = None,
) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR (TID 2000) of the AI draft, referencing the evidence images.

    Args:
        evidence (`Sequence[pydicom.Dataset]`): the source images' original headers (pixel data not needed,
            and not copied). All from one study; patient/study attributes are copied from the first.
        findings (`str`), impression (`str`): the model's text; one may be empty, not both.
        model_id (`str`): the drafting model, the observer device's name and model name.
        series_instance_uid (`str`, optional): a new UID when omitted; pass a fixed one to make re-runs replace.
        sop_instance_uid (`str`, optional): a new UID when omitted.
        series_number (`int`, default 9901): SeriesNumber of the SR series.
        instance_number (`int`, default 1): InstanceNumber.
        institution_name (`str`, optional), institutional_department_name (`str`, optional): written as given.

    Raises:
        InputError: no evidence, evidence without the UIDs needed to reference it, evidence from several
            studies, empty text, or a bad UID. Messages name the attribute, never its value.
    """
    report = DraftReport(findings=findings, impression=impression, model_id=model_id)
    headers = _evidence_headers(evidence)
    series_uid = check_uid("series_instance_uid", series_instance_uid or generate_uid())
    sop_uid = check_uid("sop_instance_uid", sop_instance_uid or generate_uid())
    if not isinstance(series_number, int) or not isinstance(instance_number, int):
        raise InputError("series_number and instance_number must be integers")
    try:
        sr = hd.sr.ComprehensiveSR(
            evidence=headers,
            content=_content(report, headers),
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=sop_uid,
            instance_number=instance_number,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=report.model_id,
            software_versions=__version__,
            series_description=SERIES_DESCRIPTION,
            is_complete=False,
            is_final=False,
            is_verified=False,
            institution_name=institution_name,
            institutional_department_name=institutional_department_name,
            # UTF-8, whatever the evidence used: the model's text may hold any character.
            specific_character_set="ISO_IR 192",
        )
    except (ValueError, TypeError, AttributeError) as e:
        # highdicom's messages may quote header values (names, IDs): name the step and the error type only.
        raise InputError(f"building the draft SR with highdicom failed ({type(e).__name__})") from None
    logger.info("built draft SR with %d evidence image(s), model %s", len(headers), report.model_id)
    return sr


def sr_to_bytes(sr: Dataset) -> bytes:
    """The SR as a DICOM Part 10 file (128-byte preamble, file meta), as STOW-RS and C-STORE peers expect."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, sr, enforce_file_format=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class DraftSR:
    """What ``read_draft_sr`` reads back from a draft SR."""

    findings: str
    impression: str
    notice: str
    model_id: str
    manufacturer: str
    device_uid: str
    observer_type: str
    completion_flag: str
    verification_flag: str
    preliminary_flag: str
    study_instance_uid: str
    sop_instance_uid: str
    referenced_sop_instance_uids: tuple[str, ...]  # evidence, as listed in the header
    content_image_uids: tuple[str, ...]  # IMAGE items in the content tree


def read_draft_sr(source: Dataset | bytes | str | os.PathLike | BinaryIO) -> DraftSR:
    """Read a draft SR back through highdicom (``srread`` / ``ComprehensiveSR.from_dataset``).

    Raises:
        InputError: not an SR, or not one of ours (no TID 2000 root / device observer).
    """
    try:
        if isinstance(source, Dataset):
            sr = hd.sr.ComprehensiveSR.from_dataset(source, copy=True)
        elif isinstance(source, bytes):
            sr = hd.sr.srread(io.BytesIO(source))
        else:
            sr = hd.sr.srread(source)
    except (ValueError, TypeError, AttributeError, pydicom.errors.InvalidDicomError) as e:
        raise InputError(f"not a readable DICOM SR: {type(e).__name__}: {e}") from e
    title = sr.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in sr else None
    if title is None or title.CodeValue != DOCUMENT_TITLE.value:
        raise InputError("SR is not a TID 2000 diagnostic imaging report (document title differs)")

    def texts(code: pydicom.sr.coding.Code) -> str:
        found = hd.sr.utils.find_content_items(sr, name=code, value_type=hd.sr.ValueTypeValues.TEXT, recursive=True)
        return "\n".join(str(item.TextValue) for item in found)

    def device(code: pydicom.sr.coding.Code) -> str:
        found = hd.sr.utils.find_content_items(sr, name=code, recursive=False)
        return str(getattr(found[0], "TextValue", None) or getattr(found[0], "UID", "")) if found else ""

    observer_type = hd.sr.utils.find_content_items(sr, name=codes.DCM.ObserverType, recursive=False)
    images = hd.sr.utils.find_content_items(sr, value_type=hd.sr.ValueTypeValues.IMAGE, recursive=True)
    image_uids = tuple(dict.fromkeys(str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in images))
    evidence_uids = tuple(str(uid) for _study, _series, uid, _cls in sr.get_evidence())
    return DraftSR(
        findings=texts(FINDING_ITEM),
        impression=texts(IMPRESSION_ITEM),
        notice=texts(SUMMARY_ITEM),
        model_id=device(codes.DCM.DeviceObserverName),
        manufacturer=device(codes.DCM.DeviceObserverManufacturer),
        device_uid=device(codes.DCM.DeviceObserverUID),
        observer_type=str(observer_type[0].ConceptCodeSequence[0].CodeMeaning) if observer_type else "",
        completion_flag=str(sr.CompletionFlag),
        verification_flag=str(sr.VerificationFlag),
        preliminary_flag=str(sr.get("PreliminaryFlag", "")),
        study_instance_uid=str(sr.StudyInstanceUID),
        sop_instance_uid=str(sr.SOPInstanceUID),
        referenced_sop_instance_uids=evidence_uids,
        content_image_uids=image_uids,
    )


__all__ = ["DraftSR", "build_draft_sr", "read_draft_sr", "sr_to_bytes"]
