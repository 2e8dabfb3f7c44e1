"""Seeded, clinically plausible error injection into real radiology reports.

Each injection makes one edit (insert, remove or substitute; see :data:`~radlvlm.tasks.taxonomy.VALID_EDITS`) and
returns an :class:`InjectedError` recording the edit, the category, the span it occupies in the corrupted text
and the original text it replaced, so :meth:`InjectedError.revert` gives the original report back exactly.

The same ``(text, category, edit, seed)`` always gives the same edit: the random generator is built from the seed
alone, never from global state. Word lists live in ``radlvlm/tasks/data/lexicon.json``.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from radlvlm.errors import InputError
from radlvlm.tasks.taxonomy import VALID_EDITS, EditKind, ErrorCategory

__all__ = [
    "InjectedError",
    "InjectionNotApplicableError",
    "applicable_edits",
    "inject_error",
    "lexicon",
    "sentence_spans",
]


class InjectionNotApplicableError(InputError):
    """The report offers nothing the requested edit could change (no laterality word for a location swap …)."""


@cache
def lexicon() -> dict[str, Any]:
    """The injection word lists (package data ``radlvlm/tasks/data/lexicon.json``)."""
    text = resources.files("radlvlm.tasks").joinpath("data/lexicon.json").read_text(encoding="utf-8")
    return json.loads(text)


@dataclass(frozen=True)
class InjectedError:
    """One injected error.

    Args:
        category (`ErrorCategory`): what the edit touches.
        edit (`EditKind`): insert, remove or substitute.
        start (`int`): start of the edited span in the corrupted text.
        end (`int`): end of the edited span in the corrupted text (``start`` for a removal).
        original (`str`): the source text that was replaced (``""`` for an insertion).
        replacement (`str`): the text now at ``[start, end)`` (``""`` for a removal).
        seed (`int`): the seed the edit was drawn with.
    """

    category: ErrorCategory
    edit: EditKind
    start: int
    end: int
    original: str
    replacement: str
    seed: int

    def __post_init__(self) -> None:
        if self.end - self.start != len(self.replacement):
            raise ValueError("InjectedError span length must equal the replacement length")
        if self.edit not in VALID_EDITS[self.category]:
            raise ValueError(f"edit {self.edit.value} cannot produce category {self.category.value}")

    def revert(self, corrupted: str) -> str:
        """The original report: the replacement at ``[start, end)`` swapped back for ``original``."""
        if corrupted[self.start : self.end] != self.replacement:
            raise InputError("text does not carry this error at the recorded span (was it edited again?)")
        return corrupted[: self.start] + self.original + corrupted[self.end :]

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category.value,
            "edit": self.edit.value,
            "span": [self.start, self.end],
            "original": self.original,
            "replacement": self.replacement,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InjectedError:
        start, end = data["span"]
        return cls(
            category=ErrorCategory.parse(data["category"]),
            edit=EditKind(data["edit"]),
            start=int(start),
            end=int(end),
            original=str(data["original"]),
            replacement=str(data["replacement"]),
            seed=int(data["seed"]),
        )


# A sentence ends at . ! ? followed by a blank (not inside "1.5") or at a line break. A leading "FINDINGS:"-style
# header is not part of the sentence, so an edit never touches a section header.
_CUT = re.compile(r"[.!?](?=\s|$)|\n")
_HEADER = re.compile(r"^[A-Z][A-Z /&]{1,40}:\s*")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences in ``text`` (end punctuation included, section headers excluded)."""
    spans: list[tuple[int, int]] = []
    start = 0
    cuts = [m.end() if m.group() != "\n" else m.start() for m in _CUT.finditer(text)]
    for cut in [*cuts, len(text)]:
        piece = text[start:cut]
        lead = len(piece) - len(piece.lstrip())
        s = start + lead
        header = _HEADER.match(text[s:cut])
        if header:
            s += header.end()
        e = cut
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s and any(c.isalnum() for c in text[s:e]):
            spans.append((s, e))
        start = cut
    return spans


