"""The de-identification use case for one file or one text, as the service's ``/v1/deid`` answers it.

DICOM goes through the one export rule (:meth:`radlvlm.safety.dicom_deid.DicomDeidentifier.deidentify_bytes`,
which ``radlvlm deid`` applies to every file of a folder too); a text through the report de-identifier. Each
request gets a pseudonym context of its own, and one audit entry holding keyed digests only.
"""

from __future__ import annotations

from dataclasses import dataclass

from radlvlm.errors import InputError
from radlvlm.pipeline.ingest import UPLOAD_NAME
from radlvlm.pipeline.runtime import Caller, Runtime

__all__ = ["DeidentifiedText", "deidentify_dicom", "deidentify_text"]


@dataclass(frozen=True)
class DeidentifiedText:
    text: str
    replaced: dict[str, int]


def deidentify_dicom(runtime: Runtime, data: bytes, caller: Caller, *, name: str = UPLOAD_NAME) -> bytes:
    """The de-identified DICOM file (PS3.15 Annex E basic profile) of ``data``; refused when not exportable."""
    if not data:
        raise InputError(f"{name}: the file is empty")
    runtime.ensure_auditable()
    output, result = runtime.deidentifier().deidentify_bytes(data, name=name)
    study = str(result.dataset.get("StudyInstanceUID", "") or "") or runtime.content_uid("dicom", data)
    runtime.record(
        caller,
        "deid_dicom",
        study,
        request=runtime.digest(data),
        response=runtime.digest(output),
        bytes_in=len(data),
        bytes_out=len(output),
    )
    return output


def deidentify_text(runtime: Runtime, text: str, caller: Caller) -> DeidentifiedText:
    """``text`` with names, identifiers, dates and contact details replaced by type tags."""
    if not text.strip():
        raise InputError("the text is empty")
    runtime.ensure_auditable()
    cleaned = runtime.report_deidentifier.deidentify(text)
    runtime.record(
        caller,
        "deid_text",
        runtime.content_uid("text", text),
        request=runtime.digest(text),
        response=runtime.digest(cleaned.text),
        spans=len(cleaned.spans),
    )
    return DeidentifiedText(cleaned.text, dict(cleaned.counts))
