"""An independent error injector for chest X-ray reports, for evaluating the error checker only.

This module was written independently of ``radlvlm.tasks.injection``: its author did not read that module, its
lexicon or the training data code, and worked only from the published error definitions:

* the edit types of the report error-checking literature (insert, remove, substitute);
* ReXErr (Rao et al., 2024): false prediction, false negation, added contradiction, change of severity,
  change of location, change of measurement, change of device;
* GREEN (Ostmeier et al., 2024), clinically significant categories: (a) false report of a finding, (b) missing a
  finding, (c) wrong anatomic location or position, (d) wrong severity, (e) mentioning a comparison that is not in
  the reference, (f) omitting a comparison that details a change.

Its vocabulary, phrasing and sentence handling are its own, so a checker trained on the project's injector can be
tested on errors it has not seen the surface form of. It is for evaluation only and must never feed training data.

Every injected error is meant to be clinically significant (it changes what a clinician would do or believe): edits
of existing text touch only sentences that assert a significant finding (or carry a measurement, a device or a
change from a prior study), inserted sentences assert or deny significant findings or devices, and negated
statements ("no left effusion") are never laterality- or severity-swapped. Each family reports one of the project's
error taxonomy categories. The same inputs and seed always give the same output (seeded ``random.Random`` streams,
never the global state).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from radlvlm.errors import InputError

__all__ = [
    "CATEGORIES",
    "FAMILIES",
    "INJECTOR",
    "InjectedReport",
    "build_independent_set",
    "compose_text",
    "inject_independent",
]

INJECTOR = "independent-v1"

FAMILIES: tuple[str, ...] = (
    "false_prediction",
    "false_negation",
    "added_contradiction",
    "severity_change",
    "location_change",
    "measurement_change",
    "device_change",
    "omitted_finding",
    "unsupported_comparison",
    "omitted_comparison",
)

CATEGORIES: tuple[str, ...] = (
    "false_finding",
    "omitted_finding",
    "wrong_location",
    "wrong_severity",
    "unsupported_comparison",
    "omitted_comparison",
    "negation_flip",
)

SECTIONS: tuple[str, str] = ("findings", "impression")


@dataclass(frozen=True)
class InjectedReport:
    """A report with exactly one injected error; both sections are whitespace-collapsed."""

    findings: str
    impression: str
    family: str
    category: str
    section: str
    description: str


# --------------------------------------------------------------------------------------------------------------
# Vocabulary. Written for this module from radiology reporting conventions; patterns match lower- and upper-case.
# --------------------------------------------------------------------------------------------------------------

_LOBES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "lingula", "left lower lobe")
_RIBS = ("3rd", "4th", "5th", "6th", "7th", "8th", "9th")


@dataclass(frozen=True)
class _Finding:
    """A clinically significant finding: how it is named, how normal text denies it, how to assert or deny it."""

    key: str
    pattern: re.Pattern[str]
    normal: re.Pattern[str] | None  # a "normal" statement that denies the finding ("Lungs are clear")
    absent: tuple[str, ...]  # sentences that deny it
    present: tuple[str, ...]  # sentence templates that assert it; slots filled by _fill
    noun: str  # noun phrase template for comparison sentences


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


_FINDINGS: tuple[_Finding, ...] = (
    _Finding(
        "pleural effusion",
        _rx(r"(?<!pericardial )\b(?:pleural )?effusions?\b|\bpleural fluid\b|\bhydrothorax\b"),
        _rx(r"\bcostophrenic (?:angles?|sulci)\b[^.;]{0,25}\b(?:sharp|clear|preserved)\b"),
        ("No pleural effusion.", "There is no pleural effusion.", "No pleural effusions are seen."),
        (
            "{Size} {side} pleural effusion.",
            "There is a {size} {side} pleural effusion.",
            "Blunting of the {side} costophrenic angle consistent with a {size} pleural effusion.",
            "{Size} bilateral pleural effusions.",
        ),
        "{side} pleural effusion",
    ),
    _Finding(
        "pneumothorax",
        _rx(r"\bpneumothora(?:x|ces)\b|\bPTX\b"),
        None,
        ("No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."),
        (
            "{Size} {side} apical pneumothorax.",
            "There is a {size} {side} pneumothorax.",
            "{Side} pneumothorax with a visible pleural line and no lung markings laterally.",
        ),
        "{side} pneumothorax",
    ),
    _Finding(
        "consolidation",
        _rx(
            r"\b(?:consolidations?|consolidative|pneumonias?|infiltrates?|bronchopneumonia|"
            r"air ?space (?:disease|opacit(?:y|ies)|consolidation))\b"
        ),
        _rx(r"\blungs? (?:are|is|appear|remain)\b[^.;]{0,20}\bclear\b|\bclear lungs?\b"),
        (
            "No focal consolidation.",
            "The lungs are clear without focal airspace disease.",
            "No focal airspace opacity to suggest pneumonia.",
        ),
        (
            "Focal consolidation in the {lobe} concerning for pneumonia.",
            "Patchy airspace opacity in the {lobe}.",
            "Dense {lobe} consolidation with air bronchograms.",
            "Pneumonia in the {lobe}.",
        ),
        "{lobe} consolidation",
    ),
    _Finding(
        "cardiomegaly",
        _rx(
            r"\bcardiomegaly\b|\bcardiac enlargement\b|\benlarged (?:heart|cardiac silhouette)\b|"
            r"\benlargement of the cardiac silhouette\b|\b(?:heart|cardiac silhouette) is enlarged\b"
        ),
        _rx(
            r"\b(?:heart|cardiac|cardiomediastinal)\b[^.;]{0,45}\b(?:normal|within normal limits|unremarkable|"
            r"not enlarged)\b|\bnormal (?:heart|cardiac)\b"
        ),
        ("Heart size is normal.", "The cardiac silhouette is within normal limits.", "No cardiomegaly."),
        ("{Deg} cardiomegaly.", "The heart is {deg}ly enlarged.", "Enlarged cardiac silhouette."),
        "cardiomegaly",
    ),
    _Finding(
        "pulmonary edema",
        _rx(
            r"\b(?:pulmonary |interstitial |alveolar )?edema\b|\bvascular congestion\b|\bvenous congestion\b|"
            r"\bCHF\b|\bcongestive heart failure\b|\bkerley\b"
        ),
        _rx(r"\bpulmonary vascula(?:r|ture|rity)\b[^.;]{0,35}\b(?:normal|within normal limits|unremarkable)\b"),
        ("No pulmonary edema.", "No evidence of pulmonary edema.", "Pulmonary vascularity is normal."),
        (
            "{Deg} pulmonary edema.",
            "Pulmonary vascular congestion with {deg} interstitial edema.",
            "Findings consistent with {deg} pulmonary edema.",
        ),
        "pulmonary edema",
    ),
    _Finding(
        "atelectasis",
        _rx(r"\batelecta(?:sis|tic)\b|\b(?:lobar |lung )collapse\b"),
        None,
        ("No atelectasis.", "No focal atelectasis."),
        (
            "{Side} basilar atelectasis.",
            "{Deg} atelectasis in the {lobe}.",
            "Plate-like atelectasis at the {side} lung base.",
        ),
        "{side} basilar atelectasis",
    ),
    _Finding(
        "nodule or mass",
        _rx(r"\bnodul(?:es?|ar (?:opacit(?:y|ies)|densit(?:y|ies)))\b|\b(?:lung |pulmonary |hilar )?mass(?:es)?\b"),
        None,
        ("No pulmonary nodules.", "No suspicious pulmonary nodule or mass."),
        (
            "{n} mm nodule in the {lobe}.",
            "Spiculated {lobe} mass measuring {n2} cm.",
            "There is a {n} mm noncalcified nodule in the {lobe}.",
        ),
        "{lobe} nodule",
    ),
    _Finding(
        "fracture",
        _rx(r"\bfractures?\b|\bfx\b"),
        None,
        ("No fracture.", "No rib fractures are identified."),
        (
            "Acute displaced fracture of the {side} {rib} rib.",
            "{Side} {rib} rib fracture.",
            "Fracture of the {side} clavicle.",
        ),
        "{side} {rib} rib fracture",
    ),
    _Finding(
        "hilar adenopathy",
        _rx(r"\b(?:lymphadenopathy|adenopathy|hilar (?:enlargement|fullness))\b"),
        _rx(r"\bhil(?:a|ar|um)\b[^.;]{0,40}\b(?:normal|unremarkable|within normal limits)\b"),
        ("No hilar or mediastinal adenopathy.", "The hila are normal."),
        ("{Side} hilar lymphadenopathy.", "Bilateral hilar adenopathy.", "Enlarged {side} hilar lymph nodes."),
        "{side} hilar adenopathy",
    ),
    _Finding(
        "hyperinflation",
        _rx(r"(?<!subcutaneous )\bemphysema(?:tous)?\b|\bhyperinflat\w*|\bhyperexpan\w*|\bCOPD\b"),
        _rx(r"\bnormal(?:ly)? (?:lung volumes|inflat\w*|expan\w*)\b"),
        ("Lungs are normally inflated.", "No hyperinflation."),
        (
            "Hyperinflated lungs with flattened hemidiaphragms, consistent with emphysema.",
            "{Deg} emphysematous changes in the upper lobes.",
        ),
        "hyperinflation",
    ),
    _Finding(
        "free air",
        _rx(r"\bpneumoperitoneum\b|\bfree (?:intraperitoneal |subdiaphragmatic )?air\b"),
        None,
        ("No free air under the diaphragm.",),
        ("Free air under the {side} hemidiaphragm.", "Pneumoperitoneum with air beneath both hemidiaphragms."),
        "free subdiaphragmatic air",
    ),
    _Finding(
        "mediastinal widening",
        _rx(r"\bwiden(?:ed|ing) (?:of the )?(?:superior )?mediastin\w*|\bmediastinal (?:widening|mass|enlargement)\b"),
        _rx(r"\bmediastin\w*\b[^.;]{0,45}\b(?:normal|within normal limits|unremarkable)\b"),
        ("Mediastinal contours are normal.", "No mediastinal widening."),
        ("Widened superior mediastinum.", "Mediastinal widening measuring {n2} cm."),
        "mediastinal widening",
    ),
    _Finding(
        "hiatal hernia",
        _rx(r"\bhiatal? hernia\b"),
        None,
        ("No hiatal hernia.",),
        ("{Size} hiatal hernia.", "Retrocardiac air-fluid level consistent with a hiatal hernia."),
        "hiatal hernia",
    ),
    _Finding(
        "interstitial opacities",
        _rx(
            r"\binterstitial (?:markings|opacit(?:y|ies)|disease|lung disease|prominence|thickening|pattern|"
            r"infiltrates?)\b|\bfibro(?:sis|tic)\b|\breticul(?:ar|onodular) (?:opacit(?:y|ies)|markings|pattern)\b"
        ),
        None,
        ("No interstitial abnormality.",),
        (
            "Diffuse {deg} reticular interstitial opacities, most pronounced at the bases.",
            "{Deg} interstitial fibrosis in the lower lungs.",
        ),
        "interstitial opacities",
    ),
    _Finding(
        "hemidiaphragm elevation",
        _rx(r"\belevat(?:ed|ion)\b[^.;]{0,30}\bhemidiaphragm\b|\bhemidiaphragm\b[^.;]{0,20}\belevat(?:ed|ion)\b"),
        None,
        ("The hemidiaphragms are normal in position.",),
        ("Elevation of the {side} hemidiaphragm.", "{Deg} elevation of the {side} hemidiaphragm."),
        "{side} hemidiaphragm elevation",
    ),
    _Finding(
        "subcutaneous emphysema",
        _rx(r"\bsubcutaneous (?:emphysema|air|gas)\b"),
        None,
        ("No subcutaneous emphysema.",),
        ("Subcutaneous emphysema along the {side} chest wall.",),
        "{side} chest wall subcutaneous emphysema",
    ),
    _Finding(
        "cavitary lesion",
        _rx(r"\bcavit(?:ary|ation|y|ies)\b|\babscess\b"),
        None,
        ("No cavitary lesion.",),
        ("Thick-walled cavitary lesion in the {lobe}.",),
        "{lobe} cavitary lesion",
    ),
    _Finding(
        "pulmonary opacity",
        _rx(r"(?<!bone )(?<!soft tissue )\b(?:opacit(?:y|ies)|densit(?:y|ies))\b"),
        None,
        ("No focal pulmonary opacity.",),
        ("Ill-defined opacity in the {lobe}.", "Rounded opacity projecting over the {side} midlung."),
        "{lobe} opacity",
    ),
    _Finding(
        "aortic aneurysm",
        _rx(r"\baneurysm(?:al)?\b|\baortic dilat(?:ation|ion)\b"),
        None,
        ("No aortic aneurysm.",),
        ("Aneurysmal dilatation of the ascending aorta measuring {n2} cm.",),
        "aortic aneurysm",
    ),
)
_BY_KEY = {f.key: f for f in _FINDINGS}

# Cues that open a negation scope, and words that close it (a new clause can assert something again).
_NEG_CUE = _rx(
    r"\b(?:no|not|without|negative for|free of|clear of|absence of|absent|resolved|resolution of|rule out|"
    r"ruled out|nor|neither|removed|excluded|exclude)\b(?! (?:significant |interval |appreciable )?change)"
)
_SCOPE_BREAK = _rx(r"\b(?:but|however|although|though|except|otherwise|whereas|while|which|with|and there is)\b|[;:]")
_POST_NEG = _rx(r"^[^,;.]*?\b(?:not|no longer)\b|^[^,;.]*?\b(?:absent|resolved|excluded|cleared|removed|ruled out)\b")

# Comparison language; a sentence with any of these already carries a comparison.
_COMPARISON = _rx(
    r"\b(?:compared|comparison|prior|previous(?:ly)?|interval|since|new|newly|increas\w*|decreas\w*|improv\w*|"
    r"worsen\w*|progress\w*|unchanged|stable|again|persist\w*|redemonstrat\w*|resolv\w*|resolution|no change)\b"
)


def _collapse(text: str | None) -> str:
    return " ".join((text or "").split())


def compose_text(findings: str, impression: str) -> str:
    """The evaluation text: 'FINDINGS: ...' and 'IMPRESSION: ...' joined by a newline, empty sections left out."""
    parts = []
    if _collapse(findings):
        parts.append(f"FINDINGS: {_collapse(findings)}")
    if _collapse(impression):
        parts.append(f"IMPRESSION: {_collapse(impression)}")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------------
# Sentences. Splitting then re-joining with one space reproduces the collapsed text exactly, so untouched
# sentences come back byte-identical.
# --------------------------------------------------------------------------------------------------------------

_SPLIT = re.compile(r"(?<=[.!?])\s+")
_ENUM_ONLY = re.compile(r"^\(?\d{1,2}[.)]$")
_ENUM_PREFIX = re.compile(r"^\(?\d{1,2}[.)]\s+")


_ABBREVIATION_END = _rx(r"\b(?:a\.m|p\.m|dr|approx|vs|e\.g|i\.e)\.$")


def _sentences(text: str) -> list[str]:
    parts: list[str] = []
    for part in _SPLIT.split(text):
        # "at 9 a.m. today" is one sentence: glue a part that ends in an abbreviation to the next.
        if parts and _ABBREVIATION_END.search(parts[-1]):
            parts[-1] += " " + part
        else:
            parts.append(part)
    out: list[str] = []
    pending = ""
    for part in parts:
        if not part:
            continue
        if _ENUM_ONLY.match(part):  # "1." of a numbered impression belongs to the next sentence
            pending += part + " "
            continue
        out.append(pending + part)
        pending = ""
    if pending:
        out.append(pending.strip())
    return out


def _prefix(sentence: str) -> tuple[str, str]:
    m = _ENUM_PREFIX.match(sentence)
    return (m.group(0), sentence[m.end() :]) if m else ("", sentence)


def _numbered(sentences: list[str]) -> bool:
    return bool(sentences) and bool(_ENUM_PREFIX.match(sentences[0]))


def _renumber(sentences: list[str]) -> list[str]:
    """Keep a numbered impression numbered 1, 2, 3 ... after an item is added or removed."""
    if not any(_ENUM_PREFIX.match(s) for s in sentences):
        return sentences
    out, n = [], 0
    for s in sentences:
        pre, body = _prefix(s)
        if pre:
            n += 1
            out.append(f"{n}. {body}")
        else:
            out.append(s)
    return out


def _terminate(sentence: str) -> str:
    return sentence if sentence.rstrip().endswith((".", "!", "?")) else sentence.rstrip() + "."


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _match_case(old: str, new: str) -> str:
    if old.isupper() and len(old) > 1:
        return new.upper()
    if old[:1].isupper():
        return _cap(new)
    return new


def _insert(sentences: list[str], new: str, rng: random.Random) -> list[str]:
    """Insert a sentence at a random boundary; a numbered impression gets it as a further numbered item."""
    new = _terminate(_cap(new))
    out = list(sentences)
    if _numbered(out):
        out = [*out[:-1], _terminate(out[-1]), f"{len(out) + 1}. {new}"] if out else [new]
        return _renumber(out)
    pos = rng.randint(0, len(out))
    if pos > 0:  # the sentence before the insertion must end, or the two would run together
        out[pos - 1] = _terminate(out[pos - 1])
    out.insert(pos, new)
    return out


def _replace(sentences: list[str], idx: int, body: str) -> list[str]:
    pre, _ = _prefix(sentences[idx])
    out = list(sentences)
    out[idx] = pre + _terminate(_cap(body.strip()))
    return out


# --------------------------------------------------------------------------------------------------------------
# Mentions and negation.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mention:
    section: str
    sent: int
    start: int
    end: int
    key: str
    negated: bool


def _negated_at(sentence: str, start: int, end: int) -> bool:
    """A cue between the last clause break and ``start``, or a denial right after the mention, negates it."""
    before = sentence[:start]
    breaks = list(_SCOPE_BREAK.finditer(before))
    window = before[breaks[-1].end() :] if breaks else before
    if _NEG_CUE.search(window):
        return True
    after = sentence[end:]
    cut = _SCOPE_BREAK.search(after)
    return bool(_POST_NEG.search(after[: cut.start()] if cut else after))


def _mentions(sections: dict[str, list[str]]) -> list[_Mention]:
    out: list[_Mention] = []
    for name, sentences in sections.items():
        for i, s in enumerate(sentences):
            for f in _FINDINGS:
                for m in f.pattern.finditer(s):
                    out.append(_Mention(name, i, m.start(), m.end(), f.key, _negated_at(s, m.start(), m.end())))
                if f.normal is not None:
                    for m in f.normal.finditer(s):
                        out.append(_Mention(name, i, m.start(), m.end(), f.key, True))
    return out


def _positive_sentences(sections: dict[str, list[str]]) -> dict[tuple[str, int], set[str]]:
    """(section, sentence index) -> keys of significant findings asserted (not denied) there."""
    out: dict[tuple[str, int], set[str]] = {}
    for m in _mentions(sections):
        if not m.negated:
            out.setdefault((m.section, m.sent), set()).add(m.key)
    return out


def _token_negated(sentence: str, start: int, end: int) -> bool:
    return _negated_at(sentence, start, end)


def _fill(template: str, rng: random.Random) -> str:
    """Fill a template's slots with a random side, size, degree, lobe, rib or measurement."""
    values = {
        "side": rng.choice(("left", "right")),
        "size": rng.choice(("small", "moderate", "large")),
        "deg": rng.choice(("mild", "moderate", "severe")),
        "lobe": rng.choice(_LOBES),
        "rib": rng.choice(_RIBS),
        "n": str(rng.randint(6, 28)),
        "n2": f"{rng.randint(2, 7)}.{rng.randint(0, 9)}",
    }
    for k in list(values):
        values[k.capitalize()] = _cap(values[k])
    return template.format(**values)


