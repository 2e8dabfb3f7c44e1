"""DICOMweb against a real Orthanc: STOW a real chest radiograph, find it with QIDO, fetch it with WADO."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from orthancsupport import Orthanc, start_orthanc
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from testsupport import pydicom_file

from radlvlm.imaging import dataset_to_image
from radlvlm.integrations.dicomweb import DicomWebSettings, DicomWebSource, PacsError, as_part10


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


def chest_study(accession: str = "ACC123") -> Dataset:
    """The real RG1 CR chest PA under fresh UIDs (so tests do not collide)."""
    ds = dcmread(pydicom_file("RG1_UNCR.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber = accession
    return ds


def test_part10_copy_has_preamble_and_file_meta() -> None:
    ds = chest_study()
    del ds.file_meta
    prepared = as_part10(ds)
    assert prepared.preamble == b"\x00" * 128
    assert prepared.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_stow_qido_wado_round_trip(orthanc: Orthanc) -> None:
    source = DicomWebSource(DicomWebSettings(orthanc.dicomweb_url))
    ds = chest_study("ACC-RT-1")
    source.store([ds])
    found = source.search_studies(accession_number="ACC-RT-1")
    assert [study["0020000D"]["Value"][0] for study in found] == [ds.StudyInstanceUID]
    assert source.search_studies(modality="CR", study_instance_uid=ds.StudyInstanceUID)
    retrieved = source.retrieve_study(ds.StudyInstanceUID)
    assert len(retrieved) == 1 and retrieved[0].SOPInstanceUID == ds.SOPInstanceUID
    image = dataset_to_image(retrieved[0], name="wado")
    original = dataset_to_image(ds, name="file")
    assert image.view.value == "PA" and (image.pixels == original.pixels).all()


def test_archive_errors_are_pacs_errors(orthanc: Orthanc, tmp_path: Path) -> None:
    source = DicomWebSource(DicomWebSettings(orthanc.dicomweb_url))
    with pytest.raises(PacsError, match=r"HTTP 404|no instance"):
        source.retrieve_study(generate_uid())
    down = DicomWebSource(DicomWebSettings("http://127.0.0.1:9/dicom-web", timeout_s=2))
    with pytest.raises(PacsError, match="unreachable"):
        down.search_studies(modality="CR")
    with pytest.raises(ValueError, match="digits separated by dots"):
        source.retrieve_study("1.2.abc")


def test_service_drafts_a_study_named_by_uid_in_the_archive(orthanc: Orthanc, tmp_path: Path) -> None:
    import httpx
    from servicesupport import build_tiny_model_dir, make_settings, start_server

    ds = chest_study("ACC-SVC-1")
    DicomWebSource(DicomWebSettings(orthanc.dicomweb_url)).store([ds])
    model_dir = build_tiny_model_dir(tmp_path / "tiny")
    settings, key, _ = make_settings(tmp_path, model_dir, dicomweb_url=orthanc.dicomweb_url)
    uv, thread, url, _ = start_server(settings)
    try:
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as client:
            drafted = client.post("/v1/drafts", data={"study_uid": ds.StudyInstanceUID})
            assert drafted.status_code == 200, drafted.text
            assert drafted.json()["image"]["view"] == "PA" and drafted.json()["image"]["modality"] == "CR"
            missing = client.post("/v1/drafts", data={"study_uid": generate_uid()})
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "study_not_found"
            both = client.post("/v1/drafts", data={"study_uid": ds.StudyInstanceUID}, files={"file": ("x.dcm", b"x")})
            assert both.status_code == 422
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
