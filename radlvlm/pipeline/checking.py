"""The error-check use case: a report (and, when given, the study's image) → a verdict, the same at every door.

The report is de-identified before the model sees it; an image goes through the drafting path's ingest (one
DICOM reader, de-identification, input guardrails). Error spans the model finds in the de-identified text are
mapped back to the text the caller sent, so every door answers in the caller's own offsets.

With an image, the report is compared with the finding classifier's reading of it
(:mod:`radlvlm.tasks.image_check`), fused with the model's text check into one calibrated probability; the answer
lists what was compared and what could not be checked. A model without a finding classifier answers that an image
check is not available (``answer_valid: false``), never a text-only verdict under an image check's name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from radlvlm.engine.base import Timings
from radlvlm.errors import InputError, ModelError
from radlvlm.imaging import Image
from radlvlm.pipeline.drafting import read_findings
from radlvlm.pipeline.flags import Flag
from radlvlm.pipeline.ingest import StudyInput, ingest_study
from radlvlm.pipeline.output import map_span_to_original
from radlvlm.pipeline.runtime import Caller, Runtime
from radlvlm.tasks.checking import CheckRequest, CheckResult
from radlvlm.tasks.errorcheck import ErrorCheckTask
from radlvlm.tasks.image_check import ImageComparison, compare_report
from radlvlm.tasks.report_input import check_input_problem
from radlvlm.tasks.taxonomy import ErrorCategory

if TYPE_CHECKING:
    from radlvlm.model.findings import ImageFindings

NO_CLASSIFIER = (
    "an image check is not available: the model in use has no finding classifier (send the report without an "
    "image for a text-only check)"
)
NO_FUSION = "an image check is not available: the finding classifier has no fitted image-check calibration"

__all__ = ["CheckOutcome", "FoundError", "PreparedCheck", "check_report", "finish_check", "prepare_check"]


@dataclass(frozen=True)
class FoundError:
    """One error the check names: its category, where it is in the report as sent (None when unplaced), and its
    text there, or the observation it concerns when it has no place (a rule-checker or image disagreement)."""

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
    mode: str = "simple"
    image_findings: ImageFindings | None = None
    unavailable: str | None = None  # why an image check cannot be done (the engine is then not asked)
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
    image_findings: dict[str, Any] | None = None
    image_comparison: dict[str, Any] | None = None

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
            "image_findings": self.image_findings,
            "image_comparison": self.image_comparison,
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
    found, unavailable = None, None
    if picture is not None:
        found = read_findings(runtime, picture)
        unavailable = NO_CLASSIFIER if found is None else None
    # The model checks the text (a SIMPLE score when an image is compared: the fusion takes its probability);
    # the image is read by the classifier and compared in finish_check.
    task = ErrorCheckTask.SIMPLE if picture is not None else ErrorCheckTask(mode)
    request = CheckRequest(report=cleaned.text, image=None, mode=task)
    pixels = picture.array.tobytes() if picture is not None else b""
    digest = runtime.digest(mode, report, picture.sop_instance_uid if picture is not None else "", pixels)
    # A text-only check has no study UID: the report stands for it, under a keyed pseudonym.
    study = picture.study_instance_uid if picture is not None else runtime.content_uid("report", report)
    replaced = [(span.start, span.end) for span in cleaned.spans]
    return PreparedCheck(
        request, report, cleaned.text, replaced, picture, flags, digest, study, mode, found, unavailable
    )


def finish_check(runtime: Runtime, prepared: PreparedCheck, result: CheckResult, caller: Caller) -> CheckOutcome:
    """Map the model's spans back to the report as sent (or compare with the image), and audit the request."""
    if prepared.image is not None:
        outcome = _image_outcome(runtime, prepared, result)
    else:
        outcome = _text_outcome(prepared, result)
    runtime.record(
        caller,
        f"check_{outcome.mode}",
        prepared.study,
        request=prepared.request_digest,
        response=runtime.answer_digest(outcome.answer()),
        model=result.model_id.replace(" ", "_"),
        text_only=outcome.text_only,
        ms=round(outcome.request_ms),
    )
    return outcome


