"""Seeded, clinically plausible error injection into real radiology reports.

Each injection makes one edit (insert, remove or substitute; see :data:`~radlvlm.tasks.taxonomy.VALID_EDITS`) and
returns an :class:`InjectedError` recording the edit, the category, the span it occupies in the corrupted text
and the original text it replaced, so :meth:`InjectedError.revert` gives the original report back exactly.

The same ``(text, category, edit, seed)`` always gives the same edit: the random generator is built from the seed
alone, never from global state. Word lists live in ``radlvlm/tasks/data/lexicon.json``.

Two ways in:

* :func:`inject_error` by category (the legacy per-category generators; :func:`build_errorcheck_set`, the
  evaluation builder, uses these and its output does not change);
* :func:`inject_family` by a finer *family* (:data:`FAMILIES`), each mapped to one category and edit: the error
  kinds of ReXErr (Rao et al. 2024: false prediction, false negation, added contradiction, changed severity,
  location, measurement, device) and GREEN (Ostmeier et al. 2024: false finding, missed finding, location,
  severity, unsupported comparison, omitted comparison). Families touch clinically significant findings only
  (no severity or side of degenerative change), never edit inside a negated sentence where the edit would
  leave a true statement ("no left effusion" -> "no right effusion"), and inject into findings or impression.
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
from radlvlm.reports.labeler import negates
from radlvlm.reports.normalize import sentence_spans as split_spans
from radlvlm.tasks.taxonomy import VALID_EDITS, EditKind, ErrorCategory

__all__ = [
    "FAMILIES",
    "ErrorFamily",
    "InjectedError",
    "InjectionNotApplicableError",
    "applicable_edits",
    "applicable_families",
    "inject_error",
    "inject_family",
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
        family (`str | None`): the finer error family (:data:`FAMILIES`), e.g. ``"laterality"``.
    """

    category: ErrorCategory
    edit: EditKind
    start: int
    end: int
    original: str
    replacement: str
    seed: int
    family: str | None = None

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
            "family": self.family,
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
            family=str(data["family"]) if data.get("family") is not None else None,
        )


# A leading "FINDINGS:"-style header is not part of a sentence, so an edit never touches a section header.
_HEADER = re.compile(r"^[A-Z][A-Z /&]{1,40}:\s*")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences in ``text`` (end punctuation included, section headers excluded): the
    one splitter's sentences (:func:`radlvlm.reports.normalize.sentence_spans`, a line break ending one too)."""
    spans: list[tuple[int, int]] = []
    for s, e in split_spans(text, line_breaks=True):
        header = _HEADER.match(text[s:e])
        if header:
            s += header.end()
        if e > s and any(c.isalnum() for c in text[s:e]):
            spans.append((s, e))
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
    return negates(sentence)  # the labeler's negation vocabulary: one for labelling and for injecting


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


@cache
def _flip_rules() -> tuple[tuple[re.Pattern[str], str], ...]:
    return tuple((re.compile(p, re.IGNORECASE), r) for p, r in lexicon()["negation_flips"])


def _negation_flips(text: str, spans: list[tuple[int, int]]) -> list[_Candidate]:
    rules = _flip_rules()
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
        family=_legacy_family(category, edit, text[chosen.start : chosen.end], chosen.replacement),
    )
    return corrupted, record


def _legacy_family(category: ErrorCategory, edit: EditKind, original: str, replacement: str) -> str:
    """The family name of an edit made by the legacy per-category generators (names as in :data:`FAMILIES`)."""
    if category is ErrorCategory.FALSE_FINDING:
        return "false_prediction" if edit is EditKind.INSERT else "wrong_finding"
    if category is ErrorCategory.OMITTED_FINDING:
        return "missed_finding"
    if category is ErrorCategory.WRONG_LOCATION:
        return "laterality" if original.lower() in ("left", "right") else "location_zone"
    if category is ErrorCategory.WRONG_SEVERITY:
        return "measurement" if any(c.isdigit() for c in original) else "severity"
    if category is ErrorCategory.NEGATION_FLIP:
        return "negation_removed" if _is_negated(original) else "false_negation"
    return category.value  # the two comparison categories are families of their own


