"""The rule checker: does a report's impression agree with its findings? Labeler-based, negation- and
laterality-aware, no model. The serving check fuses it with the model's score
(:mod:`radlvlm.tasks.calibration`), and evaluation scores it as the baseline a model must beat
(:func:`radlvlm.clinical_eval.baselines.consistency_predictions`); it lives here, below both."""

from __future__ import annotations

import re
from functools import cache

from radlvlm.reports.labeler import CHEXPERT_14, Label, LabeledReport, label_report, rules
from radlvlm.reports.normalize import normalize_text, split_sentences
from radlvlm.reports.sections import ReportSections, parse_report

__all__ = [
    "RULE_CHECKER_THRESHOLD",
    "RULE_KINDS",
    "ConsistencyFinding",
    "check_consistency",
    "comparison_without_prior",
    "report_sentences",
    "says_no_prior",
]


# The rule checker flags a report when its inconsistencies' weights add up to this: one weight-1 finding, or two
# of the lighter ones (see check_consistency).
RULE_CHECKER_THRESHOLD = 1.0
# The kinds of inconsistency the rule checker reports (see check_consistency).
RULE_KINDS: tuple[str, ...] = (
    "comparison_without_prior",
    "contradiction",
    "laterality",
    "severity",
    "impression_only",
    "findings_only",
)


class ConsistencyFinding(dict):
    """One inconsistency: ``observation``, ``kind`` and ``weight`` (dict so it serialises as it is)."""


_MAIN = [n for n in CHEXPERT_14 if n not in ("No Finding", "Support Devices")]
_PRESENT = (Label.POSITIVE, Label.UNCERTAIN)
_ACUTE = frozenset({"Pneumothorax", "Pleural Effusion", "Consolidation", "Pneumonia", "Edema", "Fracture"})


def _sides(report: LabeledReport, name: str) -> frozenset[str]:
    return frozenset().union(*(m.laterality for m in report.mentions if m.label == name and m.status is Label.POSITIVE))


def _severity(report: LabeledReport, name: str) -> int | None:
    grades = [m.severity for m in report.mentions if m.label == name and m.status is Label.POSITIVE and m.severity]
    return max(grades) if grades else None


@cache
def _comparison_cues() -> tuple[list[re.Pattern[str]], list[re.Pattern[str]]]:
    table = rules()
    return [re.compile(p) for p in table["no_prior_cues"]], [re.compile(p) for p in table["prior_reference_cues"]]


def says_no_prior(comparison: str) -> bool:
    """Whether a COMPARISON section says there is no prior study ("None", "None available", "No prior")."""
    text = normalize_text(comparison, lowercase=True) if comparison.strip() else ""
    return bool(text) and any(p.search(text) for p in _comparison_cues()[0])


def report_sentences(sections: ReportSections) -> list[str]:
    """The sentences of the findings and then the impression, normalised and lower-cased."""
    return [
        sentence
        for section in (sections.findings, sections.impression)
        for sentence in split_sentences(normalize_text(section, lowercase=True))
    ]


def comparison_without_prior(sections: ReportSections) -> int:
    """How many sentences of the findings and impression presuppose a prior study ("interval resolution of",
    "unchanged", "again seen") when the COMPARISON section says there is none: 0 without such a section."""
    if not says_no_prior(sections.comparison):
        return 0
    prior_reference = _comparison_cues()[1]
    sentences = report_sentences(sections)
    return sum(any(p.search(sentence) for p in prior_reference) for sentence in sentences)


def check_consistency(text: str) -> list[ConsistencyFinding]:
    """Rule-based findings-vs-impression consistency check of one report.

    Inconsistencies (weight): an observation positive in one section and explicitly negative in the other,
    or positive and negative within one section (1.0, ``contradiction``); positive in both with different
    laterality (1.0, ``laterality``) or severity (``severity``: 1.0 when two grades apart, mild vs severe, else
    0.5); positive in the impression but not mentioned in the findings (1.0, ``impression_only``); a definite
    finding in the findings that the impression does not carry (``findings_only``: 1.0 for an acute finding
    under an impression that calls the study normal, else 0.5, as that is common in correct reports); a sentence
    that presupposes a prior study under a COMPARISON section that says there is none (1.0,
    ``comparison_without_prior``). A report without both findings and impression is checked for within-report
    contradictions and comparisons only.
    """
    sections = parse_report(text)
    whole = label_report(text)
    found: list[ConsistencyFinding] = []
    if comparison_without_prior(sections):
        found.append(ConsistencyFinding(observation="Comparison", kind="comparison_without_prior", weight=1.0))
    for name in _MAIN:
        statuses = {m.status for m in whole.mentions if m.label == name}
        if Label.POSITIVE in statuses and Label.NEGATIVE in statuses:
            found.append(ConsistencyFinding(observation=name, kind="contradiction", weight=1.0))
    if not (sections.findings.strip() and sections.impression.strip()):
        return found
    findings, impression = label_report(sections.findings), label_report(sections.impression)
    listed = {f["observation"] for f in found}
    impression_normal = impression.labels["No Finding"] is Label.POSITIVE
    for name in _MAIN:
        f, i = findings.labels[name], impression.labels[name]
        if name in listed:
            continue
        if f is Label.POSITIVE and i is Label.POSITIVE:
            fs, is_ = _sides(findings, name), _sides(impression, name)
            if fs and is_ and fs != is_:
                found.append(ConsistencyFinding(observation=name, kind="laterality", weight=1.0))
            fv, iv = _severity(findings, name), _severity(impression, name)
            if fv and iv and fv != iv:
                weight = 1.0 if abs(fv - iv) >= 2 else 0.5  # mild vs severe cannot both be right
                found.append(ConsistencyFinding(observation=name, kind="severity", weight=weight))
        elif i in _PRESENT and f is Label.BLANK:
            found.append(ConsistencyFinding(observation=name, kind="impression_only", weight=1.0))
        elif f is Label.POSITIVE and i is Label.BLANK:
            # An acute finding under an impression that calls the study normal is a contradiction; other
            # findings left out of the impression are common in correct reports.
            weight = 1.0 if name in _ACUTE and impression_normal else 0.5
            found.append(ConsistencyFinding(observation=name, kind="findings_only", weight=weight))
    return found