# --------------------------------------------------------------------------------------------------------------
# Families. Each takes the report as sentence lists and a seeded RNG and returns an edit, or None where the
# family does not apply to this report.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Edit:
    section: str
    sentences: list[str]
    category: str
    description: str


_Family = Callable[[dict[str, list[str]], random.Random], "_Edit | None"]


def _nonempty(sections: dict[str, list[str]]) -> list[str]:
    return [name for name in SECTIONS if sections[name]]


def _false_prediction(sections: dict[str, list[str]], rng: random.Random) -> _Edit | None:
    """ReXErr false prediction / GREEN (a): assert a finding the report never mentions."""
    mentioned = {m.key for m in _mentions(sections)}
    absent = [f for f in _FINDINGS if f.key not in mentioned]
    # A sentence that only denies one finding ("No pneumothorax.", "Lungs are clear.") can be turned into a
    # positive one in place (substitute edit); otherwise a new sentence is inserted.
    mentions = _mentions(sections)
    single: list[tuple[str, int, str]] = []
    for name in _nonempty(sections):
        for i, s in enumerate(sections[name]):
            keys = {m.key for m in mentions if m.section == name and m.sent == i}
            negs = {m.key for m in mentions if m.section == name and m.sent == i and m.negated}
            if len(keys) == 1 and keys == negs and len(_prefix(s)[1].split()) <= 8:
                single.append((name, i, next(iter(keys))))
    if single and rng.random() < 0.4:
        name, i, key = rng.choice(single)
        body = _fill(rng.choice(_BY_KEY[key].present), rng)
        return _Edit(name, _replace(sections[name], i, body), "false_finding", f"denied {key} replaced by assertion")
    if not absent or not _nonempty(sections):
        return None
    f = rng.choice(absent)
    name = rng.choice(_nonempty(sections))
    return _Edit(
        name,
        _insert(sections[name], _fill(rng.choice(f.present), rng), rng),
        "false_finding",
        f"inserted absent finding: {f.key}",
    )