# --------------------------------------------------------------------------------------------- families
@dataclass(frozen=True)
class ErrorFamily:
    """A finer kind of error, mapped to one taxonomy category and edit.

    Args:
        name (`str`): the stable name written to rows (``"laterality"`` …).
        category (`ErrorCategory`): the category the COMPLEX task answers with.
        edit (`EditKind`): how it is injected.
        source (`str`): where in the literature it comes from.
        description (`str`): what the edit does.
    """

    name: str
    category: ErrorCategory
    edit: EditKind
    source: str
    description: str


_F = ErrorCategory
_E = EditKind
FAMILIES: dict[str, ErrorFamily] = {
    f.name: f
    for f in (
        ErrorFamily(
            "false_prediction",
            _F.FALSE_FINDING,
            _E.INSERT,
            "ReXErr false prediction; GREEN false finding",
            "a sentence asserting a finding the report does not mention",
        ),
        ErrorFamily(
            "wrong_finding",
            _F.FALSE_FINDING,
            _E.SUBSTITUTE,
            "ReXVal false prediction",
            "a positive finding replaced by a different one (granuloma -> nodule)",
        ),
        ErrorFamily(
            "added_contradiction",
            _F.FALSE_FINDING,
            _E.INSERT,
            "ReXErr added contradiction",
            "a sentence asserting a finding that another sentence negates or calls normal, in the other section",
        ),
        ErrorFamily(
            "device_inserted",
            _F.FALSE_FINDING,
            _E.INSERT,
            "ReXErr device",
            "a support device (tube, line, pacemaker) in a report that mentions none",
        ),
        ErrorFamily(
            "missed_finding",
            _F.OMITTED_FINDING,
            _E.REMOVE,
            "GREEN missed finding",
            "a sentence with a clinically significant positive finding removed",
        ),
        ErrorFamily(
            "laterality",
            _F.WRONG_LOCATION,
            _E.SUBSTITUTE,
            "ReXErr location; GREEN location",
            "left <-> right in a positive sentence about a significant finding",
        ),
        ErrorFamily(
            "location_zone",
            _F.WRONG_LOCATION,
            _E.SUBSTITUTE,
            "ReXErr location; GREEN location",
            "upper/lower, apical/basilar, anterior/posterior, lobe swaps in a positive significant sentence",
        ),
        ErrorFamily(
            "device_position",
            _F.WRONG_LOCATION,
            _E.SUBSTITUTE,
            "ReXErr device position",
            "a device tip moved to a malposition (ET tube above the carina -> right mainstem bronchus)",
        ),
        ErrorFamily(
            "severity",
            _F.WRONG_SEVERITY,
            _E.SUBSTITUTE,
            "ReXErr changed severity; GREEN severity",
            "mild <-> severe, small <-> large … in a positive significant sentence",
        ),
        ErrorFamily(
            "measurement",
            _F.WRONG_SEVERITY,
            _E.SUBSTITUTE,
            "ReXErr measurement",
            "a size or distance tripled, cut to a third, or its unit swapped (mm <-> cm)",
        ),
        ErrorFamily(
            "unsupported_comparison",
            _F.UNSUPPORTED_COMPARISON,
            _E.INSERT,
            "GREEN unsupported comparison",
            "a comparison with a prior study in a report that makes none",
        ),
        ErrorFamily(
            "omitted_comparison",
            _F.OMITTED_COMPARISON,
            _E.REMOVE,
            "GREEN omitted comparison",
            "a sentence comparing with a prior study removed",
        ),
        ErrorFamily(
            "false_negation",
            _F.NEGATION_FLIP,
            _E.SUBSTITUTE,
            "ReXErr false negation",
            "a positive significant finding negated",
        ),
        ErrorFamily(
            "negation_removed",
            _F.NEGATION_FLIP,
            _E.SUBSTITUTE,
            "ReXErr false prediction by negation",
            "a fully negated significant finding made positive",
        ),
        ErrorFamily(
            "contradicting_impression",
            _F.NEGATION_FLIP,
            _E.SUBSTITUTE,
            "ReXErr added contradiction",
            "the impression denies a finding the findings assert ('No pneumothorax.' or a normal impression)",
        ),
    )
}
"""The error families, in a fixed order; every category of the taxonomy has at least one."""


