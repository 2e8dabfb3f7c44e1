"""The display pipeline against the DICOM formulas and against pydicom's own LUT functions."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_windowing
from pydicom.sequence import Sequence
from testsupport import pydicom_file, to_bytes

from radlvlm.imaging import read_image_file
from radlvlm.imaging.dicom import read_dicom_bytes
from radlvlm.imaging.display import (
    Window,
    apply_window,
    needs_inversion,
    stored_value_of_word,
    to_display,
    window_from_dataset,
)


def _grayscale(values: np.ndarray, **attributes: object) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns = values.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_rg1_display_matches_the_linear_window_formula_and_monochrome1(rg1: Dataset) -> None:
    stored = rg1.pixel_array.astype(np.float64)
    c, w = 15000.0, 30000.0  # the file's Window Center / Width; no rescale
    linear = np.clip((stored - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    expected = 1.0 - linear  # MONOCHROME1: low values are white
    image = read_image_file(pydicom_file("RG1_UNCR.dcm"))
    assert np.allclose(image.pixels.numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_windowing_agrees_with_pydicom_up_to_its_output_range(function: str) -> None:
    values = np.arange(0, 4096, dtype=np.uint16).reshape(64, 64)
    ds = _grayscale(values, WindowCenter=1200.0, WindowWidth=900.0, VOILUTFunction=function)
    ours = apply_window(values, Window(1200.0, 900.0, function))
    # pydicom maps into [0, 2**BitsStored - 1] for unsigned data without rescale.
    theirs = apply_windowing(values.astype(np.float64), ds) / 4095.0
    assert np.allclose(ours, theirs, atol=1e-9)
    assert np.allclose(to_display(values, ds), ours, atol=1e-6)


def test_monochrome1_is_the_inverse_of_monochrome2() -> None:
    values = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 3) % 4096
    mono2 = to_display(values, _grayscale(values, WindowCenter=2048, WindowWidth=4096))
    mono1 = to_display(
        values, _grayscale(values, WindowCenter=2048, WindowWidth=4096, PhotometricInterpretation="MONOCHROME1")
    )
    assert np.allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_presentation_lut_shape_inverse_flips_monochrome2_but_not_monochrome1_twice() -> None:
    values = np.zeros((2, 2), dtype=np.uint16)
    assert needs_inversion(_grayscale(values, PresentationLUTShape="INVERSE"))
    assert needs_inversion(_grayscale(values, PhotometricInterpretation="MONOCHROME1", PresentationLUTShape="INVERSE"))
    assert not needs_inversion(_grayscale(values, PresentationLUTShape="IDENTITY"))


def test_rescale_slope_intercept_is_applied_before_the_window() -> None:
    # The real tiny CR from pydicom's DICOMDIR tests: slope 0.684, intercept 200, window 1600/2800, MONOCHROME1.
    path = pydicom_file("dicomdirtests/77654033/CR1/6154")
    ds = dcmread(path)
    modality = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)
    assert not np.allclose(modality, ds.pixel_array)
    expected = 1.0 - np.clip((modality - 1599.5) / 2799.0 + 0.5, 0, 1)
    assert np.allclose(read_image_file(path).pixels.numpy(), expected, atol=1e-6)


def test_modality_lut_sequence_and_voi_lut_sequence() -> None:
    values = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], dtype=np.uint16)
    ds = _grayscale(values)
    modality_item = Dataset()
    modality_item.LUTDescriptor = [4, 0, 8]  # 4 entries, first stored value 0, 8-bit output
    modality_item.ModalityLUTType = "US"
    modality_item.LUTData = [10, 20, 40, 80]
    ds.ModalityLUTSequence = Sequence([modality_item])
    voi_item = Dataset()
    voi_item.LUTDescriptor = [256, 0, 8]  # maps modality output 0..255 → 0..255, here squared and scaled
    voi_item.LUTData = [min(255, (i * i) // 16) for i in range(256)]
    ds.VOILUTSequence = Sequence([voi_item])
    out = to_display(values, ds)
    expected_first_row = np.array([min(255, v * v // 16) for v in (10, 20, 40, 80)]) / 255.0
    assert np.allclose(out[0], expected_first_row, atol=1e-6)
    assert np.allclose(out[1], expected_first_row[::-1], atol=1e-6)


def test_without_voi_the_data_range_is_stretched_excluding_padding() -> None:
    values = np.array([[0, 0, 100, 200], [300, 400, 0, 0]], dtype=np.uint16)
    ds = _grayscale(values, PixelPaddingValue=0)
    out = to_display(values, ds)
    assert np.allclose(out[values == 0], 0.0)
    assert np.isclose(out[0, 2], 0.0) and np.isclose(out[1, 1], 1.0)
    assert np.isclose(out[0, 3], (200 - 100) / 300)


def test_padding_range_limit_marks_a_range_of_values() -> None:
    values = np.array([[4090, 4095, 10, 20]], dtype=np.uint16)
    ds = _grayscale(values, PixelPaddingValue=4090, PixelPaddingRangeLimit=4095, WindowCenter=15, WindowWidth=11)
    out = to_display(values, ds)
    assert np.allclose(out[0, :2], 0.0)
    assert 0.0 <= out[0, 2] < out[0, 3] <= 1.0


def test_signed_pixels_use_the_lookup_path_correctly() -> None:
    values = np.array([[-1000, -500], [0, 1000]], dtype=np.int16)
    ds = _grayscale(values, PixelRepresentation=1, BitsStored=16, WindowCenter=0, WindowWidth=2000)
    expected = np.clip((values.astype(np.float64) + 0.5) / 1999.0 + 0.5, 0, 1)
    assert np.allclose(to_display(values, ds), expected, atol=1e-6)


def test_unused_high_bits_are_ignored_with_and_without_a_window(rg1: Dataset) -> None:
    clean = read_dicom_bytes(to_bytes(rg1), name="clean").pixels
    raw = np.frombuffer(rg1.PixelData, dtype="<u2").copy()
    raw[::7] |= 0x8000  # garbage in bit 15, above Bits Stored = 15 (e.g. a legacy overlay plane)
    dirty = copy.deepcopy(rg1)
    dirty.PixelData = raw.tobytes()
    assert np.array_equal(dirty.pixel_array, rg1.pixel_array)  # pydicom's own correction
    assert torch.equal(read_dicom_bytes(to_bytes(dirty), name="dirty").pixels, clean)  # our lookup-table path
    for ds in (rg1, dirty):  # without a window the data range must come from corrected values
        del ds.WindowCenter, ds.WindowWidth
    assert torch.equal(
        read_dicom_bytes(to_bytes(dirty), name="dirty").pixels, read_dicom_bytes(to_bytes(rg1), name="c").pixels
    )


def test_signed_words_with_high_garbage_are_sign_extended_from_bits_stored() -> None:
    values = np.array([[-2048, -1, 0, 2047]], dtype=np.int16)  # 12-bit signed stored values
    ds = _grayscale(values, PixelRepresentation=1, BitsStored=12, WindowCenter=0, WindowWidth=4096)
    words = (values.view(np.uint16) & 0x0FFF) | 0xA000  # raw words: 12 bits of data, junk above
    assert np.array_equal(to_display(words.view(np.int16), ds), to_display(values, ds))
    assert np.allclose(stored_value_of_word(16, ds)[words.ravel()], values.ravel())


def test_window_selection_rules() -> None:
    values = np.zeros((1, 1), dtype=np.uint16)
    multi = _grayscale(values, WindowCenter=[40, 400], WindowWidth=[80, 2000])
    assert window_from_dataset(multi) == Window(40.0, 80.0, "LINEAR")  # the first window is the default
    assert window_from_dataset(multi, index=1) == Window(400.0, 2000.0, "LINEAR")
    assert window_from_dataset(_grayscale(values, WindowCenter=10, WindowWidth=0)) is None
    assert window_from_dataset(_grayscale(values)) is None
