"""Error checking, the tasks: SIMPLE (is there an error? one scored token, calibrated) and COMPLEX (which error and
where? a short JSON answer). Each builds the engine's request for a :class:`CheckRequest` (the family's check
prompt as token ids), chooses how it is decoded or scored, and reads the answer into a :class:`CheckResult`;
a report that cannot be checked is answered at once, saying why, never guessed.

Prompts and answer parsers are :mod:`radlvlm.tasks.errorcheck`'s; the rule features a calibration fuses with the
model's score are :mod:`radlvlm.tasks.calibration`'s.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from radlvlm.engine.base import EngineImage, Generated, GenerateRequest, Scored, ScoreRequest, Timings
from radlvlm.model.decoding import GenerationSettings
from radlvlm.tasks.calibration import RULE_KIND_CATEGORY, CheckCalibrations, rule_checker_flags
from radlvlm.tasks.errorcheck import (
    AnswerParseError,
    ErrorCheckTask,
    errorcheck_prompt,
    parse_complex_answer,
    parse_simple_answer,
)
from radlvlm.tasks.report_input import check_input_problem
from radlvlm.tasks.taxonomy import ErrorCategory

if TYPE_CHECKING:
    from radlvlm.model.processor import RadProcessor

NOT_TRAINED_FOR_CHECKS = "this model was not trained for error checks"
# What the error-check prompts ask a model to answer with, after "ASSISTANT:".
YES_ANSWER, NO_ANSWER = " yes", " no"
# Token budget of a COMPLEX check's JSON answer (a category and a span fit with room to spare).
COMPLEX_ANSWER_TOKENS = 96
# Token budget of a SIMPLE check decoded as text (a tokenizer where no single token tells yes from no).
SIMPLE_ANSWER_TOKENS = 4


@dataclass(frozen=True)
class CheckRequest:
    """Check ``report`` for errors, against ``image`` when given (else a text-only consistency check)."""

    report: str
    image: EngineImage | None = None
    mode: ErrorCheckTask = ErrorCheckTask.SIMPLE


@dataclass(frozen=True)
class CheckFinding:
    category: ErrorCategory | None
    span: tuple[int, int] | None
    observation: str | None = None  # what is inconsistent when no span is given ("Pleural Effusion", "Comparison")


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


@dataclass(frozen=True)
class AnswerTokens:
    """How " yes" and " no" continue a prompt: their shared leading token ids, then the first ids that differ."""

    shared: tuple[int, ...]
    yes: int
    no: int


def simple_answer_tokens(tokenizer: Any) -> AnswerTokens | None:
    """The token ids that decide a SIMPLE check by one next-token distribution, or None when none can.

    A byte-level BPE may spell both answers after a lone space token (the shared part, appended to the
    prompt); when one answer's ids are a prefix of the other's, no single token decides and the answer is decoded.
    """
    yes = tokenizer(YES_ANSWER, add_special_tokens=False)["input_ids"]
    no = tokenizer(NO_ANSWER, add_special_tokens=False)["input_ids"]
    shared = 0
    while shared < min(len(yes), len(no)) and yes[shared] == no[shared]:
        shared += 1
    if shared == min(len(yes), len(no)):
        return None
    return AnswerTokens(tuple(int(t) for t in yes[:shared]), int(yes[shared]), int(no[shared]))


def yes_no_log_odds(logprobs: Mapping[int, float], answer: AnswerTokens) -> float | None:
    """The first answer token's log-odds of yes over no. One that is missing had no probability left (``-inf``,
    clipped by the verdict). None when neither is there."""
    yes, no = logprobs.get(answer.yes, -math.inf), logprobs.get(answer.no, -math.inf)
    if yes == -math.inf and no == -math.inf:
        return None
    if yes == -math.inf or no == -math.inf:
        return math.inf if no == -math.inf else -math.inf
    return yes - no


def simple_check_result(
    request: CheckRequest,
    log_odds: float,
    calibrations: CheckCalibrations | None,
    model_id: str,
    timings: Timings,
) -> CheckResult:
    """The SIMPLE verdict from the model's log-odds of " yes" over " no".

    With the model's calibration (:class:`radlvlm.tasks.calibration.CheckCalibrations`) P(error) is the fitted
    probability and the verdict is taken at the threshold chosen on validation, or wherever the rule checker
    flags the report when the calibration has a rule floor (the rule checker's inconsistencies are then the
    answer's findings); without one, at 0.5 of the renormalised yes/no probability.
    """
    calibration = calibrations.for_check(with_image=request.image is not None) if calibrations else None
    findings: list[CheckFinding] = []
    if calibration is not None:
        assessed = calibration.assess(log_odds, request.report)
        p_error, has_error = assessed.error_probability, assessed.has_error
        if has_error and rule_checker_flags(assessed.rule_findings):
            # What the rule checker found is said, so a reader sees which observation disagrees.
            findings = [
                CheckFinding(RULE_KIND_CATEGORY[str(f["kind"])], None, str(f["observation"]))
                for f in assessed.rule_findings
            ]
    else:
        p_error = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, log_odds))))
        has_error = p_error >= 0.5
    return CheckResult(
        has_error=has_error,
        confidence=p_error if has_error else 1.0 - p_error,
        findings=findings,
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


class _CheckTask(ABC):
    """What the SIMPLE and COMPLEX checks share: the prompt, and the reasons a report cannot be checked."""

    mode: ErrorCheckTask
    answer_tokens: int

    def __init__(self, processor: RadProcessor) -> None:
        self.processor = processor

    def prompt(self, request: CheckRequest) -> str:
        return self.processor.chat_prompt(errorcheck_prompt(self.mode, request.report), image=request.image is not None)

    def prompt_ids(self, request: CheckRequest) -> tuple[int, ...]:
        return tuple(self.processor.prompt_ids(self.prompt(request)))

    def ask(self, request: CheckRequest) -> ScoreRequest | GenerateRequest | str:
        """The engine's request for this check, or why it cannot be done (see
        :func:`radlvlm.tasks.report_input.check_input_problem`, plus a model not trained to check and a prompt
        longer than its context), the prompt tokenised once for both. A problem is answered at once, so a bad
        report never joins, and never fails, a batch of other clients' requests."""
        if not self.processor.profile.error_checks:
            return NOT_TRAINED_FOR_CHECKS  # a converted LLaVA-Rad, say: it would only guess
        problem = check_input_problem(request.report, with_image=request.image is not None)
        if problem is not None:
            return problem
        ids = self.prompt_ids(request)
        context = self.processor.max_length
        if context is not None:
            tokens = len(ids) + ((self.processor.num_image_tokens - 1) if request.image is not None else 0)
            if tokens + self.answer_tokens > context:
                return f"the report is too long for the model: {tokens} tokens with the prompt, context {context}"
        return self._engine_request(request, ids)

    def problem(self, request: CheckRequest) -> str | None:
        """Why this check cannot be done, or None (:meth:`ask`)."""
        asked = self.ask(request)
        return asked if isinstance(asked, str) else None

    def engine_request(self, request: CheckRequest) -> ScoreRequest | GenerateRequest:
        """The engine's request for this check, whether or not it can be done (:meth:`ask` says)."""
        return self._engine_request(request, self.prompt_ids(request))

    @abstractmethod
    def _engine_request(self, request: CheckRequest, ids: tuple[int, ...]) -> ScoreRequest | GenerateRequest:
        """The engine request of a check that can be done, from its tokenised prompt."""


