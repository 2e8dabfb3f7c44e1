"""Seeded, label-preserving surface variation of a report (training data only).

:func:`vary_report` rewrites a report's findings and impression without changing what it says: sentence order
within a section (sentences that lean on the one before — "This is unchanged.", "Otherwise …" — move with it),
synonyms and abbreviations ("pneumothorax" <-> "PTX", "pleural effusion" <-> "effusion", the "no acute
cardiopulmonary …" boilerplate), an occasional IU-Xray style ``XXXX`` redaction of a word that carries no finding
("radiograph", "views" …), and merging or splitting lists of negated findings ("No pneumothorax. No effusion." <->
"No pneumothorax or effusion."). Findings stay findings and the impression stays the impression.

What is never done: touching a qualifier's scope ("No large effusion or pneumothorax" is not split, since "large"
may cover both), reordering a numbered impression, or redacting a word that names a finding, a side, a size or a
device. The same ``(findings, impression, seed)`` always gives the same result.
"""

from __future__ import annotations

import random
import re
from functools import cache

from radlvlm.reports import normalize_text
from radlvlm.tasks.injection import sentence_spans

__all__ = ["ABBREVIATIONS", "expand_abbreviations", "vary_report"]

# Each group: interchangeable phrasings (case-insensitive, whole words). A phrase is replaced by another of its
# group. Only phrasings that mean the same thing on a chest radiograph report are grouped.
_SYNONYMS: tuple[tuple[str, ...], ...] = (
    (
        "no acute cardiopulmonary abnormality",
        "no acute cardiopulmonary process",
        "no acute cardiopulmonary disease",
        "no acute cardiopulmonary findings",
        "no active disease",
    ),
    ("no acute osseous abnormality", "no acute bony abnormality"),
    ("osseous structures", "bony structures"),
    ("pleural effusions", "effusions"),
    ("pleural effusion", "effusion"),
    ("focal airspace disease", "focal airspace opacity"),
    ("heart size is normal", "heart size is within normal limits"),
    ("chest x-ray", "chest radiograph"),
    ("congestive heart failure", "CHF"),
    ("endotracheal tube", "ET tube"),
    ("nasogastric tube", "NG tube"),
    ("status post", "s/p"),
)
# Abbreviations the rule-based labeler does not know; :func:`expand_abbreviations` maps them back.
ABBREVIATIONS: dict[str, str] = {
    "pneumothorax": "PTX",
    "right lower lobe": "RLL",
    "right upper lobe": "RUL",
    "right middle lobe": "RML",
    "left lower lobe": "LLL",
    "left upper lobe": "LUL",
}
# Words whose redaction hides no finding, side, size or device (IU-Xray redacts such words as "XXXX").
_REDACTABLE = ("radiograph", "radiographs", "views", "view", "examination", "exam", "visualized", "frontal")
# Sentences starting so lean on the sentence before and move with it when sentences are shuffled.
_LEANS_BACK = re.compile(
    r"^(?:it|this|these|they|that|those|which|again|also|otherwise|however|additionally|moreover|in addition|"
    r"there has been|no change|unchanged|stable|findings|the remainder|remainder|both|each)\b",
    re.IGNORECASE,
)
# A qualifier at the head of a negated list may scope over every item: such lists are neither split nor built.
_QUALIFIED = re.compile(
    r"^(?:large|significant|definite|gross|grossly|obvious|sizable|visible|appreciable|new|substantial|"
    r"visualized|evident|discrete|convincing|displaced|overt|frank|moderate|small|other|additional)\b",
    re.IGNORECASE,
)
_TRAILING = re.compile(r"\s+(?:is |are )?(?:identified|seen|present|demonstrated|noted|visualized|evident)$", re.I)
# After "or", these words make the rule-based labeler read uncertainty ("atelectasis or pneumonia"): keep them first.
_OR_SENSITIVE = re.compile(r"^(?:atelecta|pneumoni|infecti|scar)", re.IGNORECASE)
_PREFIXES = ("no evidence of ", "no ")
_ITEM = re.compile(r"^[a-z][a-z -]{1,40}$", re.IGNORECASE)


@cache
def _synonym_pattern() -> tuple[re.Pattern[str], dict[str, tuple[str, ...]]]:
    table: dict[str, tuple[str, ...]] = {}
    for group in _SYNONYMS:
        for phrase in group:
            table[phrase.lower()] = tuple(p for p in group if p != phrase)
    for word, abbreviation in ABBREVIATIONS.items():
        table[word.lower()] = (abbreviation,)
        table[abbreviation.lower()] = (word,)
    alternation = "|".join(re.escape(p) for p in sorted(table, key=len, reverse=True))
    # "effusion" after "pericardial"/"pleural"/"joint" is not a synonym slot; "PTX"-style words need boundaries.
    return re.compile(rf"(?<![\w/-])(?<!pericardial )(?<!pleural )(?:{alternation})(?![\w/-])", re.IGNORECASE), table


def _match_case(source: str, target: str) -> str:
    if target.isupper() or any(c.isupper() for c in target[1:]):
        return target  # an abbreviation keeps its own case
    if source.isupper() and len(source) > 1 and source.lower() not in ABBREVIATIONS.values():
        return target[:1].upper() + target[1:] if source[:1].isupper() else target
    if source[:1].isupper():
        return target[:1].upper() + target[1:]
    return target


