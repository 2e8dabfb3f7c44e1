"""POST /v1/deid: de-identify a DICOM file (PS3.15 Annex E profile) or a report text."""

from __future__ import annotations

import hashlib
import io
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import Response
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from starlette.concurrency import run_in_threadpool

from radlvlm.errors import NotDicomError
from radlvlm.service.dependencies import get_state, require
from radlvlm.service.errors import ApiError
from radlvlm.service.schemas import DeidTextOut, ErrorBody
from radlvlm.service.security import Principal
from radlvlm.service.state import ServiceState

router = APIRouter(prefix="/v1", tags=["deid"])

ERRORS = {code: {"model": ErrorBody} for code in (401, 403, 413, 415, 422, 429)}
DICOM_RESPONSE = {
    200: {
        "content": {"application/dicom": {}, "application/json": {"schema": DeidTextOut.model_json_schema()}},
        "description": "The de-identified DICOM file, or the de-identified text as JSON",
    }
}


def _deidentify_dicom(data: bytes, state: ServiceState) -> bytes:
    try:
        ds = dcmread(io.BytesIO(data))
    except InvalidDicomError as e:
        raise NotDicomError("upload: not a DICOM file") from e
    except Exception as e:  # damaged headers fail in many ways
        raise NotDicomError(f"upload: not a readable DICOM file ({type(e).__name__})") from e
    result = state.deidentifier.deidentify_dataset(ds, name="upload")
    buffer = io.BytesIO()
    result.dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@router.post("/deid", responses={**ERRORS, **DICOM_RESPONSE}, response_model=None)  # type: ignore[arg-type]
async def deidentify(
    file: Annotated[UploadFile | None, File(description="A DICOM file to de-identify")] = None,
    text: Annotated[str | None, Form(max_length=200_000, description="A report text to de-identify")] = None,
    principal: Principal = Depends(require("deid")),
    state: ServiceState = Depends(get_state),
) -> Response | DeidTextOut:
    """Give exactly one of ``file`` (answered as application/dicom) or ``text`` (answered as JSON)."""
    if (file is None) == (text is None):
        raise ApiError(422, "invalid_request", "give exactly one of 'file' (DICOM) or 'text'")
    if file is not None:
        data = await file.read()
        if not data:
            raise ApiError(422, "invalid_input", "the file is empty")
        output = await run_in_threadpool(_deidentify_dicom, data, state)
        if state.audit is not None:
            await run_in_threadpool(
                state.audit.record,
                actor=principal.key_id,
                action="deid_dicom",
                study=state.deidentifier.pseudonyms.uid(hashlib.sha256(data).hexdigest()),
                request=data,
                response=output,
                details={"bytes_in": len(data), "bytes_out": len(output)},
            )
        return Response(output, media_type="application/dicom")
    assert text is not None
    if not text.strip():
        raise ApiError(422, "invalid_input", "the text is empty")
    cleaned = await run_in_threadpool(state.deidentifier.text.deidentify, text)
    if state.audit is not None:
        await run_in_threadpool(
            state.audit.record,
            actor=principal.key_id,
            action="deid_text",
            study=state.deidentifier.pseudonyms.uid(hashlib.sha256(text.encode()).hexdigest()),
            request=text,
            response=cleaned.text,
            details={"spans": len(cleaned.spans)},
        )
    return DeidTextOut(text=cleaned.text, replaced=cleaned.counts)
