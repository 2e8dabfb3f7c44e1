"""The rule checker: does a report's impression agree with its findings? Labeler-based, negation- and
laterality-aware, no model. The serving check fuses it with the model's score
(:mod:`radlvlm.tasks.calibration`), and evaluation scores it as the baseline a model must beat
(:func:`radlvlm.clinical_eval.baselines.consistency_predictions`); it lives here, below both."""

from __future__ import annotations

from radlvlm.reports.labeler import CHEXPERT_14, Label, LabeledReport, label_report
from radlvlm.reports.sections import parse_report

__all__ = ["ConsistencyFinding", "check_consistency"]


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


def check_consistency(text: str) -> list[ConsistencyFinding]:
    """Rule-based findings-vs-impression consistency check of one report.

    Inconsistencies (weight): an observation positive in one section and explicitly negative in the other,
    or positive and negative within one section (1.0, ``contradiction``); positive in both with different
    laterality (1.0, ``laterality``) or severity (``severity``: 1.0 when two grades apart, mild vs severe, else
    0.5); positive in the impression but not mentioned in the findings (1.0, ``impression_only``); a definite
    finding in the findings that the impression does not carry (``findings_only``: 1.0 for an acute finding
    under an impression that calls the study normal, else 0.5, as that is common in correct reports). A report
    without both sections is checked for within-report contradictions only.
    """
    sections = parse_report(text)
    whole = label_report(text)
    found: list[ConsistencyFinding] = []
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
