"""Rule-based CheXpert-14 labeler: mention extraction, NegEx-style negation and uncertainty.

Follows the CheXpert labeler's design (Irvin et al. 2019): find mentions of each observation per sentence,
classify each mention as positive, negative or uncertain by the trigger nearest to it in its clause, then
aggregate per report (positive > uncertain > negative > blank); "No Finding" is positive when no pathology
(Support Devices aside) is positive or uncertain. Rules are data in ``radlvlm/reports/data/chexpert_rules.json``.

negspacy/medspacy were not used: both need a spaCy pipeline (a model download for sentence splitting and
entities) and the CheXpert phrase lists would still have to be written; plain regexes keep the labeler
dependency-free, deterministic and fast (~1 ms per report).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from importlib import resources
from typing import Any

from radlvlm.errors import InputError
from radlvlm.reports import normalize_text, split_sentences

__all__ = [
    "CHEXPERT_5",
    "CHEXPERT_14",
    "Label",
    "LabeledReport",
    "Mention",
    "label_matrix",
    "label_report",
    "label_reports",
    "mention_clause",
    "rules",
    "summary_counts",
]

CHEXPERT_14: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)
# The five competition labels of CheXpert, the usual clinical-F1 subset (CheXbert, R2Gen-style reports).
CHEXPERT_5: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


class Label(str, Enum):
    """Per-observation result, with CheXpert's numeric codes in :attr:`code` (1, 0, -1, blank)."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    UNCERTAIN = "uncertain"
    BLANK = "blank"

    @property
    def code(self) -> int | None:
        return {"positive": 1, "negative": 0, "uncertain": -1, "blank": None}[self.value]


@cache
def rules() -> dict[str, Any]:
    """The labeler's rule tables (package data ``radlvlm/reports/data/chexpert_rules.json``)."""
    text = resources.files("radlvlm.reports").joinpath("data/chexpert_rules.json").read_text("utf-8")
    return json.loads(text)


def _compile(patterns: Iterable[str]) -> list[re.Pattern[str]]:
    return [re.compile(p) for p in patterns]


@cache
def _compiled() -> dict[str, Any]:
    r = rules()
    return {
        "mentions": {name: _compile(spec["mentions"]) for name, spec in r["labels"].items()},
        "normal": {name: _compile(spec["normal"]) for name, spec in r["labels"].items()},
        "termination": _compile(r["termination"]),
        "pseudo": _compile(r["pseudo_negation"]),
        "pre_neg": _compile(r["pre_negation"]),
        "post_neg": _compile(r["post_negation"]),
        "pre_unc": _compile(r["pre_uncertainty"]),
        "weak_unc": _compile(r["weak_uncertainty"]),
        "post_unc": _compile(r["post_uncertainty"]),
        "laterality": {k: _compile(v) for k, v in r["laterality"].items()},
        "zones": {k: _compile(v) for k, v in r["zones"].items()},
        "severity": {int(k): _compile(v) for k, v in r["severity"].items()},
        "comparison": _compile(r["comparison_cues"]),
        "change": _compile(r["change_cues"]),
    }


@dataclass(frozen=True)
class Mention:
    """One mention of an observation.

    Args:
        label (`str`): the CheXpert observation.
        status (`Label`): positive, negative or uncertain.
        sentence (`int`): index of the sentence in the normalised report.
        start (`int`): start of the mention within that sentence (lower-cased normalised text).
        end (`int`): end of the mention within that sentence.
        laterality (`frozenset[str]`): ``left``/``right``/``bilateral`` words in the mention's clause.
        zones (`frozenset[str]`): ``upper``/``middle``/``lower`` zone words in the clause.
        severity (`int | None`): 1 mild/small, 2 moderate, 3 severe/large, from the clause; ``None`` if unstated.
    """

    label: str
    status: Label
    sentence: int
    start: int
    end: int
    laterality: frozenset[str] = frozenset()
    zones: frozenset[str] = frozenset()
    severity: int | None = None


