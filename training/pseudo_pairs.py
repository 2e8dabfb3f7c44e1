"""Label-matched pseudo-pairs: NIH ChestX-ray14 radiographs paired with IU-Xray reports of the same findings.

The shared data has real radiographs with finding labels (NIH) and real reports without their images (IU).
Neither alone gives image-report pairs. A pseudo-pair joins an NIH image with an IU report whose labels,
read by radlvlm's CheXpert labeler, are the same set of findings as the image's NIH labels.

What a model **can** learn from such pairs: label-level associations between what an image shows and how
reports word it (cardiomegaly → "the heart is enlarged"; a normal film → "the lungs are clear, no effusion or
pneumothorax"), the report's structure and vocabulary, conditioned on the image.

What it **cannot** learn: anything specific to the patient beyond the label set. The report was written for
another patient's film, so its laterality, size, location, severity, devices, comparisons with priors and
incidental findings are unrelated to the paired image, and the model is rewarded for stating them anyway
(a source of hallucination). Matches are only as good as the NIH labels (NLP-mined, about 90% accurate) and
the rule-based labeler. Say so wherever a model trained on them is described.

Matching rules:

* NIH labels map to CheXpert observations (:data:`NIH_TO_CHEXPERT`); Emphysema, Fibrosis and Hernia have no
  CheXpert counterpart and are matched through the IU report's MeSH ``problems`` (:data:`NIH_TO_MESH`).
* A child of Lung Opacity (Atelectasis, Consolidation, Edema, Pneumonia, Lung Lesion) absorbs it, on both
  sides, so "Atelectasis" meets a report labelled {Atelectasis, Lung Opacity}.
* A report with an uncertain observation, or a positive one that NIH cannot label (Support Devices,
  Fracture, Enlarged Cardiomediastinum), is never used: pairing it would assert an unlabelled finding.
* "No Finding" images pair with reports whose key is empty (the labeler's normal reports).
* Each image gets up to ``k`` reports of the **same split name** (train images with train reports only, so
  no report text crosses splits), chosen by a seeded hash: the same seed gives the same pairs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import Any

from radlvlm.errors import InputError
from radlvlm.reports.labeler import Label, label_report
from radlvlm.tasks.image_findings import CLASSIFIER_TO_REPORT
from radlvlm.training.sources import IUXraySource, NIHSource, Note, Record, Source
from radlvlm.training.sources.base import _text

__all__ = ["NIH_TO_CHEXPERT", "NIH_TO_MESH", "LabelMatchedPairs", "nih_key", "report_key"]

# One mapping for serving and training (radlvlm.tasks.image_findings).
NIH_TO_CHEXPERT: dict[str, str] = CLASSIFIER_TO_REPORT
# NIH findings with no CheXpert observation, matched through IU's MeSH problem terms instead.
NIH_TO_MESH: dict[str, tuple[str, ...]] = {
    "Emphysema": ("Emphysema", "Pulmonary Emphysema"),
    "Fibrosis": ("Pulmonary Fibrosis",),
    "Hernia": ("Hernia, Hiatal",),
}
_MATCHED = frozenset(NIH_TO_CHEXPERT.values()) | frozenset(NIH_TO_MESH)
_OPACITY_CHILDREN = frozenset({"Atelectasis", "Consolidation", "Edema", "Pneumonia", "Lung Lesion"})
# Observations the NIH labels say nothing about: a report asserting one is not paired.
_UNLABELLED = frozenset({"Support Devices", "Fracture", "Enlarged Cardiomediastinum"})


def _collapse(key: set[str]) -> frozenset[str]:
    if key & _OPACITY_CHILDREN:
        key = key - {"Lung Opacity"}
    return frozenset(key)


def nih_key(labels: tuple[str, ...] | list[str]) -> frozenset[str]:
    """The match key of an NIH image's labels (empty for "No Finding")."""
    key: set[str] = set()
    for label in labels:
        if label == "No Finding":
            continue
        if label in NIH_TO_CHEXPERT:
            key.add(NIH_TO_CHEXPERT[label])
        elif label in NIH_TO_MESH:
            key.add(label)
        else:
            raise InputError(f"unknown NIH label {label!r}")
    return _collapse(key)