def _false_negation(sections: dict[str, list[str]], rng: random.Random) -> _Edit | None:
    """ReXErr false negation: a sentence asserting a finding is replaced by one denying it."""
    positive = _positive_sentences(sections)
    if not positive:
        return None
    # Prefer sentences about one finding, so a single error is introduced.
    cands = sorted(positive.items())
    single = [c for c in cands if len(c[1]) == 1]
    (name, i), keys = rng.choice(single or cands)
    key = rng.choice(sorted(keys))
    body = rng.choice(_BY_KEY[key].absent)
    return _Edit(name, _replace(sections[name], i, body), "negation_flip", f"negated present finding: {key}")


def _added_contradiction(sections: dict[str, list[str]], rng: random.Random) -> _Edit | None:
    """ReXErr added contradiction: state the opposite of another sentence, preferably in the other section."""
    mentions = sorted(_mentions(sections), key=lambda m: (m.section, m.sent, m.start, m.key))
    if not mentions:
        return None
    m = rng.choice(mentions)
    other = "impression" if m.section == "findings" else "findings"
    target = other if sections[other] else m.section
    f = _BY_KEY[m.key]
    if m.negated:
        new, what = _fill(rng.choice(f.present), rng), "asserts"
    else:
        new, what = rng.choice(f.absent), "denies"
    sents = _insert(sections[target], new, rng)
    return _Edit(target, sents, "negation_flip", f"added sentence that {what} {m.key}, contradicting {m.section}")


