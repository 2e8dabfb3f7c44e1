"""Fixtures for the safety tests: a project key, and a synthetic dataset holding every Annex E attribute."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from radlvlm.safety.profile import annex_e_rows
from radlvlm.safety.pseudonyms import PseudonymMap

KEY = bytes(range(32))
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


@pytest.fixture
def pseudonyms() -> PseudonymMap:
    return PseudonymMap(KEY)


def marker_value(vr: str, index: int) -> object:
    """A value for ``vr`` that is unique to attribute ``index`` and easy to search for in the output."""
    base = dt.date(1990, 1, 1) + dt.timedelta(days=index)
    if vr == "PN":
        return f"ZQFAM{index:03d}^ZQGIV{index:03d}"
    if vr in ("LO", "SH", "LT", "ST", "UT", "UC", "UR"):
        return f"PHIMARK{index:03d}"
    if vr == "CS":
        return f"PHICS{index:03d}"
    if vr == "AE":
        return f"PHIAE{index:03d}"
    if vr == "DA":
        return base.strftime("%Y%m%d")
    if vr == "DT":
        return base.strftime("%Y%m%d") + "101112"
    if vr == "TM":
        return "101112"
    if vr == "UI":
        return f"1.2.826.0.1.3680043.99.{index}"
    if vr == "AS":
        return "045Y"
    if vr == "IS":
        return str(700000 + index)
    if vr == "DS":
        return "71234.5"
    if vr in ("US", "SS", "UL", "SL"):
        return 7
    if vr in ("OB", "OW", "UN"):
        return f"PHIBIN{index:03d}".encode()
    raise ValueError(vr)


def nested_item(index: int, depth: int) -> Dataset:
    """A sequence item with identifying attributes, nested ``depth`` more levels."""
    item = Dataset()
    item.PersonName = f"ZQNEST{index:03d}^D{depth}"
    item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.98.{index}.{depth}"
    item.InstitutionName = f"PHINESTINST{index:03d}"
    item.add_new(0x00091010, "LO", f"PHIPRIVNEST{index:03d}")  # private, no creator: must go
    if depth > 0:
        item.ContentSequence = Sequence([nested_item(index, depth - 1)])
        item.ReferencedImageSequence = Sequence([nested_item(index + 500, depth - 1)])
    return item


@pytest.fixture
def full_table_dataset() -> Callable[[], Dataset]:
    """Factory: an image dataset with every attribute of Table E.1-1 set to a unique marker value."""

    def build() -> Dataset:
        ds = Dataset()
        exact, _ = annex_e_rows()
        for index, tag in enumerate(sorted(exact)):
            if tag >> 16 == 0x0002:  # File Meta attributes live in file_meta
                continue
            vr = dictionary_VR(tag).split(" ")[0]
            if vr == "SQ":
                ds.add_new(tag, "SQ", Sequence([nested_item(index, 2)]))
            else:
                ds.add_new(tag, vr, marker_value(vr, index))
        # Repeating groups: overlay data and comments, curve data.
        ds.add_new(0x60003000, "OW", b"PHIOVERLAY\x00\x00")
        ds.add_new(0x60004000, "LT", "PHIOVERLAYCOMMENT")
        ds.add_new(0x50003000, "OW", b"PHICURVE\x00\x00")
        # A private block with a creator, and a private sequence.
        ds.add_new(0x00290010, "LO", "ACME PRIVATE")
        ds.add_new(0x00291001, "LO", "PHIPRIVATE")
        ds.add_new(0x00291002, "SQ", Sequence([nested_item(900, 1)]))
        # The image itself (attributes outside the table, kept).
        ds.SOPClassUID = DX_STORAGE
        ds.SOPInstanceUID = "1.2.826.0.1.3680043.99.1000001"
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.99.1000002"
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.99.1000003"
        ds.PatientName = "ZQPATIENT^ZQGIVEN"
        ds.PatientID = "PHIPID123456"
        ds.Modality = "DX"
        ds.BodyPartExamined = "CHEST"
        ds.ViewPosition = "PA"
        ds.BurnedInAnnotation = "NO"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.PixelData = (np.arange(64, dtype=np.uint16) * 60).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = DX_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return ds

    return build


def small_image(**attributes: object) -> Dataset:
    """A tiny valid DX image with the given header attributes."""
    ds = Dataset()
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(256, dtype=np.uint8).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.fixture
def make_image() -> Callable[..., Dataset]:
    return small_image
