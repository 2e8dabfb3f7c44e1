"""Clean report text into one line, and split it into sentences.

Both are rule-based and deterministic (no model, no dictionary), so they behave the same in training,
evaluation and the service. IU-Xray's redaction token ``XXXX`` survives both untouched.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from radlvlm.errors import InputError

__all__ = ["DEID_TOKEN", "normalize_text", "sentence_spans", "split_sentences"]

DEID_TOKEN = "XXXX"  # IU-Xray marks each redacted word with this; it must stay recognisable

_PUNCT_TABLE = str.maketrans(
    {
        **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u00b4\u0060", "'"),
        **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb", '"'),
        **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d", "-"),
        **dict.fromkeys("\u00ad\u200b\u200c\u200d\u2060\ufeff", ""),  # soft hyphen, zero-width characters
    }
)
_BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)  # Open-i keeps a few literal "<BR>" line breaks
# A hyphen at a line break is kept: reporting systems wrap after the hyphen of real compounds
# ("well-\ndefined", "x-\nray"), so dropping it would make non-words more often than it repairs one.
_HYPHEN_BREAK = re.compile(r"(?<=\w)-[ \t]*\r?\n\s*(?=\w)")
_WHITESPACE = re.compile(r"\s+")
_DUPLICATE_PERIODS = re.compile(r"\.(?:\s*\.)+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+(?=[.,;](?:\s|$))")
# "word.Next" -> "word. Next"; needs two letters before and a capitalised word after, so "1.5", "e.g.",
# "U.S." are left alone.
_MISSING_SPACE = re.compile(r"(?<=[A-Za-z]{2})([.!?])(?=[A-Z][a-z])")
_DEID_SPLIT = re.compile(r"(X{4,})")

# A list number "2." or "2)" followed by a blank, not part of "T12.", "1.5" or "a/2.".
_MARKER = re.compile(r"(?<![\w.,/-])(\d{1,2})[.)](?=\s)")
_SENTENCE_END_CHARS = ".!?:;"
# Words after which a number is a count or a measurement, not the next list item ("1 and 2. Otherwise").
_NOT_BEFORE_MARKER = frozenset({"and", "or", "to", "of", "x", "by", "from", "than", "between", "at", "level"})
# Tokens (lower-cased, final period removed) whose period does not end a sentence.
_ABBREVIATIONS = frozenset(
    {"dr", "drs", "mr", "mrs", "ms", "prof", "vs", "approx", "apprx", "eg", "ie", "cf", "pt", "pts", "fig"}
    | {"figs", "st", "jr", "sr", "incl", "esp", "resp", "e.g", "i.e", "viz", "al"}
)
_DOTTED_ABBREVIATION = re.compile(r"^[a-z](?:\.[a-z])+$", re.IGNORECASE)  # "a.m", "u.s", "y.o"
_SENTENCE_PUNCT = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")


@dataclass(frozen=True)
class _Marker:
    start: int
    end: int  # just after the "." / ")"
    mid_sentence: bool  # "1. Cardiomegaly 2. Edema": the item starts without a sentence end before it


def _require_str(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise InputError(f"{what} expects str, got {type(text).__name__}")
    return text


def _list_markers(text: str) -> list[_Marker]:
    """Numbered-list markers in whitespace-collapsed ``text``.

    A number opens an item at a sentence start (text start or after ``.!?:;``), or mid-sentence when it is
    the next number after the previous item's ("1. Cardiomegaly 2. Edema"), which keeps "grade 2. The" a
    sentence end.
    """
    markers: list[_Marker] = []
    last: int | None = None
    for m in _MARKER.finditer(text):
        number = int(m.group(1))
        before = text[: m.start()].rstrip().rstrip("\"')]")
        if not before or before[-1] in _SENTENCE_END_CHARS:
            markers.append(_Marker(m.start(), m.end(), mid_sentence=False))
            last = number
            continue
        previous_word = before.rsplit(" ", 1)[-1].lower()
        if last is not None and number == last + 1 and previous_word not in _NOT_BEFORE_MARKER:
            markers.append(_Marker(m.start(), m.end(), mid_sentence=True))
            last = number
    return markers


def _strip_list_markers(text: str) -> str:
    pieces: list[str] = []
    cursor = 0
    for marker in _list_markers(text):
        before = text[cursor : marker.start].rstrip()
        if marker.mid_sentence and before:
            # The item boundary had no punctuation; end the previous item as a sentence.
            before = before.rstrip(",") + "."
        pieces.append(before)
        cursor = marker.end
    pieces.append(text[cursor:])
    return " ".join(p.strip() for p in pieces if p.strip())


def _lowercase_keeping_deid(text: str) -> str:
    return "".join(part if i % 2 else part.lower() for i, part in enumerate(_DEID_SPLIT.split(text)))


def normalize_text(text: str, *, lowercase: bool = False) -> str:
    """Normalise report text to one clean line.

    Steps: Unicode NFKC; curly quotes, primes and dashes to ASCII; zero-width characters and soft hyphens
    dropped; ``<BR>`` tags to spaces; a line break after a hyphen joined (hyphen kept); all whitespace to
    single spaces; spaces before ``.,;`` removed; repeated periods (``..``, ``. .``) to one; numbered-list
    markers (``1.``, ``2)``) at item starts removed, an unpunctuated item end getting a period; one space
    after ``.!?`` before a capitalised word; stripped.

    Args:
        text (`str`): report text, possibly multi-line.
        lowercase (`bool`, defaults to `False`): lower-case the result, except IU-Xray's redaction token
            ``XXXX``, which marks removed words and must stay distinguishable from the word "xxxx".

    Raises:
        InputError: ``text`` is not a ``str``.
    """
    text = _require_str(text, "normalize_text")
    text = unicodedata.normalize("NFKC", text.translate(_PUNCT_TABLE)).translate(_PUNCT_TABLE)
    text = _BR_TAG.sub(" ", text)
    text = _HYPHEN_BREAK.sub("-", text)
    text = _WHITESPACE.sub(" ", text).strip()
    text = _DUPLICATE_PERIODS.sub(".", text)
    text = _SPACE_BEFORE_PUNCT.sub("", text)
    text = _strip_list_markers(text)
    text = _MISSING_SPACE.sub(r"\1 ", text)
    text = _DUPLICATE_PERIODS.sub(".", text)  # marker removal can leave "foo.. bar"
    if lowercase:
        text = _lowercase_keeping_deid(text)
    return text.strip()


def _ends_sentence(text: str, punct: re.Match[str], marker_ends: set[int]) -> bool:
    if punct.end() in marker_ends or punct.start() == 0:
        return False  # a list number's own period
    if text[punct.start() - 1] == " " and punct.group()[0] in "?!":
        return False  # a detached "?" means "query" ("query ? pneumonia")
    if punct.group().startswith(".") and len(punct.group().rstrip("\"')]")) == 1:
        token = text[: punct.start()].rsplit(" ", 1)[-1].lstrip("\"'([").lower()
        if token in _ABBREVIATIONS or _DOTTED_ABBREVIATION.match(token):
            return False
    return True


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences (whitespace inside each collapsed to single spaces).

    Splits after ``.``, ``!`` or ``?`` followed by a blank, and before a mid-sentence list item
    ("1. Cardiomegaly 2. Edema"). Does not split inside decimals ("1.5 cm"), after abbreviations ("Dr.",
    "vs.", "approx.", "e.g.", "a.m.") or after list numbers ("1. No effusion" stays one sentence, marker
    kept). Works on lower-cased text too. Pieces without a letter or digit (a stray ".") join the previous
    sentence. Run :func:`normalize_text` first to drop list markers and tidy punctuation.

    Args:
        text (`str`): report text, possibly multi-line.

    Raises:
        InputError: ``text`` is not a ``str``.
    """
    return [piece for piece, _, _ in _sentences(_require_str(text, "split_sentences"))]


