"""Files, folders and zips into studies; every kind of bad input gets its specific error, named by file."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from testsupport import pydicom_file, shared_path, to_bytes

from radlvlm.errors import (
    DecodeError,
    EmptyInputError,
    InputError,
    MultiFrameError,
    NoPixelDataError,
    NotDicomError,
    UnsupportedTransferSyntaxError,
)
from radlvlm.imaging import load_studies, read_image_file
from radlvlm.imaging.loader import inspect_path
from radlvlm.imaging.study import View


def _truncated_copy(source: Path, target: Path, keep: float = 0.6) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


def test_non_dicom_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not an image at all\n" * 20)
    with pytest.raises(NotDicomError, match=r"notes\.txt"):
        read_image_file(path)
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(NotDicomError, match="empty file"):
        read_image_file(tmp_path / "empty.dcm")


def test_dicom_without_pixel_data() -> None:
    with pytest.raises(
        NoPixelDataError, match=r"rtplan\.dcm: DICOM file has no pixel data \(SOP class RT Plan Storage\)"
    ):
        read_image_file(pydicom_file("rtplan.dcm"))


def test_truncated_pixel_stream() -> None:
    with pytest.raises(DecodeError, match="truncated or corrupt"):
        read_image_file(pydicom_file("MR_truncated.dcm"))


def test_truncated_real_chest_names_the_file_but_no_patient_data(tmp_path: Path) -> None:
    path = _truncated_copy(pydicom_file("RG1_UNCR.dcm"), tmp_path / "rg1_cut.dcm")
    with pytest.raises(DecodeError) as caught:
        read_image_file(path)
    message = str(caught.value)
    assert "rg1_cut.dcm" in message
    ds = dcmread(pydicom_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    for phi in (str(ds.PatientName), str(ds.PatientID), str(ds.get("PatientBirthDate", "")), "CompressedSamples"):
        if phi:
            assert phi not in message


def test_corrupt_jpeg2000_stream(tmp_path: Path) -> None:
    ds = dcmread(pydicom_file("RG1_J2KR.dcm"))
    # Keep the encapsulation intact but damage the codestream inside the first fragment.
    from pydicom.encaps import encapsulate, generate_fragmented_frames

    frames = [b"".join(fragments) for fragments in generate_fragmented_frames(ds.PixelData, number_of_frames=1)]
    damaged = frames[0][: len(frames[0]) // 3]  # the codestream stops a third of the way through
    damaged += b"\x00" * (len(damaged) % 2)
    ds.PixelData = encapsulate([damaged])
    path = tmp_path / "j2k_damaged.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DecodeError, match=r"j2k_damaged.dcm: JPEG 2000 .* is corrupt or truncated") as caught:
        read_image_file(path)
    assert not isinstance(caught.value, UnsupportedTransferSyntaxError)


def test_twelve_bit_jpeg_extended_that_no_decoder_reads_says_so() -> None:
    with pytest.raises(UnsupportedTransferSyntaxError) as caught:
        read_image_file(pydicom_file("JPEG-lossy.dcm"))
    message = str(caught.value)
    assert "JPEG-lossy.dcm" in message
    assert "no installed decoder could decode this JPEG Extended" in message
    assert "12-bit" in message


def test_unknown_transfer_syntax(tmp_path: Path) -> None:
    ds = dcmread(pydicom_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video: no pixel decoder exists
    ds.PixelData = (
        b"\xfe\xff\x00\xe0\x00\x00\x00\x00"
        + b"\xfe\xff\x00\xe0\x04\x00\x00\x00abcd"
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    )
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    path = tmp_path / "mpeg2.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(UnsupportedTransferSyntaxError, match="MPEG2"):
        read_image_file(path)


def test_multiframe_refused_where_one_frame_is_expected() -> None:
    with pytest.raises(MultiFrameError, match="10 frames"):
        read_image_file(pydicom_file("emri_small_jpeg_ls_lossless.dcm"))
    with pytest.raises(MultiFrameError, match="frame 12 requested"):
        read_image_file(pydicom_file("emri_small_jpeg_ls_lossless.dcm"), frame=12)


def test_empty_folder_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(EmptyInputError, match="contains no files"):
        load_studies(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        load_studies(tmp_path / "absent")
    (tmp_path / ".hidden").write_text("x")
    with pytest.raises(EmptyInputError):
        load_studies(tmp_path)


def _study_copy(rg1: Dataset, study_uid: str, series_uid: str, number: int) -> Dataset:
    ds = rg1.copy()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    return ds


@pytest.fixture
def mixed_folder(tmp_path: Path, rg1: Dataset) -> Path:
    """Two studies (one with two series, one frontal and one lateral) plus five bad files."""
    folder = tmp_path / "incoming"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    study_one, study_two = generate_uid(), generate_uid()
    series_frontal, series_lateral = generate_uid(), generate_uid()
    (folder / "a" / "frontal.dcm").write_bytes(to_bytes(_study_copy(rg1, study_one, series_frontal, 1)))
    lateral = _study_copy(rg1, study_one, series_lateral, 2)
    lateral.ViewPosition = "LL"
    (folder / "a" / "lateral.dcm").write_bytes(to_bytes(lateral))
    (folder / "b" / "other.dcm").write_bytes(to_bytes(_study_copy(rg1, study_two, generate_uid(), 1)))
    (folder / "b" / "readme.txt").write_text("export notes")
    shutil.copy(pydicom_file("rtplan.dcm"), folder / "b" / "plan.dcm")
    shutil.copy(pydicom_file("MR_truncated.dcm"), folder / "b" / "cut.dcm")
    shutil.copy(pydicom_file("JPEG-lossy.dcm"), folder / "b" / "jpeg12.dcm")
    shutil.copy(pydicom_file("emri_small_jpeg_ls_lossless.dcm"), folder / "b" / "multi.dcm")
    (folder / "DICOMDIR").write_bytes(b"index")
    return folder


def test_folder_with_bad_files_yields_good_studies_and_reports_bad_ones(mixed_folder: Path) -> None:
    result = load_studies(mixed_folder)
    assert len(result.studies) == 2 and result.n_images == 3
    errors = {Path(f.source).name: f.error for f in result.failures}
    assert errors == {
        "readme.txt": "NotDicomError",
        "plan.dcm": "NoPixelDataError",
        "cut.dcm": "DecodeError",
        "jpeg12.dcm": "UnsupportedTransferSyntaxError",
        "multi.dcm": "MultiFrameError",
    }
    assert any("DICOMDIR" in s for s in result.skipped)
    two_series = next(s for s in result.studies if len(s.series) == 2)
    assert sorted(v.value for v in two_series.views) == ["LL", "PA"]
    assert [i.view for i in two_series.frontal_images()] == [View.PA]
    assert [i.view for i in two_series.lateral_images()] == [View.LL]


def test_zip_archive_gives_the_same_studies_as_the_folder(mixed_folder: Path, tmp_path: Path) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(mixed_folder.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(mixed_folder).as_posix())
    from_zip = load_studies(archive)
    from_folder = load_studies(mixed_folder)
    assert [s.study_instance_uid for s in from_zip.studies] == [s.study_instance_uid for s in from_folder.studies]
    assert len(from_zip.failures) == len(from_folder.failures) == 5
    assert all("export.zip!" in f.source for f in from_zip.failures)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w"):
        pass
    with pytest.raises(EmptyInputError, match="zip archive contains no files"):
        load_studies(empty)


def test_inspect_summary_carries_no_phi_from_a_file_with_realistic_phi() -> None:
    path = shared_path("dicom", "deid-data", "cat.dcm")
    header = dcmread(path, stop_before_pixels=True)
    summary = json.dumps(inspect_path(path))
    identifying = [
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "InstitutionName",
        "InstitutionAddress",
        "ReferringPhysicianName",
        "OperatorsName",
        "PerformingPhysicianName",
        "AccessionNumber",
        "SeriesDescription",
        "StudyDescription",
        "StudyDate",
    ]
    checked = 0
    for keyword in identifying:
        value = str(header.get(keyword, "") or "").strip()
        if len(value) >= 3:
            checked += 1
            for part in [value, *str(value).replace("^", " ").split()]:
                if len(part) >= 4:
                    assert part not in summary, f"{keyword} leaked into the inspect summary"
    assert checked >= 5
    assert json.loads(summary)["studies"][0]["series"][0]["images"][0]["body_part"] == "CHEST"


def test_real_covid_png_and_real_dicom_samples_load() -> None:
    folder = shared_path("covid_chestxray")
    pngs = sorted(folder.rglob("*.png"))[:3]
    if not pngs:
        pytest.skip(f"no PNG under {folder}")
    for png in pngs:
        image = read_image_file(png)
        assert image.pixels.ndim == 2 and max(image.shape) <= 512
        assert 0.0 <= float(image.pixels.min()) < float(image.pixels.max()) <= 1.0
    result = load_studies(shared_path("dicom"))
    assert {s.images[0].modality for s in result.studies} >= {"CR", "DX", "CT"}
