"""POST /v1/deid: de-identify a DICOM file (PS3.15 Annex E profile) or a report text."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from radlvlm.pipeline import Caller
from radlvlm.service.dependencies import UseCases, get_state, get_use_cases, one_part_each, require
from radlvlm.service.errors import ApiError
from radlvlm.service.schemas import DeidTextOut, ErrorBody
from radlvlm.service.security import Principal
from radlvlm.service.state import ServiceState

router = APIRouter(prefix="/v1", tags=["deid"], dependencies=[Depends(one_part_each)])

ERRORS = {code: {"model": ErrorBody} for code in (401, 403, 413, 415, 422, 429)}
DICOM_RESPONSE = {
    200: {
        "content": {"application/dicom": {}, "application/json": {"schema": DeidTextOut.model_json_schema()}},
        "description": "The de-identified DICOM file, or the de-identified text as JSON",
    }
}


@router.post("/deid", responses={**ERRORS, **DICOM_RESPONSE}, response_model=None)  # type: ignore[arg-type]
async def deidentify(
    file: Annotated[UploadFile | None, File(description="A DICOM file to de-identify")] = None,
    text: Annotated[str | None, Form(max_length=200_000, description="A report text to de-identify")] = None,
    principal: Principal = Depends(require("deid")),
    state: ServiceState = Depends(get_state),
    cases: UseCases = Depends(get_use_cases),
) -> Response | DeidTextOut:
    """Give exactly one of ``file`` (answered as application/dicom) or ``text`` (answered as JSON)."""
    if (file is None) == (text is None):
        raise ApiError(422, "invalid_request", "give exactly one of 'file' (DICOM) or 'text'")
    caller = Caller(principal.key_id, "http")
    if file is not None:
        data = await file.read()
        output = await run_in_threadpool(cases.deidentify_dicom, state.runtime, data, caller)
        return Response(output, media_type="application/dicom")
    assert text is not None
    cleaned = await run_in_threadpool(cases.deidentify_text, state.runtime, text, caller)
    return DeidTextOut(text=cleaned.text, replaced=cleaned.replaced)
