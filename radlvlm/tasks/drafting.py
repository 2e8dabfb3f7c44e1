"""Report drafting: the prompt (image, optional indication) and the parser of a drafted report.

The answer format is the report's own: ``FINDINGS: … IMPRESSION: …``, parsed back with the report-section
parser, so a draft can be scored, stored or sent as DICOM SR / FHIR without a second format.
"""

from __future__ import annotations

from dataclasses import dataclass

from radlvlm.errors import ReportParseError
from radlvlm.reports import normalize_text, parse_report

DRAFT_INSTRUCTION = "Write the findings and impression of the radiology report for this chest X-ray."
INDICATION_LINE = "Indication: {indication}"


def draft_prompt(indication: str | None = None) -> str:
    """The drafting instruction, with the clinical indication when one is given."""
    if indication and indication.strip():
        return f"{DRAFT_INSTRUCTION}\n{INDICATION_LINE.format(indication=normalize_text(indication))}"
    return DRAFT_INSTRUCTION


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
    findings: str
    impression: str

    @property
    def text(self) -> str:
        return draft_target(self.findings, self.impression)


def parse_draft(answer: str) -> Draft:
    """Split a generated draft into findings and impression; text without headers counts as findings."""
    if not answer or not answer.strip():
        return Draft("", "")
    try:
        sections = parse_report(answer)
    except ReportParseError:
        return Draft(normalize_text(answer), "")
    findings = sections.findings or sections.other.get("preamble", "")
    return Draft(normalize_text(findings), normalize_text(sections.impression))