_SEVERITY_UP = {
    "minimal": ("extensive", "moderate"),
    "mild": ("moderate", "severe", "marked"),
    "mildly": ("markedly", "severely", "moderately"),
    "small": ("large", "moderate-sized"),
    "tiny": ("large",),
    "trace": ("moderate", "large"),
    "slight": ("marked",),
    "slightly": ("markedly",),
    "subtle": ("dense",),
    "minor": ("extensive",),
}
_SEVERITY_DOWN = {
    "moderate": ("mild", "minimal"),
    "moderately": ("mildly",),
    "moderate-sized": ("small",),
    "large": ("small", "tiny"),
    "severe": ("mild", "minimal"),
    "severely": ("mildly",),
    "marked": ("mild", "minimal"),
    "markedly": ("mildly", "slightly"),
    "extensive": ("minimal",),
    "massive": ("small",),
    "dense": ("faint",),
}
_SEVERITY = {**_SEVERITY_UP, **_SEVERITY_DOWN}
_SEVERITY_RX = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, _SEVERITY), key=len, reverse=True)) + r")\b", re.IGNORECASE
)
_NOT_SEVERITY_AFTER = _rx(r"^\s*(?:bowel|airways?|intestine|bore|caliber|amount of air)\b")


def _severity_change(sections: dict[str, list[str]], rng: random.Random) -> _Edit | None:
    """ReXErr change of severity / GREEN (d): a qualifier of an asserted finding moves across the scale."""
    cands = []
    for (name, i), _keys in sorted(_positive_sentences(sections).items()):
        s = sections[name][i]
        for m in _SEVERITY_RX.finditer(s):
            if _token_negated(s, m.start(), m.end()) or _NOT_SEVERITY_AFTER.match(s[m.end() :]):
                continue
            cands.append((name, i, m.start(), m.end()))
    if not cands:
        return None
    name, i, a, b = rng.choice(cands)
    s = sections[name][i]
    old = s[a:b]
    new = _match_case(old, rng.choice(_SEVERITY[old.lower()]))
    body = s[:a] + new + s[b:]
    sents = list(sections[name])
    sents[i] = body
    return _Edit(name, sents, "wrong_severity", f"severity qualifier changed ({old.lower()} -> {new.lower()})")


# Location axes: every token of the chosen axis in the sentence is swapped, so "right greater than left" becomes
# "left greater than right" rather than "left greater than left".
_LOCATION_AXES: tuple[dict[str, tuple[str, ...]], ...] = (
    {
        "left": ("right",),
        "right": ("left",),
        "lll": ("RLL",),
        "rll": ("LLL",),
        "lul": ("RUL",),
        "rul": ("LUL",),
        "lingula": ("right middle lobe",),
        "lingular": ("right middle lobe",),
        "rml": ("lingular",),
        "bilateral": ("left-sided", "right-sided"),
        "bilaterally": ("on the left", "on the right"),
    },
    {
        "upper": ("lower",),
        "lower": ("upper",),
        "apical": ("basilar",),
        "basilar": ("apical",),
        "basal": ("apical",),
        "bibasilar": ("biapical", "left basilar", "right basilar"),
        "bibasal": ("biapical",),
        "apex": ("base",),
        "base": ("apex",),
        "apices": ("bases",),
        "bases": ("apices",),
        "midlung": ("lung apex",),
    },
    {"anterior": ("posterior",), "posterior": ("anterior",)},
)
_LOCATION_RX = tuple(
    re.compile(r"\b(" + "|".join(sorted(map(re.escape, axis), key=len, reverse=True)) + r")\b", re.IGNORECASE)
    for axis in _LOCATION_AXES
)


