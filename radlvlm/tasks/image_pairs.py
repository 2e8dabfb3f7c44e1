"""Radiographs paired with reports that agree or disagree with them: the data an image check is fitted and
judged on, when no report was written for the radiograph itself (public sets hold images and reports apart).

Each report is used twice, once with a radiograph it agrees with and once with one it contradicts, so the text
alone cannot tell the two apart; only the image can. A report and a radiograph *agree* when the report's positive
observations (the labeler, :mod:`radlvlm.reports.labeler`) equal the radiograph's labels mapped to the same
observations (:data:`radlvlm.tasks.image_findings.CLASSIFIER_TO_REPORT`), and both are normal or both abnormal.
Contradictions are of two kinds: ``normal_vs_abnormal`` (a normal report on an abnormal radiograph, or the
reverse) and ``single_finding`` (both abnormal, the observations differ by exactly one: one finding stated that
the radiograph lacks, or one it shows left out).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from radlvlm.reports.labeler import label_report
from radlvlm.tasks.image_findings import CLASSIFIER_TO_REPORT, WRITER_LABELS

__all__ = ["ImagePair", "PairImage", "PairReport", "image_report_pairs", "pair_image", "pair_report"]


@dataclass(frozen=True)
class PairImage:
    """A radiograph: its id, its patient (for CIs by patient), its observations and whether it is abnormal."""

    id: str
    patient: str
    observations: frozenset[str]
    abnormal: bool


@dataclass(frozen=True)
class PairReport:
    id: str
    text: str
    observations: frozenset[str]
    abnormal: bool


@dataclass(frozen=True)
class ImagePair:
    image: PairImage
    report: PairReport
    has_error: bool
    kind: str  # agree | normal_vs_abnormal | single_finding


def pair_image(image_id: str, patient: str, nih_labels: Iterable[str]) -> PairImage | None:
    """A radiograph from its NIH labels; None when it has a finding no observation states (emphysema, fibrosis,
    hernia): neither a normal nor a matching report could be chosen for it."""
    labels = [label for label in nih_labels if label != "No Finding"]
    if any(label not in CLASSIFIER_TO_REPORT for label in labels):
        return None
    observations = frozenset(CLASSIFIER_TO_REPORT[label] for label in labels)
    return PairImage(image_id, patient, observations, bool(labels))


def pair_report(report_id: str, text: str, mesh_problems: Sequence[str] | None = None) -> PairReport | None:
    """A report from the labeler's reading; None when it states an observation outside the writer labels, hedges
    one, or when IU's own MeSH problems disagree with the labeler on whether it is normal."""
    labeled = label_report(text)
    positive = labeled.positive() - {"No Finding"}
    uncertain = labeled.positive(uncertain_as_positive=True) - labeled.positive()
    if positive - set(WRITER_LABELS) or uncertain & set(WRITER_LABELS):
        return None
    abnormal = bool(positive)
    if mesh_problems is not None:
        mesh_normal = [p.strip().lower() for p in mesh_problems] == ["normal"]
        if mesh_normal == abnormal:
            return None
    return PairReport(report_id, text, frozenset(positive), abnormal)


def image_report_pairs(images: Sequence[PairImage], reports: Sequence[PairReport], *, seed: int) -> list[ImagePair]:
    """For each report with both partners available: (agreeing radiograph, has_error False) and (contradicting
    radiograph, has_error True). Abnormal reports contradict by a single finding where a radiograph allows it
    (else by a normal radiograph), alternately with normal radiographs; normal reports by an abnormal one."""
    rng = random.Random(seed)
    by_key: dict[tuple[bool, frozenset[str]], list[PairImage]] = defaultdict(list)
    for image in images:
        by_key[(image.abnormal, image.observations)].append(image)
    normal = by_key.get((False, frozenset()), [])
    abnormal = [image for image in images if image.abnormal]
    pairs: list[ImagePair] = []
    for index, report in enumerate(reports):
        agreeing = by_key.get((report.abnormal, report.observations), [])
        if not agreeing:
            continue
        if report.abnormal:
            near = [
                image for image in abnormal if len(image.observations ^ report.observations) == 1 and image.observations
            ]
            use_single = bool(near) and (index % 2 == 0 or not normal)
            candidates, kind = (near, "single_finding") if use_single else (normal, "normal_vs_abnormal")
        else:
            candidates, kind = abnormal, "normal_vs_abnormal"
        if not candidates:
            continue
        pairs.append(ImagePair(rng.choice(agreeing), report, False, "agree"))
        pairs.append(ImagePair(rng.choice(candidates), report, True, kind))
    return pairs