@dataclass(frozen=True)
class _Candidate:
    start: int  # span in the source text
    end: int
    replacement: str


def _word_re(words: list[str]) -> re.Pattern[str]:
    return _word_re_cached(tuple(words))


@cache
def _word_re_cached(words: tuple[str, ...]) -> re.Pattern[str]:
    alternation = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"\b(?:{alternation})\b", re.IGNORECASE)


def _match_case(source: str, target: str) -> str:
    if source.isupper() and len(source) > 1:
        return target.upper()
    if source[:1].isupper():
        return target[:1].upper() + target[1:]
    return target


def _is_negated(sentence: str) -> bool:
    return bool(_word_re(lexicon()["negation_cues"]).search(sentence))


def _mentions(text: str, terms: list[str]) -> bool:
    """Substring match on purpose: a term may be a stem ("mediastin", "widen")."""
    lowered = text.lower()
    return any(t in lowered for t in terms)


def _insertion_points(text: str, spans: list[tuple[int, int]]) -> list[int]:
    return [e for _, e in spans] if spans else [len(text)]


def _insert(text: str, spans: list[tuple[int, int]], sentences: list[str]) -> list[_Candidate]:
    out = []
    for point in _insertion_points(text, spans):
        for sentence in sentences:
            out.append(_Candidate(point, point, (" " if point > 0 else "") + sentence))
    return out


def _remove(text: str, spans: list[tuple[int, int]], keep: list[tuple[int, int]]) -> list[_Candidate]:
    """Remove whole sentences; the blank before a sentence goes with it so no double space is left."""
    if len(spans) < 2:
        return []  # removing the only sentence leaves no report, which no reader would call plausible
    out = []
    for s, e in keep:
        if s > 0 and text[s - 1] == " ":
            out.append(_Candidate(s - 1, e, ""))
        elif e < len(text) and text[e] == " ":
            out.append(_Candidate(s, e + 1, ""))
        else:
            out.append(_Candidate(s, e, ""))
    return out


def _swap_words(
    text: str, spans: list[tuple[int, int]], pairs: list[list[str]], *, positive_only: bool
) -> list[_Candidate]:
    table = {a.lower(): b for a, b in pairs}
    pattern = _word_re(list(table))
    out = []
    for s, e in spans:
        sentence = text[s:e]
        if positive_only and _is_negated(sentence):
            continue  # "no left effusion" -> "no right effusion" would still be true: not an error
        for m in pattern.finditer(sentence):
            out.append(_Candidate(s + m.start(), s + m.end(), _match_case(m.group(), table[m.group().lower()])))
    return out


_MEASURE = re.compile(r"\b(\d+(?:\.\d+)?)\s?(cm|mm)\b")


def _severity(text: str, spans: list[tuple[int, int]]) -> list[_Candidate]:
    out = _swap_words(text, spans, lexicon()["severity_swaps"], positive_only=True)
    for s, e in spans:
        for m in _MEASURE.finditer(text[s:e]):
            value = float(m.group(1)) * 3  # tripling a size is a clinically relevant change
            number = f"{value:.1f}".rstrip("0").rstrip(".")
            replacement = text[s + m.start() : s + m.end()].replace(m.group(1), number, 1)
            out.append(_Candidate(s + m.start(), s + m.end(), replacement))
    return out


def _negation_flips(text: str, spans: list[tuple[int, int]]) -> list[_Candidate]:
    rules = [(re.compile(p, re.IGNORECASE), r) for p, r in lexicon()["negation_flips"]]
    out = []
    for s, e in spans:
        body_end = e - 1 if text[e - 1] in ".!?" else e
        body = text[s:body_end]
        if not _mentions(body, lexicon()["positive_finding_terms"]) and not re.match(r"(?i)no\b", body):
            continue
        for pattern, repl in rules:
            if pattern.match(body):
                flipped = pattern.sub(repl, body, count=1)
                flipped = flipped[:1].upper() + flipped[1:]
                if flipped != body:
                    out.append(_Candidate(s, body_end, flipped))
                break  # the first matching rule is the right one for this sentence
    return out