def _swap_axis(sentence: str, axis: int, rng: random.Random) -> str:
    table = _LOCATION_AXES[axis]
    picks: dict[str, str] = {}

    def repl(m: re.Match[str]) -> str:
        tok = m.group(0)
        if _token_negated(sentence, m.start(), m.end()):
            return tok
        # One choice per word, so repeated words stay consistent with each other.
        picks.setdefault(tok.lower(), rng.choice(table[tok.lower()]))
        return _match_case(tok, picks[tok.lower()])

    return _LOCATION_RX[axis].sub(repl, sentence)


def _location_change(sections: dict[str, list[str]], rng: random.Random) -> _Edit | None:
    """ReXErr change of location / GREEN (c): side, level or lobe of an asserted finding is changed."""
    cands = []
    for (name, i), _keys in sorted(_positive_sentences(sections).items()):
        s = sections[name][i]
        for axis, rx in enumerate(_LOCATION_RX):
            if any(not _token_negated(s, m.start(), m.end()) for m in rx.finditer(s)):
                cands.append((name, i, axis))
    if not cands:
        return None
    name, i, axis = rng.choice(cands)
    new = _swap_axis(sections[name][i], axis, rng)
    if new == sections[name][i]:
        return None
    sents = list(sections[name])
    sents[i] = new
    return _Edit(name, sents, "wrong_location", "anatomic location of a finding changed")


_MEASURE_RX = _rx(r"\b(\d+(?:\.\d+)?)(\s?)(mm|cm|millimeters?|centimeters?)\b")
_UNIT_SWAP = {
    "mm": "cm",
    "cm": "mm",
    "millimeter": "centimeter",
    "millimeters": "centimeters",
    "centimeter": "millimeter",
    "centimeters": "millimeters",
}


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def _measurement_change(sections: dict[str, list[str]], rng: random.Random) -> _Edit | None:
    """ReXErr change of measurement: a size or distance gets a different number or unit."""
    cands = []
    for name in _nonempty(sections):
        for i, s in enumerate(sections[name]):
            for m in _MEASURE_RX.finditer(s):
                if not _token_negated(s, m.start(), m.end()):
                    cands.append((name, i, m))
    if not cands:
        return None
    name, i, m = rng.choice(cands)
    value, space, unit = float(m.group(1)), m.group(2), m.group(3)
    if rng.random() < 0.5:  # a tenfold error: the classic mm/cm slip
        new = f"{m.group(1)}{space}{_match_case(unit, _UNIT_SWAP[unit.lower()])}"
    else:  # the number itself is off by a clinically meaningful factor
        factor = rng.choice((3.0, 4.0)) if value < 5 else rng.choice((1 / 3, 0.25, 3.0))
        new_value = max(value * factor, 0.2)
        new = f"{_fmt(round(new_value, 1))}{space}{unit}"
    s = sections[name][i]
    sents = list(sections[name])
    sents[i] = s[: m.start()] + new + s[m.end() :]
    if sents[i] == s:
        return None
    return _Edit(name, sents, "wrong_severity", "measurement changed")


_DEVICES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("airway tube", _rx(r"\b(?:endotracheal|ET|tracheostomy|trach) tube\b|\bETT\b")),
    ("enteric tube", _rx(r"\b(?:nasogastric|orogastric|NG|OG|enteric|feeding|dobb?hoff) tube\b|\bNGT\b")),
    (
        "venous catheter",
        _rx(
            r"\bPICC(?: line)?\b|\bcentral (?:venous )?(?:catheter|line)\b|\b(?:internal jugular|IJ|subclavian) "
            r"(?:central )?(?:venous )?(?:catheter|line)\b|\bport-?a-?cath\b|\b(?:chest|power) port\b|"
            r"\bdialysis catheter\b|\bcatheter\b"
        ),
    ),
    ("cardiac device", _rx(r"\bpacemaker\b|\bpacer\b|\bA?ICD\b|\bdefibrillator\b|\bpacing leads?\b|\bleads\b")),
    ("chest tube", _rx(r"\b(?:chest|thoracostomy) tube\b|\bpigtail catheter\b|\bpleural catheter\b")),
)
# Correct positions and the malpositions that replace them (each a recognised, actionable complication).
_POSITION_SWAPS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (_rx(r"\b\d+(?:\.\d+)?\s?cm above the carina\b"), ("in the right mainstem bronchus", "at the thoracic inlet")),
    (_rx(r"\babove the carina\b"), ("within the right mainstem bronchus",)),
    (
        _rx(r"\b(?:in|within|over|into) the (?:gastric )?(?:stomach|fundus|body of the stomach)\b"),
        ("coiled in the esophagus", "in the distal esophagus"),
    ),
    (_rx(r"\bbelow the (?:left )?(?:hemi)?diaphragm\b"), ("above the diaphragm in the esophagus",)),
    (
        _rx(r"\b(?:the )?(?:low |lower |distal |mid |upper |proximal )?(?:SVC|superior vena cava)\b"),
        ("the right atrium", "the right internal jugular vein", "the azygos vein"),
    ),
    (_rx(r"\b(?:the )?cavo-?atrial junction\b"), ("the right ventricle", "the left brachiocephalic vein")),
    (_rx(r"\b(?:the )?right ventricle\b"), ("the right atrium", "the coronary sinus")),
)
_DEVICE_SWAPS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (_rx(r"\bpacemaker\b|\bpacer\b"), ("ICD", "defibrillator")),
    (_rx(r"\bA?ICD\b|\bdefibrillator\b"), ("pacemaker",)),
    (_rx(r"\bdual[- ]chamber\b"), ("single-chamber",)),
    (_rx(r"\bsingle[- ]chamber\b"), ("dual-chamber",)),
    (_rx(r"\bbiventricular\b"), ("single-lead",)),
    (_rx(r"\bPICC\b"), ("tunneled dialysis catheter",)),
    (_rx(r"\btracheostomy tube\b"), ("endotracheal tube",)),
)
_DEVICE_SIDE = _rx(
    r"\b(left|right)(?=(?:-sided| sided| chest wall| subclavian| internal jugular| IJ| anterior chest)\b)"
)
_NEW_DEVICES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "airway tube",
        (
            "Endotracheal tube tip in the right mainstem bronchus.",
            "Endotracheal tube terminates {n2} cm above the carina.",
        ),
    ),
    (
        "enteric tube",
        (
            "Enteric tube coiled in the esophagus.",
            "Nasogastric tube courses below the diaphragm with tip in the stomach.",
        ),
    ),
    (
        "venous catheter",
        (
            "Right internal jugular central venous catheter with tip in the right atrium.",
            "{Side}-sided PICC line with tip at the cavoatrial junction.",
        ),
    ),
    (
        "cardiac device",
        (
            "Left chest wall dual-chamber pacemaker with leads in the right atrium and right ventricle.",
            "Left chest wall ICD with a single lead in the right ventricle.",
        ),
    ),
    ("chest tube", ("{Side} chest tube with tip at the lung apex.",)),
)


