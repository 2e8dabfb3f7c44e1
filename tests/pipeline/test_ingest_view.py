"""Where an image's view comes from at ingest: a DICOM's header, the caller's word, or for a PNG/JPEG (which
states none) PA by default, said in the image's ``view_source`` and a ``view_assumed`` warning flag."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom import dcmread
from testsupport import pydicom_file, to_bytes

from radlvlm.errors import GuardrailViolation
from radlvlm.imaging import View
from radlvlm.pipeline.ingest import StudyInput, ingest_study
from radlvlm.safety.dicom_deid import DicomDeidentifier
from radlvlm.safety.pseudonyms import PseudonymMap

KEY = b"k" * 32


def _deidentifier() -> DicomDeidentifier:
    return DicomDeidentifier(PseudonymMap(KEY, record=False))


def _picture(fmt: str) -> bytes:
    ramp = (np.add.outer(np.arange(96), np.arange(80)) * 2 % 256).astype(np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(ramp).save(buffer, format=fmt)
    return buffer.getvalue()


def _rg1(**header: str) -> bytes:
    ds = dcmread(pydicom_file("RG1_UNCR.dcm"))
    for keyword, value in header.items():
        if value:
            setattr(ds, keyword, value)
        elif keyword in ds:
            delattr(ds, keyword)
    return to_bytes(ds)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_png_or_jpeg_without_a_view_is_taken_as_pa_and_says_so(fmt: str) -> None:
    image, flags = ingest_study(StudyInput(data=_picture(fmt)), _deidentifier())
    assert (image.view, image.view_source) == (View.PA, "default")
    assumed = [f for f in flags if f.code == "view_assumed"]
    assert len(assumed) == 1 and assumed[0].severity == "warning" and "PA" in assumed[0].message


def test_a_stated_view_is_kept_with_source_request() -> None:
    image, flags = ingest_study(StudyInput(data=_picture("PNG"), view="AP"), _deidentifier())
    assert (image.view, image.view_source) == (View.AP, "request")
    assert "view_assumed" not in {f.code for f in flags}


def test_a_dicom_keeps_its_header_view_and_is_never_assumed() -> None:
    image, flags = ingest_study(StudyInput(data=_rg1()), _deidentifier())
    assert (image.view, image.view_source) == (View.PA, "ViewPosition")
    assert "view_assumed" not in {f.code for f in flags}
    with pytest.raises(GuardrailViolation, match="lateral"):
        ingest_study(StudyInput(data=_rg1(ViewPosition="LL")), _deidentifier())
    with pytest.raises(GuardrailViolation, match="image header says LL"):
        ingest_study(StudyInput(data=_rg1(ViewPosition="LL"), view="PA"), _deidentifier())
    with pytest.raises(GuardrailViolation, match="no image is marked as a frontal"):
        ingest_study(StudyInput(data=_rg1(ViewPosition="")), _deidentifier())
