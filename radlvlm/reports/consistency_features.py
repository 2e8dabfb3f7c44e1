"""What a learned text check reads from a report: per observation and per section, what the labeler found
(stated, denied, hedged; side; severity), what the rule checker flags, measurements, and whether sentences lean
on a prior study the COMPARISON section may deny.

The rule checker (:mod:`radlvlm.reports.consistency`) fixes by hand which disagreements between findings and
impression count; these features give a model fitted on injected errors (:mod:`radlvlm.tasks.consistency_model`)
the same readings to weigh together, so it can learn, say, that a new large effusion in the findings under a
normal impression is an error while a granuloma left out of the impression is not. They are built from the
labeler, never from words, so a model fitted on one injector's phrasing does not learn that phrasing.

Devices are left out on purpose: IU-Xray reports rarely mention one, so a model fitted on injected device errors
learns that any tube or line is an error (it flagged 70% of the correct IU validation reports naming a device,
11% of the rest), which would flag most correct inpatient reports. Whether a device is there is a question for
the image, not the text. For the same reason sizes are read only from sentences that name no device: a tube's
"4 cm above the carina" would otherwise teach the trees the same prior through the measurements.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from radlvlm.reports.consistency import (
    RULE_KINDS,
    ConsistencyFinding,
    check_consistency,
    comparison_without_prior,
    says_no_prior,
)
from radlvlm.reports.labeler import CHEXPERT_14, Label, LabeledReport, label_report
from radlvlm.reports.normalize import normalize_text, split_sentences
from radlvlm.reports.sections import parse_report

__all__ = ["CONSISTENCY_FEATURE_NAMES", "SAME_FINDING_GROUPS", "consistency_features"]

_OBSERVATIONS = tuple(name for name in CHEXPERT_14 if name not in ("No Finding", "Support Devices"))
# Observations a report may name for one finding ("right lower lobe consolidation" in the findings, "right lower
# lobe pneumonia" in the impression): read together, the sections agree.
SAME_FINDING_GROUPS: dict[str, frozenset[str]] = {
    "lung_opacity": frozenset({"Lung Opacity", "Consolidation", "Pneumonia", "Atelectasis", "Edema", "Lung Lesion"}),
    "heart_size": frozenset({"Cardiomegaly", "Enlarged Cardiomediastinum"}),
}
_SIDES = ("left", "right", "bilateral")
# A size as radiologists write it ("4 mm", "2.1 x 1.9 cm"): each number before the unit's first use counts.
_MEASUREMENT = re.compile(r"(\d+(?:\.\d+)?)\s*(cm|mm)\b")


def _section_names(prefix: str) -> list[str]:
    names = []
    for name in _OBSERVATIONS:
        names += [f"{prefix}{name}:{what}" for what in ("positive", "negative", "uncertain", *_SIDES)]
        names += [f"{prefix}{name}:severity_max", f"{prefix}{name}:severity_min"]
    names += [f"{prefix}{what}" for what in ("normal", "positives", "comparisons", "changes", "measurements")]
    return [*names, f"{prefix}largest_cm", f"{prefix}words"]


def _cross_names() -> list[str]:
    kinds = ("stated_and_denied", "side_differs", "severity_gap")
    groups = [f"{group}:{what}" for group in SAME_FINDING_GROUPS for what in ("findings", "impression", "sides_differ")]
    return [f"{name}:{what}" for name in _OBSERVATIONS for what in kinds] + groups


CONSISTENCY_FEATURE_NAMES: tuple[str, ...] = (
    *(f"rule:{kind}" for kind in RULE_KINDS),
    *_section_names("findings:"),
    *_section_names("impression:"),
    "has_findings",
    "has_impression",
    "comparison:says_none",
    "comparison:empty",
    "comparison:presupposed_without_prior",
    *_cross_names(),
)


def _section(text: str, prefix: str) -> dict[str, float]:
    read: LabeledReport | None = label_report(text) if text.strip() else None
    out: dict[str, float] = {}
    for name in _OBSERVATIONS:
        status = read.labels[name] if read else Label.BLANK
        out[f"{prefix}{name}:positive"] = float(status is Label.POSITIVE)
        out[f"{prefix}{name}:negative"] = float(status is Label.NEGATIVE)
        out[f"{prefix}{name}:uncertain"] = float(status is Label.UNCERTAIN)
        stated = [m for m in (read.mentions if read else ()) if m.label == name and m.status is Label.POSITIVE]
        sides = frozenset().union(*(m.laterality for m in stated))
        for side in _SIDES:
            out[f"{prefix}{name}:{side}"] = float(side in sides)
        grades = [m.severity for m in stated if m.severity]
        out[f"{prefix}{name}:severity_max"] = float(max(grades)) if grades else 0.0
        out[f"{prefix}{name}:severity_min"] = float(min(grades)) if grades else 0.0
    out[f"{prefix}normal"] = float(read is not None and read.labels["No Finding"] is Label.POSITIVE)
    out[f"{prefix}positives"] = float(len(read.positive() & set(_OBSERVATIONS))) if read else 0.0
    out[f"{prefix}comparisons"] = float(len(read.comparison_sentences)) if read else 0.0
    out[f"{prefix}changes"] = float(len(read.change_sentences)) if read else 0.0
    device_sentences = {m.sentence for m in (read.mentions if read else ()) if m.label == "Support Devices"}
    sentences = split_sentences(normalize_text(text, lowercase=True)) if read else []
    sizes_cm = [
        float(v) * (1.0 if unit == "cm" else 0.1)
        for k, sentence in enumerate(sentences)
        if k not in device_sentences
        for v, unit in _MEASUREMENT.findall(sentence)
    ]
    out[f"{prefix}measurements"] = float(len(sizes_cm))
    out[f"{prefix}largest_cm"] = max(sizes_cm, default=0.0)
    out[f"{prefix}words"] = float(len(text.split()))
    return out


def consistency_features(report: str, rule_findings: Sequence[ConsistencyFinding] | None = None) -> dict[str, float]:
    """The features of one report (FINDINGS, IMPRESSION and COMPARISON as :func:`parse_report` reads them), keyed by
    :data:`CONSISTENCY_FEATURE_NAMES` in that order; ``rule_findings`` are the rule checker's on ``report`` when
    the caller has them already (a served check reads the report once)."""
    sections = parse_report(report)
    out: dict[str, float] = dict.fromkeys((f"rule:{kind}" for kind in RULE_KINDS), 0.0)
    for found in check_consistency(report) if rule_findings is None else rule_findings:
        out[f"rule:{found['kind']}"] += float(found["weight"])
    out.update(_section(sections.findings, "findings:"))
    out.update(_section(sections.impression, "impression:"))
    out["has_findings"] = float(bool(sections.findings.strip()))
    out["has_impression"] = float(bool(sections.impression.strip()))
    out["comparison:says_none"] = float(says_no_prior(sections.comparison))
    out["comparison:empty"] = float(not sections.comparison.strip())
    out["comparison:presupposed_without_prior"] = float(comparison_without_prior(sections))
    for name in _OBSERVATIONS:
        f, i = f"findings:{name}:", f"impression:{name}:"
        out[f"{name}:stated_and_denied"] = float(
            (out[f + "positive"] and out[i + "negative"]) or (out[f + "negative"] and out[i + "positive"])
        )
        both = out[f + "positive"] and out[i + "positive"]
        out[f"{name}:side_differs"] = float(both and any(out[f + s] != out[i + s] for s in _SIDES))
        graded = out[f + "severity_max"] and out[i + "severity_max"]
        out[f"{name}:severity_gap"] = abs(out[f + "severity_max"] - out[i + "severity_max"]) if graded else 0.0
    for group, members in SAME_FINDING_GROUPS.items():
        sides = {}
        for section in ("findings", "impression"):
            stated = [n for n in members if out[f"{section}:{n}:positive"] or out[f"{section}:{n}:uncertain"]]
            out[f"{group}:{section}"] = float(bool(stated))
            sides[section] = {s for n in stated for s in _SIDES if out[f"{section}:{n}:{s}"]}
        out[f"{group}:sides_differ"] = float(
            bool(sides["findings"] and sides["impression"]) and sides["findings"] != sides["impression"]
        )
    return {name: out[name] for name in CONSISTENCY_FEATURE_NAMES}
