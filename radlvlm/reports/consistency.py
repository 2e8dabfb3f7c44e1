"""The rule checker: does a report's impression agree with its findings? Labeler-based, negation- and
laterality-aware, no model. The serving check fuses it with the model's score
(:mod:`radlvlm.tasks.calibration`), and evaluation scores it as the baseline a model must beat
(:func:`radlvlm.clinical_eval.baselines.consistency_predictions`); it lives here, below both."""

from __future__ import annotations

import re
from functools import cache

from radlvlm.reports.labeler import CHEXPERT_14, Label, LabeledReport, Mention, label_report, mention_clause, rules
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


# A denial that carves out what the report states elsewhere ("the lungs are otherwise clear", "the remainder of
# the lungs is clear") denies nothing stated elsewhere.
_EXCEPTED = re.compile(r"\b(?:otherwise|remainder|rest of the|elsewhere|remaining)\b")
# A denial scoped to acute airspace disease ("no focal infiltrate", "no acute airspace disease") says nothing of an
# opacity the report attributes to a chronic or benign cause (scarring, granuloma, a calcified density,
# atelectasis) unless that sentence also raises airspace disease ("atelectasis or infiltrate").
_ACUTE_SCOPE = re.compile(
    r"\b(?:focal|acute|active|suspicious|confluent|air ?-?space|infiltrat\w*|consolidat\w*|pneumoni\w*)\b"
)
_CHRONIC = re.compile(r"\b(?:scar\w*|granulom\w*|calcifi\w*|chronic|atelecta\w*|old|remote|heal\w*|fibro\w*|hernia)\b")
# Interstitial markings are not airspace disease either, though they may be an edema's.
_INTERSTITIAL = re.compile(r"\b(?:interstitial|reticul\w*|markings?|bronchovascular|crowding|peribronchial)\b")
_OPACITIES = frozenset({"Lung Opacity", "Lung Lesion"})  # where a scoped denial leaves chronic opacities alone
_AIRSPACE = re.compile(r"\b(?:air ?-?space|infiltrat\w*|consolidat\w*|pneumoni\w*|edema)\b")


def _contradicts(denial: Mention, statement: Mention, sentences: tuple[str, ...]) -> bool:
    """Whether a negative mention denies what a positive mention of the same observation states: not where the
    denial carves out exceptions, is confined to the other lung, or is scoped to acute airspace disease while the
    statement names a chronic opacity."""
    said, stated = sentences[denial.sentence], sentences[statement.sentence]
    if _EXCEPTED.search(said):
        return False
    if len(denial.laterality - {"bilateral"}) == 1 and not _same_side(statement.laterality, denial.laterality):
        return False
    if denial.label not in _OPACITIES or not _ACUTE_SCOPE.search(mention_clause(said, denial)):
        return True
    return not (_chronic(stated) or (bool(_INTERSTITIAL.search(stated)) and not _AIRSPACE.search(stated)))


# CheXpert's observation hierarchy: an impression names a diagnosis ("pneumonia", "atelectasis", "edema") for what
# the findings describe as an opacity, and a findings opacity is carried by the impression's diagnosis.
_RELATED: dict[str, frozenset[str]] = {
    "Lung Opacity": frozenset({"Edema", "Consolidation", "Pneumonia", "Lung Lesion", "Atelectasis"}),
    "Edema": frozenset({"Lung Opacity"}),
    "Consolidation": frozenset({"Lung Opacity", "Pneumonia"}),
    "Pneumonia": frozenset({"Lung Opacity", "Consolidation"}),
    "Lung Lesion": frozenset({"Lung Opacity"}),
    "Atelectasis": frozenset({"Lung Opacity"}),
    "Enlarged Cardiomediastinum": frozenset({"Cardiomegaly"}),
    "Cardiomegaly": frozenset({"Enlarged Cardiomediastinum"}),
}
_ACUTE_DIAGNOSES = frozenset({"Edema", "Consolidation", "Pneumonia"})


def _interprets(stated_in: LabeledReport, name: str, other: LabeledReport) -> bool:
    """Whether the other section states, on a compatible side, an observation that ``name`` interprets or that
    interprets it (an impression's "right lower lobe pneumonia" for the findings' "right lower lobe airspace
    disease"). A chronic opacity (scarring, granuloma) does not support an acute diagnosis."""
    sides = frozenset().union(*(m.laterality for m in stated_in.mentions if m.label == name and m.status in _PRESENT))
    for m in other.mentions:
        if m.label not in _RELATED.get(name, ()) or m.status is not Label.POSITIVE:
            continue
        if name in _ACUTE_DIAGNOSES and _chronic(other.sentences[m.sentence]):
            continue
        if not _same_side(sides, m.laterality):
            continue
        return True
    return False


def _same_side(these: frozenset[str], those: frozenset[str]) -> bool:
    """Whether ``these`` sides can be where ``those`` are: either unsided, a side shared, or ``these`` bilateral."""
    return not these or not those or bool(these & (those | {"bilateral"}))


def _chronic(sentence: str) -> bool:
    """A sentence that attributes an opacity to a chronic or benign cause and raises no airspace disease."""
    return bool(_CHRONIC.search(sentence)) and not _AIRSPACE.search(sentence)


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
    ``comparison_without_prior``). Read as radiologists write: a denial that carves out exceptions ("otherwise
    clear"), covers the other lung, or is scoped to acute airspace disease while the statement is a chronic
    opacity is no contradiction; an impression's diagnosis of what the findings describe on a compatible side
    (pneumonia for airspace disease) is neither impression- nor findings-only; a chronic finding left out of the
    impression is not listed. A report without both findings and impression is checked for within-report
    contradictions and comparisons only.
    """
    sections = parse_report(text)
    whole = label_report(text)
    found: list[ConsistencyFinding] = []
    if comparison_without_prior(sections):
        found.append(ConsistencyFinding(observation="Comparison", kind="comparison_without_prior", weight=1.0))
    for name in _MAIN:
        stated = [m for m in whole.mentions if m.label == name and m.status is Label.POSITIVE]
        denied = [m for m in whole.mentions if m.label == name and m.status is Label.NEGATIVE]
        if any(_contradicts(no, yes, whole.sentences) for no in denied for yes in stated):
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
            if not _interprets(impression, name, findings):
                found.append(ConsistencyFinding(observation=name, kind="impression_only", weight=1.0))
        elif f is Label.POSITIVE and i is Label.BLANK and not _interprets(findings, name, impression):
            # An acute finding under an impression that calls the study normal is a contradiction; other
            # findings left out of the impression are common in correct reports.
            # A chronic finding (scarring, an old fracture, a calcified granuloma) is routinely left out.
            if all(_chronic(findings.sentences[m.sentence]) for m in findings.mentions if m.label == name):
                continue
            weight = 1.0 if name in _ACUTE and impression_normal else 0.5
            found.append(ConsistencyFinding(observation=name, kind="findings_only", weight=weight))
    return found
