"""Ingest: a study as it arrives at any door (an upload's bytes, an archive's study, a worker's datasets) →
the de-identified frontal radiograph the model sees, and the input guardrails' verdict on it.

DICOM is read by one rule (:func:`radlvlm.imaging.dicom.parse_dicom_bytes`) and de-identified in full (PS3.15
Annex E profile, burned-in annotation refused) before any pixels reach the model, so the study UID the audit
trail sees is already a pseudonym.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from radlvlm.errors import EmptyInputError, GuardrailViolation, InputError, NoArchiveError, RadlvlmError
from radlvlm.imaging import Image, Study, View, dataset_to_image
from radlvlm.imaging.dicom import is_plain_image, parse_dicom_bytes, read_plain_image
from radlvlm.pipeline.flags import Flag, flag_of
from radlvlm.safety.dicom_deid import DicomDeidentifier
from radlvlm.safety.guardrails import Finding, input_findings

__all__ = [
    "ASSUMED_VIEW",
    "ASSUMED_VIEW_SOURCE",
    "RADIOGRAPH_MODALITIES",
    "UPLOAD_NAME",
    "StudyInput",
    "check_input_image",
    "deidentified_image",
    "ingest_study",
    "select_frontal",
]

UPLOAD_NAME = "upload"
RADIOGRAPH_MODALITIES = ("CR", "DX")
# A PNG/JPEG has no header to state its view: unless the caller says otherwise it is taken as the usual frontal
# film, PA, and the image's ``view_source`` (and a warning flag in every answer) says the view was assumed.
ASSUMED_VIEW = View.PA
ASSUMED_VIEW_SOURCE = "default"
VIEW_ASSUMED_MESSAGE = "a PNG/JPEG states no view: assumed PA; send view AP (--view AP) for an AP film"


@dataclass(frozen=True)
class StudyInput:
    """A study as a door received it: exactly one of an image's bytes (a DICOM, PNG or JPEG file), a study UID
    in the configured archive, or a study's datasets (the PACS worker's fetch).

    ``view`` is the view a PNG/JPEG caller states (None: a DICOM's header says, a PNG/JPEG is taken as PA);
    ``name`` is how errors name the input (a path at the CLI).
    """

    data: bytes | None = None
    archive_uid: str | None = None
    datasets: Sequence[Dataset] | None = None
    view: str | None = None
    name: str = UPLOAD_NAME

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.data, self.archive_uid, self.datasets))
        if given != 1:
            raise InputError("give exactly one of an image file, an archive study UID or the study's datasets")
        if self.view is not None and self.view not in ("PA", "AP"):
            raise InputError("the view must be PA or AP")
        if self.data is not None and not self.data:
            raise EmptyInputError(f"{self.name}: the file is empty")


def deidentified_image(
    data: bytes, deidentifier: DicomDeidentifier, *, view: str | None = None, name: str = UPLOAD_NAME
) -> Image:
    """Decode an image's bytes (DICOM de-identified first; PNG/JPEG carry no header) into an ``Image``;
    ``name`` is how errors call it (the file's path at the CLI, "upload" over HTTP).

    ``view`` (PA or AP) is the caller's word on the view: kept with ``view_source`` "request" (refused when a
    DICOM header says another). Without it a DICOM keeps its header's view (none, and the guardrails refuse it),
    and a PNG/JPEG, which has no header, is taken as PA with ``view_source`` "default".
    """
    plain = is_plain_image(data[:8])
    if plain:
        image = read_plain_image(data, name=name)
    else:
        ds = parse_dicom_bytes(data, name=name)
        clean = deidentifier.deidentify_dataset(ds, name=name).dataset
        image = dataset_to_image(clean, name=name)
    if view is not None:
        if image.view is not View.UNKNOWN and image.view.value != view:
            raise GuardrailViolation(f"the request says view {view} but the image header says {image.view.value}")
        image = dataclasses.replace(image, view=View(view), view_source="request")
    elif plain:
        image = dataclasses.replace(image, view=ASSUMED_VIEW, view_source=ASSUMED_VIEW_SOURCE)
    return image


def check_input_image(image: Image) -> list[Flag]:
    """Refuse what the model is not for (not CR/DX, not chest, not frontal); return the non-blocking flags (among
    them ``view_assumed`` when a PNG/JPEG was taken as PA for want of a stated view)."""
    study = Study(image.study_instance_uid)
    study.add(image)
    findings = input_findings(study)
    refused = [f for f in findings if f.severity == "refuse"]
    if refused:
        raise GuardrailViolation("; ".join(f.message for f in refused))
    flags = [flag_of(f) for f in findings]
    if image.view_source == ASSUMED_VIEW_SOURCE:
        flags.append(Flag("view_assumed", VIEW_ASSUMED_MESSAGE))
    return flags


def select_frontal(
    datasets: Sequence[Dataset], deidentifier: DicomDeidentifier, *, modalities: Sequence[str] | None = None
) -> tuple[Image | None, list[Finding]]:
    """De-identify a study's instances and pick its frontal radiograph (PA over AP), with the guardrail findings.

    Instances that cannot be read or de-identified (an SR, a damaged file) are skipped; with ``modalities``,
    instances of other modalities are not even decoded (a CT series in the same study). Returns ``None`` for
    the image when a finding refuses the study or no frontal view is left.
    """
    study = Study("working-copy")
    for index, ds in enumerate(datasets):
        if modalities is not None and str(ds.get("Modality", "")) not in modalities:
            continue
        name = f"{UPLOAD_NAME}[{index}]"
        try:
            clean = deidentifier.deidentify_dataset(ds, name=name).dataset
            study.add(dataset_to_image(clean, name=name))
        except RadlvlmError:
            continue
    findings = input_findings(study)
    frontal = sorted(study.frontal_images(), key=lambda image: image.view is not View.PA)
    if any(f.severity == "refuse" for f in findings) or not frontal:
        return None, findings
    return frontal[0], findings


def ingest_study(study: StudyInput, deidentifier: DicomDeidentifier, archive: Any = None) -> tuple[Image, list[Flag]]:
    """The de-identified frontal radiograph of ``study`` and its non-blocking flags; refuses (GuardrailViolation)
    what the model is not for. ``archive`` is where an archive study UID is fetched from."""
    if study.data is not None:
        image = deidentified_image(study.data, deidentifier, view=study.view, name=study.name)
        return image, check_input_image(image)
    if study.archive_uid is not None:
        if archive is None:
            raise NoArchiveError("this service has no DICOMweb archive configured")
        datasets = archive.retrieve_study(study.archive_uid)
    else:
        assert study.datasets is not None
        datasets = study.datasets
    # Only radiographs are decoded: SRs (our own drafts among them) and other series are passed over.
    image, findings = select_frontal(datasets, deidentifier, modalities=RADIOGRAPH_MODALITIES)
    if image is None:
        refused = [f.message for f in findings if f.severity == "refuse"]
        raise GuardrailViolation("; ".join(refused) or "no readable frontal radiograph in the study")
    return image, [flag_of(f) for f in findings]
