"""The hospital layout: DICOM studies + a reports file; training refuses data that is not de-identified."""

from __future__ import annotations

import copy
import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from testsupport import pydicom_file

from radlvlm.errors import InputError
from radlvlm.safety.dicom_deid import DicomDeidentifier
from radlvlm.safety.pseudonyms import PseudonymMap
from radlvlm.training.data import TaskMixture, build_examples, write_manifest
from radlvlm.training.sources import HospitalSource

KEY = bytes(range(32))
UID_ROOT = "1.2.826.0.1.3680043.10.999"
# Every identifying value the synthetic headers and reports carry: none may reach an example.
PHI = ["ZQDOE", "Zqdoe", "JANE", "Jane", "MRN7781234", "ACC99001122", "19400305", "03/04/2021", "Zqsmith", "ZQSMITH"]


@pytest.fixture(scope="module")
def rg1() -> Dataset:
    """A copy of pydicom-data's real CR chest PA header with an 8x8 pixel block (fast to decode)."""
    ds = dcmread(pydicom_file("RG1_UNCR.dcm"))
    ds.Rows = ds.Columns = 8
    ds.PixelData = (np.arange(64, dtype=np.uint16) * 400).tobytes()
    for keyword in ("WindowCenter", "WindowWidth"):
        del ds[keyword]
    return ds


def write_study(
    rg1: Dataset,
    folder: Path,
    index: int,
    *,
    views: tuple[str, ...] = ("PA",),
    deidentified: bool = False,
    patient: str = "ZQDOE^JANE",
    patient_id: str = "MRN7781234",
) -> str:
    """Write one study (one file per view); return its StudyInstanceUID."""
    study_uid = f"{UID_ROOT}.{index}"
    for number, view in enumerate(views, start=1):
        ds = copy.deepcopy(rg1)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = f"{study_uid}.{number}"
        ds.SOPInstanceUID = f"{study_uid}.{number}.1"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.ViewPosition = view
        ds.PatientName = patient
        ds.PatientID = patient_id
        ds.AccessionNumber = f"ACC9900112{index}"
        ds.PatientBirthDate = "19400305"
        ds.ReferringPhysicianName = "ZQSMITH^ALAN"
        if deidentified:
            ds.PatientIdentityRemoved = "YES"
            ds.DeidentificationMethod = "site PS3.15 Basic Profile"
            ds.PatientName = f"PATIENT-{index}"
            ds.PatientID = f"PID-{index}"
            ds.ReferringPhysicianName = ""
            ds.AccessionNumber = f"ACC-PSEUDO-{index}"
            ds.PatientBirthDate = ""
        path = folder / f"ZQDOE_JANE_{index}_{view}.dcm"  # file names can carry PHI too
        ds.save_as(path, enforce_file_format=True)
    return study_uid


REPORT = (
    "EXAMINATION: Chest PA.\nINDICATION: Cough. Patient Jane Zqdoe, MRN7781234.\n"
    "FINDINGS: Heart size is normal. Mild left basilar atelectasis. No pleural effusion or pneumothorax.\n"
    "IMPRESSION: Mild left basilar atelectasis. Discussed with Dr. Zqsmith on 03/04/2021."
)


