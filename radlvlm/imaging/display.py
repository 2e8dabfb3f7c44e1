"""The DICOM grayscale display pipeline: stored values → Modality LUT → VOI LUT → polarity → [0, 1].

Order and semantics follow DICOM PS3.3 C.11 (Modality LUT, VOI LUT, Presentation LUT) and C.7.6.3.1.2
(MONOCHROME1: minimum value is displayed white). The Modality LUT (rescale or LUT sequence) and VOI LUT
sequences go through pydicom. Windowing is computed here from PS3.3 C.11.2.1.2 because pydicom's
``apply_windowing`` writes its output into a range that depends on Bits Stored and the rescale, whereas the
model wants [0, 1]; tests check the two agree up to that affine map.

For 8- and 16-bit pixels the whole chain is evaluated once per possible stored value and applied as one
lookup table, which is exact (every step is a function of the stored value alone) and keeps the per-pixel
cost to a single gather (numpy indexing: ~9 ms on one core for a 2k x 2.5k radiograph; torch's index_select
is no faster, and importing torch would cost a CLI call that only inspects files a second).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi

# Above this many distinct stored values a lookup table costs more than it saves.
_MAX_LUT_ENTRIES = 1 << 17


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2). ``function`` is LINEAR, LINEAR_EXACT or SIGMOID."""

    center: float
    width: float
    function: str = "LINEAR"


