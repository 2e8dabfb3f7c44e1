"""The COVID-19 image data collection: radiographs with clinical notes (frontal views only)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radlvlm.errors import InputError
from radlvlm.reports import split_sentences

if TYPE_CHECKING:
    pass

from radlvlm.training.sources.base import (
    _DRAFT,
    Drop,
    ImageRef,
    Item,
    Note,
    Record,
    Source,
    _check_keys,
    _check_split,
    _read_rows,
    _require_file,
    _take,
    _text,
)

_COVID_KEYS = {
    "image_file",
    "source_path",
    "metadata_row",
    "split",
    "patientid",
    "offset",
    "sex",
    "age",
    "finding",
    "view",
    "date",
    "location",
    "doi",
    "url",
    "license",
    "clinical_notes",
    "other_notes",
    "orig_width",
    "orig_height",
    "orig_mode",
    "width",
    "height",
    "source_sha256",
}
_COVID_REQUIRED = {"image_file", "split", "patientid", "view", "clinical_notes"}
_FRONTAL_VIEWS = {"PA", "AP", "AP SUPINE", "AP ERECT", "AP SEMI ERECT"}
_LATERAL_VIEWS = {"L", "LL", "LATERAL", "RL"}
# A sentence of the notes describes the radiograph when it names the modality or a radiographic finding
# and does not talk about CT (many notes describe the CT instead).
_RADIOGRAPH_WORDS = re.compile(
    r"\b(x-?ray|radiograph\w*|cxr|chest film|opacit\w*|consolidation\w*|infiltrat\w*|effusion\w*|"
    r"ground[- ]glass|atelecta\w*|pneumothora\w*|cardiomegal\w*|edema|oedema|reticula\w*|nodul\w*|"
    r"air[- ]?space|interstitial|lungs? (?:are|were) clear|hilar|perihilar)\b",
    re.IGNORECASE,
)
_NOTES_PREFIX = re.compile(r"^(?:imaging notes|findings)\s*:\s*", re.IGNORECASE)
_CT_WORDS = re.compile(r"\b(ct|computed tomography|hrct|tomograph\w*)\b", re.IGNORECASE)


def covid_findings(notes: str) -> str:
    """The sentences of a COVID-collection clinical note that describe a chest radiograph (may be empty)."""
    text = _text(notes)
    if not text:
        return ""
    kept = [s for s in split_sentences(text) if _RADIOGRAPH_WORDS.search(s) and not _CT_WORDS.search(s)]
    return " ".join(_NOTES_PREFIX.sub("", sentence) for sentence in kept)


class CovidSource(Source):
    """The COVID-19 image data collection (Cohen et al.): chest radiographs with published clinical notes.

    What it yields: one drafting record per image (rows listing an image a second time are dropped,
    "duplicate image"), split by patient as in the manifest. The target is ``FINDINGS:`` followed by the
    sentences of ``clinical_notes`` that describe a radiograph (they name an X-ray or a radiographic finding
    and do not mention CT); rows with no such sentence are dropped ("no radiographic description"), empty
    notes "empty report", lateral views "lateral only", missing files "image missing". Blank or ``?``
    views are kept (noted "view unknown").

    What this can teach: coarse image-to-description associations on real radiographs from many sites
    (bilateral opacities, consolidation, clear lungs), in case-report wording. What it cannot: the notes
    are written by case authors, not radiologists reading this image; they mix in history and outcomes,
    often describe another day's film, have no impression section and no negatives, and the set is tiny
    (about 300 usable images, mostly COVID-19 pneumonia). Use it as a small out-of-domain supplement.

    Args:
        manifest (`str | Path`): ``manifest.jsonl`` or ``manifest.csv``; image paths are relative to its folder.
        limit (`int | None`, defaults to `None`): keep the first ``limit`` rows of each split.
        name (`str`, defaults to `"covid"`).
    """

    def __init__(self, manifest: str | Path, *, limit: int | None = None, name: str = "covid") -> None:
        self.manifest = Path(manifest)
        if limit is not None and limit < 1:
            raise InputError(f"limit must be a positive number of rows per split, got {limit}")
        self.limit = limit
        self.name = name
        self._rows: list[tuple[int, dict[str, Any]]] | None = None

    def validate(self) -> None:
        _require_file(self.manifest, "COVID-19 collection manifest")
        rows, per_split = [], {}
        for line_no, row in _read_rows(self.manifest):
            _check_keys(self.manifest, line_no, row, _COVID_KEYS, _COVID_REQUIRED)
            split = _check_split(self.manifest, line_no, row["split"])
            if not str(row["patientid"]).strip():
                raise InputError(f"{self.manifest}: line {line_no}: empty patientid")
            if not _take(per_split, split, self.limit):
                continue
            rows.append((line_no, row))
        self._rows = rows

    def records(self) -> Iterator[Item]:
        if self._rows is None:
            self.validate()
        assert self._rows is not None
        seen: set[str] = set()
        root = self.manifest.parent
        for line_no, row in self._rows:
            split, image_file = str(row["split"]), str(row["image_file"])
            if image_file in seen:
                yield Drop(self.name, "duplicate image", split)
                continue
            seen.add(image_file)
            view = str(row.get("view") or "").strip().upper()
            if view in _LATERAL_VIEWS:
                yield Drop(self.name, "lateral only", split)
                continue
            path = root / image_file
            if not path.is_file():
                yield Drop(self.name, "image missing", split)
                continue
            if not _text(row.get("clinical_notes")):
                yield Drop(self.name, "empty report", split)
                continue
            findings = covid_findings(str(row["clinical_notes"]))
            if not findings:
                yield Drop(self.name, "no radiographic description", split)
                continue
            if view not in _FRONTAL_VIEWS:
                yield Note(self.name, "view unknown", split)
            yield Record(
                study_id=f"covid-{row.get('metadata_row', line_no)}",
                patient_id=f"covid-p{str(row['patientid']).strip()}",
                split=split,
                source=self.name,
                findings=findings,
                image=ImageRef(str(path), f"covid_chestxray/{image_file}"),
                tasks=_DRAFT,
                extra={"finding": str(row.get("finding") or "")},
            )
