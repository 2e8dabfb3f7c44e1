"""The safety path every request takes: de-identify the input, check it, and check what goes back out.

Uploaded DICOM is de-identified in full (PS3.15 Annex E profile, burned-in annotation refused) before any
pixels reach the model, so the study UID the audit trail sees is already a pseudonym. Free text
(indications, reports) is de-identified with the report de-identifier. Generated text is scanned: PHI is
replaced before it leaves, unsupported claims are flagged for the reader.
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Iterator, Sequence
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from radlvlm.errors import GuardrailViolation, NotDicomError, RadlvlmError
from radlvlm.imaging import Image, Study, View, dataset_to_image
from radlvlm.imaging.dicom import is_plain_image, read_image_file
from radlvlm.safety.dicom_deid import DicomDeidentifier
from radlvlm.safety.guardrails import Finding, input_findings, output_findings
from radlvlm.service.schemas import GuardrailFlag

UPLOAD_NAME = "upload"


def flag_of(finding: Finding) -> GuardrailFlag:
    return GuardrailFlag(
        code=finding.code, message=finding.message, severity="block" if finding.severity == "refuse" else "warning"
    )


def deidentified_image(data: bytes, deidentifier: DicomDeidentifier, *, view: str | None = None) -> Image:
    """Decode an upload (DICOM de-identified first; PNG/JPEG carry no header) into an ``Image``."""
    if not data:
        raise NotDicomError(f"{UPLOAD_NAME}: empty file")
    if is_plain_image(data[:8]):
        image = read_image_file(io.BytesIO(data), name=UPLOAD_NAME)
    else:
        try:
            ds = dcmread(io.BytesIO(data))
        except InvalidDicomError as e:
            raise NotDicomError(f"{UPLOAD_NAME}: not a DICOM file, PNG or JPEG") from e
        except Exception as e:  # pydicom fails in many ways on damaged headers
            raise NotDicomError(f"{UPLOAD_NAME}: not a readable DICOM file ({type(e).__name__})") from e
        clean = deidentifier.deidentify_dataset(ds, name=UPLOAD_NAME).dataset
        image = dataset_to_image(clean, name=UPLOAD_NAME)
    if view is not None:
        if image.view is not View.UNKNOWN and image.view.value != view:
            raise GuardrailViolation(f"the request says view {view} but the image header says {image.view.value}")
        image = dataclasses.replace(image, view=View(view), view_source="request")
    return image


def check_input_image(image: Image) -> list[GuardrailFlag]:
    """Refuse what the model is not for (not CR/DX, not chest, not frontal); return the non-blocking flags."""
    study = Study(image.study_instance_uid)
    study.add(image)
    findings = input_findings(study)
    refused = [f for f in findings if f.severity == "refuse"]
    if refused:
        raise GuardrailViolation("; ".join(f.message for f in refused))
    return [flag_of(f) for f in findings]


def clean_output(
    text: str, deidentifier: DicomDeidentifier, *, has_prior: bool, has_lateral: bool
) -> tuple[str, list[GuardrailFlag]]:
    """Generated text with any PHI replaced, and the guardrail flags raised on it."""
    findings = output_findings(text, has_prior=has_prior, has_lateral=has_lateral, deidentifier=deidentifier.text)
    if any(f.severity == "refuse" for f in findings):
        text = deidentifier.text.deidentify(text).text
    return text, [flag_of(f) for f in findings]


def map_span_to_original(
    span: tuple[int, int], original: str, cleaned: str, replaced: list[tuple[int, int]]
) -> tuple[int, int]:
    """Map character offsets in de-identified text back to the text the caller sent.

    Text outside replaced spans is identical in both, so offsets shift by the length differences of the
    replacements before them; an offset inside a replacement maps to the whole original span.
    """
    pieces: list[tuple[int, int, int, int]] = []  # (clean start, clean end, original start, original end)
    cursor_o = cursor_c = 0
    spans = sorted(replaced)
    for index, (start, end) in enumerate(spans):
        cursor_c += start - cursor_o
        following = original[end : spans[index + 1][0]] if index + 1 < len(spans) else original[end:]
        found = cleaned.find(following, cursor_c) if following else len(cleaned)
        replacement_end = found if found >= cursor_c else cursor_c
        pieces.append((cursor_c, replacement_end, start, end))
        cursor_c, cursor_o = replacement_end, end

    def convert(offset: int, is_end: bool) -> int:
        shift = 0
        for clean_start, clean_end, orig_start, orig_end in pieces:
            if offset < clean_start or (offset == clean_start and not is_end):
                break
            if offset < clean_end or (offset == clean_end and is_end):
                return orig_end if is_end else orig_start
            shift = orig_end - clean_end
        return max(0, min(len(original), offset + shift))

    start, end = span
    return convert(start, False), convert(end, True)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def release_sentences(
    pieces: Iterator[str], deidentifier: DicomDeidentifier
) -> Iterator[tuple[str, list[GuardrailFlag]]]:
    """Group streamed text into sentences and release each only after its PHI scan (PHI replaced).

    Release stops at the first sentence that would make the released text a repetition loop
    (:func:`radlvlm.tasks.drafting.find_repetition`); the final parsed draft says ``repetition`` then.
    """
    from radlvlm.tasks.drafting import find_repetition

    buffer, released = "", ""
    for piece in pieces:
        buffer += piece
        parts = _SENTENCE_END.split(buffer)
        for sentence in parts[:-1]:
            if sentence.strip():
                if find_repetition(f"{released} {sentence}") is not None:
                    return
                released += f" {sentence}"
                yield clean_output(sentence, deidentifier, has_prior=False, has_lateral=False)
        buffer = parts[-1]
    if buffer.strip() and find_repetition(f"{released} {buffer}") is None:
        yield clean_output(buffer, deidentifier, has_prior=False, has_lateral=False)


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


def frontal_image_from_archive(
    study_uid: str, source: Any, deidentifier: DicomDeidentifier
) -> tuple[Image, list[GuardrailFlag]]:
    """Fetch a study over DICOMweb and pick its de-identified frontal radiograph; refuse it with the reasons."""
    image, findings = select_frontal(source.retrieve_study(study_uid), deidentifier)
    if image is None:
        refused = [f.message for f in findings if f.severity == "refuse"]
        raise GuardrailViolation("; ".join(refused) or "no readable frontal radiograph in the study")
    return image, [flag_of(f) for f in findings]
