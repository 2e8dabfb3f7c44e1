"""POST /v1/drafts: a preliminary findings + impression draft for a chest radiograph."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from radlvlm.errors import RadlvlmError
from radlvlm.pipeline import Caller, DraftOutcome, StudyInput
from radlvlm.service.dependencies import UseCases, get_state, get_use_cases, one_part_each, require
from radlvlm.service.errors import ApiError
from radlvlm.service.schemas import DraftOut, ErrorBody, GuardrailFlag, ImageFacts, TimingsOut
from radlvlm.service.security import Principal
from radlvlm.service.state import ServiceState

router = APIRouter(prefix="/v1", tags=["drafts"], dependencies=[Depends(one_part_each)])

ERRORS = {code: {"model": ErrorBody} for code in (401, 403, 413, 415, 422, 429, 503, 504)}
EXPLAIN = "Also show where the finding classifier saw each finding it states (activation_maps)"


async def _study(file: UploadFile | None, study_uid: str | None, view: str | None) -> StudyInput:
    """Exactly one of an upload or an archive study UID."""
    if (file is None) == (study_uid is None):
        raise ApiError(422, "invalid_request", "give exactly one of 'file' (an upload) or 'study_uid' (DICOMweb)")
    if study_uid is not None:
        return StudyInput(archive_uid=study_uid)
    assert file is not None
    return StudyInput(data=await file.read(), view=view)


def draft_out(outcome: DraftOutcome) -> DraftOut:
    return DraftOut(
        model_id=outcome.model_id,
        findings=outcome.findings,
        impression=outcome.impression,
        image=ImageFacts(**vars(outcome.image)),
        image_findings=outcome.image_findings,
        activation_maps=outcome.activation_maps,
        guardrail_flags=[GuardrailFlag(**f.as_dict()) for f in outcome.flags],
        finish_reason=outcome.finish_reason,
        timings=TimingsOut(**outcome.timings.as_dict(), request_ms=outcome.request_ms),
    )


def _count_flags(state: ServiceState, outcome: DraftOutcome) -> None:
    for flag in outcome.flags:
        state.metrics.guardrail_flags.labels(flag.code).inc()


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
        Literal["PA", "AP"] | None,
        Form(description="View of a PNG/JPEG upload (default PA, said in the answer; DICOM says its own)"),
    ] = None,
    explain: Annotated[bool, Form(description=EXPLAIN)] = False,
    principal: Principal = Depends(require("draft")),
    state: ServiceState = Depends(get_state),
    cases: UseCases = Depends(get_use_cases),
) -> DraftOut:
    """Draft findings and impression for an uploaded image or a study in the hospital's archive. The input is
    de-identified before the model sees it; the answer is a preliminary, AI-generated draft for a radiologist
    to review."""
    study = await _study(file, study_uid, view)
    outcome = await run_in_threadpool(
        cases.draft, state.runtime, study, Caller(principal.key_id, "http"), indication=indication, explain=explain
    )
    _count_flags(state, outcome)
    return draft_out(outcome)


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
    explain: Annotated[bool, Form(description=EXPLAIN)] = False,
    principal: Principal = Depends(require("draft")),
    state: ServiceState = Depends(get_state),
    cases: UseCases = Depends(get_use_cases),
) -> StreamingResponse:
    """The draft as server-sent events: ``text`` events carry whole sentences as soon as they are complete
    (each scanned for PHI first, so nothing unchecked leaves), then one ``done`` event with the parsed draft.
    Errors before the stream starts are ordinary JSON errors."""
    study = await _study(file, study_uid, view)
    session = await run_in_threadpool(
        cases.start_draft_stream,
        state.runtime,
        study,
        Caller(principal.key_id, "http"),
        indication=indication,
        explain=explain,
    )

    def events():  # type: ignore[no-untyped-def]
        for sentence in session.sentences():
            yield f"event: text\ndata: {json.dumps({'text': sentence})}\n\n"
        try:
            outcome = session.finish()
        except RadlvlmError:
            yield f"event: error\ndata: {json.dumps({'code': 'generation_failed', 'message': 'generation failed'})}\n\n"
            return
        _count_flags(state, outcome)
        done = draft_out(outcome).model_dump(exclude={"image"})
        yield f"event: done\ndata: {json.dumps(done)}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})
