"""Scoring report de-identification on labelled text: recall and precision, per type and overall.

Labelled lines mark PHI inline as ``[[T:text]]`` (T one letter: P person, D date/time, A age over 89, I record
ID, C accession/order number, T phone, E e-mail, U URL, N IP address, L institution/address/room); lines
starting with ``#`` are comments. A hospital can score the de-identifier on its own labelled reports the same way.

Scoring is by character, counted over letters and digits only (punctuation and spaces carry no PHI):
recall is the share of PHI characters inside some found span, whatever type the span was given (a name
caught as "unknown word" is caught); precision is the share of found characters that are PHI. A span is
"caught" when all its characters are covered; span recall is reported beside character recall.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from radlvlm.errors import InputError
from radlvlm.safety.text_deid import ReportDeidentifier

__all__ = ["LABELS", "LabelledText", "Scores", "parse_labelled", "score"]

LABELS = {
    "P": "PERSON",
    "D": "DATE_TIME",
    "A": "AGE",
    "I": "ID",
    "C": "ACCESSION",
    "T": "PHONE_NUMBER",
    "E": "EMAIL_ADDRESS",
    "U": "URL",
    "N": "IP_ADDRESS",
    "L": "LOCATION",
}
_MARK = re.compile(r"\[\[([A-Z]):(.+?)\]\]")
# Titles and credentials next to a name are not PHI, but finding them with the name is no error either.
_NEUTRAL = re.compile(r"\b(?:Dr|Mr|Mrs|Ms|Miss|Prof|Rev|MD|M\.D|RN|NP|PA-C|DO)\b\.?", re.IGNORECASE)


@dataclass(frozen=True)
class LabelledText:
    text: str
    spans: tuple[tuple[int, int, str], ...]  # (start, end, entity type)


@dataclass
class Scores:
    """Counts and the figures derived from them."""

    phi_chars: int = 0
    caught_chars: int = 0
    found_chars: int = 0
    found_phi_chars: int = 0
    spans: int = 0
    caught_spans: int = 0
    by_type: dict[str, list[int]] = field(default_factory=dict)  # type → [spans, caught spans]

    @property
    def recall(self) -> float:
        return self.caught_chars / self.phi_chars if self.phi_chars else 1.0

    @property
    def precision(self) -> float:
        return self.found_phi_chars / self.found_chars if self.found_chars else 1.0

    @property
    def span_recall(self) -> float:
        return self.caught_spans / self.spans if self.spans else 1.0

    def to_dict(self) -> dict[str, object]:
        return {
            "char_recall": round(self.recall, 4),
            "char_precision": round(self.precision, 4),
            "span_recall": round(self.span_recall, 4),
            "spans": self.spans,
            "caught_spans": self.caught_spans,
            "span_recall_by_type": {
                kind: round(caught / total, 4) for kind, (total, caught) in sorted(self.by_type.items())
            },
            "spans_by_type": {kind: total for kind, (total, _) in sorted(self.by_type.items())},
        }


def parse_labelled(lines: Iterable[str]) -> list[LabelledText]:
    """Parse ``[[T:text]]``-marked lines into texts with gold spans."""
    parsed = []
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        text, spans, cursor = [], [], 0
        length = 0
        for match in _MARK.finditer(line):
            plain = line[cursor : match.start()]
            text.append(plain)
            length += len(plain)
            label = match.group(1)
            if label not in LABELS:
                raise InputError(f"line {number}: unknown label {label!r}")
            value = match.group(2)
            spans.append((length, length + len(value), LABELS[label]))
            text.append(value)
            length += len(value)
            cursor = match.end()
        text.append(line[cursor:])
        parsed.append(LabelledText("".join(text), tuple(spans)))
    return parsed


def score(deidentifier: ReportDeidentifier, labelled: Iterable[LabelledText]) -> Scores:
    """Run ``deidentifier.analyze`` on every text and count against the gold spans."""
    scores = Scores()
    for item in labelled:
        found = deidentifier.analyze(item.text)
        covered = [False] * len(item.text)
        for span in found:
            for i in range(span.start, span.end):
                covered[i] = True
        gold = [False] * len(item.text)
        neutral = [False] * len(item.text)
        for match in _NEUTRAL.finditer(item.text):
            for i in range(match.start(), match.end()):
                neutral[i] = True
        for start, end, kind in item.spans:
            chars = [i for i in range(start, end) if item.text[i].isalnum() and not neutral[i]]
            for i in range(start, end):
                gold[i] = True
            caught = all(covered[i] for i in chars)
            scores.phi_chars += len(chars)
            scores.caught_chars += sum(covered[i] for i in chars)
            scores.spans += 1
            scores.caught_spans += caught
            entry = scores.by_type.setdefault(kind, [0, 0])
            entry[0] += 1
            entry[1] += caught
        for i, char in enumerate(item.text):
            if covered[i] and char.isalnum() and not neutral[i]:
                scores.found_chars += 1
                scores.found_phi_chars += gold[i]
    return scores
