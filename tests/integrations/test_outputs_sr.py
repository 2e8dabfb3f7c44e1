"""The draft as a DICOM SR, built with highdicom from a real chest CR and read back through highdicom."""

from __future__ import annotations

import io
import shutil
import subprocess

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from testsupport import write_dataset

from radlvlm.errors import InputError
from radlvlm.integrations.report import AI_DRAFT_NOTICE, DraftReport, StudyIdentifiers, device_uid
from radlvlm.integrations.sr import build_draft_sr, read_draft_sr, sr_to_bytes

FINDINGS = "Lungs are clear.\nNo pleural effusion — heart size normal (CTR < 0.5)."
IMPRESSION = "No acute cardiopulmonary abnormality."
MODEL = "radlvlm-test-0.1"


def test_sr_references_flags_observer_and_texts(rg1: Dataset, tmp_path) -> None:
    sr = build_draft_sr([rg1], FINDINGS, IMPRESSION, model_id=MODEL, institution_name="Test Hospital")
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    # Written as a Part 10 file (preamble + file meta), as STOW-RS / C-STORE need, then read by highdicom.
    data = sr_to_bytes(sr)
    assert data[128:132] == b"DICM"
    path = write_dataset(sr, tmp_path / "draft.dcm")
    back = hd.sr.srread(path)
    assert isinstance(back, hd.sr.ComprehensiveSR)
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian

    read = read_draft_sr(data)
    assert read.findings == FINDINGS
    assert read.impression == IMPRESSION
    assert AI_DRAFT_NOTICE in read.notice and MODEL in read.notice
    assert (read.completion_flag, read.verification_flag, read.preliminary_flag) == (
        "PARTIAL",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    assert read.observer_type == "Device"
    assert read.model_id == MODEL
    assert read.manufacturer == "radlvlm"
    assert read.device_uid == device_uid(MODEL)
    assert read.referenced_sop_instance_uids == (rg1.SOPInstanceUID,)
    assert read.content_image_uids == (rg1.SOPInstanceUID,)
    # The original study's identifiers, copied from the evidence by highdicom (the SR files under that study).
    assert back.StudyInstanceUID == rg1.StudyInstanceUID
    assert back.PatientID == rg1.PatientID
    assert back.AccessionNumber == rg1.AccessionNumber
    assert back.SeriesInstanceUID != rg1.SeriesInstanceUID
    assert back.Modality == "SR"
    assert back.Manufacturer == "radlvlm"
    assert "NOT VERIFIED" in back.SeriesDescription
    assert back.InstitutionName == "Test Hospital"
    # Evidence is listed in the header with the study and series it belongs to.
    assert back.get_evidence() == [(rg1.StudyInstanceUID, rg1.SeriesInstanceUID, rg1.SOPInstanceUID, rg1.SOPClassUID)]
    # TID 2000 root with LOINC sections.
    assert back.ContentTemplateSequence[0].TemplateIdentifier == "2000"
    headings = [
        item.ConceptNameCodeSequence[0].CodeValue for item in back.ContentSequence if item.ValueType == "CONTAINER"
    ]
    assert headings == ["55112-7", "59776-5", "19005-8"]
    # The evidence itself is untouched (no pixel data copied, nothing added).
    assert "PixelData" in rg1 and "PixelData" not in back


def test_sr_from_dataset_and_fixed_uids(rg1: Dataset) -> None:
    sr = build_draft_sr(
        [rg1],
        FINDINGS,
        "",
        model_id=MODEL,
        series_instance_uid="1.2.3.4",
        sop_instance_uid="1.2.3.4.5",
        series_number=77,
        instance_number=3,
    )
    ds = pydicom.dcmread(io.BytesIO(sr_to_bytes(sr)))
    read = read_draft_sr(ds)
    assert (read.sop_instance_uid, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber) == (
        "1.2.3.4.5",
        "1.2.3.4",
        77,
        3,
    )
    assert read.findings == FINDINGS and read.impression == ""
    found = hd.sr.utils.find_content_items(ds, name=codes.LN.Impressions, recursive=True)
    assert found == []  # an empty section is left out, not written empty


def test_sr_utf8_text_survives_an_ascii_evidence(rg1: Dataset) -> None:
    rg1.SpecificCharacterSet = "ISO_IR 100"
    text = "Opacité basale droite; Ø 5 mm — 肺"
    read = read_draft_sr(sr_to_bytes(build_draft_sr([rg1], text, IMPRESSION, model_id=MODEL)))
    assert read.findings == text


def test_sr_refuses_bad_evidence_without_leaking_identifiers(rg1: Dataset) -> None:
    with pytest.raises(InputError, match="at least one evidence"):
        build_draft_sr([], FINDINGS, IMPRESSION, model_id=MODEL)
    other = Dataset()
    other.update(rg1)
    other.StudyInstanceUID = "1.2.3"
    with pytest.raises(InputError, match="2 studies"):
        build_draft_sr([rg1, other], FINDINGS, IMPRESSION, model_id=MODEL)
    del other.SOPInstanceUID
    with pytest.raises(InputError, match=r"evidence\[0\] has no SOPInstanceUID") as err:
        build_draft_sr([other], FINDINGS, IMPRESSION, model_id=MODEL)
    assert rg1.PatientID not in str(err.value)
    with pytest.raises(InputError, match="neither findings nor impression"):
        build_draft_sr([rg1], " ", "", model_id=MODEL)
    with pytest.raises(InputError, match="control character"):
        build_draft_sr([rg1], "a\x00b", "", model_id=MODEL)
    with pytest.raises(InputError, match="not a valid DICOM UID"):
        build_draft_sr([rg1], FINDINGS, IMPRESSION, model_id=MODEL, sop_instance_uid="not-a-uid")


def test_sr_evidence_missing_type2_patient_attributes(rg1: Dataset) -> None:
    for keyword in ("PatientBirthDate", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        if keyword in rg1:
            delattr(rg1, keyword)
    read = read_draft_sr(sr_to_bytes(build_draft_sr([rg1], FINDINGS, IMPRESSION, model_id=MODEL)))
    assert read.referenced_sop_instance_uids == (rg1.SOPInstanceUID,)


def test_read_draft_sr_refuses_other_objects(rg1: Dataset) -> None:
    with pytest.raises(InputError, match="not a readable DICOM SR"):
        read_draft_sr(rg1)


def test_draft_report_and_identifiers_keep_phi_out_of_repr(rg1: Dataset) -> None:
    ids = StudyIdentifiers.from_dataset(rg1)
    assert rg1.PatientID not in repr(ids) and str(rg1.PatientName) not in repr(ids)
    report = DraftReport(findings=FINDINGS, impression=IMPRESSION, model_id=MODEL)
    assert FINDINGS not in repr(report)
    with pytest.raises(InputError, match="at most 64"):
        DraftReport(findings="x", impression="", model_id="m" * 65)
    with pytest.raises(InputError, match="patient_id is empty"):
        StudyIdentifiers(study_instance_uid="1.2.3", patient_id="")


def test_draft_report_from_engine_result(rg1: Dataset) -> None:
    from radlvlm.engine import Timings
    from radlvlm.tasks.drafting import DraftResult

    result = DraftResult(
        findings=FINDINGS,
        impression=IMPRESSION,
        text=f"FINDINGS: {FINDINGS} IMPRESSION: {IMPRESSION}",
        finish_reason="eos",
        new_tokens=20,
        model_id=MODEL,
        timings=Timings(queued_ms=0.0, compute_ms=1.0, total_ms=1.0, batch_size=1),
    )
    report = DraftReport.from_draft_result(result)
    assert (report.findings, report.impression, report.model_id) == (FINDINGS, IMPRESSION, MODEL)
    read = read_draft_sr(sr_to_bytes(build_draft_sr([rg1], report.findings, report.impression, model_id=MODEL)))
    assert read.findings == FINDINGS


def test_dcmtk_reads_the_sr_as_tid_2000(rg1: Dataset, tmp_path) -> None:
    """An independent reader: dcmtk's dsrdump (Debian dcmtk) parses the document tree and its template id."""
    dsrdump = shutil.which("dsrdump")
    if dsrdump is None:
        pytest.skip("dcmtk's dsrdump not installed (apt-get install dcmtk)")
    path = write_dataset(build_draft_sr([rg1], FINDINGS, IMPRESSION, model_id=MODEL), tmp_path / "draft.dcm")
    out = subprocess.run([dsrdump, "+Pt", str(path)], capture_output=True, text=True, timeout=30, check=True).stdout
    assert "Comprehensive SR Document" in out
    assert "TID 2000 (DCMR)" in out
    assert "Completion Flag     : PARTIAL" in out and "Verification Flag   : UNVERIFIED" in out
    assert '<has obs context CODE:(,,"Observer Type")=(121007,DCM,"Device")>' in out
    assert f'<has obs context TEXT:(,,"Device Observer Name")="{MODEL}">' in out