def write_reports(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def assert_no_phi(texts: list[str]) -> None:
    for text in texts:
        for value in PHI:
            assert value not in text, value


def test_training_refuses_studies_that_are_not_deidentified(rg1: Dataset, tmp_path: Path) -> None:
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    done = write_study(rg1, dicom, 1, deidentified=True)
    raw = write_study(rg1, dicom, 2)
    reports = write_reports(
        tmp_path / "reports.csv",
        [
            {"study_instance_uid": done, "report": REPORT.replace("Jane Zqdoe", "the patient"), "split": "train"},
            {"study_instance_uid": raw, "report": REPORT, "split": "train"},
        ],
    )
    source = HospitalSource(dicom, reports)
    mixture = TaskMixture(check_simple=0, check_complex=0)
    dataset, report = build_examples([source], mixture=mixture, split="train", seed=0)
    assert report.sources["hospital"].dropped == {"not de-identified": 1}
    assert report.sources["hospital"].kept == len(dataset) == 1
    example = dataset[0]
    assert example.task == "draft" and example.source == "hospital"
    assert example.response.startswith("FINDINGS: Heart size is normal.")
    assert example.image is not None and example.image.shape == (8, 8)
    assert_no_phi([example.instruction, example.response, example.study_id])

    only_raw = write_reports(tmp_path / "raw.csv", [{"study_instance_uid": raw, "report": REPORT}])
    with pytest.raises(InputError, match=r"kept no record in any split \(no report 1, not de-identified 1\)"):
        build_examples([HospitalSource(dicom, only_raw)], mixture=mixture, split="train", seed=0)


def test_deidentification_on_the_way_in(rg1: Dataset, tmp_path: Path) -> None:
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    good = write_study(rg1, dicom, 1)
    lateral = write_study(rg1, dicom, 2, views=("LATERAL",))
    no_findings = write_study(rg1, dicom, 3)
    no_report = write_study(rg1, dicom, 4)
    both = write_study(rg1, dicom, 5, views=("LATERAL", "PA"), patient="ZQROE^ANN", patient_id="MRN5550001")
    burned = write_study(rg1, dicom, 6)
    for path in dicom.glob("*_6_*.dcm"):
        ds = dcmread(path)
        ds.BurnedInAnnotation = "YES"  # the de-identifier refuses burned-in text by default
        ds.save_as(path)
    rows = [
        {"study_instance_uid": good, "report": REPORT, "split": "train"},
        {"study_instance_uid": lateral, "report": REPORT, "split": "train"},
        {"study_instance_uid": no_findings, "report": "IMPRESSION: Normal chest.", "split": "train"},
        {"study_instance_uid": f"{UID_ROOT}.77", "report": REPORT, "split": "train"},
        {"study_instance_uid": both, "report": REPORT.replace("Jane Zqdoe", "Ann Zqroe"), "split": "train"},
        {"study_instance_uid": burned, "report": REPORT, "split": "train"},
    ]
    reports = write_reports(tmp_path / "reports.csv", rows)
    assert no_report
    pseudonyms = PseudonymMap(KEY)
    work = tmp_path / "deid"
    source = HospitalSource(dicom, reports, deidentifier=DicomDeidentifier(pseudonyms), work_dir=work)
    dataset, report = build_examples([source], mixture=TaskMixture(), split="train", seed=0)
    counts = report.sources["hospital"]
    assert counts.kept == 2
    assert counts.dropped == {
        "lateral only": 1,
        "no findings": 1,
        "image missing": 1,
        "no report": 1,
        "de-identification failed": 1,
    }
    assert dataset.task_counts() == {"draft": 2, "check_simple": 1, "check_complex": 1, "check_image": 0}

    texts: list[str] = []
    for index in range(len(dataset)):
        example = dataset[index]
        assert example.image is not None and example.image.shape == (8, 8)
        texts += [example.instruction, example.response, example.study_id, json.dumps(dataset.metadata(index))]
        assert example.study_id.startswith("2.25.") and not example.study_id.startswith(UID_ROOT)
    drafts = [dataset[i] for i in range(len(dataset)) if dataset[i].task == "draft"]
    assert all("Indication: Cough." in d.instruction for d in drafts)
    assert any("PATIENT-" in t for t in texts)  # the header's patient got the same pseudonym in the text
    assert_no_phi(texts)
    assert not any("Zqroe" in t or "MRN5550001" in t for t in texts)
    manifest = write_manifest(dataset, tmp_path / "train.jsonl").read_text()
    assert_no_phi([manifest])
    assert "ZQDOE_JANE" not in manifest and "dicom/" not in manifest  # no hospital file names

    written = sorted(work.rglob("*.dcm"))
    assert written and not any("ZQDOE" in str(p) for p in written)
    for path in written:
        ds = dcmread(path)
        assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod
        assert "ZQDOE" not in str(ds.PatientName) and ds.PatientID != "MRN7781234"


def test_zip_and_accession_numbers(rg1: Dataset, tmp_path: Path) -> None:
    folder = tmp_path / "dicom"
    folder.mkdir()
    write_study(rg1, folder, 1, deidentified=True)
    write_study(rg1, folder, 2, deidentified=True, views=("AP",))
    archive = tmp_path / "studies.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(folder.iterdir()):
            handle.write(path, f"batch/{path.name}")
    reports = tmp_path / "reports.jsonl"  # JSONL here, CSV elsewhere
    rows = [
        {"accession_number": f"ACC-PSEUDO-{i}", "report": REPORT.replace("Jane Zqdoe", "the patient")} for i in (1, 2)
    ]
    reports.write_text("".join(json.dumps(row) + "\n" for row in rows))
    source = HospitalSource(archive, reports, split_fractions={"train": 1.0})
    dataset, report = build_examples(
        [source], mixture=TaskMixture(check_simple=0, check_complex=0), split="train", seed=0
    )
    assert report.sources["hospital"].kept == len(dataset) == 2
    assert {dataset[i].image.shape for i in range(2)} == {(8, 8)}


def test_reports_file_errors(rg1: Dataset, tmp_path: Path) -> None:
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    uid = write_study(rg1, dicom, 1, deidentified=True)
    unknown = write_reports(tmp_path / "a.csv", [{"study_instance_uid": uid, "report": REPORT, "mrn": "MRN7781234"}])
    with pytest.raises(InputError, match=r"a.csv: line 2: unknown column\(s\) \['mrn'\]") as error:
        HospitalSource(dicom, unknown).validate()
    assert "MRN7781234" not in str(error.value)
    no_key = write_reports(tmp_path / "b.csv", [{"report": REPORT}])
    with pytest.raises(InputError, match="needs a 'study_instance_uid' or 'accession_number' column"):
        HospitalSource(dicom, no_key).validate()
    twice = write_reports(tmp_path / "c.csv", [{"accession_number": "ACC99001122", "report": REPORT}] * 2)
    with pytest.raises(InputError, match="lines 2 and 3 have the same accession_number") as error:
        HospitalSource(dicom, twice).validate()
    assert "ACC99001122" not in str(error.value)
    empty = tmp_path / "d.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match=r"d\.jsonl: manifest is empty"):
        HospitalSource(dicom, empty).validate()
    with pytest.raises(InputError, match="not found"):
        HospitalSource(tmp_path / "missing", unknown).validate()


def test_a_patient_in_two_splits_is_refused(rg1: Dataset, tmp_path: Path) -> None:
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    first = write_study(rg1, dicom, 1, deidentified=True)
    second = write_study(rg1, dicom, 2, deidentified=True)
    for path in dicom.glob("*_2_*.dcm"):  # same pseudonymous patient as study 1
        ds = dcmread(path)
        ds.PatientID = "PID-1"
        ds.save_as(path)
    reports = write_reports(
        tmp_path / "r.csv",
        [
            {"study_instance_uid": first, "report": "FINDINGS: Clear lungs.", "split": "train"},
            {"study_instance_uid": second, "report": "FINDINGS: Clear lungs.", "split": "test"},
        ],
    )
    with pytest.raises(InputError, match="lines 2 and 3: one patient in two splits"):
        build_examples([HospitalSource(dicom, reports)], mixture=TaskMixture(), split="train", seed=0)


def test_a_header_value_left_in_the_report_drops_the_study(rg1: Dataset, tmp_path: Path) -> None:
    """Fail closed: a name that is also a report word survives report de-identification, so the study goes."""
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    uid = write_study(rg1, dicom, 1, patient="PLEURAL^ALAN")
    clean = write_study(rg1, dicom, 2)
    reports = write_reports(
        tmp_path / "r.csv",
        [
            {"study_instance_uid": uid, "report": "FINDINGS: No pleural effusion.", "split": "train"},
            {"study_instance_uid": clean, "report": "FINDINGS: No focal consolidation.", "split": "train"},
        ],
    )
    source = HospitalSource(dicom, reports, deidentifier=DicomDeidentifier(PseudonymMap(KEY)), work_dir=tmp_path / "w")
    dataset, report = build_examples(
        [source], mixture=TaskMixture(check_simple=0, check_complex=0), split="train", seed=0
    )
    assert report.sources["hospital"].dropped == {"de-identification failed": 1}
    assert [dataset.text(i)[1] for i in range(len(dataset))] == ["FINDINGS: No focal consolidation."]
