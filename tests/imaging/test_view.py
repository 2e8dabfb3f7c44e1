"""View and laterality detection from ViewPosition, ViewCodeSequence and descriptions."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from testsupport import pydicom_file, shared_path

from radlvlm.imaging.study import Laterality, View
from radlvlm.imaging.view import detect_laterality, detect_view, view_from_description


def _coded(value: str, scheme: str, meaning: str) -> Dataset:
    ds = Dataset()
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    ds.ViewCodeSequence = Sequence([item])
    return ds


def test_real_cr_chest_pa_from_view_position() -> None:
    ds = dcmread(pydicom_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    assert detect_view(ds) == (View.PA, "ViewPosition")


def test_real_dx_with_view_code_sequence_when_view_position_is_absent() -> None:
    ds = dcmread(shared_path("dicom", "deid-data", "cat.dcm"), stop_before_pixels=True)
    assert detect_view(ds) == (View.AP, "ViewPosition")
    del ds.ViewPosition
    # Its code is the legacy SNOMED RT R-10206 under the old scheme designator "SNM3".
    assert detect_view(ds) == (View.AP, "ViewCodeSequence")
    del ds.ViewCodeSequence
    assert detect_view(ds) == (View.LATERAL, "SeriesDescription")  # "Thorax LAT"
    assert detect_laterality(ds) == Laterality.BOTH


@pytest.mark.parametrize(
    ("value", "scheme", "view"),
    [
        ("272479007", "SCT", View.PA),
        ("R-10214", "SRT", View.PA),
        ("399348003", "SCT", View.AP),
        ("399173006", "SCT", View.LL),
        ("R-10232", "SRT", View.LATERAL),
        ("399067008", "SCT", View.LATERAL),
        ("R-10206", "SNM3", View.AP),
    ],
)
def test_coded_views_snomed_ct_and_legacy_rt(value: str, scheme: str, view: View) -> None:
    assert detect_view(_coded(value, scheme, "")) == (view, "ViewCodeSequence")


@pytest.mark.parametrize(
    ("text", "view"),
    [
        ("CHEST PA", View.PA),
        ("PA CHEST", View.PA),
        ("Chest P.A.", View.PA),
        ("CXR PA and LAT", View.PA),
        ("AP PORTABLE", View.AP),
        ("Chest supine", View.AP),
        ("Thorax LAT", View.LATERAL),
        ("CHEST LATERAL", View.LATERAL),
        ("left lateral decubitus", View.LL),
        ("CHEST", None),
        ("", None),
        ("PATIENT", None),
    ],
)
def test_view_from_description(text: str, view: View | None) -> None:
    assert view_from_description(text) == view


def test_view_position_defined_terms_and_unknown() -> None:
    for term, view in [
        ("PA", View.PA),
        ("AP", View.AP),
        ("LL", View.LL),
        ("LATERAL", View.LATERAL),
        ("RL", View.LATERAL),
    ]:
        ds = Dataset()
        ds.ViewPosition = term
        assert detect_view(ds) == (view, "ViewPosition")
    assert detect_view(Dataset()) == (View.UNKNOWN, "none")
    assert View.PA.is_frontal and View.LL.is_lateral and not View.UNKNOWN.is_frontal


def test_laterality_prefers_image_laterality() -> None:
    ds = Dataset()
    ds.Laterality = "R"
    ds.ImageLaterality = "L"
    assert detect_laterality(ds) == Laterality.LEFT
    del ds.ImageLaterality
    assert detect_laterality(ds) == Laterality.RIGHT
    assert detect_laterality(Dataset()) is None


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.zeros((0, 4), np.float32), "non-empty 2-D float32"),
        (np.zeros((4, 4), np.float64), "non-empty 2-D float32"),
        (np.zeros((2, 4, 4), np.float32), "non-empty 2-D float32"),
        (np.full((4, 4), 1.5, np.float32), r"in \[0, 1\]"),
        (np.full((4, 4), np.nan, np.float32), r"in \[0, 1\]"),
    ],
)
def test_an_image_is_validated_where_it_is_made(array: np.ndarray, reason: str) -> None:
    from radlvlm.errors import InputError
    from radlvlm.imaging import Image

    with pytest.raises(InputError, match=reason):
        Image(array, "2.25.1", "2.25.2", "2.25.3", "made.png")
    with pytest.raises(InputError, match="study_instance_uid is empty"):
        Image(np.zeros((4, 4), np.float32), "2.25.1", "2.25.2", "", "made.png")
