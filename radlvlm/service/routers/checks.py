"""POST /v1/checks: does this report contain an error, against the image or (without one) on its own text?"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from radlvlm.engine.base import CheckRequest, CheckResult
from radlvlm.service.dependencies import get_state, require
from radlvlm.service.errors import ApiError
from radlvlm.service.pipeline import check_input_image, deidentified_image, map_span_to_original
from radlvlm.service.schemas import CheckFindingOut, CheckOut, ErrorBody, TimingsOut
from radlvlm.service.security import Principal
from radlvlm.service.state import ServiceState
from radlvlm.tasks.errorcheck import ErrorCheckTask

router = APIRouter(prefix="/v1", tags=["checks"])

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
    view: Annotated[Literal["PA", "AP"] | None, Form(description="View of a PNG/JPEG upload")] = None,
    principal: Principal = Depends(require("check")),
    state: ServiceState = Depends(get_state),
) -> CheckOut:
    """Check a report for errors. Without an image only the report's internal consistency (findings vs
    impression) is checked, and the answer says so (``check_type: text_only``)."""
    started = time.perf_counter()
    if not report.strip():
        raise ApiError(422, "empty_report", "the report is empty")
    deidentifier = state.deidentifier
    image = None
    data = b""
    flags = []
    if file is not None:
        data = await file.read()
        if data:
            image = await run_in_threadpool(deidentified_image, data, deidentifier, view=view)
            flags = check_input_image(image)
    cleaned = await run_in_threadpool(deidentifier.text.deidentify, report)
    future = state.engine.submit(CheckRequest(report=cleaned.text, image=image, mode=ErrorCheckTask(mode)))
    try:
        result = await asyncio.wait_for(asyncio.wrap_future(future), timeout=state.settings.request_timeout_s)
    except TimeoutError:
        raise ApiError(504, "timeout", "the model did not answer in time") from None
    assert isinstance(result, CheckResult)
    replaced = [(span.start, span.end) for span in cleaned.spans]
    findings = []
    for finding in result.findings:
        span = None
        if finding.span is not None and 0 <= finding.span[0] <= finding.span[1] <= len(cleaned.text):
            span = map_span_to_original(finding.span, report, cleaned.text, replaced)
        findings.append(
            CheckFindingOut(
                category=finding.category.value if finding.category else None,
                span=span,
                text=report[span[0] : span[1]] if span else None,
            )
        )
    elapsed_ms = (time.perf_counter() - started) * 1000
    out = CheckOut(
        model_id=result.model_id,
        mode=mode,
        check_type="text_only" if result.text_only else "image",
        has_error=result.has_error,
        confidence=result.confidence,
        error_probability=result.error_probability,
        calibrated=result.calibrated,
        findings=findings,
        answer_valid=result.answer_valid,
        reason=result.reason,
        guardrail_flags=flags,
        timings=TimingsOut(**result.timings.as_dict(), request_ms=round(elapsed_ms, 2)),
    )
    if state.audit is not None:
        study = (
            image.study_instance_uid
            if image is not None
            else deidentifier.pseudonyms.uid("text:" + hashlib.sha256(report.encode()).hexdigest())
        )
        await run_in_threadpool(
            state.audit.record,
            actor=principal.key_id,
            action=f"check_{mode}",
            study=study,
            request=hashlib.sha256(data).hexdigest() + hashlib.sha256(report.encode()).hexdigest(),
            response=json.dumps(out.model_dump(exclude={"timings"}), sort_keys=True),
            details={"model": result.model_id.replace(" ", "_"), "text_only": image is None, "ms": round(elapsed_ms)},
        )
    return out
