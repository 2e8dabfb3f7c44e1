"""The typed study that every stage after ingestion works on.

A ``Study`` holds series, a ``Series`` holds images, an ``Image`` holds display-ready pixels plus the
acquisition facts the model and the audit trail need. By design it carries no PHI: no names, patient IDs,
dates, accession numbers or free-text descriptions. UIDs are kept because PACS write-back and audit key on
them; ``radlvlm.safety`` remaps them when a study leaves the hospital.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from radlvlm.errors import InputError

if TYPE_CHECKING:
    import torch


class View(str, Enum):
    """Projection of a radiograph. PA and AP are frontal; LATERAL and LL are lateral."""

    PA = "PA"
    AP = "AP"
    LATERAL = "LATERAL"
    LL = "LL"
    UNKNOWN = "UNKNOWN"

    @property
    def is_frontal(self) -> bool:
        return self in (View.PA, View.AP)

    @property
    def is_lateral(self) -> bool:
        return self in (View.LATERAL, View.LL)


class Laterality(str, Enum):
    """Image laterality, DICOM (0020,0062)/(0020,0060) defined terms."""

    RIGHT = "R"
    LEFT = "L"
    BOTH = "B"
    UNPAIRED = "U"


@dataclass(frozen=True)
class Image:
    """One frame, ready for display and for the model's transforms; validated at construction (an image that
    breaks these rules is refused with an ``InputError`` where it is made, not deep in a transform).

    Attributes:
        array (numpy.ndarray): float32, shape (rows, columns), in [0, 1] after the Modality LUT, the VOI LUT
            and MONOCHROME1 inversion; higher is brighter, as a radiologist would see it. ``pixels`` is the
            same memory as a torch tensor (imaging itself never imports torch: tools that only read DICOM
            start in well under a second).
        sop_instance_uid (str): the image's SOP Instance UID (for a PNG/JPEG, a UID derived from its bytes).
        view (View): projection, and ``view_source`` says which attribute gave it ("none" when nothing did;
            at ingest "request" when the caller stated it, "default" when a PNG/JPEG was taken as PA).
        pixel_spacing_mm (tuple[float, float] | None): (row, column) spacing; None when absent or zero.
        source (str): the file (or ``archive.zip!member``) the image came from, for error reports.
    """

    array: np.ndarray
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    source: str
    modality: str | None = None
    sop_class_uid: str | None = None
    body_part: str | None = None
    view: View = View.UNKNOWN
    view_source: str = "none"
    laterality: Laterality | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    photometric_interpretation: str = "MONOCHROME2"
    bits_stored: int = 8
    transfer_syntax_uid: str | None = None
    instance_number: int | None = None
    number_of_frames: int = 1
    frame_index: int = 0

    def __post_init__(self) -> None:
        """Refuse an image nothing downstream could use, naming the attribute (never a value of the header)."""
        array = self.array
        if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.ndim != 2 or 0 in array.shape:
            shape = getattr(array, "shape", None)
            raise InputError(f"{self.source}: pixels must be a non-empty 2-D float32 array, got {shape}")
        low, high = float(array.min()), float(array.max())
        if not (low >= 0.0 and high <= 1.0):  # also false for NaN
            raise InputError(f"{self.source}: pixel values must lie in [0, 1] after the LUTs, got [{low}, {high}]")
        for name in ("sop_instance_uid", "series_instance_uid", "study_instance_uid"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InputError(f"{self.source}: {name} is empty")
        if not isinstance(self.view, View):
            raise InputError(f"{self.source}: view must be a View, got {type(self.view).__name__}")
        if self.pixel_spacing_mm is not None and not all(v > 0 for v in self.pixel_spacing_mm):
            raise InputError(f"{self.source}: pixel spacing must be positive")
        if not 1 <= self.bits_stored <= 32 or not 0 <= self.frame_index < max(self.number_of_frames, 1):
            raise InputError(f"{self.source}: bits stored or frame index out of range")

    @property
    def pixels(self) -> torch.Tensor:
        """The pixels as a float32 torch tensor sharing ``array``'s memory (what the model's transforms take)."""
        import torch  # noqa: PLC0415 - torch: reading a DICOM must not load it

        return torch.from_numpy(self.array)

    @property
    def shape(self) -> tuple[int, int]:
        rows, columns = self.array.shape
        return int(rows), int(columns)

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable facts about the image, without pixels and without PHI."""
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "source": self.source,
            "modality": self.modality,
            "sop_class_uid": self.sop_class_uid,
            "body_part": self.body_part,
            "view": self.view.value,
            "view_source": self.view_source,
            "laterality": self.laterality.value if self.laterality else None,
            "rows": self.shape[0],
            "columns": self.shape[1],
            "pixel_spacing_mm": list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None,
            "photometric_interpretation": self.photometric_interpretation,
            "bits_stored": self.bits_stored,
            "transfer_syntax_uid": self.transfer_syntax_uid,
            "instance_number": self.instance_number,
            "number_of_frames": self.number_of_frames,
        }


@dataclass
class Series:
    series_instance_uid: str
    modality: str | None
    images: list[Image] = field(default_factory=list)


@dataclass
class Study:
    """A study: StudyInstanceUID → series → images."""

    study_instance_uid: str
    series: list[Series] = field(default_factory=list)

    @property
    def images(self) -> list[Image]:
        return [image for series in self.series for image in series.images]

    @property
    def modalities(self) -> list[str]:
        return sorted({image.modality for image in self.images if image.modality})

    @property
    def views(self) -> list[View]:
        return [image.view for image in self.images]

    def frontal_images(self) -> list[Image]:
        return [image for image in self.images if image.view.is_frontal]

    def lateral_images(self) -> list[Image]:
        return [image for image in self.images if image.view.is_lateral]

    def add(self, image: Image) -> None:
        """Place ``image`` in its series, creating the series on first sight; series and images stay sorted."""
        for series in self.series:
            if series.series_instance_uid == image.series_instance_uid:
                series.images.append(image)
                series.images.sort(key=_image_order)
                return
        self.series.append(Series(image.series_instance_uid, image.modality, [image]))
        self.series.sort(key=lambda s: s.series_instance_uid)

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable description of the study (no pixels, no PHI)."""
        return summarize_studies(
            (self.study_instance_uid, image.series_instance_uid, image.summary()) for image in self.images
        )[0]


def summarize_studies(rows: Iterable[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Group (study UID, series UID, image summary) rows into study summaries, sorted by UID.

    Streaming inspection of a large folder keeps only these small dicts, never the pixels.
    """
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for study_uid, series_uid, image in rows:
        grouped.setdefault(study_uid, {}).setdefault(series_uid, []).append(image)
    studies = []
    for study_uid in sorted(grouped):
        series = [
            {
                "series_instance_uid": series_uid,
                "modality": images[0]["modality"],
                "images": sorted(images, key=_summary_order),
            }
            for series_uid, images in sorted(grouped[study_uid].items())
        ]
        images = [image for entry in series for image in entry["images"]]
        studies.append(
            {
                "study_instance_uid": study_uid,
                "modalities": sorted({i["modality"] for i in images if i["modality"]}),
                "n_series": len(series),
                "n_images": len(images),
                "views": [i["view"] for i in images],
                "series": series,
            }
        )
    return studies


def _summary_order(image: dict[str, Any]) -> tuple[int, str]:
    number = image["instance_number"]
    return (number if number is not None else 1 << 30, image["sop_instance_uid"])


def _image_order(image: Image) -> tuple[int, str]:
    return (image.instance_number if image.instance_number is not None else 1 << 30, image.sop_instance_uid)