def _device_change(sections: dict[str, list[str]], rng: random.Random) -> _Edit | None:
    """ReXErr change of device: a device's position or type is changed, or a device that is not there is added."""
    present: set[str] = set()
    position, kind, side = [], [], []
    for name in _nonempty(sections):
        for i, s in enumerate(sections[name]):
            hits = [
                (dev, m) for dev, rx in _DEVICES for m in rx.finditer(s) if not _token_negated(s, m.start(), m.end())
            ]
            if not hits:
                continue
            present.update(dev for dev, _ in hits)
            for rx, repl in _POSITION_SWAPS:
                for m in rx.finditer(s):
                    position.append((name, i, m.start(), m.end(), repl))
                    break
            for rx, repl in _DEVICE_SWAPS:
                for m in rx.finditer(s):
                    kind.append((name, i, m.start(), m.end(), repl))
                    break
            for m in _DEVICE_SIDE.finditer(s):
                side.append((name, i, m.start(), m.end(), ("right",) if m.group(1).lower() == "left" else ("left",)))
    modes = [
        ("position", position, "wrong_location"),
        ("type", kind, "false_finding"),
        ("side", side, "wrong_location"),
    ]
    modes = [mode for mode in modes if mode[1]]
    addable = [(dev, t) for dev, t in _NEW_DEVICES if dev not in present]
    if modes and (not addable or rng.random() < 0.85):
        label, cands, category = rng.choice(modes)
        name, i, a, b, repl = rng.choice(cands)
        s = sections[name][i]
        new = _match_case(s[a:b], rng.choice(repl)) if label != "type" else rng.choice(repl)
        sents = list(sections[name])
        sents[i] = s[:a] + new + s[b:]
        if sents[i] != s:
            return _Edit(name, sents, category, f"device {label} changed")
    if not addable or not _nonempty(sections):
        return None
    dev, templates = rng.choice(addable)
    name = rng.choice(_nonempty(sections))
    sents = _insert(sections[name], _fill(rng.choice(templates), rng), rng)
    return _Edit(name, sents, "false_finding", f"added absent device: {dev}")


_NORMAL_IMPRESSION = ("No acute cardiopulmonary abnormality.", "No acute cardiopulmonary process.")


def _omitted_finding(sections: dict[str, list[str]], rng: random.Random) -> _Edit | None:
    """GREEN (b) missing a finding / remove edit: a sentence asserting a significant finding is deleted."""
    positive = sorted(_positive_sentences(sections).items())
    if not positive:
        return None
    (name, i), keys = rng.choice(positive)
    sents = list(sections[name])
    del sents[i]
    if not sents:  # an emptied section would itself be a give-away, so it reads as a normal study instead
        sents = [rng.choice(_NORMAL_IMPRESSION)]
    return _Edit(name, _renumber(sents), "omitted_finding", f"removed sentence with {', '.join(sorted(keys))}")


_STABLE_SWAPS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (_rx(r"\b(?:is|are) (?:stable|unchanged)\b"), ("has increased", "has worsened")),
    (_rx(r"\bstable(?:[- ]appearing)?\b"), ("increasing", "worsening", "new")),
    (_rx(r"\bunchanged\b"), ("increased", "worsened")),
    (_rx(r"\bagain (?:seen|noted|demonstrated|identified)\b"), ("newly seen",)),
    (_rx(r"\bredemonstrated\b"), ("newly seen",)),
    (_rx(r"\bpersist(?:ent|ing)\b"), ("new",)),
)
_COMPARISON_SUFFIX = (
    ", increased compared to the prior study",
    ", new since the previous examination",
    ", worsened from the prior radiograph",
    ", decreased compared with the prior examination",
    ", which has progressed since the last study",
)
# Findings that can clear between two radiographs; a fracture or fibrosis does not "resolve".
_RESOLVABLE = frozenset(
    {
        "pleural effusion",
        "pneumothorax",
        "consolidation",
        "pulmonary edema",
        "atelectasis",
        "hilar adenopathy",
        "mediastinal widening",
        "subcutaneous emphysema",
        "pulmonary opacity",
    }
)
_RESOLVED = ("Interval resolution of the previously described {noun}.", "The previously seen {noun} has resolved.")


def _unsupported_comparison(sections: dict[str, list[str]], rng: random.Random) -> _Edit | None:
    """GREEN (e): the report now describes a change from a prior study that the reference does not mention."""
    positive = sorted(_positive_sentences(sections))
    suffix, stable = [], []
    for name, i in positive:
        s = sections[name][i]
        if _COMPARISON.search(s):
            for rx, repl in _STABLE_SWAPS:
                m = rx.search(s)
                if m and not _token_negated(s, m.start(), m.end()):
                    stable.append((name, i, m.start(), m.end(), repl))
                    break
        else:
            suffix.append((name, i))
    modes = [m for m in (("suffix", suffix), ("stable", stable)) if m[1]]
    if modes:
        label, cands = rng.choice(modes)
        if label == "suffix":
            name, i = rng.choice(cands)
            pre, body = _prefix(sections[name][i])
            core = body.rstrip().rstrip(".!?").rstrip()
            new = pre + core + rng.choice(_COMPARISON_SUFFIX) + "."
        else:
            name, i, a, b, repl = rng.choice(cands)
            s = sections[name][i]
            new = s[:a] + _match_case(s[a:b], rng.choice(repl)) + s[b:]
        sents = list(sections[name])
        sents[i] = new
        return _Edit(name, sents, "unsupported_comparison", f"comparison to a prior study added ({label})")
    # A report with no asserted finding: claim that a prior finding has resolved, which tells the reader there
    # was disease on a previous study the reference never mentions.
    if not _nonempty(sections):
        return None
    mentioned_positive = {m.key for m in _mentions(sections) if not m.negated}
    options = [f for f in _FINDINGS if f.key not in mentioned_positive and f.key in _RESOLVABLE]
    f = rng.choice(options)
    noun = _fill(f.noun, rng)
    name = rng.choice(_nonempty(sections))
    sents = _insert(sections[name], rng.choice(_RESOLVED).format(noun=noun), rng)
    return _Edit(name, sents, "unsupported_comparison", f"resolution of a prior {f.key} claimed")


