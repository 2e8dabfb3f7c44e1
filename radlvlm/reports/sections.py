"""Split free-text chest X-ray reports into sections (IU-Xray / Open-i, MIMIC-CXR and common variants).

Section bodies are kept verbatim apart from layout: each line is stripped and blank lines are dropped, so a
hard-wrapped MIMIC-CXR section keeps its line breaks. Run :func:`radlvlm.reports.normalize_text` on a body
to get one clean line.

Header rules (see :func:`parse_report`):

* A known header (``FINDINGS:``, ``Clinical history:`` ...) is matched case-insensitively when it opens a line
  or follows a sentence end (``.``, ``!``, ``?`` then a space), and is followed by a colon; on a line of its
  own the colon may be left out (``IMPRESSION`` then the text on the next lines).
* An unknown ALL-CAPS label with a colon at the start of a line (``NOTE:``) opens a section kept in ``other``
  under its lower-cased label. Only line starts count here, so mid-sentence ``Admit Comments:`` stays text.
* ``FINAL REPORT`` / ``PRELIMINARY REPORT`` on a line of their own are titles: dropped, and the text after
  them (up to the next header) counts as unheaded.
* ``FINDINGS AND IMPRESSION:`` (and ``FINDINGS/IMPRESSION``, ``IMPRESSION AND FINDINGS``) goes to ``findings``
  only and leaves ``impression`` empty: the text describes the image, and copying it into both would
  double-count it in any findings-vs-impression metric. MIT-LCP's MIMIC-CXR ``section_parser.py`` maps it to
  ``impression`` instead; to follow that convention use ``sections.impression or sections.findings``.
* Unheaded text (before the first header, or after a title) becomes ``findings`` when the report has no
  findings header, else ``other["preamble"]``.
* A repeated header appends its body on a new line.
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from radlvlm.errors import InputError, ReportParseError

__all__ = ["SECTION_ORDER", "ReportSections", "parse_openi_xml", "parse_report", "with_comparison"]

logger = logging.getLogger(__name__)

# Canonical order of the named sections in ``to_text`` (MIMIC-CXR's usual order).
SECTION_ORDER: tuple[str, ...] = (
    "examination",
    "indication",
    "technique",
    "comparison",
    "findings",
    "impression",
)

_PREAMBLE = "preamble"
_UNHEADED = ""  # bucket key no header can produce: text before the first header or after a title

# Header spellings per target. Keys in SECTION_ORDER are dataclass fields; the others land in ``other``.
_ALIASES: dict[str, tuple[str, ...]] = {
    "examination": ("EXAMINATION", "EXAM", "TYPE OF EXAMINATION", "STUDY"),
    "indication": (
        "INDICATION",
        "INDICATIONS",
        "CLINICAL INDICATION",
        "HISTORY",
        "CLINICAL HISTORY",
        "PATIENT HISTORY",
        "MEDICAL HISTORY",
        "REASON FOR EXAM",
        "REASON FOR EXAMINATION",
        "REASON FOR STUDY",
        "CLINICAL INFORMATION",
        "CLINICAL DATA",
        "CLINICAL DETAILS",
    ),
    "technique": ("TECHNIQUE", "TECHNIQUES", "PROCEDURE", "VIEWS"),
    "comparison": (
        "COMPARISON",
        "COMPARISONS",
        "COMPARISON STUDY",
        "COMPARISON STUDIES",
        "COMPARISON EXAM",
        "COMPARISON FILM",
        "PRIOR",
        "PRIORS",
        "PRIOR STUDY",
        "PRIOR STUDIES",
        "PRIOR EXAM",
        "PRIOR EXAMS",
        "REFERENCE EXAM",
    ),
    # FINDINGS AND IMPRESSION and its variants count as findings (module docstring says why).
    "findings": (
        "FINDINGS",
        "FINDING",
        "FINDINGS AND IMPRESSION",
        "FINDINGS AND IMPRESSIONS",
        "FINDINGS/IMPRESSION",
        "FINDINGS & IMPRESSION",
        "IMPRESSION AND FINDINGS",
        "IMPRESSION/FINDINGS",
    ),
    "impression": ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS", "SUMMARY", "OPINION"),
    "wet read": ("WET READ", "WETREAD"),
    "addendum": ("ADDENDUM",),
    "notification": ("NOTIFICATION",),
    "recommendations": ("RECOMMENDATION", "RECOMMENDATIONS", "RECOMMENDATION(S)"),
}
_TITLES: tuple[str, ...] = ("FINAL REPORT", "PRELIMINARY REPORT")


def _canon_label(label: str) -> str:
    """Upper-case, single spaces, no blanks around "/": the form ``_ALIAS_TO_KEY`` is keyed by."""
    return re.sub(r"\s*/\s*", "/", " ".join(label.split())).upper()


_ALIAS_TO_KEY: dict[str, str] = {_canon_label(a): key for key, aliases in _ALIASES.items() for a in aliases}


def _alternation(names: Iterable[str]) -> str:
    # Longest first so "CLINICAL HISTORY" wins over "HISTORY"; spaces and slashes tolerate extra blanks.
    parts = []
    for name in sorted(names, key=len, reverse=True):
        pattern = re.escape(name).replace(r"\ ", r"[ \t]+").replace("/", r"[ \t]*/[ \t]*")
        parts.append(pattern)
    return "|".join(parts)


_KNOWN = _alternation(_ALIAS_TO_KEY)
# Known header + colon, at a line start or after a sentence end.
_RE_COLON = re.compile(rf"(?:^[ \t]*|(?<=[.!?])[ \t]+)(?P<name>{_KNOWN})[ \t]*:", re.IGNORECASE | re.MULTILINE)
# Known header or title alone on its line, colon optional.
_RE_LINE = re.compile(
    rf"^[ \t]*(?P<name>{_KNOWN}|{_alternation(_TITLES)})[ \t]*:?[ \t]*$", re.IGNORECASE | re.MULTILINE
)
# Unknown ALL-CAPS label at a line start (case-sensitive on purpose: mixed-case "Note:" is prose).
_RE_GENERIC = re.compile(r"^[ \t]*(?P<name>[A-Z][A-Z/&() -]{0,38}[A-Z)])[ \t]*:", re.MULTILINE)
_REDACTION = re.compile(r"^(?:X{2,}|_{2,})$")  # IU "XXXX" / MIMIC "___" are redactions, never headers


@dataclass(frozen=True)
class ReportSections:
    """A radiology report split into sections; every field is ``""`` when the report lacks it.

    Args:
        indication (`str`, defaults to `""`): indication, history, clinical history or reason for exam.
        comparison (`str`, defaults to `""`): prior studies compared against.
        technique (`str`, defaults to `""`): technique / procedure / views.
        findings (`str`, defaults to `""`): findings; also takes ``FINDINGS AND IMPRESSION`` and unheaded text
            when the report has no findings header.
        impression (`str`, defaults to `""`): impression, conclusion or summary.
        examination (`str`, defaults to `""`): the examination title (``EXAMINATION:``, Open-i image caption).
        other (`dict[str, str]`, defaults to `{}`): other headed sections keyed by lower-cased header
            (``"wet read"``, ``"addendum"``, ``"preamble"`` ...). Copied on construction; not hashed.
    """

    indication: str = ""
    comparison: str = ""
    technique: str = ""
    findings: str = ""
    impression: str = ""
    examination: str = ""
    other: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "other" and not isinstance(value, str):
                raise TypeError(f"ReportSections.{f.name} must be str, got {type(value).__name__}")
        if not isinstance(self.other, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.other.items()
        ):
            raise TypeError("ReportSections.other must be a dict of str to str")
        # A private copy, so the caller's dict cannot change a frozen instance afterwards.
        object.__setattr__(self, "other", dict(self.other))

    def to_text(self, *, include_other: bool = False) -> str:
        """Render a canonical report: one ``HEADER: body`` block per non-empty section, in ``SECTION_ORDER``.

        Args:
            include_other (`bool`, defaults to `False`): also render ``other`` sections (upper-cased keys)
                after the impression. ``parse_report(s.to_text(include_other=True)) == s`` holds for parsed
                reports.
        """
        blocks = [f"{name.upper()}: {getattr(self, name)}" for name in SECTION_ORDER if getattr(self, name)]
        if include_other:
            blocks += [f"{key.upper()}: {body}" for key, body in self.other.items() if body]
        return "\n".join(blocks)

    def as_dict(self) -> dict[str, str | dict[str, str]]:
        """Plain JSON-serialisable dict of all fields (``other`` copied)."""
        out: dict[str, str | dict[str, str]] = {name: getattr(self, name) for name in SECTION_ORDER}
        out["other"] = dict(self.other)
        return out

    def is_empty(self) -> bool:
        """True when no section has any text."""
        return not any(getattr(self, name) for name in SECTION_ORDER) and not any(self.other.values())


@dataclass(frozen=True)
class _Header:
    start: int
    end: int
    key: str | None  # None for a title: the text after it is unheaded
    priority: int


def _find_headers(text: str) -> list[_Header]:
    found: list[_Header] = []
    for priority, pattern in enumerate((_RE_COLON, _RE_LINE, _RE_GENERIC)):
        for m in pattern.finditer(text):
            label = _canon_label(m.group("name"))
            if pattern is _RE_GENERIC:
                if _REDACTION.match(label) or label in _TITLES:
                    continue
                key: str | None = _ALIAS_TO_KEY.get(label, label.lower())
            elif label in _TITLES:
                key = None
            else:
                key = _ALIAS_TO_KEY[label]
            found.append(_Header(m.start(), m.end(), key, priority))
    # Earliest first; at one position the more specific pattern wins; overlapping matches are dropped.
    found.sort(key=lambda h: (h.start, h.priority))
    kept: list[_Header] = []
    for h in found:
        if not kept or h.start >= kept[-1].end:
            kept.append(h)
    return kept


def _tidy(body: str) -> str:
    """Strip each line and drop blank ones; keeps line breaks (hard-wrapped reports, numbered lists)."""
    return "\n".join(line.strip() for line in body.splitlines() if line.strip())


def _assemble(bodies: dict[str, list[str]], *, has_findings_header: bool) -> ReportSections:
    joined = {key: "\n".join(b for b in parts if b) for key, parts in bodies.items()}
    unheaded = joined.pop(_UNHEADED, "")
    findings = joined.pop("findings", "")
    if unheaded and not has_findings_header:
        findings, unheaded = unheaded, ""
    other: dict[str, str] = {}
    # An explicit "PREAMBLE:" header (as written by to_text(include_other=True)) joins the unheaded text.
    preamble = "\n".join(b for b in (unheaded, joined.pop(_PREAMBLE, "")) if b)
    if preamble:
        other[_PREAMBLE] = preamble
    named = {name: joined.pop(name, "") for name in SECTION_ORDER if name != "findings"}
    other.update((k, v) for k, v in joined.items() if v)
    return ReportSections(findings=findings, other=other, **named)


def parse_report(text: str) -> ReportSections:
    """Split a free-text radiology report into :class:`ReportSections`.

    Header rules are in the module docstring. A report that has headers but no text under them parses to
    empty sections (see :meth:`ReportSections.is_empty`).

    Args:
        text (`str`): the report (IU-Xray, MIMIC-CXR or similar style).

    Raises:
        ReportParseError: ``text`` is not a ``str`` or is empty / whitespace only. Messages give lengths,
            never report text.
    """
    if not isinstance(text, str):
        raise ReportParseError(f"report must be str, got {type(text).__name__}")
    if not text.strip():
        raise ReportParseError(f"report is empty ({len(text)} characters, all whitespace)")
    text = text.replace("\r\n", "\n").replace("\r", "\n")

    headers = _find_headers(text)
    bodies: dict[str, list[str]] = {}
    bodies.setdefault(_UNHEADED, []).append(_tidy(text[: headers[0].start] if headers else text))
    for i, h in enumerate(headers):
        stop = headers[i + 1].start if i + 1 < len(headers) else len(text)
        bodies.setdefault(h.key if h.key is not None else _UNHEADED, []).append(_tidy(text[h.end : stop]))
    has_findings_header = any(h.key == "findings" for h in headers)
    sections = _assemble(bodies, has_findings_header=has_findings_header)
    logger.debug("parsed report: %d characters, %d headers", len(text), len(headers))
    return sections


def parse_openi_xml(source: str | os.PathLike[str] | bytes) -> ReportSections:
    """Read an IU-Xray / Open-i report XML (``ecgen-radiology/*.xml``) into :class:`ReportSections`.

    Sections come from ``<AbstractText Label="...">`` (labels mapped like report headers; unknown labels go to
    ``other``); ``examination`` is the first non-empty ``<parentImage><caption>``. Text is kept verbatim
    apart from line tidying, so it equals the Kaggle/manifest CSV fields.

    Args:
        source (`str | os.PathLike | bytes`): a file path, or the XML document itself as bytes.

    Raises:
        InputError: the file cannot be read.
        ReportParseError: the XML is malformed, declares entities, or has no ``AbstractText``.
    """
    if isinstance(source, bytes):
        data, where = source, "Open-i report XML"
    elif isinstance(source, (str, os.PathLike)):
        where = f"Open-i report XML {os.fspath(source)}"
        try:
            with open(source, "rb") as fh:
                data = fh.read()
        except OSError as e:
            raise InputError(f"{where}: cannot read ({e.strerror or type(e).__name__})") from e
    else:
        raise ReportParseError(f"Open-i XML source must be a path or bytes, got {type(source).__name__}")
    # Open-i files never declare entities; refusing them rules out entity-expansion attacks in xml.etree.
    if b"<!ENTITY" in data or b"<!DOCTYPE" in data:
        raise ReportParseError(f"{where}: DTD/entity declarations are not accepted ({len(data)} bytes)")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        line, column = e.position
        raise ReportParseError(f"{where}: malformed XML at line {line}, column {column} ({len(data)} bytes)") from e

    abstracts = list(root.iter("AbstractText"))
    if not abstracts:
        raise ReportParseError(f"{where}: no AbstractText element (root <{root.tag}>)")
    bodies: dict[str, list[str]] = {}
    for element in abstracts:
        label = _canon_label(element.get("Label") or "")
        key = _ALIAS_TO_KEY.get(label, label.lower() or "unlabelled")
        bodies.setdefault(key, []).append(_tidy("".join(element.itertext())))
    captions = (_tidy("".join(c.itertext())) for c in root.iterfind("./parentImage/caption"))
    bodies["examination"] = [next((c for c in captions if c), "")]
    has_findings_header = "findings" in bodies
    return _assemble(bodies, has_findings_header=has_findings_header)


def with_comparison(report: str, comparison: str | None) -> str:
    """``report`` with its study's COMPARISON section in front (what a radiologist's report carries, and what lets
    a check see that "unchanged" has nothing to be unchanged from), unless it is empty or the report has one."""
    comparison = (comparison or "").strip()
    if not comparison or parse_report(report).comparison.strip():
        return report
    return f"COMPARISON: {comparison}\n{report}"