def _candidates(text: str, category: ErrorCategory, edit: EditKind) -> list[_Candidate]:
    lex = lexicon()
    spans = sentence_spans(text)
    if category is ErrorCategory.FALSE_FINDING and edit is EditKind.INSERT:
        fresh = [f["text"] for f in lex["false_finding_sentences"] if not _mentions(text, f["terms"])]
        return _insert(text, spans, fresh)
    if category is ErrorCategory.FALSE_FINDING and edit is EditKind.SUBSTITUTE:
        return _swap_words(text, spans, lex["finding_substitutions"], positive_only=True)
    if category is ErrorCategory.OMITTED_FINDING:
        terms = _word_re(lex["positive_finding_terms"])
        keep = [(s, e) for s, e in spans if terms.search(text[s:e]) and not _is_negated(text[s:e])]
        return _remove(text, spans, keep)
    if category is ErrorCategory.WRONG_LOCATION:
        return _swap_words(text, spans, lex["location_swaps"], positive_only=True)
    if category is ErrorCategory.WRONG_SEVERITY:
        return _severity(text, spans)
    if category is ErrorCategory.UNSUPPORTED_COMPARISON:
        if _word_re(lex["comparison_cues"]).search(text):
            return []  # the report already compares; an added comparison would not be unsupported
        return _insert(text, spans, lex["unsupported_comparison_sentences"])
    if category is ErrorCategory.OMITTED_COMPARISON:
        cues = _word_re(lex["comparison_cues"])
        return _remove(text, spans, [(s, e) for s, e in spans if cues.search(text[s:e])])
    if category is ErrorCategory.NEGATION_FLIP:
        return _negation_flips(text, spans)
    raise AssertionError(f"unhandled {category} / {edit}")  # VALID_EDITS is checked before we get here


def applicable_edits(text: str) -> list[tuple[ErrorCategory, EditKind]]:
    """The (category, edit) pairs that can be injected into ``text``, in taxonomy order."""
    return [(c, e) for c, edits in VALID_EDITS.items() for e in edits if _candidates(text, c, e)]


def inject_error(
    text: str, category: ErrorCategory | str, edit: EditKind | str | None = None, *, seed: int
) -> tuple[str, InjectedError]:
    """Inject one error of ``category`` into ``text``.

    Args:
        text (`str`): the report (sections may carry ``FINDINGS:``-style headers; they are never edited).
        category (`ErrorCategory` or `str`): the error category.
        edit (`EditKind` or `str`, *optional*): the edit; by default drawn (seeded) among those valid and
            applicable for the category.
        seed (`int`): seeds the choice of edit, position and wording.

    Returns:
        The corrupted text and the :class:`InjectedError` that turns it back into ``text``.

    Raises:
        InjectionNotApplicableError: the report has nothing this category/edit could change.
        InputError: the edit cannot produce the category.
    """
    category = ErrorCategory.parse(category) if isinstance(category, str) else category
    rng = random.Random(f"radlvlm-inject:{seed}")
    if edit is None:
        edits = [e for e in VALID_EDITS[category] if _candidates(text, category, e)]
        if not edits:
            raise InjectionNotApplicableError(f"report offers no place for a {category.value} error")
        edit = rng.choice(edits)
    edit = EditKind(edit)
    if edit not in VALID_EDITS[category]:
        raise InputError(f"a {edit.value} edit cannot produce a {category.value} error")
    candidates = _candidates(text, category, edit)
    if not candidates:
        raise InjectionNotApplicableError(f"report offers no place for a {category.value} error by {edit.value}")
    chosen = rng.choice(candidates)
    corrupted = text[: chosen.start] + chosen.replacement + text[chosen.end :]
    record = InjectedError(
        category=category,
        edit=edit,
        start=chosen.start,
        end=chosen.start + len(chosen.replacement),
        original=text[chosen.start : chosen.end],
        replacement=chosen.replacement,
        seed=seed,
    )
    return corrupted, record