def _section_of(text: str) -> list[tuple[str, int, int]]:
    """``(name, start, end)`` of the ``FINDINGS:``/``IMPRESSION:`` sections (one ``"report"`` without headers)."""
    heads = [(m.group(1).lower(), m.start(), m.end()) for m in _SECTION_HEAD.finditer(text)]
    if not heads:
        return [("report", 0, len(text))]
    out = []
    for i, (name, start, _) in enumerate(heads):
        end = heads[i + 1][1] if i + 1 < len(heads) else len(text)
        out.append((name, start, end))
    return out


_SECTION_HEAD = re.compile(r"^(FINDINGS|IMPRESSION):", re.MULTILINE)


@dataclass(frozen=True)
class _Sentence:
    start: int
    end: int
    text: str
    section: str
    negated: bool
    fully_negated: bool
    significant: bool


def _fully_negated(sentence: str) -> bool:
    """The whole sentence denies (``No X or Y.``, ``X is not seen.``): safe to contradict or flip as a whole."""
    lex = lexicon()
    low = sentence.lower().rstrip(".!? ")
    if ";" in low or _word_re(lex["negation_blockers"]).search(low):
        return False
    if any(re.match(p, low) for p in lex["full_negation_openers"]):
        return True
    return bool(re.match(r"^[\w ,-]+ (?:is|are) not (?:seen|identified|present|visualized|demonstrated)$", low))


def _analyse(text: str) -> list[_Sentence]:
    lex = lexicon()
    significant = _word_re(lex["significant_terms"])
    sections = _section_of(text)
    out = []
    for s, e in sentence_spans(text):
        sentence = text[s:e]
        section = next((name for name, a, b in sections if a <= s < b), "report")
        out.append(
            _Sentence(
                s,
                e,
                sentence,
                section,
                _is_negated(sentence),
                _fully_negated(sentence),
                bool(significant.search(sentence)),
            )
        )
    return out


def _positive_significant(sentences: list[_Sentence]) -> list[tuple[int, int]]:
    return [(x.start, x.end) for x in sentences if x.significant and not x.negated]


def _other_section_points(text: str, sentences: list[_Sentence], section: str) -> list[int]:
    """Insertion points (sentence ends) in a section other than ``section``; the same one if there is no other."""
    points = [x.end for x in sentences if x.section != section]
    return points or [x.end for x in sentences]


def _mentioned_positively(sentences: list[_Sentence], terms: list[str]) -> bool:
    pattern = _word_re(terms)
    return any(pattern.search(x.text) and not x.negated for x in sentences)


def _f_false_prediction(text: str, sentences: list[_Sentence]) -> list[_Candidate]:
    fresh = [f["text"] for f in lexicon()["false_prediction_sentences"] if not _mentions(text, f["terms"])]
    return _insert(text, [(x.start, x.end) for x in sentences], fresh)


def _f_wrong_finding(text: str, sentences: list[_Sentence]) -> list[_Candidate]:
    return _swap_words(text, _positive_significant(sentences), lexicon()["finding_substitutions"], positive_only=True)


def _matches_normal(sentence: str, normals: list[str]) -> bool:
    low = sentence.lower()
    return any(n in low for n in normals) and not _is_negated(sentence)


def _f_added_contradiction(text: str, sentences: list[_Sentence]) -> list[_Candidate]:
    out = []
    for entry in lexicon()["contradictions"]:
        terms = _word_re(entry["terms"])
        if _mentioned_positively(sentences, entry["terms"]):
            continue  # the report asserts it somewhere: a second assertion is no contradiction
        for x in sentences:
            denies = x.fully_negated and terms.search(x.text)
            if not denies and not _matches_normal(x.text, entry["normal"]):
                continue
            for point in _other_section_points(text, sentences, x.section):
                for positive in entry["positive"]:
                    out.append(_Candidate(point, point, " " + positive))
    return _unique(out)


def _unique(candidates: list[_Candidate]) -> list[_Candidate]:
    return list(dict.fromkeys(candidates))


def _f_device_inserted(text: str, sentences: list[_Sentence]) -> list[_Candidate]:
    if _word_re(lexicon()["device_terms"]).search(text):
        return []
    return _insert(text, [(x.start, x.end) for x in sentences], lexicon()["device_sentences"])


def _f_missed_finding(text: str, sentences: list[_Sentence]) -> list[_Candidate]:
    spans = [(x.start, x.end) for x in sentences]
    return _remove(text, spans, _positive_significant(sentences))


