"""Decoding real DICOM across transfer syntaxes: lossless syntaxes must agree to the pixel."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from testsupport import pydicom_file, to_bytes

from radlvlm.imaging import read_image_file
from radlvlm.imaging.dicom import read_dicom_bytes
from radlvlm.imaging.display import to_display

MR_SYNTAXES = [
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
]


def _stored(ds: Dataset) -> np.ndarray:
    return np.asarray(ds.pixel_array)


def test_uncompressed_decode_equals_raw_buffer(rg1: Dataset) -> None:
    # An independent decode: the little-endian words of Pixel Data, masked to Bits Stored (15).
    raw = np.frombuffer(rg1.PixelData, dtype="<u2").reshape(rg1.Rows, rg1.Columns) & 0x7FFF
    assert np.array_equal(_stored(rg1), raw)
    assert (int(raw.min()), int(raw.max())) == (874, 26479)


def test_rg1_lossless_jpeg2000_decodes_identically_to_uncompressed() -> None:
    uncompressed = read_image_file(pydicom_file("RG1_UNCR.dcm"))
    j2k = read_image_file(pydicom_file("RG1_J2KR.dcm"))
    assert j2k.transfer_syntax_uid == JPEG2000Lossless
    assert torch.equal(uncompressed.pixels, j2k.pixels)


def test_rg1_lossy_jpeg2000_is_close_but_not_identical() -> None:
    uncompressed = read_image_file(pydicom_file("RG1_UNCR.dcm")).pixels
    lossy = read_image_file(pydicom_file("RG1_J2KI.dcm")).pixels
    difference = (uncompressed - lossy).abs()
    assert float(difference.mean()) < 0.01
    assert float(difference.max()) > 0


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_real_chest_transcoded_losslessly_decodes_identically(rg1: Dataset, syntax: str) -> None:
    reference = read_dicom_bytes(to_bytes(rg1), name="rg1")
    rg1.compress(syntax)
    transcoded = read_dicom_bytes(to_bytes(rg1), name="rg1-transcoded")
    assert transcoded.transfer_syntax_uid == syntax
    assert torch.equal(reference.pixels, transcoded.pixels)


@pytest.mark.parametrize("syntax", [DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_real_chest_in_native_syntaxes_decodes_identically(rg1: Dataset, syntax: str) -> None:
    reference = read_dicom_bytes(to_bytes(rg1), name="rg1")
    stored = _stored(rg1)
    rg1.file_meta.TransferSyntaxUID = syntax
    if syntax == ExplicitVRBigEndian:
        rg1.PixelData = stored.astype(">u2").tobytes()  # OW words are byte-swapped in big endian files
    buffer = io.BytesIO()
    if syntax == ExplicitVRBigEndian:
        # save_as() refuses to change endianness; dcmwrite can, and still writes preamble and file meta.
        dcmwrite(buffer, rg1, implicit_vr=False, little_endian=False, force_encoding=True)
    else:
        rg1.save_as(buffer, enforce_file_format=True)
    image = read_dicom_bytes(buffer.getvalue(), name="rg1-native")
    assert image.transfer_syntax_uid == syntax
    assert torch.equal(reference.pixels, image.pixels)


@pytest.mark.parametrize("name", MR_SYNTAXES)
def test_pydicom_mr_in_every_lossless_syntax_matches_explicit_le(name: str) -> None:
    reference = read_image_file(pydicom_file("MR_small.dcm"))
    other = read_image_file(pydicom_file(name))
    assert torch.equal(reference.pixels, other.pixels)


def test_jpeg_baseline_and_extended_and_lossless_decode(testdata) -> None:  # type: ignore[no-untyped-def]
    baseline = read_image_file(testdata("SC_rgb_jpeg_dcmtk.dcm"))
    assert baseline.shape == (100, 100)
    extended = read_image_file(testdata("JPGExtended.dcm"))  # 12-bit JPEG Extended, Process 4
    assert extended.shape == (1024, 256) and extended.bits_stored == 12
    lossless = read_image_file(testdata("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    assert lossless.shape == (768, 1024)


def test_jpeg_ls_near_lossless_and_deflated_decode(testdata) -> None:  # type: ignore[no-untyped-def]
    assert read_image_file(testdata("JPEGLSNearLossless_16.dcm")).shape == (50, 10)
    assert read_image_file(testdata("image_dfl.dcm")).shape == (512, 512)


def test_color_secondary_capture_becomes_luminance(testdata) -> None:  # type: ignore[no-untyped-def]
    path = testdata("SC_rgb_rle.dcm")
    ds = dcmread(path)
    rgb = ds.pixel_array.astype(np.float64)
    expected = (rgb @ np.array([0.299, 0.587, 0.114])) / 255.0
    image = read_image_file(path)
    assert np.allclose(image.pixels.numpy(), expected, atol=1e-5)


def test_pixels_are_float32_in_unit_range(testdata) -> None:  # type: ignore[no-untyped-def]
    for name in ["RG1_UNCR.dcm", "CT_small.dcm", "MR_small.dcm", "SC_rgb_jpeg_dcmtk.dcm"]:
        pixels = read_image_file(testdata(name)).pixels
        assert pixels.dtype == torch.float32 and pixels.ndim == 2
        assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0


def test_multiframe_frame_selection(testdata) -> None:  # type: ignore[no-untyped-def]
    path = testdata("emri_small_jpeg_ls_lossless.dcm")
    ds = dcmread(path)
    frames = ds.pixel_array
    third = read_image_file(path, frame=3)
    first = read_image_file(path, frame=0)
    assert third.frame_index == 3 and third.number_of_frames == frames.shape[0] == 10
    assert np.array_equal(third.pixels.numpy(), to_display(frames[3], ds))
    assert not torch.equal(third.pixels, first.pixels)


def test_png_reads_as_image(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    ramp = (np.arange(64 * 32, dtype=np.uint32).reshape(64, 32) * 31 % 65536).astype(np.uint16)
    path = tmp_path / "ramp16.png"
    PILImage.fromarray(ramp).save(path)
    image = read_image_file(path)
    assert image.shape == (64, 32)
    assert np.allclose(image.pixels.numpy(), ramp / 65535.0, atol=1e-6)
    eight = tmp_path / "gray8.png"
    PILImage.fromarray((ramp >> 8).astype(np.uint8)).save(eight)
    assert np.allclose(read_image_file(eight).pixels.numpy(), (ramp >> 8) / 255.0, atol=1e-6)