def expand_abbreviations(text: str) -> str:
    """``text`` with the abbreviations :func:`vary_report` may introduce written out (for labelers that lack them)."""
    for word, abbreviation in ABBREVIATIONS.items():
        text = re.sub(rf"(?<![\w/-]){re.escape(abbreviation)}(?![\w/-])", word, text)
    return text


def _synonyms(sentence: str, rng: random.Random, rate: float) -> str:
    pattern, table = _synonym_pattern()

    def swap(m: re.Match[str]) -> str:
        if rng.random() >= rate:
            return m.group()
        choice = rng.choice(table[m.group().lower()])
        return _match_case(m.group(), choice)

    return pattern.sub(swap, sentence)


def _redact(sentences: list[str], rng: random.Random) -> list[str]:
    pattern = re.compile(rf"\b(?:{'|'.join(_REDACTABLE)})\b", re.IGNORECASE)
    slots = [(i, m) for i, s in enumerate(sentences) for m in pattern.finditer(s)]
    if not slots:
        return sentences
    i, m = rng.choice(slots)
    out = list(sentences)
    out[i] = out[i][: m.start()] + "XXXX" + out[i][m.end() :]
    return out


def _split_list(sentence: str) -> list[str] | None:
    """``"No A, B or C."`` -> ``["No A.", "No B.", "No C."]``; ``None`` when the list is not plain."""
    body = sentence.rstrip(".")
    low = body.lower()
    prefix = next((p for p in _PREFIXES if low.startswith(p)), None)
    if prefix is None:
        return None
    rest = _TRAILING.sub("", body[len(prefix) :])
    items = [x.strip() for x in re.split(r",\s*(?:or\s+|and\s+)?|\s+or\s+", rest) if x.strip()]
    if len(items) < 2 or any(not _ITEM.match(x) or " and " in x or " with " in x for x in items):
        return None
    if _QUALIFIED.match(items[0]) or any(_QUALIFIED.match(x) for x in items):
        return None
    head = body[: len(prefix)]
    return [f"{head}{x}." for x in items]


def _merge_lists(sentences: list[str], rng: random.Random) -> list[str]:
    """Merge a run of two or three plain ``"No X."`` sentences with the same lead into one list."""
    out: list[str] = []
    i = 0
    while i < len(sentences):
        run = [sentences[i]]
        prefix = _plain_negation(sentences[i])
        if prefix is not None:
            j = i + 1
            while j < len(sentences) and len(run) < 3 and _plain_negation(sentences[j]) == prefix:
                run.append(sentences[j])
                j += 1
        if len(run) >= 2 and rng.random() < 0.7:
            items = [s.rstrip(".")[len(prefix) :] for s in run]
            safe_last = [x for x in items if not _OR_SENSITIVE.match(x)]
            if safe_last:
                last = safe_last[-1]
                items = [x for x in items if x is not last] + [last]
                joined = ", ".join(items[:-1]) + " or " + items[-1]
                out.append(run[0][: len(prefix)] + joined + ".")
                i += len(run)
                continue
        out.append(sentences[i])
        i += 1
    return out


def _plain_negation(sentence: str) -> str | None:
    low = sentence.lower()
    if not sentence.endswith("."):
        return None
    for p in _PREFIXES:
        if low.startswith(p):
            item = sentence[len(p) : -1]
            plain = _ITEM.match(item) and len(item.split()) <= 4 and not _QUALIFIED.match(item)
            if plain and not re.search(r"\b(?:or|and|with|without|change|changed|new|acute)\b", item, re.I):
                return p
            return None
    return None


def _shuffle(sentences: list[str], rng: random.Random) -> list[str]:
    blocks: list[list[str]] = []
    for s in sentences:
        if blocks and _LEANS_BACK.match(s):
            blocks[-1].append(s)
        else:
            blocks.append([s])
    if len(blocks) < 2:
        return sentences
    rng.shuffle(blocks)
    return [s for block in blocks for s in block]


def _vary_section(text: str, rng: random.Random) -> str:
    if not text or not text.strip():
        return text
    text = normalize_text(text)
    sentences = [text[s:e] for s, e in sentence_spans(text)]
    if not sentences or any(not s.endswith((".", "!", "?")) for s in sentences[:-1]):
        return text  # unusual punctuation: leave the section as written
    if not sentences[-1].endswith((".", "!", "?")):
        sentences[-1] += "."  # an unpunctuated last sentence may move to the middle
    if rng.random() < 0.35:
        split: list[str] = []
        for s in sentences:
            parts = _split_list(s) if rng.random() < 0.7 else None
            split.extend(parts or [s])
        sentences = split
    elif rng.random() < 0.5:
        sentences = _merge_lists(sentences, rng)
    rate = rng.choice((0.0, 0.3, 0.6))
    if rate:
        sentences = [_synonyms(s, rng, rate) for s in sentences]
    if rng.random() < 0.15:
        sentences = _redact(sentences, rng)
    if rng.random() < 0.5:
        sentences = _shuffle(sentences, rng)
    return " ".join(sentences)


def vary_report(findings: str, impression: str, *, seed: int) -> tuple[str, str]:
    """A seeded surface variant of a report that says the same thing.

    Args:
        findings (`str`): the findings section (may be empty).
        impression (`str`): the impression section (may be empty).
        seed (`int`): seeds every choice.

    Returns:
        ``(findings, impression)``, each normalised (:func:`radlvlm.reports.normalize_text`) and varied.
    """
    rng = random.Random(f"radlvlm-vary:{seed}")
    return _vary_section(findings or "", rng), _vary_section(impression or "", rng)
