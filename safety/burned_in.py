"""Burned-in annotation: honour BurnedInAnnotation (0028,0301) and find text in the pixels with OCR.

OCR is Debian's tesseract through ``pytesseract`` (a thin wrapper over the command). presidio-image-redactor's
DICOM engine does the same with tesseract but pulls OpenCV and more for what is a box search here, and it
would redact with its own analyzer rather than treat every word on a radiograph as suspect, which is the
rule radlvlm needs: a chest radiograph legitimately carries at most a side marker ("L", "R"), so any word
of two or more letters or digits is treated as burned-in text.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image as PILImage
from pydicom.dataset import Dataset

from radlvlm.errors import DeidentificationError, RadlvlmError
from radlvlm.imaging.dicom import dataset_to_image

__all__ = ["BurnedInPolicy", "find_text_boxes", "handle_burned_in", "tesseract_available"]

_MAX_OCR_SIDE = 2048  # larger images are downscaled for OCR; boxes are scaled back
_PAD = 4  # pixels added around each word box before blacking it out


@dataclass(frozen=True)
class BurnedInPolicy:
    """Args: ocr (bool): search pixels for text; action: "refuse" or "redact" images that carry text."""

    ocr: bool = False
    action: Literal["refuse", "redact"] = "refuse"


def tesseract_available() -> bool:
    return shutil.which("tesseract") is not None


def find_text_boxes(image: np.ndarray, min_confidence: float = 80.0) -> list[tuple[int, int, int, int]]:
    """Word boxes (left, top, width, height) that tesseract reads in an 8-bit grayscale image.

    Args:
        image (np.ndarray): uint8, shape (rows, columns), display orientation (text dark or light).
        min_confidence (float, default 80): lowest tesseract word confidence kept. Printed text reads at
            85-96 here; lung and bone texture yields "words" of 2 letters at up to 85, and of 3 at up to 62
            (RG1 chest, the cat radiograph), hence this floor and the 3-character minimum.
    """
    import pytesseract  # noqa: PLC0415 - pytesseract: optional OCR, only when burned-in text is looked for

    rows, columns = image.shape
    scale = max(1, int(np.ceil(max(rows, columns) / _MAX_OCR_SIDE)))
    picture = PILImage.fromarray(image)
    if scale > 1:
        picture = picture.resize((columns // scale, rows // scale), PILImage.Resampling.BILINEAR)
    boxes: list[tuple[int, int, int, int]] = []
    # Text on radiographs is light on dark or dark on light; read both polarities. --psm 11: sparse text.
    for candidate in (picture, PILImage.fromarray(255 - np.asarray(picture))):
        data = pytesseract.image_to_data(candidate, config="--psm 11", output_type=pytesseract.Output.DICT)
        for text, conf, left, top, width, height in zip(
            data["text"], data["conf"], data["left"], data["top"], data["width"], data["height"], strict=True
        ):
            word = "".join(ch for ch in str(text) if ch.isalnum())
            if len(word) >= 3 and float(conf) >= min_confidence:
                boxes.append((left * scale, top * scale, width * scale, height * scale))
    return boxes


def handle_burned_in(ds: Dataset, policy: BurnedInPolicy, name: str) -> str:
    """Apply the policy to ``ds`` in place; return "not-checked", "ocr-clean" or "redacted", or raise.

    An image flagged BurnedInAnnotation YES is refused unless the policy is "redact" and OCR finds the text
    (a YES with nothing found means the text could not be located, so the image cannot be trusted).
    """
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag != "YES" and not policy.ocr:
        return "not-checked"
    if flag == "YES" and policy.action == "refuse":
        raise DeidentificationError(f"{name}: BurnedInAnnotation is YES; refused by the burned-in text policy")
    if "PixelData" not in ds:
        return "not-checked"
    if not tesseract_available():
        raise DeidentificationError(f"{name}: OCR for burned-in text is required but tesseract is not installed")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DeidentificationError(f"{name}: OCR of multi-frame images is not supported; refused")
    boxes = find_text_boxes(_display_uint8(ds, name))
    if not boxes:
        if flag == "YES":
            raise DeidentificationError(f"{name}: BurnedInAnnotation is YES but OCR located no text; refused")
        return "ocr-clean"
    if policy.action == "refuse":
        raise DeidentificationError(f"{name}: OCR found burned-in text ({len(boxes)} word boxes); refused by policy")
    _redact(ds, boxes, name)
    ds.BurnedInAnnotation = "NO"
    return "redacted"


def _display_uint8(ds: Dataset, name: str) -> np.ndarray:
    try:
        image = dataset_to_image(ds, name=name)
    except RadlvlmError as e:
        raise DeidentificationError(f"{name}: pixels could not be decoded for the burned-in text check") from e
    return (image.array * 255.0).round().astype(np.uint8)


def _redact(ds: Dataset, boxes: list[tuple[int, int, int, int]], name: str) -> None:
    """Black out the boxes in the stored pixels and store them uncompressed (Explicit VR Little Endian)."""
    try:
        pixels = ds.pixel_array.copy()
    except Exception as e:  # decoder errors come in many types
        raise DeidentificationError(f"{name}: pixels could not be decoded for redaction") from e
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits_stored = int(ds.get("BitsStored", 8) or 8)
    black = pixels.max() if photometric == "MONOCHROME1" else pixels.min()  # black as displayed
    rows, columns = pixels.shape[:2]
    for left, top, width, height in boxes:
        r0, r1 = max(0, top - _PAD), min(rows, top + height + _PAD)
        c0, c1 = max(0, left - _PAD), min(columns, left + width + _PAD)
        pixels[r0:r1, c0:c1] = black
    if pixels.ndim == 3:
        photometric = "RGB"  # pydicom decodes YBR to RGB
    ds.set_pixel_data(pixels, photometric, bits_stored, generate_instance_uid=False)