def sentence_spans(text: str, *, line_breaks: bool = False) -> list[tuple[int, int]]:
    """Character spans of ``text``'s sentences, by the rules of :func:`split_sentences` (one splitter for the
    labeler, the normaliser and the error injector, which edits the text in place and so needs positions).

    Args:
        text (`str`): report text as given (nothing is normalised: spans index it).
        line_breaks (`bool`, defaults to `False`): a line break also ends a sentence (a report composed as
            "FINDINGS: ...\nIMPRESSION: ..." whose findings lack a final period).
    """
    text = _require_str(text, "sentence_spans")
    if not line_breaks:
        return [(start, end) for _, start, end in _sentences(text)]
    spans: list[tuple[int, int]] = []
    offset = 0
    for line in text.split("\n"):
        spans.extend((offset + start, offset + end) for _, start, end in _sentences(line))
        offset += len(line) + 1
    return spans


def _sentences(text: str) -> list[tuple[str, int, int]]:
    """(sentence with whitespace collapsed, start, end in ``text``) for each sentence of ``text``."""
    collapsed, where = _collapse(text)
    markers = _list_markers(collapsed)
    cuts = {m.start for m in markers if m.mid_sentence}
    marker_ends = {m.end for m in markers}
    cuts |= {p.end() for p in _SENTENCE_PUNCT.finditer(collapsed) if _ends_sentence(collapsed, p, marker_ends)}
    sentences: list[tuple[str, int, int]] = []
    start = 0
    for cut in sorted(cuts | {len(collapsed)}):
        raw = collapsed[start:cut]
        piece = raw.strip()
        first = start + len(raw) - len(raw.lstrip())
        start = cut
        if not piece:
            continue
        span = (where[first], where[first + len(piece) - 1] + 1)
        if sentences and not any(c.isalnum() for c in piece):
            text_before, begin, _ = sentences[-1]
            sentences[-1] = (f"{text_before} {piece}", begin, span[1])
        else:
            sentences.append((piece, *span))
    return sentences


def _collapse(text: str) -> tuple[str, list[int]]:
    """``text`` with a hyphen at a line break joined and all whitespace runs made one space, stripped; and for
    each character of the result, its position in ``text``."""
    chars: list[str] = []
    where: list[int] = []
    position = 0
    for match in _HYPHEN_BREAK.finditer(text):
        _append_collapsed(text, position, match.start(), chars, where)
        chars.append("-")
        where.append(match.start())
        position = match.end()
    _append_collapsed(text, position, len(text), chars, where)
    while chars and chars[-1] == " ":
        chars.pop()
        where.pop()
    return "".join(chars), where


def _append_collapsed(text: str, start: int, end: int, chars: list[str], where: list[int]) -> None:
    for index in range(start, end):
        char = text[index]
        if char.isspace():
            if chars and chars[-1] != " ":
                chars.append(" ")
                where.append(index)
        else:
            chars.append(char)
            where.append(index)
