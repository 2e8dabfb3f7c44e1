"""The error check against the image: what a report asserts, label by label, against the finding classifier.

The report is read by the CheXpert labeler (negation-aware; a hedged mention such as "cannot exclude" is a band,
neither a yes nor a no, and is not checked). Each of the classifier's *validated* findings is compared with the
report's statement of it: a finding the report asserts that the image reading does not support, one the report
denies or omits that the image shows, and a report called normal on an image read as abnormal (or the reverse).
The evidence is the distance, in log-odds, of the classifier's calibrated probability from its threshold.

One calibrated error probability comes from a logistic fusion (:class:`ImageCheckFusion`) of that evidence with the
text check's own probability when the model has one; its weights are fitted out of fold over train radiographs
paired with train reports that agree or disagree with them (``radlvlm embedded image-check``). What the check
cannot see is listed in the answer: side, size, devices, comparisons with prior studies, and findings outside the
validated labels (or validated ones the classifier is never precise enough to call: they have no threshold).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radlvlm.errors import InputError
from radlvlm.reports.labeler import Label, LabeledReport, label_report
from radlvlm.reports.unsupported import unsupported_sentences
from radlvlm.tasks.image_findings import CLASSIFIER_TO_REPORT

__all__ = [
    "FEATURES",
    "IMAGE_CHECK_FILE",
    "ImageCheckFusion",
    "ImageComparison",
    "LabelComparison",
    "compare_report",
]

IMAGE_CHECK_FILE = "image_check.json"
FEATURES = ("text", "normal", "asserted", "denied", "omitted")
# What a comparison with a finding list never checks, in the words of the answer.
ALWAYS_UNCHECKED = (
    "laterality (which side)",
    "location within the chest (lobe, zone)",
    "size and severity",
    "lines, tubes and devices",
    "comparison with prior studies",
)
_KIND_WORDS = {
    "side": "laterality (which side)",
    "location": "location within the chest (lobe, zone)",
    "size": "size and severity",
    "device": "lines, tubes and devices",
    "comparison": "comparison with prior studies",
    "incidental": "incidental findings outside the checked labels",
    "advice": "recommendations and hedged statements",
}
_EPS = 1e-4


def _logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


@dataclass(frozen=True)
class LabelComparison:
    """One finding: what the report says of it, what the image reading says, and whether they agree."""

    observation: str  # CheXpert name ("No Finding" for the normal-vs-abnormal comparison)
    classifier_label: str
    report: str  # positive | negative | uncertain | not mentioned
    probability: float
    threshold: float
    evidence: float  # log-odds of the probability over the threshold: > 0 the image shows it
    agrees: bool | None  # None: hedged in the report, not checked

    def as_dict(self) -> dict[str, Any]:
        return {
            "observation": self.observation,
            "classifier_label": self.classifier_label,
            "report": self.report,
            "image_probability": round(self.probability, 4),
            "threshold": round(self.threshold, 4),
            "agrees": self.agrees,
        }


@dataclass(frozen=True)
class ImageComparison:
    """The label-by-label comparison, its evidence features and what was not checked."""

    labels: tuple[LabelComparison, ...]
    features: dict[str, float]
    not_checked: tuple[str, ...]

    @property
    def disagreements(self) -> list[LabelComparison]:
        return [c for c in self.labels if c.agrees is False]

    def as_dict(self) -> dict[str, Any]:
        return {
            "compared": [c.as_dict() for c in self.labels],
            "disagreements": [c.observation for c in self.disagreements],
            "not_checked": list(self.not_checked),
        }


def _status(labeled: LabeledReport, observation: str) -> str:
    value = labeled.labels.get(observation, Label.BLANK)
    return "not mentioned" if value is Label.BLANK else value.value


def compare_report(report: str, findings: Any) -> ImageComparison:
    """Compare a report with a classifier's reading (:class:`radlvlm.model.findings.ImageFindings`)."""
    labeled = label_report(report)
    comparisons: list[LabelComparison] = []
    by_observation: dict[str, list[Any]] = {}
    for finding in findings.findings:
        observation = CLASSIFIER_TO_REPORT.get(finding.label)
        if observation is not None and finding.validated and finding.threshold is not None:
            by_observation.setdefault(observation, []).append(finding)
    asserted = denied = omitted = 0.0
    for observation, candidates in by_observation.items():
        # Two classifier labels can state one observation (mass, nodule → lung lesion): the stronger reading.
        finding = max(candidates, key=lambda f: _logit(f.probability) - _logit(f.threshold))
        evidence = _logit(finding.probability) - _logit(finding.threshold)
        status = _status(labeled, observation)
        if status == "uncertain":
            agrees = None
        elif status == "positive":
            agrees = evidence >= 0
            asserted = max(asserted, -evidence)
        elif status == "negative":
            agrees = evidence < 0
            denied = max(denied, evidence)
        else:
            agrees = evidence < 0
            omitted = max(omitted, evidence)
        comparisons.append(
            LabelComparison(
                observation, finding.label, status, finding.probability, finding.threshold, evidence, agrees
            )
        )
    abnormal = findings.abnormal
    normal = 0.0
    if abnormal.threshold is not None:
        evidence = _logit(abnormal.probability) - _logit(abnormal.threshold)
        called_normal = labeled.labels.get("No Finding") is Label.POSITIVE
        normal = evidence if called_normal else -evidence
        comparisons.insert(
            0,
            LabelComparison(
                "No Finding",
                abnormal.label,
                "positive" if called_normal else "negative",
                abnormal.probability,
                abnormal.threshold,
                evidence,
                (evidence < 0) == called_normal,
            ),
        )
    unchecked = list(ALWAYS_UNCHECKED)
    for _, kinds in unsupported_sentences(report):
        for kind in sorted(kinds):
            words = _KIND_WORDS.get(kind)
            if words and words not in unchecked:
                unchecked.append(words)
    checked = set(by_observation) | {"No Finding"}
    for name, value in labeled.labels.items():
        if value is not Label.BLANK and name not in checked:
            unchecked.append(f"{name.lower()} (not a finding the classifier calls with validated accuracy)")
    for comparison in comparisons:
        if comparison.agrees is None:
            unchecked.append(f"{comparison.observation.lower()} (hedged in the report)")
    features = {"normal": normal, "asserted": asserted, "denied": denied, "omitted": omitted}
    return ImageComparison(tuple(comparisons), features, tuple(unchecked))