_PRIOR = (
    r"(?:the\s+)?(?:prior|previous|last|recent|most recent)"
    r"(?:\s+(?:studies|study|examination|exam|radiographs?|films?|chest x-ray))?\b"
)
# (pattern, replacement): each removes how a finding changed since the prior study but keeps the finding itself.
_CHANGE_PHRASES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        _rx(
            r",?\s*(?:which (?:is|has) |that (?:is|has) )?(?:slightly |mildly |markedly |significantly )?"
            r"(?:increased|decreased|improved|worsened|enlarged|progressed|smaller|larger|new|more prominent|"
            r"less prominent)(?: in size| in extent)?\s+(?:when compared (?:to|with)|compared (?:to|with)|since|"
            r"from|relative to|than (?:on|in))\s+" + _PRIOR
        ),
        " ",
    ),
    (_rx(r",?\s*(?:compared (?:to|with)|since|relative to)\s+" + _PRIOR), " "),
    (
        _rx(
            r"\bthere (?:has|have) been (?:an? )?interval (?:increase|decrease|improvement|worsening|development|"
            r"enlargement|progression) (?:in|of) (?:the )?"
        ),
        "there is ",
    ),
    (
        _rx(
            r"\binterval (?:increase|decrease|improvement|worsening|development|enlargement|progression|clearing|"
            r"change) (?:in size )?(?:in|of) (?:the )?"
        ),
        " ",
    ),
    (
        _rx(
            r"\b(?:new|newly|increasing|decreasing|improving|improved|worsening|worsened|enlarging|progressive|"
            r"developing|resolving)\s+(?=[a-z])(?!(?:compared|since|from|than|to|in|on|and|or|with)\b)"
        ),
        " ",
    ),
)
# A bare "compared to prior" after "stable"/"unchanged" reports no change, which GREEN (f) does not cover.
_NO_CHANGE_BEFORE = _rx(r"\b(?:stable|unchanged|similar|no (?:significant |interval )?change|change)\W*$")
_EMPTY_CLAUSE = _rx(r"^(?:this|it|these|that|there)\s+(?:is|are|was|were|has|have)(?:\s+been)?\W*$")
_RECOMMENDATION = _rx(r"\b(?:recommend\w*|follow-?up|suggest\w*|advised?|correlat\w*)\b")
_CHANGE_WORD = _rx(r"\b(?:increas\w*|decreas\w*|improv\w*|worsen\w*|progress\w*|resol\w*|interval|new|newly)\b")


def _tidy(text: str) -> str:
    text = re.sub(r"\s+([,.;])", r"\1", " ".join(text.split()))
    text = re.sub(r",\s*\.", ".", text)
    return text.strip(" ,")


def _omitted_comparison(sections: dict[str, list[str]], rng: random.Random) -> _Edit | None:
    """GREEN (f): a statement of change from the prior study is removed (clause, qualifier or whole sentence)."""
    mentions = _mentions(sections)
    cands = []
    for name in _nonempty(sections):
        for i, s in enumerate(sections[name]):
            pre, body = _prefix(s)
            # Every change expression of the sentence goes, so no "increased ..." is left behind to give it away.
            new_body = body
            for rx, repl in _CHANGE_PHRASES:

                def drop(m: re.Match[str], repl: str = repl) -> str:
                    text = m.string
                    if _negated_at(text, m.start(), max(m.end(), m.start() + 1)):
                        return m.group(0)
                    if _NO_CHANGE_BEFORE.search(text[: m.start()]):
                        return m.group(0)
                    return repl

                new_body = rx.sub(drop, new_body)
            new_body = _tidy(new_body)
            found = bool(new_body) and new_body != _tidy(body)
            if found and (len(new_body.split()) < 3 or _EMPTY_CLAUSE.match(new_body)):
                # "This is increased since the previous study." would leave "This is.": drop the sentence instead.
                found = False
            elif found:
                cands.append((name, i, "clause", pre + _terminate(_cap(new_body))))
            # A sentence that only reports change ("Interval improvement.") goes as a whole.
            has_finding = any(m.section == name and m.sent == i for m in mentions)
            if (
                not found
                and _CHANGE_WORD.search(body)
                and not _NEG_CUE.search(body)
                and not _RECOMMENDATION.search(body)
                and not has_finding
                and len(body.split()) <= 12
                and len(sections[name]) > 1
            ):
                cands.append((name, i, "sentence", ""))
    if not cands:
        return None
    name, i, label, new = rng.choice(cands)
    sents = list(sections[name])
    if label == "sentence":
        del sents[i]
        sents = _renumber(sents)
    else:
        sents[i] = new
    return _Edit(name, sents, "omitted_comparison", f"comparison with the prior study removed ({label})")


_FAMILY_FUNCS: dict[str, _Family] = {
    "false_prediction": _false_prediction,
    "false_negation": _false_negation,
    "added_contradiction": _added_contradiction,
    "severity_change": _severity_change,
    "location_change": _location_change,
    "measurement_change": _measurement_change,
    "device_change": _device_change,
    "omitted_finding": _omitted_finding,
    "unsupported_comparison": _unsupported_comparison,
    "omitted_comparison": _omitted_comparison,
}
assert tuple(_FAMILY_FUNCS) == FAMILIES  # keeps the public tuple and the dispatch table in step


