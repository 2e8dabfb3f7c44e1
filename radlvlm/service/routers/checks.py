"""POST /v1/checks: does this report contain an error, against the image or (without one) on its own text?"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from radlvlm.pipeline import Caller, StudyInput
from radlvlm.service.dependencies import UseCases, get_state, get_use_cases, one_part_each, require
from radlvlm.service.schemas import CheckFindingOut, CheckOut, ErrorBody, GuardrailFlag, TimingsOut
from radlvlm.service.security import Principal
from radlvlm.service.state import ServiceState

router = APIRouter(prefix="/v1", tags=["checks"], dependencies=[Depends(one_part_each)])

ERRORS = {code: {"model": ErrorBody} for code in (401, 403, 413, 415, 422, 429, 503, 504)}


@router.post("/checks", response_model=CheckOut, responses=ERRORS)  # type: ignore[arg-type]
async def create_check(
    report: Annotated[str, Form(min_length=1, max_length=20_000, description="The report text to check")],
    mode: Annotated[
        Literal["simple", "complex"], Form(description="simple: yes/no; complex: type and span")
    ] = "simple",
    file: Annotated[
        UploadFile | None, File(description="The study's frontal radiograph; omit for a text-only check")
    ] = None,
    view: Annotated[
        Literal["PA", "AP"] | None, Form(description="View of a PNG/JPEG upload (default PA, flagged as assumed)")
    ] = None,
    principal: Principal = Depends(require("check")),
    state: ServiceState = Depends(get_state),
    cases: UseCases = Depends(get_use_cases),
) -> CheckOut:
    """Check a report for errors. Without an image only the report's internal consistency (findings vs
    impression) is checked, and the answer says so (``check_type: text_only``)."""
    image = StudyInput(data=await file.read(), view=view) if file is not None else None
    outcome = await run_in_threadpool(
        cases.check, state.runtime, report, Caller(principal.key_id, "http"), image=image, mode=mode
    )
    return CheckOut(
        model_id=outcome.model_id,
        mode=mode,
        check_type="text_only" if outcome.text_only else "image",
        has_error=outcome.has_error,
        confidence=outcome.confidence,
        error_probability=outcome.error_probability,
        calibrated=outcome.calibrated,
        findings=[CheckFindingOut(category=e.category, span=e.span, text=e.text) for e in outcome.errors],
        answer_valid=outcome.answer_valid,
        reason=outcome.reason,
        image_findings=outcome.image_findings,
        image_comparison=outcome.image_comparison,
        guardrail_flags=[GuardrailFlag(**f.as_dict()) for f in outcome.flags],
        timings=TimingsOut(**outcome.timings.as_dict(), request_ms=outcome.request_ms),
    )
