"""Report drafting, the task: the prompt (image, the image's findings, optional indication), the decode, and the
parser of a drafted report (:class:`DraftTask` turns a :class:`DraftRequest` into the engine's request and its
answer into a :class:`DraftResult`).

The answer format is the report's own: ``FINDINGS: … IMPRESSION: …``, parsed back with the report-section
parser, so a draft can be scored, stored or sent as DICOM SR / FHIR without a second format.

For an image the model is not for (not a chest radiograph) the answer is :data:`ABSTENTION_MESSAGE` instead of a
report; DPO alignment teaches it and :func:`parse_draft` marks it (``Draft.abstained``) so evaluation can score
abstention and callers never file it as findings.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from radlvlm.engine.base import EngineImage, Generated, GenerateRequest, GenerationStream, Retry, Timings
from radlvlm.errors import InputError, ReportParseError
from radlvlm.model.decoding import GenerationSettings
from radlvlm.reports import normalize_text, parse_report, split_sentences
from radlvlm.tasks.image_findings import findings_line

if TYPE_CHECKING:
    from radlvlm.model.processor import RadProcessor

DRAFT_INSTRUCTION = "Write the findings and impression of the radiology report for this chest X-ray."
INDICATION_LINE = "Indication: {indication}"
# One fixed sentence, so training targets and the parser agree; the marker before the colon is what is matched.
ABSTENTION_MARKER = "NO REPORT"
ABSTENTION_MESSAGE = f"{ABSTENTION_MARKER}: this image is not a chest radiograph. Only chest X-rays are reported."


def draft_prompt(indication: str | None = None, findings: Sequence[str] | None = None) -> str:
    """The drafting instruction, with the image's findings when a finding classifier read it, and the clinical
    indication when one is given.

    ``findings`` are CheXpert observations (:data:`radlvlm.tasks.image_findings.WRITER_LABELS`); ``None`` means
    no classifier (the line is left out), an empty sequence that the classifier found nothing (``none``).
    """
    lines = [DRAFT_INSTRUCTION]
    if findings is not None:
        lines.append(findings_line(findings))
    if indication and indication.strip():
        lines.append(INDICATION_LINE.format(indication=normalize_text(indication)))
    return "\n".join(lines)


def draft_target(findings: str, impression: str) -> str:
    """What a perfect model answers: the reference sections in report form."""
    parts = []
    if findings.strip():
        parts.append(f"FINDINGS: {normalize_text(findings)}")
    if impression.strip():
        parts.append(f"IMPRESSION: {normalize_text(impression)}")
    return "\n".join(parts)


@dataclass(frozen=True)
class Draft:
    """A parsed draft. ``abstained`` is True when the model declined (:data:`ABSTENTION_MESSAGE`); then
    findings and impression are empty."""

    findings: str
    impression: str
    abstained: bool = False

    @property
    def text(self) -> str:
        return ABSTENTION_MESSAGE if self.abstained else draft_target(self.findings, self.impression)


def is_abstention(answer: str) -> bool:
    """True when ``answer`` starts with the abstention marker (``NO REPORT:``), whatever follows it."""
    head = normalize_text(answer or "").lstrip(" \"'*#").upper()
    return head.startswith(f"{ABSTENTION_MARKER}:") or head == ABSTENTION_MARKER


def parse_draft(answer: str) -> Draft:
    """Split a generated draft into findings and impression; text without headers counts as findings.

    An abstention (see :func:`is_abstention`) gives an empty draft with ``abstained=True``.
    """
    if not answer or not answer.strip():
        return Draft("", "")
    if is_abstention(answer):
        return Draft("", "", abstained=True)
    try:
        sections = parse_report(answer)
    except ReportParseError:
        return Draft(normalize_text(answer), "")
    findings = sections.findings or sections.other.get("preamble", "")
    return Draft(normalize_text(findings), normalize_text(sections.impression))


# A unit of 1-10 words said three or more times in a row ("chest radiograph chest radiograph chest radiograph").
_RUN = re.compile(r"\b((?:[a-z0-9']+[^a-z0-9']+){1,10}?)\1{2,}")
_SENTENCE = re.compile(r"[^.!?]+[.!?]?")


def find_repetition(text: str) -> str | None:
    """Why ``text`` is a degenerate repetition loop, or None when it reads as a report.

    A loop is what small greedy decoders fall into: a run of 1-10 words repeated three or more times in a row,
    the same sentence three or more times, or 30+ words of which fewer than a quarter are distinct. Real reports
    repeat short negations ("No effusion. No pneumothorax.") but never a sentence three times.
    """
    words = re.sub(r"\s+", " ", (text or "").lower()).strip()
    # IU-Xray's de-identification writes one XXXX per redacted word, so real reports hold runs of them.
    words = re.sub(r"\bxxxx(?:\W+xxxx\b)+", "xxxx", words)
    if not words:
        return None
    run = _RUN.search(words + " ")
    if run is not None:
        return f"a run of {len(run.group(1).split())} word(s) repeated in a row"
    sentences = Counter(s.strip(" .!?") for s in _SENTENCE.findall(words) if len(s.strip(" .!?").split()) >= 2)
    if sentences and max(sentences.values()) >= 3:
        return "the same sentence three or more times"
    tokens = re.findall(r"[a-z0-9']+", words)
    if len(tokens) >= 30 and len(set(tokens)) / len(tokens) < 0.25:
        return "too few distinct words for its length"
    return None


# -- the task ---------------------------------------------------------------------------------------------------

REPETITION = "repetition"  # finish_reason of a draft withheld because the model looped
# A draft whose prompt leaves fewer tokens than this in the context is refused: it could not say anything.
MIN_DRAFT_TOKENS = 16
# Decode settings of the second try for a draft that looped (greedy decoders of small models do).
RETRY_REPETITION_PENALTY = 1.3
RETRY_NO_REPEAT_NGRAM = 4


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
class DraftResult:
    findings: str
    impression: str
    text: str
    finish_reason: str
    new_tokens: int
    model_id: str
    timings: Timings


class DraftStream:
    """Text pieces of a streaming draft, in order; its :meth:`result` is the parsed draft once it has ended."""

    def __init__(self, stream: GenerationStream, read: Any) -> None:
        self._stream = stream
        self._read = read  # Generated -> DraftResult

    def __iter__(self) -> Any:
        return iter(self._stream)

    def result(self, timeout: float | None = None) -> DraftResult | None:
        """The parsed draft once generation has ended; None if it failed or did not end within ``timeout``."""
        generated = self._stream.result(timeout)
        return None if generated is None else self._read(generated)


def said_once(section: str) -> str:
    """``section`` with a sentence that repeats an earlier one of the same section left out ("Pneumonia.
    Pneumonia. Airspace opacity." reads "Pneumonia. Airspace opacity."): a small writer sometimes says a finding
    twice, which adds nothing for the reader and says nothing new; a loop of three or more is withheld instead
    (:func:`find_repetition`)."""
    kept: list[str] = []
    seen: set[str] = set()
    for sentence in split_sentences(section) if section.strip() else []:
        key = sentence.lower().strip(" .")
        if key not in seen:
            seen.add(key)
            kept.append(sentence)
    return " ".join(kept)


def _loops(text: str) -> bool:
    return find_repetition(text) is not None


class DraftTask:
    """Drafting on one served model: the family's drafting prompt as token ids, greedy decoding with the request's
    token budget (and, for a draft caught in a repetition loop, one more try with repetition controls), the
    answer parsed into findings and impression; a draft that still loops is withheld, never shown.

    Args:
        processor: the served model's processor (prompt format, tokenisation, context length).
        generation: the engine's decode settings (the request's budget replaces their ``max_new_tokens``).
    """

    def __init__(self, processor: RadProcessor, generation: GenerationSettings) -> None:
        self.processor = processor
        self.generation = generation

    def prompt(self, indication: str | None = None, findings: Sequence[str] | None = None) -> str:
        """The drafting prompt of this model's family: radlvlm's drafting task, or the family's own request.

        ``findings`` (CheXpert observations a finding classifier read in the image; None without one) go on a line
        of their own, after the family's request for a family that was not trained with them.
        """
        request = self.processor.profile.draft_request(indication)
        if request is None:
            return self.processor.chat_prompt(draft_prompt(indication, findings))
        return self.processor.chat_prompt(request if findings is None else f"{request}\n{findings_line(findings)}")

    def engine_request(self, request: DraftRequest) -> GenerateRequest:
        """The engine's request for ``request``; an indication so long that the model would have no room left to
        write is refused here, so it never joins, and never fails, a batch of other clients' drafts."""
        if request.max_new_tokens is not None and request.max_new_tokens < 1:
            raise InputError("max_new_tokens must be at least 1")
        ids = tuple(self.processor.prompt_ids(self.prompt(request.indication, request.findings)))
        context = self.processor.max_length
        if context is not None and request.indication:
            tokens = len(ids) + self.processor.num_image_tokens - 1
            if tokens + MIN_DRAFT_TOKENS > context:
                raise InputError(
                    f"the indication is too long for the model: {tokens} tokens with the prompt and the image, "
                    f"context {context}"
                )
        settings = replace(self.generation, max_new_tokens=request.max_new_tokens or self.generation.max_new_tokens)
        retry = Retry(
            _loops,
            replace(
                settings,
                repetition_penalty=max(settings.repetition_penalty, RETRY_REPETITION_PENALTY),
                no_repeat_ngram_size=RETRY_NO_REPEAT_NGRAM,
            ),
        )
        stream = isinstance(request, StreamDraftRequest)
        return GenerateRequest(ids, request.image, settings, None if stream else retry, stream=stream)

    def result(self, generated: Generated, model_id: str) -> DraftResult:
        """The draft in ``generated``; a degenerate repetition loop (:func:`find_repetition`) never reaches a user as
        a draft: the result is empty with ``finish_reason="repetition"``."""
        if generated.rejected or _loops(generated.text):
            return DraftResult("", "", "", REPETITION, generated.new_tokens, model_id, generated.timings)
        draft = parse_draft(generated.text)
        return DraftResult(
            findings=said_once(draft.findings),
            impression=said_once(draft.impression),
            text=generated.text,
            finish_reason=generated.finish_reason,
            new_tokens=generated.new_tokens,
            model_id=model_id,
            timings=generated.timings,
        )

    def stream(self, stream: GenerationStream, model_id: str) -> DraftStream:
        return DraftStream(stream, lambda generated: self.result(generated, model_id))