def _f_laterality(text: str, sentences: list[_Sentence]) -> list[_Candidate]:
    return _swap_words(text, _positive_significant(sentences), lexicon()["laterality_swaps"], positive_only=True)


def _f_location_zone(text: str, sentences: list[_Sentence]) -> list[_Candidate]:
    return _swap_words(text, _positive_significant(sentences), lexicon()["zone_swaps"], positive_only=True)


def _f_device_position(text: str, sentences: list[_Sentence]) -> list[_Candidate]:
    devices = _word_re(["tube", "catheter", "PICC", "line", "port", "tip"])
    spans = [(x.start, x.end) for x in sentences if devices.search(x.text) and "lead" not in x.text.lower()]
    out = []
    for c in _swap_words(text, spans, lexicon()["device_position_swaps"], positive_only=False):
        original = text[c.start : c.end]
        if original.isupper():  # "SVC" -> "azygos vein", not "AZYGOS VEIN"
            table = {a.lower(): b for a, b in lexicon()["device_position_swaps"]}
            c = _Candidate(c.start, c.end, table[original.lower()])
        out.append(c)
    return out


def _f_severity(text: str, sentences: list[_Sentence]) -> list[_Candidate]:
    return _swap_words(text, _positive_significant(sentences), lexicon()["severity_family_swaps"], positive_only=True)


_MEASURE_FAMILY = re.compile(r"\b(\d+(?:\.\d+)?)(\s?)(cm|mm)\b")


def _f_measurement(text: str, sentences: list[_Sentence]) -> list[_Candidate]:
    out = []
    for x in sentences:
        if x.negated:
            continue  # "no nodule larger than 5 mm" stays true whatever the number
        for m in _MEASURE_FAMILY.finditer(x.text):
            value, blank, unit = float(m.group(1)), m.group(2), m.group(3)
            start, end = x.start + m.start(), x.start + m.end()
            for factor in (3.0, 1 / 3):
                number = f"{value * factor:.1f}".rstrip("0").rstrip(".")
                if number not in ("0", m.group(1)):
                    out.append(_Candidate(start, end, f"{number}{blank}{unit}"))
            out.append(_Candidate(start, end, f"{m.group(1)}{blank}{'mm' if unit == 'cm' else 'cm'}"))
    return out


def _f_unsupported_comparison(text: str, sentences: list[_Sentence]) -> list[_Candidate]:
    lex = lexicon()
    if _word_re(lex["comparison_cues"]).search(text):
        return []
    return _insert(text, [(x.start, x.end) for x in sentences], lex["unsupported_comparison_family_sentences"])


def _f_omitted_comparison(text: str, sentences: list[_Sentence]) -> list[_Candidate]:
    cues = _word_re(lexicon()["comparison_cues"])
    spans = [(x.start, x.end) for x in sentences]
    return _remove(text, spans, [(x.start, x.end) for x in sentences if cues.search(x.text)])


_NO_QUALIFIER = re.compile(
    r"\b(no) (?:(?:small|mild|minimal|trace|tiny|moderate|large|severe|borderline|slight|marked|extensive) )+", re.I
)
_VERB = re.compile(r"\b(?:is|are|was|were|has|have|had|with|and|or|seen|noted|present|appears?|may|which)\b", re.I)
_QUALIFIER = re.compile(
    r"^(?:(?:mild|mildly|moderate|small|large|minimal|trace|severe|borderline|tiny|slight|marked|extensive|"
    r"a|an|the|some|stable|persistent|new|unchanged|increased|decreased|improved|improving|worsening|worsened)\s+)+",
    re.I,
)


def _f_false_negation(text: str, sentences: list[_Sentence]) -> list[_Candidate]:
    spans = _positive_significant(sentences)
    # "There is no small effusion" could be read as "the effusion is not small": deny the finding itself.
    out = [_Candidate(c.start, c.end, _NO_QUALIFIER.sub(r"\1 ", c.replacement)) for c in _negation_flips(text, spans)]
    flipped = {c.start for c in out}
    for s, e in spans:
        if s in flipped:
            continue
        body_end = e - 1 if text[e - 1] in ".!?" else e
        body = text[s:body_end]
        # A bare noun phrase ("Small left pleural effusion.") is denied as a whole: "No left pleural effusion."
        if len(body.split()) > 7 or _VERB.search(body) or "," in body or "XXXX" in body:
            continue
        core = _QUALIFIER.sub("", body)
        if not core:
            continue
        core = core if core[:2].isupper() else core[:1].lower() + core[1:]
        out.append(_Candidate(s, body_end, "No " + core))
    return out


