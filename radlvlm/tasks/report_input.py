"""What a report must be for an error check to mean something, and the reason when it is not.

A check that cannot be done must say so (``answer_valid: false`` with a reason), never answer a confident
"no error": a text-only check compares the findings with the impression, so it needs both; any check needs
English radiology text (the model and the rule checker read nothing else).
"""

from __future__ import annotations

import re
from functools import cache

from radlvlm.errors import ReportParseError
from radlvlm.reports import parse_report

__all__ = ["ENGLISH_SHARE", "check_input_problem"]

# Share of a report's words (3+ letters) that must be known English or radiology vocabulary. Real reports sit
# near 1.0 (IU-Xray's XXXX redactions count as known); German or Spanish reports fall well below 0.5.
ENGLISH_SHARE = 0.6
_WORD = re.compile(r"[A-Za-z][A-Za-z']{2,}")


@cache
def _known_words() -> frozenset[str]:
    from radlvlm.safety.vocabulary import load_english, load_vocabulary

    return load_vocabulary() | load_english()


def _english_share(text: str) -> float | None:
    words = [w.lower().strip("'") for w in _WORD.findall(text)]
    words = [w.removesuffix("'s") for w in words if set(w) != {"x"}]
    if len(words) < 3:
        return None
    known = _known_words()
    return sum(w in known for w in words) / len(words)


def check_input_problem(report: str, *, with_image: bool) -> str | None:
    """Why ``report`` cannot be checked (one sentence, no report text quoted), or None when it can."""
    if not report or not report.strip():
        return "the report is empty"
    non_ascii_letters = sum(ch.isalpha() and not ch.isascii() for ch in report)
    share = _english_share(report)
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
