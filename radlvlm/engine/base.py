"""The engine interface: studies and task requests in, typed results with timings out.

The service and the PACS worker only talk to an ``Engine``; the torch backend (CPU/GPU, MoLE-capable,
dynamic batching) and the vLLM backend (GPU) implement it.
"""

from __future__ import annotations

import abc
import math
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from radlvlm.errors import RadlvlmError
from radlvlm.imaging import Image
from radlvlm.tasks.errorcheck import ErrorCheckTask
from radlvlm.tasks.taxonomy import ErrorCategory

if TYPE_CHECKING:
    from radlvlm.tasks.calibration import CheckCalibrations

EngineImage = Image | torch.Tensor


class EngineOverloaded(RadlvlmError):
    """The request queue is full; retry after ``retry_after_s`` seconds (the service answers 503)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineClosed(RadlvlmError):
    """The engine was shut down before the request ran."""


@dataclass(frozen=True)
class DraftRequest:
    """Draft findings and impression for a study's frontal image, with the indication when known."""

    image: EngineImage
    indication: str | None = None
    max_new_tokens: int | None = None
    # CheXpert observations a finding classifier read in the image (None: no classifier, nothing in the prompt).
    findings: tuple[str, ...] | None = None


@dataclass(frozen=True)
class StreamDraftRequest(DraftRequest):
    """A draft whose text is delivered as it is generated: the future resolves to a ``DraftStream``."""


@dataclass(frozen=True)
class CheckRequest:
    """Check ``report`` for errors, against ``image`` when given (else a text-only consistency check)."""

    report: str
    image: EngineImage | None = None
    mode: ErrorCheckTask = ErrorCheckTask.SIMPLE


@dataclass(frozen=True)
class Timings:
    queued_ms: float
    compute_ms: float
    total_ms: float
    batch_size: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "queued_ms": round(self.queued_ms, 2),
            "compute_ms": round(self.compute_ms, 2),
            "total_ms": round(self.total_ms, 2),
            "batch_size": self.batch_size,
        }


REPETITION = "repetition"  # finish_reason of a draft withheld because the model looped


@dataclass(frozen=True)
class DraftResult:
    findings: str
    impression: str
    text: str
    finish_reason: str
    new_tokens: int
    model_id: str
    timings: Timings


def draft_result(generation: Any, model_id: str, timings: Timings) -> DraftResult:
    """A decoded generation (``radlvlm.model.generation.Generation``) as a drafting result, for both backends.

    A degenerate repetition loop (:func:`radlvlm.tasks.drafting.find_repetition`) never reaches a user as a
    draft: the result is empty with ``finish_reason="repetition"`` (the torch backend retries such a row with
    repetition controls before it gets here).
    """
    from radlvlm.tasks.drafting import find_repetition, parse_draft

    if find_repetition(generation.text) is not None:
        return DraftResult("", "", "", REPETITION, generation.new_tokens, model_id, timings)
    draft = parse_draft(generation.text)
    return DraftResult(
        findings=draft.findings,
        impression=draft.impression,
        text=generation.text,
        finish_reason=generation.finish_reason,
        new_tokens=generation.new_tokens,
        model_id=model_id,
        timings=timings,
    )


@dataclass(frozen=True)
class CheckFinding:
    category: ErrorCategory | None
    span: tuple[int, int] | None


@dataclass(frozen=True)
class CheckResult:
    """``has_error`` with a confidence (SIMPLE), or also the error's type and span (COMPLEX).

    ``answer_valid`` is False when the check could not be done (``reason`` says why: a report without the
    sections a text-only check compares, not English, longer than the context) or when the model's COMPLEX
    answer did not follow the format (``raw_answer`` holds what it said); ``has_error`` is then None.
    ``error_probability`` is the calibrated P(error) of a SIMPLE check (see :mod:`radlvlm.tasks.calibration`);
    ``confidence`` the probability of the verdict given (``error_probability`` or its complement).
    """

    has_error: bool | None
    confidence: float | None
    findings: list[CheckFinding]
    text_only: bool
    mode: ErrorCheckTask
    answer_valid: bool
    raw_answer: str
    model_id: str
    timings: Timings
    error_probability: float | None = None
    reason: str | None = None
    calibrated: bool = False
    model_log_odds: float | None = None  # the model's own score (SIMPLE), before calibration