def _elapsed_ms(prepared: PreparedCheck) -> float:
    return round((time.perf_counter() - prepared.started) * 1000, 2)


def _text_outcome(prepared: PreparedCheck, result: CheckResult) -> CheckOutcome:
    errors = []
    for finding in result.findings:
        span = None
        if finding.span is not None and 0 <= finding.span[0] <= finding.span[1] <= len(prepared.cleaned):
            span = map_span_to_original(finding.span, prepared.report, prepared.cleaned, prepared.replaced)
        errors.append(
            FoundError(
                category=finding.category.value if finding.category else None,
                span=span,
                text=prepared.report[span[0] : span[1]] if span else finding.observation,
            )
        )
    return CheckOutcome(
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
        request_ms=_elapsed_ms(prepared),
        study=prepared.study,
    )


def _image_outcome(runtime: Runtime, prepared: PreparedCheck, result: CheckResult) -> CheckOutcome:
    """The report against the classifier's reading, fused with the text check's probability."""
    found = prepared.image_findings
    fusion = runtime.image_check_fusion if found is not None else None
    # A report the labeler cannot read (not English, no findings or impression) would read as "normal": refuse it.
    problem = check_input_problem(prepared.cleaned, with_image=True)
    reason = prepared.unavailable or problem or (NO_FUSION if fusion is None else None)
    base = {
        "model_id": result.model_id,
        "mode": prepared.mode,
        "text_only": False,
        "flags": prepared.flags,
        "timings": result.timings,
        "request_ms": _elapsed_ms(prepared),
        "study": prepared.study,
        "image_findings": None if found is None else found.as_dict(),
    }
    if reason is not None or found is None or fusion is None:
        return CheckOutcome(
            has_error=None,
            confidence=None,
            error_probability=None,
            calibrated=False,
            errors=[],
            answer_valid=False,
            reason=reason,
            **base,
        )
    comparison = compare_report(prepared.cleaned, found)
    text_p = result.error_probability if result.answer_valid else None
    chosen = fusion.for_text_model(result.model_id, text_p is not None)
    p_error = chosen.probability(comparison, text_p)
    has_error = p_error >= chosen.threshold
    return CheckOutcome(
        has_error=has_error,
        confidence=p_error if has_error else 1.0 - p_error,
        error_probability=p_error,
        calibrated=True,
        errors=_disagreement_errors(comparison) if has_error else [],
        answer_valid=True,
        reason=None,
        image_comparison={**comparison.as_dict(), "text_error_probability": text_p},
        **base,
    )


def _disagreement_errors(comparison: ImageComparison) -> list[FoundError]:
    """Each disagreement with the image as an error: a finding stated that the image does not show is a false
    finding; one the image shows that the report denies, omits, or calls normal is an omitted finding."""
    out = []
    for item in comparison.disagreements:
        stated = item.report == "positive" and item.observation != "No Finding"
        category = ErrorCategory.FALSE_FINDING if stated else ErrorCategory.OMITTED_FINDING
        if item.observation == "No Finding" and item.report == "negative":
            category = ErrorCategory.FALSE_FINDING  # findings reported on an image read as normal
        out.append(FoundError(category=category.value, span=None, text=item.observation))
    return out


def check_report(
    runtime: Runtime, report: str, caller: Caller, *, image: StudyInput | None = None, mode: str = "simple"
) -> CheckOutcome:
    """Check a report for errors (against the image when given): the use case every door calls."""
    prepared = prepare_check(runtime, report, image=image, mode=mode)
    if prepared.unavailable is not None:  # nothing for the model to do: say so, audited like any answer
        result = CheckResult(
            None, None, [], False, ErrorCheckTask(mode), False, "", runtime.model_id, Timings(0.0, 0.0, 0.0, 0)
        )
        return finish_check(runtime, prepared, result, caller)
    result = runtime.run(prepared.request)
    if not isinstance(result, CheckResult):
        raise ModelError(f"the engine answered a check with a {type(result).__name__}")
    return finish_check(runtime, prepared, result, caller)
