"""Statements a draft written from a finding list cannot support: side, location, size, devices, comparisons,
incidentals, views it was not given.

A writer that is given only *which* findings the image shows (:mod:`radlvlm.tasks.image_findings`) has no
evidence for which side or where in the chest they are, how large, what hardware is in the chest, how the study
compares with a prior, or findings outside its label set. The same rules clean the training targets of such a
writer (so it never learns to invent them) and count them in drafts (evaluation): one definition for both.

The word lists are ours, not a library's: no maintained package tags these report properties for chest X-ray
text (the labeler's own comparison and change cues, from its rule tables, are reused).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from radlvlm.reports.labeler import Label, label_report
from radlvlm.reports.normalize import normalize_text, split_sentences

__all__ = ["LATERAL_VIEW", "UNSUPPORTED_KINDS", "supported_sentences", "unsupported_kinds", "unsupported_sentences"]

UNSUPPORTED_KINDS = ("side", "location", "size", "device", "comparison", "incidental", "advice", "redacted", "view")

_SIDE = re.compile(
    r"\b(right|left|bilateral(?:ly)?|unilateral|bibasilar|bibasal|biapical|dextro\w*|levo\w*)\b", re.IGNORECASE
)
# Where in the chest: counted only in a sentence that asserts a finding ("lingular airspace disease"), not in a
# normal statement about anatomy ("The costophrenic angles are sharp").
_LOCATION = re.compile(
    r"\b(lingula\w*|lobes?|lobar|upper|lower|middle|apex|apices|apical|bases?|basilar|basal|perihilar|hilar|hila|"
    r"hilum|infrahilar|suprahilar|retrocardiac|paratracheal|subpleural|peripheral|costophrenic|cardiophrenic|"
    r"zones?|segment\w*|subsegment\w*)\b",
    re.IGNORECASE,
)
_SIZE = re.compile(
    r"(\b\d+(?:\.\d+)?\s*(?:cm|mm|centimeters?|millimeters?)\b)|"
    r"\b(small|large|moderate(?:ly)?|mild(?:ly)?|minimal(?:ly)?|trace|tiny|massive|marked(?:ly)?|severe(?:ly)?|"
    r"subtle|slight(?:ly)?|extensive|minor|borderline|upper limits? of normal)\b",
    re.IGNORECASE,
)
_DEVICE = re.compile(
    r"\b(tubes?|catheters?|pacemakers?|pacers?|defibrillators?|aicd|icd|picc|ports?|port-a-cath|stents?|"
    r"sternotomy|wires?|clips?|hardware|prosthe\w*|valves?|drains?|leads?|electrodes?|endotracheal|nasogastric|"
    r"enteric|central venous|lines?|staples?|sutures?|plates?|screws?|fixation|cabg|surgical|post-?operative|"
    r"s/p|status post|replacement)\b",
    re.IGNORECASE,
)
_COMPARISON = re.compile(
    r"\b(stable|unchanged|interval\w*|previous(?:ly)?|prior|again|compared|comparison|since|improv\w*|"
    r"worse\w*|worsening|increas\w*|decreas\w*|new|newly|persistent|persists|resolv\w*|redemonstrat\w*|"
    r"re-demonstrat\w*|no change|similar|progress\w*|recurren\w*|remain\w*|chronic|old|healed|known)\b",
    re.IGNORECASE,
)
_INCIDENTAL = re.compile(
    r"\b(granulom\w*|calcifi\w*|degenerative|spondylo\w*|scoliosis|osteophyt\w*|kyphosis|kyphotic|hernia|"
    r"emphysema\w*|hyperinflat\w*|hyperexpan\w*|copd|scar\w*|fibros\w*|fibrotic|tortuous|tortuosity|ectatic|"
    r"osteopeni\w*|deformit\w*|fractures?|atherosclero\w*|aneurysm\w*|nipple|artifact|cholecystectomy|"
    r"thoracotomy|mastectomy|lobectomy|pneumonectomy|azygos|cervical rib|pectus|bullae?|bullous|cyst\w*|"
    r"eventration|low lung volumes?|hypoinflat\w*|poor inspiration|"
    r"elevat\w* (?:right |left )?hemidiaphragm|flattened|flattening|thickened|interstitial markings|"
    r"peribronchial|cuffing|bronchial wall|bronchitis|bronchiectasis|airway disease)\b",
    re.IGNORECASE,
)
# Advice, hedges and communication: a finding list gives no grounds to recommend, speculate ("cannot exclude",
# "suspicious for") or say who was told.
_ADVICE = re.compile(
    r"\b(recommend\w*|follow-?up|correlat\w*|discuss\w*|notif\w*|consider\w*|may|might|could|likely|possibl\w*|"
    r"probabl\w*|suggest\w*|concern\w*|differential|secondary to|question\w*|ct|computed tomography|"
    r"further evaluation|if clinically|exclud\w*|difficult|suggestive|suspicious|questionabl\w*|versus|vs)\b",
    re.IGNORECASE,
)
# Views a draft of one frontal radiograph was not given: a lateral (or decubitus, oblique) film, or "PA and lateral
# views were obtained". Anatomy ("left lateral chest wall", "lateral right 8th rib") is not a view.
LATERAL_VIEW = re.compile(
    r"\b(?:lateral\s+(?:views?|projections?|images?|radiographs?|films?|exam\w*|examinations?)|"
    r"lateral\s+chest\s+(?:exam\w*|radiographs?|films?|x-?rays?)|(?:pa|ap|frontal)\s+and\s+lateral|"
    r"on\s+(?:the\s+)?lateral|decubitus|oblique\s+(?:views?|radiographs?)|swimmers?)\b",
    re.IGNORECASE,
)
_NEGATION = re.compile(r"^\W*(no|not|without|negative for|there is no|there are no|absent)\b", re.IGNORECASE)
_REDACTED = re.compile(r"\bxxxx\b", re.IGNORECASE)
# Observations a finding list can carry are the writer's; these others are always unsupported when asserted.
_OUTSIDE_LABELS = ("Enlarged Cardiomediastinum", "Fracture", "Support Devices")


def unsupported_kinds(sentence: str) -> frozenset[str]:
    """Which unsupported kinds of statement one sentence makes (empty when a finding list supports all of it).

    A pure negation ("No pleural effusion or large pneumothorax.": every labeler mention negative, or a sentence
    opening with no/without) asserts nothing about side, size, devices, incidentals or advice; it still counts when it
    compares ("No change from prior.") or carries a redaction.
    """
    text = normalize_text(sentence)
    labeled = label_report(text)
    kinds = set()
    if _COMPARISON.search(text) or labeled.comparison_sentences or labeled.change_sentences:
        kinds.add("comparison")
    if _REDACTED.search(text):
        kinds.add("redacted")
    if LATERAL_VIEW.search(text):
        kinds.add("view")
    statuses = {m.status for m in labeled.mentions}
    negation = bool(_NEGATION.match(text)) or (bool(statuses) and statuses == {Label.NEGATIVE})
    if negation:
        return frozenset(kinds)
    if _ADVICE.search(text):
        kinds.add("advice")
    if _SIDE.search(text):
        kinds.add("side")
    asserts = any(m.status in (Label.POSITIVE, Label.UNCERTAIN) and m.label != "No Finding" for m in labeled.mentions)
    if asserts and _LOCATION.search(text):
        kinds.add("location")
    if _SIZE.search(text):
        kinds.add("size")
    if _DEVICE.search(text):
        kinds.add("device")
    if _INCIDENTAL.search(text) or any(
        labeled.labels[name] in (Label.POSITIVE, Label.UNCERTAIN) for name in _OUTSIDE_LABELS
    ):
        kinds.add("incidental")
    return frozenset(kinds)


def unsupported_sentences(text: str) -> list[tuple[str, frozenset[str]]]:
    """The sentences of ``text`` that make an unsupported statement, each with its kinds."""
    out = []
    for sentence in split_sentences(normalize_text(text)) if text.strip() else []:
        kinds = unsupported_kinds(sentence)
        if kinds:
            out.append((sentence, kinds))
    return out


def supported_sentences(sentences: Iterable[str]) -> list[str]:
    """The sentences that make no unsupported statement."""
    return [s for s in sentences if not unsupported_kinds(s)]