@dataclass(frozen=True)
class LabeledReport:
    """The labeler's output for one report: one :class:`Label` per CheXpert-14 observation, plus mentions."""

    labels: dict[str, Label]
    mentions: tuple[Mention, ...] = field(default=())
    comparison_sentences: tuple[int, ...] = ()  # sentences that compare with a prior study
    change_sentences: tuple[int, ...] = ()  # sentences asserting a change (new, worse, improved)
    sentences: tuple[str, ...] = ()  # the normalised, lower-cased sentences the mentions index into

    def positive(self, *, uncertain_as_positive: bool = False) -> set[str]:
        """Observations labelled positive (and uncertain, when asked)."""
        accepted = {Label.POSITIVE, Label.UNCERTAIN} if uncertain_as_positive else {Label.POSITIVE}
        return {name for name, value in self.labels.items() if value in accepted}

    def codes(self) -> dict[str, int | None]:
        """CheXpert numeric codes: 1 positive, 0 negative, -1 uncertain, ``None`` blank."""
        return {name: value.code for name, value in self.labels.items()}


def _nearest_before(patterns: list[re.Pattern[str]], text: str) -> int:
    """End offset of the last match of any pattern in ``text`` (-1 if none)."""
    best = -1
    for p in patterns:
        for m in p.finditer(text):
            best = max(best, m.end())
    return best


def _clause_bounds(sentence: str, start: int, end: int) -> tuple[int, int]:
    c = _compiled()
    left = 0
    for p in c["termination"]:
        for m in p.finditer(sentence, 0, start):
            if m.end() <= start:
                left = max(left, m.end())
    right = len(sentence)
    for p in c["termination"]:
        m = p.search(sentence, end)
        if m:
            right = min(right, m.start())
    return left, right


def mention_clause(sentence: str, mention: Mention) -> str:
    """The clause of ``sentence`` (normalised, lower-cased) up to the end of ``mention``, as the labeler bounds
    it for negation: "no focal infiltrate" in "no focal infiltrate, but there is scarring"; "the lungs are clear"
    in "the lungs are clear without focal consolidation"."""
    left, _ = _clause_bounds(sentence, mention.start, mention.end)
    return sentence[left : mention.end]


_INNER_NEGATION = re.compile(r"\b(?:not|no)\b")


def _status(sentence: str, start: int, end: int) -> Label:
    c = _compiled()
    if _INNER_NEGATION.search(sentence, start, end):
        return Label.NEGATIVE  # "heart is not enlarged" matched as one mention phrase
    left, right = _clause_bounds(sentence, start, end)
    before = sentence[left:start]
    for p in c["pseudo"]:  # "no change in the effusion" does not negate the effusion
        before = p.sub(lambda m: "_" * len(m.group()), before)
    after = sentence[end:right]
    neg = _nearest_before(c["pre_neg"], before)
    unc = _nearest_before(c["pre_unc"], before)
    if neg < 0:
        unc = max(unc, _nearest_before(c["weak_unc"], before))
    # Post-mention uncertainty ("... cannot be excluded") outranks a pre-negation inside it ("not").
    if any(p.search(after) for p in c["post_unc"]):
        return Label.UNCERTAIN
    if neg >= 0 or unc >= 0:
        return Label.UNCERTAIN if unc >= neg else Label.NEGATIVE
    if any(p.search(after) for p in c["post_neg"]):
        return Label.NEGATIVE
    return Label.POSITIVE


def _attributes(sentence: str, start: int, end: int) -> tuple[frozenset[str], frozenset[str], int | None]:
    c = _compiled()
    left, right = _clause_bounds(sentence, start, end)
    # Comma-separated lists name several findings in one clause; attributes belong to the nearest part.
    left = max(left, sentence.rfind(",", left, start) + 1)
    comma = sentence.find(",", end, right)
    right = comma if comma >= 0 else right
    clause = sentence[left:right]
    laterality = frozenset(k for k, ps in c["laterality"].items() if any(p.search(clause) for p in ps))
    zones = frozenset(k for k, ps in c["zones"].items() if any(p.search(clause) for p in ps))
    severities = [k for k, ps in c["severity"].items() if any(p.search(clause) for p in ps)]
    return laterality, zones, (max(severities) if severities else None)


@cache
def _negation_anywhere() -> tuple[list[re.Pattern[str]], list[re.Pattern[str]], list[re.Pattern[str]]]:
    c = _compiled()
    after = [re.compile(p.pattern.removeprefix("^")) for p in c["post_neg"]]  # after some mention, anywhere
    return c["pseudo"], c["pre_neg"], after