def simple_check_result(
    request: CheckRequest,
    log_odds: float,
    calibrations: CheckCalibrations | None,
    model_id: str,
    timings: Timings,
) -> CheckResult:
    """The SIMPLE verdict from the model's log-odds of " yes" over " no", for every backend.

    With the model's calibration (:class:`radlvlm.tasks.calibration.CheckCalibrations`) P(error) is the fitted
    probability and the verdict is taken at the threshold chosen on validation; without one, at 0.5 of the
    renormalised yes/no probability.
    """
    calibration = calibrations.for_check(with_image=request.image is not None) if calibrations else None
    if calibration is not None:
        p_error, threshold = calibration.probability(log_odds, request.report), calibration.threshold
    else:
        p_error, threshold = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, log_odds)))), 0.5
    has_error = p_error >= threshold
    return CheckResult(
        has_error=has_error,
        confidence=p_error if has_error else 1.0 - p_error,
        findings=[],
        text_only=request.image is None,
        mode=ErrorCheckTask.SIMPLE,
        answer_valid=True,
        raw_answer="yes" if has_error else "no",
        model_id=model_id,
        timings=timings,
        error_probability=p_error,
        calibrated=calibration is not None,
        model_log_odds=log_odds,
    )


def unanswerable_check(request: CheckRequest, reason: str, model_id: str) -> CheckResult:
    """A check that cannot be done, said so instead of guessed (no model call was made)."""
    return CheckResult(
        has_error=None,
        confidence=None,
        findings=[],
        text_only=request.image is None,
        mode=request.mode,
        answer_valid=False,
        raw_answer=f"unanswerable: {reason}",  # what scorers see: an answer off the format, counted invalid
        model_id=model_id,
        timings=Timings(0.0, 0.0, 0.0, 0),
        reason=reason,
    )


@dataclass
class EngineStats:
    requests: int = 0
    batches: int = 0
    rejected: int = 0
    failed: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "rejected": self.rejected,
            "failed": self.failed,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
        }


class DraftStream:
    """Text pieces of a streaming draft, in order; iteration ends when generation does."""

    def __init__(self, pieces: Any) -> None:
        self._pieces = pieces  # a transformers TextIteratorStreamer
        self._result: DraftResult | None = None
        self._finished = threading.Event()

    def __iter__(self) -> Any:
        return iter(self._pieces)

    def finish(self, result: DraftResult | None) -> None:
        """Called by the engine when generation ends (``None`` when it failed)."""
        self._result = result
        self._finished.set()

    def result(self, timeout: float | None = None) -> DraftResult | None:
        """The parsed draft once generation has ended; None if it failed or did not end within ``timeout``."""
        self._finished.wait(timeout)
        return self._result


Request = DraftRequest | CheckRequest
Result = DraftResult | CheckResult | DraftStream

# What the error-check prompts ask a model to answer with, after "ASSISTANT:".
YES_ANSWER, NO_ANSWER = " yes", " no"
# Token budget of a COMPLEX check's JSON answer (a category and a span fit with room to spare).
COMPLEX_ANSWER_TOKENS = 96


@dataclass(frozen=True)
class AnswerTokens:
    """How " yes" and " no" continue a prompt: their shared leading token ids, then the first ids that differ."""

    shared: tuple[int, ...]
    yes: int
    no: int


def simple_answer_tokens(tokenizer: Any) -> AnswerTokens | None:
    """The token ids that decide a SIMPLE check by one next-token distribution, or None when none can.

    A byte-level BPE may spell both answers after a lone space token (the shared part, appended to the
    prompt); when one answer's ids are a prefix of the other's, no single token decides and backends decode.
    """
    yes = tokenizer(YES_ANSWER, add_special_tokens=False)["input_ids"]
    no = tokenizer(NO_ANSWER, add_special_tokens=False)["input_ids"]
    shared = 0
    while shared < min(len(yes), len(no)) and yes[shared] == no[shared]:
        shared += 1
    if shared == min(len(yes), len(no)):
        return None
    return AnswerTokens(tuple(int(t) for t in yes[:shared]), int(yes[shared]), int(no[shared]))


class Engine(abc.ABC):
    """A backend that runs drafting and error-check requests."""

    model_id: str

    @abc.abstractmethod
    def submit(self, request: Request) -> Future[Result]:
        """Queue ``request``; raises ``EngineOverloaded`` at once when the queue is full."""

    def run(self, request: Request, timeout: float | None = None) -> Result:
        """Submit and wait for the result."""
        return self.submit(request).result(timeout=timeout)

    @abc.abstractmethod
    def warmup(self) -> None:
        """Run one request end to end so the first real request does not pay for lazy initialisation."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop accepting requests, finish what is queued, release the model."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counters for /metrics."""
