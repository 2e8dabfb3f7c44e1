"""One DICOM (or PNG/JPEG) file → one display-ready ``Image``.

Decoding goes through pydicom and its pixel-data plugins (pylibjpeg with libjpeg, openjpeg and RLE;
pyjpegls; Pillow), which together cover explicit/implicit little endian, big endian, deflated, JPEG
baseline/extended/lossless, JPEG-LS, JPEG 2000 and RLE. Failures become radlvlm errors whose messages name
the file and the transfer syntax, never a header value that could identify the patient.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.uid import UID

from radlvlm.errors import (
    DecodeError,
    ImageTooLargeError,
    MultiFrameError,
    NoPixelDataError,
    NotDicomError,
    UnsupportedTransferSyntaxError,
)
from radlvlm.imaging.display import rgb_to_display, to_display, uses_data_range
from radlvlm.imaging.study import Image
from radlvlm.imaging.view import detect_laterality, detect_view

logger = logging.getLogger(__name__)

# The most pixel values (rows x columns x frames x samples) an input may declare. The largest chest detectors
# are about 4,300 x 4,300 (18.5 M); 40 M leaves room and bounds a request's decoded pixels to ~160 MB of float32.
MAX_IMAGE_PIXELS = 40_000_000
# PIL warns of large images when it opens them; radlvlm refuses them itself, below PIL's threshold, so the
# warning (set once for the process, not toggled per call) would only add noise to the service's log.
warnings.filterwarnings("ignore", category=PILImage.DecompressionBombWarning)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Root for UIDs we derive for files that lack them (PNG/JPEG, or DICOM missing a UID): 2.25 = UUID-derived.
_DERIVED_UID_ROOT = "2.25."


def is_plain_image(head: bytes) -> bool:
    """True for PNG or JPEG file signatures (public sets such as IU-Xray ship PNGs)."""
    return head.startswith(PNG_MAGIC) or head.startswith(JPEG_MAGIC)


def read_image_file(source: str | Path | BinaryIO, *, name: str | None = None, frame: int | None = None) -> Image:
    """Read a DICOM, PNG or JPEG file into an ``Image``.

    Args:
        source: a path or a binary file object.
        name: how the file is named in errors and in ``Image.source`` (default: the path).
        frame: for multi-frame DICOM, the frame to take; ``None`` (default) refuses multi-frame input.
    """
    label = name if name is not None else str(source)
    data = _read_bytes(source, label)
    if is_plain_image(data[:8]):
        return read_plain_image(data, name=label)
    return read_dicom_bytes(data, name=label, frame=frame)


def read_dicom_bytes(data: bytes, *, name: str, frame: int | None = None) -> Image:
    ds = parse_dicom_bytes(data, name=name)
    return dataset_to_image(ds, name=name, frame=frame, content=data)


def dataset_to_image(ds: Dataset, *, name: str, frame: int | None = None, content: bytes = b"") -> Image:
    """Decode ``ds`` (a parsed DICOM dataset) into an ``Image``; ``name`` labels errors.

    ``content`` (the file's bytes) seeds UIDs derived for a file that lacks them; it is hashed only then.
    """
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise NoPixelDataError(f"{name}: DICOM file has no pixel data (SOP class {_sop_class_name(ds)})")
    n_frames = _number_of_frames(ds)
    if n_frames > 1 and frame is None:
        raise MultiFrameError(f"{name}: multi-frame image with {n_frames} frames where a single frame is expected")
    if frame is not None and not 0 <= frame < n_frames:
        raise MultiFrameError(f"{name}: frame {frame} requested but the image has {n_frames} frame(s)")
    pixels = _decode(ds, name, index=frame if n_frames > 1 else None)
    display = _display(pixels, ds, name)

    fallback = _LazyHash(content or name.encode())
    view, view_source = detect_view(ds)
    return Image(
        array=display,
        sop_instance_uid=_uid(ds, "SOPInstanceUID", fallback, "sop"),
        series_instance_uid=_uid(ds, "SeriesInstanceUID", fallback, "series"),
        study_instance_uid=_uid(ds, "StudyInstanceUID", fallback, "study"),
        source=name,
        modality=_code_string(ds, "Modality"),
        sop_class_uid=str(ds.SOPClassUID) if ds.get("SOPClassUID") else None,
        body_part=_code_string(ds, "BodyPartExamined"),
        view=view,
        view_source=view_source,
        laterality=detect_laterality(ds),
        pixel_spacing_mm=_pixel_spacing(ds),
        photometric_interpretation=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        bits_stored=int(ds.get("BitsStored", 8) or 8),
        transfer_syntax_uid=str(_transfer_syntax(ds)) if _transfer_syntax(ds) else None,
        instance_number=_int_or_none(ds.get("InstanceNumber")),
        number_of_frames=n_frames,
        frame_index=frame or 0,
    )


def _read_bytes(source: str | Path | BinaryIO, label: str) -> bytes:
    if isinstance(source, (str, Path)):
        try:
            return Path(source).read_bytes()
        except FileNotFoundError as e:
            raise NotDicomError(f"{label}: no such file") from e
        except IsADirectoryError as e:
            raise NotDicomError(f"{label}: is a directory, not a file") from e
    return source.read()


def check_image_size(rows: int, columns: int, *, name: str, frames: int = 1, samples: int = 1) -> None:
    """Refuse an image whose declared size is over :data:`MAX_IMAGE_PIXELS` before it is decoded: a 164 KB PNG
    can declare 13,000 x 13,000 pixels and take gigabytes once decoded. The same limit at every door."""
    declared = int(rows) * int(columns) * max(int(frames), 1) * max(int(samples), 1)
    if declared > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(
            f"{name}: the image declares {rows} x {columns} pixels"
            + (f" x {frames} frames" if frames > 1 else "")
            + (f" x {samples} samples" if samples > 1 else "")
            + f", over the limit of {MAX_IMAGE_PIXELS:,} values"
        )


def parse_dicom_bytes(data: bytes, *, name: str) -> Dataset:
    """The one rule radlvlm reads DICOM bytes by, at every door (uploads, files, de-identification, archives).

    A Part 10 file is read as it is. A dataset without the 128-byte preamble and 'DICM' prefix (some archives
    hold them) is accepted only when a forced parse finds what an image must have (SOP Class UID, Rows, pixel
    data). Every element is converted here, so a damaged element fails now, as "not readable", rather than
    half-way through de-identification. Errors name the input and the error type, never a value.
    """
    if not data:
        raise NotDicomError(f"{name}: empty file")
    try:
        ds = dcmread(io.BytesIO(data))
    except InvalidDicomError:
        ds = None
    except Exception as e:  # pydicom raises assorted errors on damaged headers
        raise NotDicomError(f"{name}: not a readable DICOM file ({type(e).__name__})") from e
    if ds is None:
        try:
            forced = dcmread(io.BytesIO(data), force=True)
            if "SOPClassUID" in forced and any(keyword in forced for keyword in _PIXEL_KEYWORDS) and "Rows" in forced:
                ds = forced
        except Exception:  # a forced parse of a non-DICOM file fails in many ways; all mean "not DICOM"
            pass
    if ds is None:
        raise NotDicomError(f"{name}: not a DICOM file (no 'DICM' prefix) and not a PNG or JPEG image")
    try:
        for _ in ds.iterall():
            pass
    except NotImplementedError:
        pass  # a transfer syntax pydicom cannot read elements of: decoding says so, by name, further on
    except Exception as e:  # a raw element that does not convert; its message may quote the value
        raise NotDicomError(f"{name}: not a readable DICOM file ({type(e).__name__})") from e
    if "Rows" in ds and "Columns" in ds:
        try:
            size = [int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames", 1) or 1)]
            size.append(int(ds.get("SamplesPerPixel", 1) or 1))
        except (TypeError, ValueError) as e:
            raise NotDicomError(f"{name}: image geometry attributes are malformed") from e
        check_image_size(size[0], size[1], frames=size[2], samples=size[3], name=name)
    return ds


def _transfer_syntax(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return UID(str(meta.TransferSyntaxUID))
    return None


def _decode(ds: Dataset, name: str, index: int | None) -> np.ndarray:
    syntax = _transfer_syntax(ds)
    syntax_name = syntax.name if syntax is not None else "unknown transfer syntax"
    bits = ds.get("BitsStored", "?")
    # With a window or VOI LUT, the display lookup table ignores bits above Bits Stored itself
    # (display.stored_value_of_word), so pydicom's extra masking pass over the image (~1.5 ms for a
    # 2k x 2.5k radiograph) is skipped; without one, the data range is read from corrected values.
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    grayscale_words = photometric.startswith("MONOCHROME") and ds.get("BitsAllocated") in (8, 16)
    correct_unused_bits = not (grayscale_words and not uses_data_range(ds))
    try:
        return pixel_array(ds, index=index, correct_unused_bits=correct_unused_bits)
    except NotImplementedError as e:
        raise UnsupportedTransferSyntaxError(
            f"{name}: no installed decoder supports {syntax_name} ({syntax}); pixel data cannot be read"
        ) from e
    except RuntimeError as e:
        text = str(e)
        reasons = [line.strip() for line in text.splitlines()[1:] if line.strip()]
        if "all available plugins" not in text:
            raise DecodeError(f"{name}: {syntax_name} pixel data could not be decoded ({text.splitlines()[0]})") from e
        detail = "; ".join(reasons)
        # When a decoder states it lacks support for this variant (e.g. 12-bit JPEG Extended), say so;
        # otherwise every decoder choked on the data itself, which means it is corrupt or truncated.
        if any(
            word in reason.lower()
            for reason in reasons
            for word in ("does not support", "not supported", "unsupported")
        ):
            raise UnsupportedTransferSyntaxError(
                f"{name}: no installed decoder could decode this {syntax_name} pixel data ({bits}-bit stored): {detail}"
            ) from e
        raise DecodeError(f"{name}: {syntax_name} pixel data is corrupt or truncated; decoders said: {detail}") from e
    except (ValueError, EOFError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DecodeError(f"{name}: pixel data is truncated or corrupt ({syntax_name}): {first}") from e
    except AttributeError as e:
        # pydicom raises AttributeError when a required Image Pixel attribute (Rows, Bits Allocated…) is absent.
        raise DecodeError(f"{name}: image pixel attributes are incomplete: {e}") from e


def _display(pixels: np.ndarray, ds: Dataset, name: str) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    try:
        if photometric == "PALETTE COLOR":
            rgb = apply_color_lut(pixels, ds)
            bits = 16 if rgb.dtype.itemsize > 1 else 8
            return rgb_to_display(rgb, bits)
        if samples == 3 or pixels.ndim == 3:
            # pydicom has already converted YBR_FULL/YBR_FULL_422 to RGB.
            return rgb_to_display(pixels, int(ds.get("BitsStored", 8) or 8))
        return to_display(pixels, ds)
    except (ValueError, KeyError, AttributeError, IndexError) as e:
        raise DecodeError(
            f"{name}: display transform failed for {photometric} pixels of shape {pixels.shape}: {e}"
        ) from e


def read_plain_image(data: bytes, *, name: str) -> Image:
    try:
        with PILImage.open(io.BytesIO(data)) as picture:
            check_image_size(picture.size[1], picture.size[0], name=name)  # from the header, before decoding
            picture.load()
            mode = picture.mode
            bits = 16 if mode.startswith("I") else 8
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(picture, dtype=np.float32)
                maximum = 65535.0 if mode.startswith("I;16") else max(float(array.max()), 1.0)
                pixels = np.clip(array / maximum, 0.0, 1.0)
            else:
                pixels = np.asarray(picture.convert("L"), dtype=np.float32) / 255.0
    except PILImage.DecompressionBombError as e:  # PIL's own, far higher limit, met while reading the header
        raise ImageTooLargeError(f"{name}: the image declares over {MAX_IMAGE_PIXELS:,} pixels") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DecodeError(f"{name}: PNG/JPEG image is truncated or corrupt ({type(e).__name__})") from e
    content_hash = hashlib.sha256(data).hexdigest()
    study_uid = _derived_uid(content_hash, "study")
    return Image(
        array=np.ascontiguousarray(pixels, dtype=np.float32),
        sop_instance_uid=_derived_uid(content_hash, "sop"),
        series_instance_uid=_derived_uid(content_hash, "series"),
        study_instance_uid=study_uid,
        source=name,
        modality=None,
        photometric_interpretation="MONOCHROME2",
        bits_stored=bits,
        view_source="none",
    )


def _derived_uid(content_hash: str, role: str) -> str:
    digest = hashlib.sha256(f"{role}:{content_hash}".encode()).digest()[:16]
    return _DERIVED_UID_ROOT + str(int.from_bytes(digest, "big"))


class _LazyHash:
    """sha256 of a file's bytes, computed only when a UID has to be derived (hashing 10 MB costs ~5 ms)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._digest: str | None = None

    def __str__(self) -> str:
        if self._digest is None:
            self._digest = hashlib.sha256(self._data).hexdigest()
        return self._digest


def _uid(ds: Dataset, keyword: str, content: _LazyHash, role: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    return value if value else _derived_uid(str(content), role)


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            if value is not None and len(value) == 2:
                row, column = float(value[0]), float(value[1])
                if row > 0 and column > 0:
                    return (row, column)
        except (TypeError, ValueError):
            continue
    return None


def _code_string(ds: Dataset, keyword: str) -> str | None:
    value = str(ds.get(keyword, "") or "").strip().upper()
    return value or None


def _int_or_none(value: object) -> int | None:
    try:
        return int(value) if value not in (None, "") else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _sop_class_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    return UID(str(uid)).name if uid else "unknown"
