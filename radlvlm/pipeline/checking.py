"""The error-check use case: a report (and, when given, the study's image) → a verdict, the same at every door.

The report is de-identified before the model sees it; an image goes through the drafting path's ingest (one
DICOM reader, de-identification, input guardrails). Error spans the model finds in the de-identified text are
mapped back to the text the caller sent, so every door answers in the caller's own offsets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from radlvlm.engine.base import CheckRequest, CheckResult, Timings
from radlvlm.errors import InputError, ModelError
from radlvlm.imaging import Image
from radlvlm.pipeline.flags import Flag
from radlvlm.pipeline.ingest import StudyInput, ingest_study
from radlvlm.pipeline.output import map_span_to_original
from radlvlm.pipeline.runtime import Caller, Runtime
from radlvlm.tasks.errorcheck import ErrorCheckTask

__all__ = ["CheckOutcome", "FoundError", "PreparedCheck", "check_report", "finish_check", "prepare_check"]


@dataclass(frozen=True)
class FoundError:
    """One error the check names: its category and where it is in the report as sent (None when unplaced)."""

    category: str | None
    span: tuple[int, int] | None
    text: str | None


@dataclass
class PreparedCheck:
    request: CheckRequest
    report: str
    cleaned: str
    replaced: list[tuple[int, int]]
    image: Image | None
    flags: list[Flag]
    request_digest: str
    study: str
    started: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class CheckOutcome:
    model_id: str
    mode: str
    text_only: bool
    has_error: bool | None
    confidence: float | None
    error_probability: float | None
    calibrated: bool
    errors: list[FoundError]
    answer_valid: bool
    reason: str | None
    flags: list[Flag]
    timings: Timings
    request_ms: float
    study: str

    def answer(self) -> dict[str, Any]:
        """The answer without timings (what is audited; the same request gives it at every door)."""
        return {
            "model_id": self.model_id,
            "mode": self.mode,
            "check_type": "text_only" if self.text_only else "image",
            "has_error": self.has_error,
            "confidence": self.confidence,
            "error_probability": self.error_probability,
            "calibrated": self.calibrated,
            "findings": [vars(e) for e in self.errors],
            "answer_valid": self.answer_valid,
            "reason": self.reason,
            "guardrail_flags": [f.as_dict() for f in self.flags],
        }


def prepare_check(
    runtime: Runtime, report: str, *, image: StudyInput | None = None, mode: str = "simple"
) -> PreparedCheck:
    """De-identify the report (and ingest the image); the engine request they become."""
    if mode not in ("simple", "complex"):
        raise InputError("the mode must be simple or complex")
    if not report.strip():
        raise InputError("the report is empty")
    runtime.ensure_auditable()
    deidentifier = runtime.deidentifier()
    picture, flags = None, []
    if image is not None:
        picture, flags = ingest_study(image, deidentifier, runtime.archive)
    cleaned = runtime.report_deidentifier.deidentify(report)
    request = CheckRequest(report=cleaned.text, image=picture, mode=ErrorCheckTask(mode))
    pixels = picture.array.tobytes() if picture is not None else b""
    digest = runtime.digest(mode, report, picture.sop_instance_uid if picture is not None else "", pixels)
    # A text-only check has no study UID: the report stands for it, under a keyed pseudonym.
    study = picture.study_instance_uid if picture is not None else runtime.content_uid("report", report)
    replaced = [(span.start, span.end) for span in cleaned.spans]
    return PreparedCheck(request, report, cleaned.text, replaced, picture, flags, digest, study)


def finish_check(runtime: Runtime, prepared: PreparedCheck, result: CheckResult, caller: Caller) -> CheckOutcome:
    """Map the model's spans back to the report as sent, and audit the request."""
    errors = []
    for finding in result.findings:
        span = None
        if finding.span is not None and 0 <= finding.span[0] <= finding.span[1] <= len(prepared.cleaned):
            span = map_span_to_original(finding.span, prepared.report, prepared.cleaned, prepared.replaced)
        errors.append(
            FoundError(
                category=finding.category.value if finding.category else None,
                span=span,
                text=prepared.report[span[0] : span[1]] if span else None,
            )
        )
    elapsed_ms = round((time.perf_counter() - prepared.started) * 1000, 2)
    outcome = CheckOutcome(
        model_id=result.model_id,
        mode=prepared.request.mode.value,
        text_only=result.text_only,
        has_error=result.has_error,
        confidence=result.confidence,
        error_probability=result.error_probability,
        calibrated=result.calibrated,
        errors=errors,
        answer_valid=result.answer_valid,
        reason=result.reason,
        flags=prepared.flags,
        timings=result.timings,
        request_ms=elapsed_ms,
        study=prepared.study,
    )
    runtime.record(
        caller,
        f"check_{outcome.mode}",
        prepared.study,
        request=prepared.request_digest,
        response=runtime.answer_digest(outcome.answer()),
        model=result.model_id.replace(" ", "_"),
        text_only=result.text_only,
        ms=round(elapsed_ms),
    )
    return outcome


def check_report(
    runtime: Runtime, report: str, caller: Caller, *, image: StudyInput | None = None, mode: str = "simple"
) -> CheckOutcome:
    """Check a report for errors (against the image when given): the use case every door calls."""
    prepared = prepare_check(runtime, report, image=image, mode=mode)
    result = runtime.run(prepared.request)
    if not isinstance(result, CheckResult):
        raise ModelError(f"the engine answered a check with a {type(result).__name__}")
    return finish_check(runtime, prepared, result, caller)
