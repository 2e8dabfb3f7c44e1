"""The draft as a FHIR R4 ``DiagnosticReport`` (status ``preliminary``), built with fhir.resources.

FHIR version: fhir.resources 8 defaults to R5; its ``fhir.resources.R4B`` subpackage (FHIR 4.3.0) is used. R4B
left DiagnosticReport, Observation and Device as they were in R4 (4.0.1), so the JSON is what an R4 server
takes; the meta.profile is left empty.

The resource, self-contained:

- ``status`` ``preliminary``; ``category`` RAD (v2-0074); ``code`` LOINC 18748-4 "Diagnostic imaging study";
- ``subject`` a logical reference to the Patient by the archive's patient ID (and issuer); ``basedOn`` the order
  by accession number (identifier type ACSN); ``imagingStudy`` by StudyInstanceUID
  (``urn:dicom:uid`` / ``urn:oid:…``); ``identifier`` the SR's SOP Instance UID when one was written;
- ``conclusion`` the impression; ``result`` two contained Observations (LOINC 59776-5 Findings, 19005-8
  Impressions, ``valueString`` the text, status preliminary) whose ``device`` is a contained Device (the
  model: name, manufacturer "radlvlm", identifier = the SR's device observer UID); ``presentedForm`` the
  plain-text report headed by the AI notice;
- marked AI-generated three ways: ``meta.security`` AIAST ("Artificial Intelligence asserted",
  v3-ObservationValue), an extension (``AI_DRAFT_EXTENSION_URL``) holding the notice, and the narrative.

R4 does not allow a Device as ``DiagnosticReport.performer`` (Practitioner, PractitionerRole, Organization,
CareTeam only), so the device is linked through the result Observations' ``device`` instead.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import logging
import re

from fhir.resources.R4B import __fhir_version__ as FHIR_VERSION
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydantic import ValidationError

from radlvlm.errors import InputError

from .report import AI_DRAFT_NOTICE, MANUFACTURER, DraftReport, StudyIdentifiers, check_uid, device_uid

logger = logging.getLogger(__name__)

LOINC = "http://loinc.org"
DICOM_UID_SYSTEM = "urn:dicom:uid"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V3_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
#: Extension marking the resource as an unverified AI draft (value: the notice text).
AI_DRAFT_EXTENSION_URL = "urn:radlvlm:fhir:StructureDefinition:ai-generated-draft"
#: The study-level report code (LOINC 18748-4); 36643-5 "XR Chest 2 Views" is an alternative for PA+lateral.
DEFAULT_CODE = ("18748-4", "Diagnostic imaging study")
FINDINGS_CODE = ("59776-5", "Findings")
IMPRESSION_CODE = ("19005-8", "Impressions")

_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def _loinc(code: tuple[str, str]) -> dict:
    return {"coding": [{"system": LOINC, "code": code[0], "display": code[1]}], "text": code[1]}


def _patient_reference(ids: StudyIdentifiers) -> dict:
    identifier: dict = {"value": ids.patient_id}
    issuer = ids.issuer_of_patient_id
    if issuer and _OID.match(issuer):
        identifier["system"] = f"urn:oid:{issuer}"
    elif issuer and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:\S+$", issuer):
        identifier["system"] = issuer
    elif issuer:
        identifier["assigner"] = {"display": issuer}
    return {"type": "Patient", "identifier": identifier}


def _plain_text(report: DraftReport) -> str:
    parts = [AI_DRAFT_NOTICE, f"Drafted by model {report.model_id}.", ""]
    if report.findings.strip():
        parts += ["FINDINGS:", report.findings, ""]
    if report.impression.strip():
        parts += ["IMPRESSION:", report.impression]
    return "\n".join(parts).rstrip() + "\n"


def _narrative(report: DraftReport) -> str:
    def para(label: str, text: str) -> str:
        lines = "<br/>".join(html.escape(line) for line in text.splitlines())
        return f"<p><b>{label}</b><br/>{lines}</p>"

    body = [f"<p><b>{html.escape(AI_DRAFT_NOTICE)}</b> (model {html.escape(report.model_id)})</p>"]
    if report.findings.strip():
        body.append(para("FINDINGS", report.findings))
    if report.impression.strip():
        body.append(para("IMPRESSION", report.impression))
    return '<div xmlns="http://www.w3.org/1999/xhtml">' + "".join(body) + "</div>"


def _model_device(report: DraftReport) -> dict:
    """The contained Device standing for the model; its identifier is the SR's device observer UID."""
    return {
        "resourceType": "Device",
        "id": "model",
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{device_uid(report.model_id)}"}],
        "manufacturer": MANUFACTURER,
        "deviceName": [{"name": report.model_id, "type": "model-name"}],
    }


def _result_observations(report: DraftReport, subject: dict, study: dict) -> tuple[list[dict], list[dict]]:
    """The contained Observations (findings, impression; empty sections left out) and the references to them.

    R4 does not allow a Device as the report's performer, so each Observation names the model as its device.
    """
    observations: list[dict] = []
    references: list[dict] = []
    for key, obs_code, text in (
        ("findings", FINDINGS_CODE, report.findings),
        ("impression", IMPRESSION_CODE, report.impression),
    ):
        if not text.strip():
            continue
        observations.append(
            {
                "resourceType": "Observation",
                "id": key,
                "status": "preliminary",
                "code": _loinc(obs_code),
                "subject": subject,
                "device": {"reference": "#model", "display": report.model_id},
                "derivedFrom": [study],
                "valueString": text,
            }
        )
        references.append({"reference": f"#{key}", "display": obs_code[1]})
    return observations, references