def inject_independent(
    findings: str, impression: str, *, seed: int, family: str | None = None
) -> InjectedReport | None:
    """Inject one clinically significant error into the findings or the impression.

    With ``family`` None the families are tried in a seeded order and the first that applies is used. Returns None
    when the requested family (or every family) does not apply. Same inputs and seed give the same output; both
    returned sections are whitespace-collapsed.
    """
    if family is not None and family not in FAMILIES:
        raise InputError(f"independent injection: unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    sections = {"findings": _sentences(_collapse(findings)), "impression": _sentences(_collapse(impression))}
    original = {name: " ".join(s) for name, s in sections.items()}
    if not any(original.values()):
        return None
    order = [family] if family is not None else list(FAMILIES)
    if family is None:
        random.Random(f"{INJECTOR}:order:{seed}:{original['findings']}|{original['impression']}").shuffle(order)
    for fam in order:
        # Each family draws from its own stream, so adding a family never changes another family's edits.
        rng = random.Random(f"{INJECTOR}:{fam}:{seed}:{original['findings']}|{original['impression']}")
        edit = _FAMILY_FUNCS[fam]({k: list(v) for k, v in sections.items()}, rng)
        if edit is None:
            continue
        new_text = " ".join(edit.sentences)
        if new_text == original[edit.section] or not new_text.strip():
            continue
        out = dict(original)
        out[edit.section] = new_text
        return InjectedReport(out["findings"], out["impression"], fam, edit.category, edit.section, edit.description)
    return None


def _row_seed(seed: int, uid: object) -> int:
    return int(hashlib.sha256(f"{INJECTOR}:{seed}:{uid}".encode()).hexdigest()[:12], 16)


def _check_error_fraction(error_fraction: float) -> None:
    """A number within [0, 1] (``bool`` is refused although it is an ``int``: True would mean 100 %)."""
    if isinstance(error_fraction, bool) or not isinstance(error_fraction, (int, float)):
        raise InputError(f"independent set: error_fraction must be a number, got {type(error_fraction).__name__}")
    if not 0.0 <= float(error_fraction) <= 1.0:
        raise InputError(f"independent set: error_fraction must be within [0, 1], got {error_fraction}")


def _checked_rows(rows: Iterable[Mapping]) -> list[Mapping]:
    """The rows as a list, each with a uid (unique) and a split: seeds and the output's ids are made of them."""
    items: list[Mapping] = []
    seen: set[str] = set()
    for n, row in enumerate(rows):
        uid = row.get("uid")
        if uid is None or str(uid).strip() == "":
            raise InputError(f"independent set: row {n} has no uid")
        if str(uid) in seen:
            raise InputError(f"independent set: duplicate uid at row {n}")
        seen.add(str(uid))
        if not row.get("split"):
            raise InputError(f"independent set: row {n} has no split")
        items.append(row)
    return items


def _studies_by_split(items: list[Mapping]) -> tuple[dict[str, list[int]], Counter[str]]:
    """The indexes of the studies with some text, by split, and how many of each split were empty."""
    skipped: Counter[str] = Counter()
    by_split: dict[str, list[int]] = {}
    for n, row in enumerate(items):
        if not (_collapse(row.get("findings")) or _collapse(row.get("impression"))):
            skipped[str(row["split"])] += 1
            continue
        by_split.setdefault(str(row["split"]), []).append(n)
    return by_split, skipped


def _inject_split(
    items: list[Mapping], idxs: list[int], split: str, *, seed: int, error_fraction: float
) -> tuple[dict[int, InjectedReport], int]:
    """Error ``error_fraction`` of one split's studies, each with the least-used family so far that applies.

    Studies are visited in a seeded order until the target is met, so a study no family applies to is passed
    over and the next one is errored instead. Returns the injected reports by row index and how many studies
    were passed over.
    """
    rng = random.Random(f"{INJECTOR}:build:{seed}:{split}")
    order = list(idxs)
    rng.shuffle(order)
    target = round(float(error_fraction) * len(idxs))
    injected: dict[int, InjectedReport] = {}
    uninjectable = 0
    used: Counter[str] = Counter()
    for n in order:
        if sum(used.values()) >= target:
            break
        row = items[n]
        # Least-used first keeps the families even; the random tie-break keeps FAMILIES' order from deciding.
        fams = sorted(FAMILIES, key=lambda f: (used[f], rng.random()))
        for fam in fams:
            rep = inject_independent(
                str(row.get("findings") or ""),
                str(row.get("impression") or ""),
                seed=_row_seed(seed, row["uid"]),
                family=fam,
            )
            if rep is not None:
                injected[n] = rep
                used[fam] += 1
                break
        else:
            uninjectable += 1
    return injected, uninjectable


def _output_rows(items: list[Mapping], injected: dict[int, InjectedReport]) -> list[dict]:
    """One row per non-empty study in input order: its text (with the injected error, if any) and labels."""
    out: list[dict] = []
    for n, row in enumerate(items):
        findings, impression = _collapse(row.get("findings")), _collapse(row.get("impression"))
        if not (findings or impression):
            continue
        rep = injected.get(n)
        if rep is not None:
            findings, impression = rep.findings, rep.impression
        out.append(
            {
                "id": f"indep-{row['uid']}",
                "uid": row["uid"],
                "split": str(row["split"]),
                "text": compose_text(findings, impression),
                "has_error": rep is not None,
                "family": rep.family if rep else None,
                "category": rep.category if rep else None,
                "section": rep.section if rep else None,
                "injector": INJECTOR,
            }
        )
    return out


def _set_summary(
    out: list[dict],
    *,
    seed: int,
    error_fraction: float,
    splits: set[str],
    skipped: Counter[str],
    uninjectable: Counter[str],
) -> dict:
    """Counts over the built set, overall and per split, family, category and section."""

    def count(key: str) -> dict[str, int]:
        return dict(sorted(Counter(r[key] for r in out if r["has_error"]).items()))

    per_split: dict[str, dict[str, int]] = {}
    for split in sorted(splits):
        rs = [r for r in out if r["split"] == split]
        per_split[split] = {
            "rows": len(rs),
            "errored": sum(r["has_error"] for r in rs),
            "clean": sum(not r["has_error"] for r in rs),
            "skipped_empty": skipped[split],
            "uninjectable": uninjectable[split],
        }
    return {
        "injector": INJECTOR,
        "seed": seed,
        "error_fraction": float(error_fraction),
        "rows": len(out),
        "errored": sum(r["has_error"] for r in out),
        "clean": sum(not r["has_error"] for r in out),
        "skipped_empty": sum(skipped.values()),
        "uninjectable": sum(uninjectable.values()),
        "per_split": per_split,
        "per_family": count("family"),
        "per_category": count("category"),
        "per_section": count("section"),
    }


def build_independent_set(
    rows: Iterable[Mapping], *, seed: int = 0, error_fraction: float = 0.5
) -> tuple[list[dict], dict]:
    """Each study once, clean or with one independent error; about ``error_fraction`` of each split errored.

    Families are spread evenly: each errored study gets the least-used family (so far, in its split) that applies
    to it. A study that no family applies to stays clean and the next one is errored instead, so the split still
    reaches its target. Rows are returned in input order; studies with both sections empty are skipped and counted.
    """
    _check_error_fraction(error_fraction)
    items = _checked_rows(rows)
    by_split, skipped = _studies_by_split(items)
    injected: dict[int, InjectedReport] = {}
    uninjectable: Counter[str] = Counter()
    for split, idxs in sorted(by_split.items()):
        # Splits are filled one at a time, each from its own seeded stream: one split never shifts another.
        in_split, uninjectable[split] = _inject_split(items, idxs, split, seed=seed, error_fraction=error_fraction)
        injected.update(in_split)
    out = _output_rows(items, injected)
    summary = _set_summary(
        out,
        seed=seed,
        error_fraction=error_fraction,
        splits=set(by_split) | set(skipped),
        skipped=skipped,
        uninjectable=uninjectable,
    )
    return out, summary
