"""Reports that agree or disagree with an image's finding labels: what makes "checked against the image" mean
something.

A text-only check compares a report with itself. These reports are internally consistent (findings and
impression say the same), so only the image can tell whether they are right: for an image with labels (NIH
ChestX-ray14's 14 findings), :func:`image_check_reports` writes a faithful report and one with a single error
relative to the labels — a finding the image does not have (added), one it has left out (removed), or one it
has explicitly denied (negated). Training uses them for the ``check_image`` task; evaluation measures checks
with and without the image on held-out images (the labels are NLP-mined from the original reports: about 90%
right, so a perfect checker would not reach 100%).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["IMAGE_ERROR_KINDS", "ImageCheckReport", "image_check_reports", "labels_report"]

IMAGE_ERROR_KINDS = ("added", "removed", "negated")
NO_FINDING = "No Finding"

# Wordings per NIH label: a findings sentence, an impression phrase, a denial. Several findings sentences each,
# so a checker cannot learn one string per label.
_WORDING: dict[str, tuple[tuple[str, ...], str, str]] = {
    "Atelectasis": (
        ("There is basilar atelectasis.", "Linear opacities consistent with atelectasis."),
        "Atelectasis.",
        "No atelectasis.",
    ),
    "Cardiomegaly": (
        ("The heart is enlarged.", "The cardiac silhouette is enlarged."),
        "Cardiomegaly.",
        "Heart size is normal.",
    ),
    "Effusion": (
        ("There is a pleural effusion.", "Blunting of the costophrenic angle from pleural effusion."),
        "Pleural effusion.",
        "No pleural effusion.",
    ),
    "Infiltration": (
        ("There are patchy pulmonary infiltrates.", "Hazy airspace opacities are present."),
        "Pulmonary infiltrate.",
        "No pulmonary infiltrate.",
    ),
    "Mass": (("There is a pulmonary mass.", "A rounded mass is seen in the lung."), "Lung mass.", "No lung mass."),
    "Nodule": (
        ("There is a pulmonary nodule.", "A small nodular opacity is seen."),
        "Pulmonary nodule.",
        "No pulmonary nodule.",
    ),
    "Pneumonia": (
        ("Airspace opacity concerning for pneumonia.", "Focal opacity compatible with pneumonia."),
        "Pneumonia.",
        "No evidence of pneumonia.",
    ),
    "Pneumothorax": (
        ("There is a pneumothorax.", "A visceral pleural line is seen with absent lung markings beyond it."),
        "Pneumothorax.",
        "No pneumothorax.",
    ),
    "Consolidation": (
        ("There is a focal consolidation.", "Dense airspace consolidation is present."),
        "Consolidation.",
        "No focal consolidation.",
    ),
    "Edema": (
        ("There is pulmonary vascular congestion with interstitial edema.", "Diffuse interstitial edema."),
        "Pulmonary edema.",
        "No pulmonary edema.",
    ),
    "Emphysema": (
        ("The lungs are hyperinflated with emphysematous change.", "Hyperlucent, hyperexpanded lungs."),
        "Emphysema.",
        "No emphysema.",
    ),
    "Fibrosis": (
        ("There are reticular opacities consistent with fibrosis.", "Coarse interstitial markings from fibrosis."),
        "Pulmonary fibrosis.",
        "No pulmonary fibrosis.",
    ),
    "Pleural_Thickening": (
        ("There is pleural thickening.", "Apical pleural thickening is seen."),
        "Pleural thickening.",
        "No pleural thickening.",
    ),
    "Hernia": (
        ("A hiatal hernia is seen behind the heart.", "Retrocardiac hiatal hernia."),
        "Hiatal hernia.",
        "No hiatal hernia.",
    ),
}
_NORMAL_FINDINGS = (
    "The lungs are clear. Heart size is normal. No pleural effusion or pneumothorax.",
    "Heart and mediastinum are within normal limits. The lungs are clear without focal consolidation.",
    "No focal airspace disease. No pleural effusion or pneumothorax. Normal cardiomediastinal silhouette.",
)
_NORMAL_IMPRESSION = ("No acute cardiopulmonary abnormality.", "Normal chest radiograph.", "No active disease.")
# Findings that all show as lung opacity: denying one while reporting another reads as a contradiction in the
# text itself ("pneumonia ... no infiltrate"), which would let a text-only check see what only the image should.
_OPACITIES = frozenset({"Atelectasis", "Infiltration", "Pneumonia", "Consolidation", "Edema", "Mass", "Nodule"})
# Findings a wrong report most plausibly adds: the common ones, so an added error is a realistic slip.
_ADDABLE = ("Effusion", "Pneumonia", "Pneumothorax", "Cardiomegaly", "Edema", "Atelectasis", "Consolidation")


@dataclass(frozen=True)
class ImageCheckReport:
    """A report for an image: ``has_error`` when it disagrees with the labels; ``kind`` and ``label`` say how."""

    text: str
    has_error: bool
    kind: str | None
    label: str | None


def labels_report(labels: Sequence[str], rng: random.Random, *, denied: Sequence[str] = ()) -> str:
    """A consistent report of ``labels`` (NIH names; empty or ``No Finding`` for a normal study), with
    ``denied`` findings stated as absent in both sections."""
    present = [label for label in labels if label in _WORDING]
    if present:
        findings = " ".join(rng.choice(_WORDING[label][0]) for label in present)
        impression = " ".join(_WORDING[label][1] for label in present)
    else:
        findings, impression = rng.choice(_NORMAL_FINDINGS), rng.choice(_NORMAL_IMPRESSION)
    if denied:
        negations = " ".join(_WORDING[label][2] for label in denied)
        findings = f"{findings} {negations}"
        impression = f"{impression} {negations}" if present else negations
    return f"FINDINGS: {findings}\nIMPRESSION: {impression}"


def image_check_reports(labels: Sequence[str], *, seed: int) -> tuple[ImageCheckReport, ImageCheckReport]:
    """A faithful report of the image's ``labels`` and one with a single error relative to them (seeded).

    Both reports deny the same zero to two findings the image does not have ("No pneumothorax."), as real
    reports do: otherwise a denial sentence would mark the negated error by its wording alone, and a text-only
    check could find it without looking at the image.
    """
    rng = random.Random(f"radlvlm-image-check:{seed}")
    present = [label for label in labels if label in _WORDING and label != NO_FINDING]
    deniable = [
        label for label in present if not (label in _OPACITIES and any(o in _OPACITIES for o in present if o != label))
    ]
    kinds = ["added"] + (["removed"] if present else []) + (["negated"] if deniable else [])
    kind = rng.choice(kinds)
    if kind == "added":
        label = rng.choice([name for name in _ADDABLE if name not in present])
    else:
        label = rng.choice(present if kind == "removed" else deniable)
    # True denials: absent findings that no present one overlaps with (denying an opacity beside pneumonia would
    # read as a contradiction), and never the finding the error is about.
    absent = [
        name
        for name in _ADDABLE
        if name not in present and name != label and not (name in _OPACITIES and any(o in _OPACITIES for o in present))
    ]
    extra = rng.sample(absent, k=min(len(absent), rng.choice((0, 1, 1, 2)))) if present else []
    faithful_rng, wrong_rng = random.Random(rng.random()), random.Random(rng.random())
    faithful = ImageCheckReport(labels_report(present, faithful_rng, denied=extra), False, None, None)
    if kind == "added":
        text = labels_report([*present, label], wrong_rng, denied=extra)
    elif kind == "removed":
        text = labels_report([name for name in present if name != label], wrong_rng, denied=extra)
    else:  # the false denial takes the place of a true one, so both reports deny as many findings
        text = labels_report([name for name in present if name != label], wrong_rng, denied=[*extra[1:], label])
    return faithful, ImageCheckReport(text, True, kind, label)