@dataclass(frozen=True)
class ImageCheckFusion:
    """P(error) = sigmoid(bias + Σ weight · feature) over :data:`FEATURES` (``text`` is the log-odds of the text
    check's calibrated probability; a fusion fitted without it has no ``text`` weight), verdict at ``threshold``.

    ``text_model`` names the model whose text probability the weights were fitted with: with another model (or one
    that cannot check text) the image-only weights (``image_only``) are used.
    """

    weights: dict[str, float]
    bias: float
    threshold: float
    text_model: str | None = None
    image_only: ImageCheckFusion | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(FEATURES)
        if unknown:
            raise InputError(f"image-check fusion: unknown feature(s) {sorted(unknown)}")
        if not 0 < self.threshold < 1:
            raise InputError("image-check fusion: the threshold is a probability in (0, 1)")

    def for_text_model(self, model_id: str | None, has_text: bool) -> ImageCheckFusion:
        if has_text and "text" in self.weights and model_id == self.text_model:
            return self
        if self.image_only is not None:
            return self.image_only
        if "text" not in self.weights:
            return self
        raise InputError("image-check fusion: no image-only weights for a model without a text score")

    def probability(self, comparison: ImageComparison, text_probability: float | None) -> float:
        values = dict(comparison.features)
        if text_probability is not None:
            values["text"] = _logit(text_probability)
        z = self.bias + sum(weight * values.get(name, 0.0) for name, weight in self.weights.items())
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "bias": self.bias,
            "threshold": self.threshold,
            "text_model": self.text_model,
            "image_only": None if self.image_only is None else self.image_only.to_dict(),
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageCheckFusion:
        try:
            return cls(
                weights={str(k): float(v) for k, v in data["weights"].items()},
                bias=float(data["bias"]),
                threshold=float(data["threshold"]),
                text_model=data.get("text_model"),
                image_only=None if not data.get("image_only") else cls.from_dict(data["image_only"]),
                fitted_on=dict(data.get("fitted_on") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputError(f"image-check fusion: malformed ({type(e).__name__})") from e

    def save(self, folder: Path) -> Path:
        path = folder / IMAGE_CHECK_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> ImageCheckFusion | None:
        path = folder / IMAGE_CHECK_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not JSON ({e.msg})") from e