def _f_negation_removed(text: str, sentences: list[_Sentence]) -> list[_Candidate]:
    spans = [(x.start, x.end) for x in sentences if x.fully_negated and x.significant]
    out = []
    for c in _negation_flips(text, spans):
        # "No A, B or C" made positive reads "There is A, B and C": one edit, every item now asserted.
        out.append(_Candidate(c.start, c.end, re.sub(r",? or ", " and ", c.replacement)))
    return out


def _f_contradicting_impression(text: str, sentences: list[_Sentence]) -> list[_Candidate]:
    lex = lexicon()
    findings = [x for x in sentences if x.section == "findings"]
    impression = [x for x in sentences if x.section == "impression"]
    if not findings or not impression:
        return []
    out = []
    for entry in lex["contradictions"]:
        terms = _word_re(entry["terms"])
        if not any(terms.search(x.text) and not x.negated for x in findings):
            continue
        hits = [x for x in impression if terms.search(x.text) and not x.negated]
        for x in hits:
            out.append(_Candidate(x.start, x.end, entry["negative"]))
        if hits:
            start, end = impression[0].start, impression[-1].end
            for normal in lex["normal_impressions"]:
                out.append(_Candidate(start, end, normal))
    return _unique(out)


_GENERATORS = {
    "false_prediction": _f_false_prediction,
    "wrong_finding": _f_wrong_finding,
    "added_contradiction": _f_added_contradiction,
    "device_inserted": _f_device_inserted,
    "missed_finding": _f_missed_finding,
    "laterality": _f_laterality,
    "location_zone": _f_location_zone,
    "device_position": _f_device_position,
    "severity": _f_severity,
    "measurement": _f_measurement,
    "unsupported_comparison": _f_unsupported_comparison,
    "omitted_comparison": _f_omitted_comparison,
    "false_negation": _f_false_negation,
    "negation_removed": _f_negation_removed,
    "contradicting_impression": _f_contradicting_impression,
}
assert list(_GENERATORS) == list(FAMILIES)


def _family(name: str) -> ErrorFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise InputError(f"unknown error family {name!r}; choose from {', '.join(FAMILIES)}") from None


def _family_candidates(text: str, name: str, sentences: list[_Sentence] | None = None) -> list[_Candidate]:
    _family(name)
    if sentences is None:
        sentences = _analyse(text)
    if not sentences:
        return []
    return [c for c in _GENERATORS[name](text, sentences) if text[c.start : c.end] != c.replacement]


def applicable_families(text: str) -> list[str]:
    """The families (:data:`FAMILIES` order) that can be injected into ``text``."""
    sentences = _analyse(text)
    return [name for name in FAMILIES if _family_candidates(text, name, sentences)]


def inject_family(
    text: str, family: str, *, seed: int, _sentences: list[_Sentence] | None = None
) -> tuple[str, InjectedError]:
    """Inject one error of ``family`` (:data:`FAMILIES`) into ``text``.

    Args:
        text (`str`): the report (``FINDINGS:``/``IMPRESSION:`` headers are never edited).
        family (`str`): the family name.
        seed (`int`): seeds the position and wording.

    Returns:
        The corrupted text and the :class:`InjectedError` (with ``family`` set) that turns it back into ``text``.

    Raises:
        InjectionNotApplicableError: the report offers nothing this family could change.
        InputError: an unknown family.
    """
    spec = _family(family)
    candidates = _family_candidates(text, family, _sentences)
    if not candidates:
        raise InjectionNotApplicableError(f"report offers no place for a {family} error")
    rng = random.Random(f"radlvlm-inject-family:{family}:{seed}")
    chosen = rng.choice(candidates)
    corrupted = text[: chosen.start] + chosen.replacement + text[chosen.end :]
    record = InjectedError(
        category=spec.category,
        edit=spec.edit,
        start=chosen.start,
        end=chosen.start + len(chosen.replacement),
        original=text[chosen.start : chosen.end],
        replacement=chosen.replacement,
        seed=seed,
        family=family,
    )
    return corrupted, record
