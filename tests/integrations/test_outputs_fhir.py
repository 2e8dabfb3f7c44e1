"""The draft as a FHIR R4(B) DiagnosticReport: validates with fhir.resources and round-trips through JSON."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from pydicom.dataset import Dataset

from radlvlm.errors import InputError
from radlvlm.integrations.fhir import (
    AI_DRAFT_EXTENSION_URL,
    FHIR_VERSION,
    build_diagnostic_report,
    diagnostic_report_to_json,
    parse_diagnostic_report,
)
from radlvlm.integrations.report import AI_DRAFT_NOTICE, DraftReport, StudyIdentifiers, device_uid

REPORT = DraftReport(
    findings="Lungs are clear.\nNo <effusion> & no pneumothorax.",
    impression="No acute cardiopulmonary abnormality.",
    model_id="radlvlm-test-0.1",
)


def test_diagnostic_report_content_and_round_trip(rg1: Dataset) -> None:
    ids = StudyIdentifiers.from_dataset(rg1, issuer_of_patient_id="1.2.840.99999.1")
    issued = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    resource = build_diagnostic_report(REPORT, ids, resource_id="draft-1", sr_sop_instance_uid="1.2.3.4", issued=issued)
    assert FHIR_VERSION.startswith("4.")  # R4 family (fhir.resources' R4B subpackage)
    text = diagnostic_report_to_json(resource)
    back = parse_diagnostic_report(text)
    assert back == resource
    doc = json.loads(text)
    assert doc["resourceType"] == "DiagnosticReport" and doc["id"] == "draft-1"
    assert doc["status"] == "preliminary"
    assert doc["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "18748-4",
        "display": "Diagnostic imaging study",
    }
    assert doc["conclusion"] == REPORT.impression
    assert doc["issued"].startswith("2026-01-02T03:04:05")
    # References by the original identifiers.
    assert doc["imagingStudy"][0]["identifier"] == {
        "system": "urn:dicom:uid",
        "value": f"urn:oid:{rg1.StudyInstanceUID}",
    }
    assert doc["subject"]["identifier"] == {"system": "urn:oid:1.2.840.99999.1", "value": rg1.PatientID}
    assert doc["basedOn"][0]["identifier"]["value"] == rg1.AccessionNumber
    assert doc["identifier"][0]["value"] == "urn:oid:1.2.3.4"
    # Marked AI-generated: security label, extension, narrative, presented form title.
    assert doc["meta"]["security"][0]["code"] == "AIAST"
    assert doc["extension"][0]["url"] == AI_DRAFT_EXTENSION_URL
    assert AI_DRAFT_NOTICE in doc["extension"][0]["valueString"]
    assert AI_DRAFT_NOTICE in doc["text"]["div"] and "&lt;effusion&gt; &amp;" in doc["text"]["div"]
    form = doc["presentedForm"][0]
    assert form["title"] == AI_DRAFT_NOTICE
    plain = base64.b64decode(form["data"]).decode("utf-8")
    assert plain.startswith(AI_DRAFT_NOTICE) and REPORT.findings in plain and REPORT.impression in plain
    # Results: contained Observations made by the contained model Device.
    contained = {c["id"]: c for c in doc["contained"]}
    assert [r["reference"] for r in doc["result"]] == ["#findings", "#impression"]
    assert contained["findings"]["valueString"] == REPORT.findings
    assert contained["impression"]["valueString"] == REPORT.impression
    assert contained["findings"]["code"]["coding"][0]["code"] == "59776-5"
    assert contained["impression"]["code"]["coding"][0]["code"] == "19005-8"
    assert {contained[k]["status"] for k in ("findings", "impression")} == {"preliminary"}
    assert contained["findings"]["device"]["reference"] == "#model"
    device = contained["model"]
    assert device["resourceType"] == "Device" and device["manufacturer"] == "radlvlm"
    assert device["deviceName"][0]["name"] == REPORT.model_id
    assert device["identifier"][0]["value"] == f"urn:oid:{device_uid(REPORT.model_id)}"


def test_diagnostic_report_without_optional_identifiers() -> None:
    ids = StudyIdentifiers(study_instance_uid="1.2.3", patient_id="P1", issuer_of_patient_id="HOSP A")
    report = DraftReport(findings="Clear lungs.", impression="", model_id="m")
    doc = json.loads(diagnostic_report_to_json(build_diagnostic_report(report, ids)))
    assert "basedOn" not in doc and "conclusion" not in doc and "identifier" not in doc
    assert doc["subject"]["identifier"] == {"value": "P1", "assigner": {"display": "HOSP A"}}
    assert [r["reference"] for r in doc["result"]] == ["#findings"]


def test_diagnostic_report_bad_input() -> None:
    ids = StudyIdentifiers(study_instance_uid="1.2.3", patient_id="P1")
    with pytest.raises(InputError, match="resource_id"):
        build_diagnostic_report(REPORT, ids, resource_id="bad id!")
    with pytest.raises(InputError, match="timezone-aware"):
        build_diagnostic_report(REPORT, ids, issued=dt.datetime(2026, 1, 1))
    with pytest.raises(InputError, match="not a valid DICOM UID"):
        StudyIdentifiers(study_instance_uid="1.2.x", patient_id="P1")
    with pytest.raises(InputError, match="failing at: code") as err:
        parse_diagnostic_report('{"resourceType": "DiagnosticReport", "status": "preliminary", "id": "SECRET-PHI"}')
    assert "SECRET" not in str(err.value)
