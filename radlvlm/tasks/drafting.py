"""Report drafting: the prompt (image, optional indication) and the parser of a drafted report.

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
from dataclasses import dataclass

from radlvlm.errors import ReportParseError
from radlvlm.reports import normalize_text, parse_report
from radlvlm.tasks.image_findings import findings_line

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
