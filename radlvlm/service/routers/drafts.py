"""POST /v1/drafts: a preliminary findings + impression draft for a chest radiograph."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from radlvlm.engine.base import DraftRequest, DraftResult, DraftStream, StreamDraftRequest
from radlvlm.imaging import Image
from radlvlm.service.dependencies import get_state, require
from radlvlm.service.errors import ApiError
from radlvlm.service.pipeline import (
    check_input_image,
    clean_output,
    deidentified_image,
    frontal_image_from_archive,
    release_sentences,
)
from radlvlm.service.schemas import DraftOut, ErrorBody, GuardrailFlag, ImageFacts, TimingsOut
from radlvlm.service.security import Principal
from radlvlm.service.state import ServiceState

router = APIRouter(prefix="/v1", tags=["drafts"])

ERRORS = {code: {"model": ErrorBody} for code in (401, 403, 413, 415, 422, 429, 503, 504)}


async def _prepare(
    state: ServiceState, file: UploadFile | None, study_uid: str | None, indication: str | None, view: str | None
) -> tuple[bytes, Image, list[GuardrailFlag], str | None]:
    """The safety path of a draft request: (request bytes for the audit hash, de-identified image, input flags,
    de-identified indication). Exactly one of an upload or an archive study UID."""
    deidentifier = state.deidentifier
    if (file is None) == (study_uid is None):
        raise ApiError(422, "invalid_request", "give exactly one of 'file' (an upload) or 'study_uid' (DICOMweb)")
    if study_uid is not None:
        if state.dicomweb is None:
            raise ApiError(422, "no_archive", "this service has no DICOMweb archive configured")
        data = study_uid.encode()
        image, flags = await run_in_threadpool(frontal_image_from_archive, study_uid, state.dicomweb, deidentifier)
    else:
        assert file is not None
        data = await file.read()
        image = await run_in_threadpool(deidentified_image, data, deidentifier, view=view)
        flags = check_input_image(image)
    clean_indication = None
    if indication and indication.strip():
        clean_indication = (await run_in_threadpool(deidentifier.text.deidentify, indication)).text
    return data, image, flags, clean_indication


async def _answer(state: ServiceState, future: Any, what: str) -> Any:
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout=state.settings.request_timeout_s)
    except TimeoutError:
        raise ApiError(504, "timeout", f"the model did not {what} in time") from None


@router.post("/drafts", response_model=DraftOut, responses=ERRORS)  # type: ignore[arg-type]
async def create_draft(
    file: Annotated[
        UploadFile | None, File(description="The frontal chest radiograph: DICOM (CR/DX), PNG or JPEG")
    ] = None,
    study_uid: Annotated[
        str | None,
        Form(
            max_length=64,
            pattern=r"^[0-9]+(\.[0-9]+)*$",
            description="A StudyInstanceUID in the configured DICOMweb archive (instead of an upload)",
        ),
    ] = None,
    indication: Annotated[
        str | None, Form(max_length=2000, description="Reason for the exam (de-identified first)")
    ] = None,
    view: Annotated[
        Literal["PA", "AP"] | None, Form(description="View of a PNG/JPEG upload (DICOM says its own)")
    ] = None,
    principal: Principal = Depends(require("draft")),
    state: ServiceState = Depends(get_state),
) -> DraftOut:
    """Draft findings and impression for an uploaded image or a study in the hospital's archive. The input is
    de-identified before the model sees it; the answer is a preliminary, AI-generated draft for a radiologist
    to review."""
    started = time.perf_counter()
    deidentifier = state.deidentifier
    data, image, flags, clean_indication = await _prepare(state, file, study_uid, indication, view)
    future = state.engine.submit(
        DraftRequest(image=image, indication=clean_indication, max_new_tokens=state.settings.max_new_tokens)
    )
    result = await _answer(state, future, "answer")
    assert isinstance(result, DraftResult)
    findings, findings_flags = await run_in_threadpool(
        clean_output, result.findings, deidentifier, has_prior=False, has_lateral=False
    )
    impression, impression_flags = await run_in_threadpool(
        clean_output, result.impression, deidentifier, has_prior=False, has_lateral=False
    )
    flags += findings_flags + impression_flags
    for flag in flags:
        state.metrics.guardrail_flags.labels(flag.code).inc()
    elapsed_ms = (time.perf_counter() - started) * 1000
    out = DraftOut(
        model_id=result.model_id,
        findings=findings,
        impression=impression,
        image=ImageFacts(
            modality=image.modality,
            body_part=image.body_part,
            view=image.view.value,
            rows=image.shape[0],
            columns=image.shape[1],
        ),
        guardrail_flags=flags,
        finish_reason=result.finish_reason,
        timings=TimingsOut(**result.timings.as_dict(), request_ms=round(elapsed_ms, 2)),
    )
    if state.audit is not None:
        await run_in_threadpool(
            state.audit.record,
            actor=principal.key_id,
            action="draft",
            study=image.study_instance_uid,
            request=hashlib.sha256(data).hexdigest() + hashlib.sha256((indication or "").encode()).hexdigest(),
            response=json.dumps(out.model_dump(exclude={"timings"}), sort_keys=True),
            details={"model": result.model_id.replace(" ", "_"), "flags": len(flags), "ms": round(elapsed_ms)},
        )
    return out


@router.post(
    "/drafts/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}, **ERRORS},  # type: ignore[dict-item]
)
async def stream_draft(
    file: Annotated[
        UploadFile | None, File(description="The frontal chest radiograph: DICOM (CR/DX), PNG or JPEG")
    ] = None,
    study_uid: Annotated[
        str | None,
        Form(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$", description="A StudyInstanceUID in the archive"),
    ] = None,
    indication: Annotated[str | None, Form(max_length=2000)] = None,
    view: Annotated[Literal["PA", "AP"] | None, Form()] = None,
    principal: Principal = Depends(require("draft")),
    state: ServiceState = Depends(get_state),
) -> StreamingResponse:
    """The draft as server-sent events: ``text`` events carry whole sentences as soon as they are complete
    (each scanned for PHI first, so nothing unchecked leaves), then one ``done`` event with the parsed draft.
    Errors before the stream starts are ordinary JSON errors."""
    started = time.perf_counter()
    deidentifier = state.deidentifier
    data, image, flags, clean_indication = await _prepare(state, file, study_uid, indication, view)
    future = state.engine.submit(
        StreamDraftRequest(image=image, indication=clean_indication, max_new_tokens=state.settings.max_new_tokens)
    )
    stream = await _answer(state, future, "start")
    assert isinstance(stream, DraftStream)

    def events():  # type: ignore[no-untyped-def]
        # Sentence flags repeat on the parsed sections below, which the done event reports.
        for sentence, _ in release_sentences(iter(stream), deidentifier):
            yield f"event: text\ndata: {json.dumps({'text': sentence})}\n\n"
        result = stream.result(timeout=state.settings.request_timeout_s)
        if result is None:
            yield f"event: error\ndata: {json.dumps({'code': 'generation_failed', 'message': 'generation failed'})}\n\n"
            return
        findings, f_flags = clean_output(result.findings, deidentifier, has_prior=False, has_lateral=False)
        impression, i_flags = clean_output(result.impression, deidentifier, has_prior=False, has_lateral=False)
        elapsed_ms = (time.perf_counter() - started) * 1000
        done = {
            "model_id": result.model_id,
            "findings": findings,
            "impression": impression,
            "guardrail_flags": [f.model_dump() for f in flags + f_flags + i_flags],
            "finish_reason": result.finish_reason,
            "timings": {**result.timings.as_dict(), "request_ms": round(elapsed_ms, 2)},
        }
        if state.audit is not None:
            state.audit.record(
                actor=principal.key_id,
                action="draft_stream",
                study=image.study_instance_uid,
                request=hashlib.sha256(data).hexdigest(),
                response=json.dumps(done, sort_keys=True),
                details={"model": result.model_id.replace(" ", "_"), "ms": round(elapsed_ms)},
            )
        yield f"event: done\ndata: {json.dumps(done)}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})