def _accession_order(accession_number: str) -> list[dict]:
    """``basedOn``: the order, as a logical reference by accession number (identifier type ACSN)."""
    return [
        {
            "type": "ServiceRequest",
            "identifier": {
                "type": {"coding": [{"system": V2_0203, "code": "ACSN", "display": "Accession ID"}]},
                "value": accession_number,
            },
        }
    ]


def _draft_resource(report: DraftReport, ids: StudyIdentifiers, *, issued: dt.datetime, code: tuple[str, str]) -> dict:
    """The DiagnosticReport's required content as a dict: status, codes, subject, study, results, texts."""
    subject = _patient_reference(ids)
    study = {
        "type": "ImagingStudy",
        "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{ids.study_instance_uid}"},
    }
    observations, results = _result_observations(report, subject, study)
    return {
        "resourceType": "DiagnosticReport",
        # Marked AI-generated three ways: the security label, the extension and the narrative.
        "meta": {
            "security": [
                {"system": V3_OBSERVATION_VALUE, "code": "AIAST", "display": "Artificial Intelligence asserted"}
            ]
        },
        "text": {"status": "generated", "div": _narrative(report)},
        "contained": [_model_device(report), *observations],
        "extension": [{"url": AI_DRAFT_EXTENSION_URL, "valueString": f"{AI_DRAFT_NOTICE} (model {report.model_id})"}],
        "status": "preliminary",
        "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": _loinc(code),
        "subject": subject,
        "issued": issued.isoformat(),
        "result": results,
        "imagingStudy": [study],
        "presentedForm": [
            {
                "contentType": "text/plain; charset=utf-8",
                "language": "en-US",
                "title": AI_DRAFT_NOTICE,
                "data": base64.b64encode(_plain_text(report).encode("utf-8")).decode("ascii"),
            }
        ],
    }


def _validated(resource: dict) -> DiagnosticReport:
    """The resource as fhir.resources validates it; ``InputError`` naming only where it failed."""
    try:
        return DiagnosticReport.model_validate(resource)
    except ValidationError as e:
        # pydantic's message quotes input values; name only the failing locations.
        where = sorted({".".join(str(p) for p in err["loc"]) for err in e.errors()})
        raise InputError(f"FHIR DiagnosticReport (R{FHIR_VERSION}) failed validation at: {', '.join(where)}") from None


def build_diagnostic_report(
    report: DraftReport,
    ids: StudyIdentifiers,
    *,
    resource_id: str | None = None,
    sr_sop_instance_uid: str | None = None,
    issued: dt.datetime | None = None,
    code: tuple[str, str] = DEFAULT_CODE,
) -> DiagnosticReport:
    """A FHIR R4(B) DiagnosticReport of the draft (see the module docstring for its content).

    Args:
        report (`DraftReport`): the model's text and model id.
        ids (`StudyIdentifiers`): the original identifiers (study UID, patient ID, accession …).
        resource_id (`str`, optional): the resource's logical id (``[A-Za-z0-9-.]{1,64}``).
        sr_sop_instance_uid (`str`, optional): the draft SR's SOP Instance UID, recorded as an identifier so
            the two outputs can be matched.
        issued (`datetime`, optional): when the draft was made (timezone-aware); now (UTC) when omitted.
        code (`tuple[str, str]`, default LOINC 18748-4): LOINC code and display of the report.

    Raises:
        InputError: a bad id, UID, naive ``issued``, or a resource fhir.resources rejects.
    """
    if not isinstance(report, DraftReport) or not isinstance(ids, StudyIdentifiers):
        raise InputError("build_diagnostic_report takes a DraftReport and a StudyIdentifiers")
    if resource_id is not None and not _ID.match(resource_id):
        raise InputError("resource_id must match [A-Za-z0-9-.]{1,64}")
    issued = issued or dt.datetime.now(dt.timezone.utc)
    if issued.tzinfo is None:
        raise InputError("issued must be timezone-aware")
    resource = _draft_resource(report, ids, issued=issued, code=code)
    # The optional parts, each only when there is something to put in it (FHIR has no empty elements).
    if resource_id is not None:
        resource["id"] = resource_id
    if sr_sop_instance_uid is not None:
        check_uid("sr_sop_instance_uid", sr_sop_instance_uid)
        resource["identifier"] = [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{sr_sop_instance_uid}"}]
    if ids.accession_number:
        resource["basedOn"] = _accession_order(ids.accession_number)
    if report.impression.strip():
        resource["conclusion"] = report.impression
    built = _validated(resource)
    logger.info("built FHIR DiagnosticReport with %d result(s), model %s", len(resource["result"]), report.model_id)
    return built


def diagnostic_report_to_json(resource: DiagnosticReport) -> str:
    """The resource as FHIR JSON (what a FHIR server's POST /DiagnosticReport takes)."""
    return resource.model_dump_json(exclude_none=True)


def parse_diagnostic_report(text: str | bytes) -> DiagnosticReport:
    """A DiagnosticReport from FHIR JSON, validated by fhir.resources; ``InputError`` naming the bad paths."""
    try:
        return DiagnosticReport.model_validate_json(text)
    except ValidationError as e:
        where = sorted({".".join(str(p) for p in err["loc"]) for err in e.errors()})
        raise InputError(f"not a valid FHIR DiagnosticReport; failing at: {', '.join(where) or 'document'}") from None


__all__ = [
    "AI_DRAFT_EXTENSION_URL",
    "FHIR_VERSION",
    "build_diagnostic_report",
    "diagnostic_report_to_json",
    "parse_diagnostic_report",
]