def negates(sentence: str) -> bool:
    """Whether ``sentence`` holds one of the labeler's negation triggers, before a mention ("no", "without",
    "negative for", "free of", ...) or after one ("... has resolved", "... is not seen"), pseudo-negations ("no
    change") aside: the labeler's own negation vocabulary, for a caller that asks of a whole sentence (the error
    injector, which never edits inside a negated sentence)."""
    text = normalize_text(sentence, lowercase=True) if sentence.strip() else ""
    pseudo, before, after = _negation_anywhere()
    if any(p.search(text) for p in after):
        return True
    for pattern in pseudo:  # as the labeler does: a pseudo-negation is no trigger before a mention
        text = pattern.sub(" ", text)
    return any(p.search(text) for p in before)


def label_report(text: str) -> LabeledReport:
    """Label one report with the 14 CheXpert observations.

    Args:
        text (`str`): report text (findings and/or impression; headers are fine).

    Raises:
        InputError: ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise InputError(f"label_report expects str, got {type(text).__name__}")
    c = _compiled()
    sentences = split_sentences(normalize_text(text, lowercase=True)) if text.strip() else []
    mentions: list[Mention] = []
    comparison: list[int] = []
    change: list[int] = []
    for index, sentence in enumerate(sentences):
        if any(p.search(sentence) for p in c["comparison"]):
            comparison.append(index)
        if any(p.search(sentence) for p in c["change"]):
            change.append(index)
        for name, patterns in c["mentions"].items():
            taken: list[tuple[int, int]] = []
            for p in patterns:
                for m in p.finditer(sentence):
                    if any(m.start() < e and s < m.end() for s, e in taken):
                        continue  # overlapping patterns of one label count once
                    taken.append((m.start(), m.end()))
                    lat, zones, sev = _attributes(sentence, m.start(), m.end())
                    mentions.append(
                        Mention(name, _status(sentence, m.start(), m.end()), index, m.start(), m.end(), lat, zones, sev)
                    )
            for p in c["normal"][name]:
                for m in p.finditer(sentence):
                    if not any(m.start() < e and s < m.end() for s, e in taken):
                        lat, zones, _ = _attributes(sentence, m.start(), m.end())  # "the right lung is clear"
                        mentions.append(Mention(name, Label.NEGATIVE, index, m.start(), m.end(), lat, zones))
    labels: dict[str, Label] = {}
    for name in CHEXPERT_14[:-1]:
        found = {m.status for m in mentions if m.label == name}
        for status in (Label.POSITIVE, Label.UNCERTAIN, Label.NEGATIVE):
            if status in found:
                labels[name] = status
                break
        else:
            labels[name] = Label.BLANK
    excluded = set(rules()["pathologies_excluded_from_no_finding"])
    abnormal = any(labels[n] in (Label.POSITIVE, Label.UNCERTAIN) for n in CHEXPERT_14 if n not in excluded)
    labels["No Finding"] = Label.BLANK if abnormal else Label.POSITIVE
    return LabeledReport(labels, tuple(mentions), tuple(comparison), tuple(change), tuple(sentences))


def label_reports(texts: Iterable[str]) -> list[LabeledReport]:
    """Label many reports (same as :func:`label_report` on each)."""
    return [label_report(t) for t in texts]


def label_matrix(
    reports: Iterable[LabeledReport], labels: Iterable[str] = CHEXPERT_14, *, uncertain_as_positive: bool = False
) -> list[list[int]]:
    """0/1 rows (one per report) of positive observations, columns in ``labels`` order."""
    names = list(labels)
    return [[int(n in r.positive(uncertain_as_positive=uncertain_as_positive)) for n in names] for r in reports]


def summary_counts(reports: Iterable[LabeledReport]) -> dict[str, dict[str, int]]:
    """Per observation, how many reports got each :class:`Label` value."""
    out: dict[str, dict[str, int]] = {n: {v.value: 0 for v in Label} for n in CHEXPERT_14}
    for r in reports:
        for n, v in r.labels.items():
            out[n][v.value] += 1
    return out