def window_from_dataset(ds: Dataset, index: int = 0) -> Window | None:
    """The ``index``-th window of ``ds`` (the first is the default per the standard), or None."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    centers = _as_list(ds.WindowCenter)
    widths = _as_list(ds.WindowWidth)
    if not centers or not widths:
        return None
    index = min(index, len(centers) - 1, len(widths) - 1)
    width = float(widths[index])
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    # A width below 1 is invalid for LINEAR (PS3.3 C.11.2.1.2.1) and meaningless otherwise: ignore the window.
    if width < 1 or (function == "LINEAR_EXACT" and width <= 0):
        return None
    return Window(float(centers[index]), width, function)


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Map Modality-LUT output values through a VOI window into [0, 1] (float64)."""
    x = values.astype(np.float64, copy=False)
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if window.function == "LINEAR_EXACT":
        return np.clip((x - c) / w + 0.5, 0.0, 1.0)
    # LINEAR, and any unknown function, which the standard says to treat as LINEAR.
    return np.clip((x - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0) if w > 1 else (x > c - 0.5).astype(np.float64)


def needs_inversion(ds: Dataset) -> bool:
    """True when the displayed polarity must be flipped (MONOCHROME1, or a Presentation LUT Shape of INVERSE)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    shape = str(ds.get("PresentationLUTShape", "") or "").upper()
    # For MONOCHROME1 an INVERSE shape restates the same inversion; it is not applied twice.
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def padding_range(ds: Dataset) -> tuple[int, int] | None:
    """Stored values marked as padding by Pixel Padding Value (and Range Limit), inclusive; None if none."""
    if "PixelPaddingValue" not in ds or ds.PixelPaddingValue is None:
        return None
    start = int(ds.PixelPaddingValue)
    limit = ds.get("PixelPaddingRangeLimit")
    stop = int(limit) if limit is not None else start
    return (min(start, stop), max(start, stop))


def to_display(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Grayscale stored values (rows, columns) → float32 display values in [0, 1], brighter = higher.

    Padding pixels (if declared) come out as 0 and are excluded from the automatic range used when the file
    carries no VOI LUT and no window. 8/16-bit words may still carry bits above Bits Stored when the file has
    a window or VOI LUT (the lookup table ignores them); without one, pass corrected values.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected a single grayscale frame (rows, columns), got shape {pixels.shape}")
    if not pixels.dtype.isnative:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))  # big endian files decode to swapped words
    data_range = _data_range(pixels, ds) if uses_data_range(ds) else None
    if pixels.dtype.kind in "ui" and pixels.dtype.itemsize <= 2:
        # Index the table with the raw 8/16-bit words: unsigned values index directly; signed values are
        # read as their unsigned bit pattern and the table is laid out in that order. No widening copy.
        unsigned = pixels.view(np.uint8 if pixels.dtype.itemsize == 1 else np.uint16)
        stored = stored_value_of_word(8 * pixels.dtype.itemsize, ds)
        lut = _display_values(stored, ds, data_range=data_range).astype(np.float32)
        return lut[unsigned]
    if np.issubdtype(pixels.dtype, np.integer):
        lo, hi = int(pixels.min()), int(pixels.max())
        if hi - lo + 1 <= _MAX_LUT_ENTRIES:
            stored = np.arange(lo, hi + 1, dtype=np.int64)
            lut = _display_values(stored, ds, data_range=data_range).astype(np.float32)
            return lut[pixels.astype(np.int64) - lo]
    return _display_values(pixels, ds, data_range=None).astype(np.float32)


def stored_value_of_word(word_bits: int, ds: Dataset) -> np.ndarray:
    """For every ``word_bits``-bit word, the stored value it encodes under Bits Stored / Pixel Representation.

    Bits above Bits Stored are ignored and signed values are sign-extended (PS3.5 8.1.1), so the table also
    serves words that still carry unused high bits (e.g. a legacy overlay plane): masking costs nothing here.
    """
    words = np.arange(1 << word_bits, dtype=np.int64)
    bits_stored = int(ds.get("BitsStored", word_bits) or word_bits)
    bits_stored = min(max(bits_stored, 1), word_bits)
    values = words & ((1 << bits_stored) - 1)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        values = np.where(values >= 1 << (bits_stored - 1), values - (1 << bits_stored), values)
    return values


def uses_data_range(ds: Dataset) -> bool:
    """True when no VOI LUT or window is given, so the image's own value range sets the contrast."""
    return not ds.get("VOILUTSequence") and window_from_dataset(ds) is None


def _data_range(pixels: np.ndarray, ds: Dataset) -> tuple[float, float] | None:
    """Range of Modality-LUT output over the non-padding stored values present in ``pixels``."""
    padding = padding_range(ds)
    kept = pixels if padding is None else pixels[(pixels < padding[0]) | (pixels > padding[1])]
    if kept.size == 0:
        return None
    present = np.arange(int(kept.min()), int(kept.max()) + 1, dtype=np.int64)
    modality = np.asarray(apply_modality_lut(present, ds), dtype=np.float64)
    return float(modality.min()), float(modality.max())


def _display_values(stored: np.ndarray, ds: Dataset, data_range: tuple[float, float] | None) -> np.ndarray:
    """Apply Modality LUT, VOI LUT and polarity to ``stored`` values (any shape) → float64 in [0, 1]."""
    modality = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    voi_sequence = ds.get("VOILUTSequence")
    window = window_from_dataset(ds)
    if voi_sequence:
        item = voi_sequence[0]
        bits = int(item.LUTDescriptor[2])
        # A VOI LUT is indexed by integer modality values; pydicom clips them to the LUT's input range and
        # returns entries in [0, 2**bits - 1].
        indices = np.rint(modality).astype(np.int64)
        display = np.asarray(apply_voi(indices, ds, index=0), dtype=np.float64) / float(2**bits - 1)
    elif window is not None:
        display = apply_window(modality, window)
    else:
        if data_range is None:
            valid = _non_padding(stored, ds)
            data_range = (float(modality[valid].min()), float(modality[valid].max())) if valid.any() else (0.0, 1.0)
        low, high = data_range
        display = (modality - low) / (high - low) if high > low else np.zeros_like(modality)
    display = np.clip(display, 0.0, 1.0)
    if needs_inversion(ds):
        display = 1.0 - display
    padding = padding_range(ds)
    if padding is not None:
        display = np.where(_non_padding(stored, ds), display, 0.0)
    return display


def _non_padding(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    padding = padding_range(ds)
    if padding is None or not np.issubdtype(stored.dtype, np.integer):
        return np.ones(stored.shape, dtype=bool)
    return (stored < padding[0]) | (stored > padding[1])


def rgb_to_display(pixels: np.ndarray, bits_stored: int) -> np.ndarray:
    """RGB (rows, columns, 3) → luminance in [0, 1] (ITU-R BT.601 weights), for colour secondary captures."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    luminance = pixels.astype(np.float32) @ weights
    return np.clip(luminance / float(2**bits_stored - 1), 0.0, 1.0).astype(np.float32)


def _as_list(value: object) -> list[float]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [float(v) for v in value]  # type: ignore[union-attr]
    return [float(value)]  # type: ignore[arg-type]
