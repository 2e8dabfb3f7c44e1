"""Burned-in text: OCR (tesseract) finds it, the policy refuses or redacts it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom import dcmread
from testsupport import write_dataset

from radlvlm.safety.burned_in import find_text_boxes, tesseract_available
from radlvlm.safety.dicom_deid import DicomDeidentifier
from radlvlm.safety.profile import DeidOptions

pytestmark = pytest.mark.skipif(not tesseract_available(), reason="tesseract-ocr is not installed")


def text_image(make_image, text: str | None, **attributes: object):
    picture = Image.new("L", (480, 240), 20)
    if text:
        ImageDraw.Draw(picture).text((20, 20), text, fill=230, font=ImageFont.load_default(size=36))
    pixels = np.asarray(picture)
    ds = make_image(**attributes)
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    return ds


def test_ocr_finds_words_in_either_polarity() -> None:
    picture = Image.new("L", (480, 240), 230)
    ImageDraw.Draw(picture).text((20, 120), "DOE JANE 0042", fill=10, font=ImageFont.load_default(size=36))
    boxes = find_text_boxes(np.asarray(picture))
    assert boxes and all(100 <= top <= 170 for _, top, _, _ in boxes)
    assert find_text_boxes(np.full((240, 480), 20, np.uint8)) == []


def test_text_found_by_ocr_is_refused_by_default(make_image, pseudonyms, tmp_path) -> None:
    source = write_dataset(text_image(make_image, "SMITH JOHN 1234567"), tmp_path / "in.dcm")
    outcome = DicomDeidentifier(pseudonyms, DeidOptions(ocr=True)).deidentify_file(source, tmp_path / "out.dcm")
    assert outcome.status == "failed" and "OCR found burned-in text" in (outcome.reason or "")
    assert not (tmp_path / "out.dcm").exists()


def test_text_found_by_ocr_is_redacted_by_policy(make_image, pseudonyms, tmp_path) -> None:
    source = write_dataset(text_image(make_image, "SMITH JOHN 1234567"), tmp_path / "in.dcm")
    options = DeidOptions(ocr=True, burned_in="redact")
    outcome = DicomDeidentifier(pseudonyms, options).deidentify_file(source, tmp_path / "out.dcm")
    assert outcome.status == "written", outcome.reason
    out = dcmread(tmp_path / "out.dcm")
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    pixels = out.pixel_array
    assert pixels[30:60, 20:400].max() <= 20  # the text rows are blacked out
    assert find_text_boxes(pixels.astype(np.uint8)) == []


def test_flagged_image_without_locatable_text_is_refused(make_image, pseudonyms, tmp_path) -> None:
    source = write_dataset(text_image(make_image, None, BurnedInAnnotation="YES"), tmp_path / "in.dcm")
    options = DeidOptions(burned_in="redact")
    outcome = DicomDeidentifier(pseudonyms, options).deidentify_file(source, tmp_path / "out.dcm")
    assert outcome.status == "failed" and "located no text" in (outcome.reason or "")


def test_clean_image_passes_the_ocr_check(make_image, pseudonyms, tmp_path) -> None:
    source = write_dataset(text_image(make_image, None), tmp_path / "in.dcm")
    outcome = DicomDeidentifier(pseudonyms, DeidOptions(ocr=True)).deidentify_file(source, tmp_path / "out.dcm")
    assert outcome.status == "written", outcome.reason