def report_key(findings: str, impression: str, problems: list[str] | tuple[str, ...] = ()) -> frozenset[str] | None:
    """The match key of an IU report, or None when the report cannot be paired (uncertain or unlabelled)."""
    labelled = label_report(f"{findings} {impression}".strip())
    if any(value is Label.UNCERTAIN for value in labelled.labels.values()):
        return None
    positive = labelled.positive() - {"No Finding"}
    if positive & _UNLABELLED:
        return None
    key = set(positive & _MATCHED)
    mesh = {str(p).strip() for p in problems}
    for name, terms in NIH_TO_MESH.items():
        if mesh & set(terms):
            key.add(name)
    return _collapse(key)


def _rank(*parts: object) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:16], 16)


class LabelMatchedPairs(Source):
    """NIH images paired with label-matched IU reports (see the module docstring for what this can teach).

    Yields one drafting record per (image, report) pair: the NIH image, the IU report's findings and
    impression, the NIH image's patient id (splits stay by patient) and ``extra`` naming both sources.
    Images with no matching report are noted ("no matching report"); reports that cannot be paired are not
    counted as drops (they still serve error-checking through the IU source).

    Args:
        nih (`NIHSource`): the labelled images.
        reports (`IUXraySource`): the reports.
        k (`int`, defaults to `2`): reports per image (fewer when fewer match).
        seed (`int`, defaults to `0`): the choice of reports.
        name (`str`, defaults to `"pseudo_pair"`).
    """

    def __init__(
        self, nih: NIHSource, reports: IUXraySource, *, k: int = 2, seed: int = 0, name: str = "pseudo_pair"
    ) -> None:
        if k < 1:
            raise InputError(f"k must be at least 1 report per image, got {k}")
        self.nih, self.reports, self.k, self.seed, self.name = nih, reports, k, seed, name

    def validate(self) -> None:
        self.nih.validate()
        self.reports.validate()

    @cached_property
    def report_pool(self) -> dict[tuple[str, frozenset[str]], list[Mapping[str, Any]]]:
        """IU reports by (split, key); reports that cannot be paired are left out."""
        pool: dict[tuple[str, frozenset[str]], list[Mapping[str, Any]]] = {}
        for row in self.reports.rows():
            findings, impression = str(row.get("findings") or ""), str(row.get("impression") or "")
            if not findings.strip():  # a drafting target needs findings
                continue
            key = report_key(findings, impression, list(row.get("problems") or []))
            if key is not None:
                pool.setdefault((str(row["split"]), key), []).append(row)
        return pool

    def records(self) -> Iterator[Record | Note]:
        for item in self.nih.records():
            if not isinstance(item, Record):
                continue  # the NIH source's own drops are counted under its own name
            key = nih_key(item.labels)
            candidates = self.report_pool.get((item.split, key), [])
            if not candidates:
                yield Note(self.name, "no matching report", item.split)
                continue
            chosen = sorted(candidates, key=lambda row: _rank(self.seed, item.study_id, row["uid"]))[: self.k]
            for row in chosen:
                uid = str(row["uid"])
                yield Record(
                    study_id=f"{item.study_id}+iu-{uid}",
                    patient_id=item.patient_id,
                    split=item.split,
                    source=self.name,
                    findings=_text(row.get("findings")),
                    impression=_text(row.get("impression")),
                    image=item.image,
                    tasks=frozenset({"draft"}),
                    labels=item.labels,
                    extra={"image_study": item.study_id, "report_study": f"iu-{uid}", "key": "|".join(sorted(key))},
                )
