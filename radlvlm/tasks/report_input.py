"""What a report must be for an error check to mean something, and the reason when it is not.

A check that cannot be done must say so (``answer_valid: false`` with a reason), never answer a confident
"no error": a text-only check compares the findings with the impression, so it needs both; any check needs
English radiology text (the model and the rule checker read nothing else).
"""

from __future__ import annotations

from radlvlm.errors import ReportParseError
from radlvlm.reports import parse_report
from radlvlm.safety.vocabulary import ENGLISH_SHARE, english_share

__all__ = ["check_input_problem"]


# ENGLISH_SHARE: real reports sit near 1.0 (IU-Xray's XXXX redactions count as known); German or Spanish
# reports fall well below 0.5.
def check_input_problem(report: str, *, with_image: bool) -> str | None:
    """Why ``report`` cannot be checked (one sentence, no report text quoted), or None when it can."""
    if not report or not report.strip():
        return "the report is empty"
    non_ascii_letters = sum(ch.isalpha() and not ch.isascii() for ch in report)
    share = english_share(report)
    if non_ascii_letters > 0.2 * max(sum(ch.isalpha() for ch in report), 1) or (
        share is not None and share < ENGLISH_SHARE
    ):
        return "the report does not read as English radiology text; only English reports can be checked"
    try:
        sections = parse_report(report)
    except ReportParseError:
        return "the report's sections could not be read (give FINDINGS: and IMPRESSION: sections)"
    findings, impression = sections.findings.strip(), sections.impression.strip()
    if with_image:
        return None if findings or impression else "the report has no findings or impression to check"
    if not findings:
        return "a text-only check compares the findings with the impression, and this report has no findings"
    if not impression:
        return "a text-only check compares the findings with the impression, and this report has no impression"
    return None
