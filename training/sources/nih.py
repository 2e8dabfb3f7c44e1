"""NIH ChestX-ray14: radiographs with the 14 finding labels (reports are the labels, said as a sentence)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radlvlm.errors import InputError
from radlvlm.model.findings import NIH_LABELS

if TYPE_CHECKING:
    pass

from radlvlm.training.sources.base import (
    _DRAFT,
    _IMAGE_CHECK,
    Drop,
    ImageRef,
    Item,
    Record,
    Source,
    _check_keys,
    _check_split,
    _read_rows,
    _require_file,
    _take,
)
from radlvlm.training.sources.covid import _LATERAL_VIEWS

# Report wording of each NIH label, for label-templated drafting targets.
NIH_PHRASES: dict[str, str] = {
    "Atelectasis": "Atelectasis.",
    "Cardiomegaly": "Cardiomegaly.",
    "Effusion": "Pleural effusion.",
    "Infiltration": "Pulmonary infiltrate.",
    "Mass": "Lung mass.",
    "Nodule": "Pulmonary nodule.",
    "Pneumonia": "Pneumonia.",
    "Pneumothorax": "Pneumothorax.",
    "Consolidation": "Consolidation.",
    "Edema": "Pulmonary edema.",
    "Emphysema": "Emphysema.",
    "Fibrosis": "Pulmonary fibrosis.",
    "Pleural_Thickening": "Pleural thickening.",
    "Hernia": "Hiatal hernia.",
}
NO_FINDING_PHRASE = "No acute cardiopulmonary abnormality."
_NIH_KEYS = {
    "file",
    "image_index",
    "labels",
    "no_finding",
    "view",
    "age",
    "sex",
    "patient_id",
    "follow_up",
    "original_size",
    "split",
    "source_repo",
    "source_commit",
    "source_path",
    "source_sha256",
    "source_size",
    "source_mode",
    "stored_size",
    "also_in",
}
_NIH_REQUIRED = {"file", "image_index", "labels", "patient_id", "split"}


def nih_impression(labels: Iterable[str]) -> str:
    """The label-templated impression: one short sentence per NIH label, or the normal phrase."""
    found = [NIH_PHRASES[label] for label in NIH_LABELS if label in set(labels)]
    return " ".join(found) if found else NO_FINDING_PHRASE


class NIHSource(Source):
    """NIH ChestX-ray14 images with their 14 finding labels (NLP-mined from reports, >90% accurate).

    What it yields: one record per image (all frontal), split by patient as in the manifest, carrying the
    labels for :class:`~radlvlm.training.pseudo_pairs.LabelMatchedPairs`. With ``templated=True`` (default)
    the record also serves drafting with a **label-templated** target (``IMPRESSION: Cardiomegaly. Pleural
    effusion.`` or ``IMPRESSION: No acute cardiopulmonary abnormality.``): it teaches which findings are
    present, not where, how large, or in a radiologist's words. Most images are 64x64 thumbnails.
    Missing files are dropped ("image missing"), lateral views "lateral only", unknown labels raise.

    Args:
        manifest (`str | Path`): ``manifest.jsonl`` (or ``.csv``); image paths are relative to its folder.
        limit (`int | None`, defaults to `None`): keep the first ``limit`` rows of each split.
        templated (`bool`, defaults to `True`): records serve drafting with label-templated targets.
        name (`str`, defaults to `"nih_cxr14"`).
    """

    def __init__(
        self, manifest: str | Path, *, limit: int | None = None, templated: bool = True, name: str = "nih_cxr14"
    ) -> None:
        self.manifest = Path(manifest)
        if limit is not None and limit < 1:
            raise InputError(f"limit must be a positive number of rows per split, got {limit}")
        self.limit = limit
        self.templated = templated
        self.name = name
        self._rows: list[tuple[int, dict[str, Any]]] | None = None

    def validate(self) -> None:
        _require_file(self.manifest, "NIH ChestX-ray14 manifest")
        rows, per_split = [], {}
        known = set(NIH_LABELS) | {"No Finding"}
        for line_no, row in _read_rows(self.manifest, ("labels",)):
            _check_keys(self.manifest, line_no, row, _NIH_KEYS, _NIH_REQUIRED)
            split = _check_split(self.manifest, line_no, row["split"])
            labels = row["labels"]
            if not isinstance(labels, list) or not labels or any(label not in known for label in labels):
                raise InputError(f"{self.manifest}: line {line_no}: labels must be a non-empty list of NIH findings")
            if "No Finding" in labels and len(labels) > 1:
                raise InputError(f"{self.manifest}: line {line_no}: 'No Finding' together with findings")
            if not _take(per_split, split, self.limit):
                continue
            rows.append((line_no, row))
        self._rows = rows

    def records(self) -> Iterator[Item]:
        if self._rows is None:
            self.validate()
        assert self._rows is not None
        root = self.manifest.parent
        for _, row in self._rows:
            split = str(row["split"])
            if str(row.get("view") or "").strip().upper() in _LATERAL_VIEWS:
                yield Drop(self.name, "lateral only", split)
                continue
            path = root / str(row["file"])
            if not path.is_file():
                yield Drop(self.name, "image missing", split)
                continue
            labels = tuple(label for label in row["labels"] if label != "No Finding")
            stem = Path(str(row["image_index"])).stem
            yield Record(
                study_id=f"nih-{stem}",
                patient_id=f"nih-p{row['patient_id']}",
                split=split,
                source=self.name,
                impression=nih_impression(labels),
                image=ImageRef(str(path), f"nih_cxr14/{row['file']}"),
                tasks=(_DRAFT if self.templated else frozenset()) | _IMAGE_CHECK,
                labels=labels or ("No Finding",),
            )