class SimpleCheckTask(_CheckTask):
    """Is there an error? Scored, not decoded: the next-token log-odds of " yes" over " no" after the prompt
    (after the tokens both answers share), turned into P(error) and a verdict by the model's calibration.
    A tokenizer where no single token tells them apart has its short answer decoded and parsed instead."""

    mode = ErrorCheckTask.SIMPLE
    answer_tokens = 1

    def __init__(self, processor: RadProcessor, calibrations: CheckCalibrations | None = None) -> None:
        super().__init__(processor)
        self.calibrations = calibrations
        self.answer = simple_answer_tokens(processor.tokenizer)

    def _engine_request(self, request: CheckRequest, ids: tuple[int, ...]) -> ScoreRequest | GenerateRequest:
        if self.answer is None:
            settings = GenerationSettings(max_new_tokens=SIMPLE_ANSWER_TOKENS)
            return GenerateRequest(ids, request.image, settings)
        return ScoreRequest(ids + self.answer.shared, (self.answer.yes, self.answer.no), request.image)

    def result(self, request: CheckRequest, answered: Scored | Generated, model_id: str) -> CheckResult:
        if isinstance(answered, Scored):
            assert self.answer is not None
            log_odds = yes_no_log_odds(answered.logprobs, self.answer)
            if log_odds is not None:
                return simple_check_result(request, log_odds, self.calibrations, model_id, answered.timings)
            text = ""
        else:
            text = answered.text
        try:
            has_error: bool | None = parse_simple_answer(text)
            valid = True
        except AnswerParseError:
            has_error, valid = None, False
        return CheckResult(
            has_error, None, [], request.image is None, self.mode, valid, text, model_id, answered.timings
        )


class ComplexCheckTask(_CheckTask):
    """Which error, and where? Greedy decoding of a short JSON answer, parsed; an answer off the format is
    reported (``answer_valid: false`` with what the model said), not guessed."""

    mode = ErrorCheckTask.COMPLEX
    answer_tokens = COMPLEX_ANSWER_TOKENS

    def _engine_request(self, request: CheckRequest, ids: tuple[int, ...]) -> GenerateRequest:
        return GenerateRequest(ids, request.image, GenerationSettings(max_new_tokens=COMPLEX_ANSWER_TOKENS))

    def result(self, request: CheckRequest, answered: Generated, model_id: str) -> CheckResult:
        try:
            answer = parse_complex_answer(answered.text)
        except AnswerParseError:
            answer = None
        return CheckResult(
            has_error=answer.has_error if answer else None,
            confidence=None,
            findings=[CheckFinding(answer.category, answer.span)] if answer and answer.has_error else [],
            text_only=request.image is None,
            mode=self.mode,
            answer_valid=answer is not None,
            raw_answer=answered.text,
            model_id=model_id,
            timings=answered.timings,
        )
