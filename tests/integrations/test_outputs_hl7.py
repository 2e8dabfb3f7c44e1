"""The draft as an HL7 v2 ORU^R01 (hl7apy): builds, parses back, and goes over MLLP to a local listener."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message
from pydicom.dataset import Dataset

from radlvlm.errors import InputError
from radlvlm.integrations.hl7 import MLLPError, build_oru_r01, parse_oru, send_mllp, write_oru
from radlvlm.integrations.report import AI_DRAFT_NOTICE, DraftReport, StudyIdentifiers

REPORT = DraftReport(
    findings="Lungs clear | no ^ effusion & no ~ pneumothorax \\ ok.\nHeart size normal — CTR 0.45.\n\nBones intact.",
    impression="No acute cardiopulmonary abnormality.",
    model_id="radlvlm-test-0.1",
)


@pytest.fixture
def ids(rg1: Dataset) -> StudyIdentifiers:
    return StudyIdentifiers.from_dataset(rg1, issuer_of_patient_id="HOSP", patient_name="O|Brien^Mary&Ann^J^Dr^III")


def test_oru_builds_and_parses_back(ids: StudyIdentifiers, rg1: Dataset, tmp_path) -> None:
    text = build_oru_r01(REPORT, ids, control_id="CTRL1", receiving_application="RIS", receiving_facility="RAD")
    segments = text.split("\r")
    assert [s[:3] for s in segments][:6] == ["MSH", "PID", "ORC", "OBR", "NTE", "OBX"]
    assert "\n" not in text  # line breaks in the text never reach the wire
    parsed = parse_oru(text)
    assert parsed.message_type == "ORU^R01^ORU_R01"
    assert (parsed.control_id, parsed.version, parsed.sending_application) == ("CTRL1", "2.5.1", "RADLVLM")
    assert parsed.patient_id == rg1.PatientID and parsed.issuer_of_patient_id == "HOSP"
    assert parsed.patient_name == "O|Brien^Mary&Ann^J^Dr^III"
    assert parsed.accession_number == rg1.AccessionNumber
    assert parsed.placer_order_number == parsed.filler_order_number == rg1.AccessionNumber
    assert parsed.universal_service_id == ("18748-4", "Diagnostic imaging study", "LN")
    assert parsed.result_status == "P"
    assert set(parsed.observation_statuses) == {"P"}
    assert parsed.study_instance_uid == rg1.StudyInstanceUID
    assert parsed.findings == REPORT.findings  # separators escaped by hl7apy, restored on parse
    assert parsed.impression == REPORT.impression
    assert parsed.notes == (f"{AI_DRAFT_NOTICE} (model {REPORT.model_id})",)
    assert parsed.equipment == (REPORT.model_id,)
    assert rg1.PatientID not in repr(parsed)
    # Escapes are on the wire, raw separators are not inside values.
    assert "Lungs clear \\F\\ no \\S\\ effusion \\T\\ no \\R\\ pneumothorax \\E\\ ok." in text
    path = write_oru(text, tmp_path / "draft.hl7")
    assert parse_oru(path.read_bytes()).findings == REPORT.findings


def test_oru_overrides_and_bad_input(ids: StudyIdentifiers) -> None:
    from dataclasses import replace

    ids2 = replace(ids, placer_order_number="PL-1", filler_order_number="FI-1")
    parsed = parse_oru(build_oru_r01(REPORT, ids2, universal_service_id=("36643-5", "XR Chest 2 Views", "LN")))
    assert (parsed.placer_order_number, parsed.filler_order_number) == ("PL-1", "FI-1")
    assert parsed.universal_service_id == ("36643-5", "XR Chest 2 Views", "LN")
    with pytest.raises(InputError, match="control_id"):
        build_oru_r01(REPORT, ids, control_id="bad|id")
    with pytest.raises(InputError, match="processing_id"):
        build_oru_r01(REPORT, ids, processing_id="X")
    with pytest.raises(InputError, match="does not start with MSH"):
        parse_oru("PID|1||123")
    with pytest.raises(InputError, match="not an ORU"):
        parse_oru("MSH|^~\\&|A|B|C|D|20260101||ADT^A01^ADT_A01|1|P|2.5.1\rEVN|A01|20260101\rPID|1||123\rPV1|1|I")


def test_parse_oru_from_another_sender() -> None:
    """Lines as OBX-5 repetitions or as several OBX, no ORC/NTE: still read."""
    text = (
        "MSH|^~\\&|OTHER|X|||20260101120000||ORU^R01|M1|P|2.5.1\r"
        "PID|1||P9^^^ISS||Doe^Jane\r"
        "OBR|1|A1|B1|36643-5^XR Chest 2 Views^LN|||20260101|||||||||||ACC9|||||||F\r"
        "OBX|1|TX|59776-5^Findings^LN||line one~line \\T\\ two||||||F\r"
        "OBX|2|TX|19005-8^Impressions^LN||Normal.||||||F\r"
        "OBX|3|TX|19005-8^Impressions^LN||Nothing \\E\\ else.||||||F"
    )
    parsed = parse_oru(text.encode())
    assert parsed.findings == "line one\nline & two"
    assert parsed.impression == "Normal.\nNothing \\ else."
    assert (parsed.patient_id, parsed.patient_name, parsed.accession_number) == ("P9", "Doe^Jane", "ACC9")
    assert parsed.result_status == "F" and parsed.notes == () and parsed.study_instance_uid == ""
    with pytest.raises(InputError, match="not UTF-8"):
        parse_oru(b"MSH|^~\\&|\xff")


class _AckHandler(AbstractHandler):
    """Answers every ORU with an ACK built by hl7apy (AA, or the code the test server was given)."""

    code: ClassVar[str] = "AA"
    ack_control_id: ClassVar[str] = ""  # when set, acknowledge this id instead of the one received
    received: ClassVar[list[str]] = []

    def reply(self) -> str:
        incoming = parse_message(self.incoming_message, find_groups=False)
        type(self).received.append(self.incoming_message)
        ack = Message("ACK", version="2.5.1", validation_level=VALIDATION_LEVEL.TOLERANT)
        ack.msh.msh_3 = "RIS"
        ack.msh.msh_9 = "ACK^R01^ACK"
        ack.msh.msh_10 = "ACK1"
        ack.msh.msh_11 = "P"
        ack.msa.msa_1 = self.code
        ack.msa.msa_2 = self.ack_control_id or incoming.msh.msh_10.to_er7()
        return "\x0b" + ack.to_er7() + "\x1c\x0d"


@pytest.fixture
def mllp_server() -> Iterator[tuple[str, int, type[_AckHandler]]]:
    handler = type("Handler", (_AckHandler,), {"received": [], "code": "AA", "ack_control_id": ""})
    server = MLLPServer("127.0.0.1", 0, {"ORU^R01^ORU_R01": (handler,)}, timeout=5)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_send_mllp_gets_the_ack(ids: StudyIdentifiers, mllp_server) -> None:
    host, port, handler = mllp_server
    text = build_oru_r01(REPORT, ids, control_id="CTRL42")
    ack = send_mllp(text, host, port, timeout=5)
    assert (ack.code, ack.control_id) == ("AA", "CTRL42")
    assert handler.received == [text]
    assert parse_oru(handler.received[0]).findings == REPORT.findings


def test_send_mllp_negative_ack(ids: StudyIdentifiers, mllp_server) -> None:
    host, port, handler = mllp_server
    handler.code = "AE"
    with pytest.raises(MLLPError, match="rejected the message: MSA-1 AE"):
        send_mllp(build_oru_r01(REPORT, ids), host, port, timeout=5)


def test_send_mllp_ack_for_another_message(ids: StudyIdentifiers, mllp_server) -> None:
    host, port, handler = mllp_server
    handler.ack_control_id = "OTHER"
    with pytest.raises(MLLPError, match="not the one sent"):
        send_mllp(build_oru_r01(REPORT, ids, control_id="CTRL7"), host, port, timeout=5)


def test_send_mllp_peer_down(ids: StudyIdentifiers) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(MLLPError, match=f"127.0.0.1:{port} is down") as err:
        send_mllp(build_oru_r01(REPORT, ids), "127.0.0.1", port, timeout=2)
    assert ids.patient_id not in str(err.value)


def test_send_mllp_peer_silent(ids: StudyIdentifiers) -> None:
    with socket.socket() as listener:  # accepts, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(MLLPError, match=r"did not answer within 0\.3 s"):
            send_mllp(build_oru_r01(REPORT, ids), "127.0.0.1", port, timeout=0.3)


def test_long_findings_lines_are_wrapped_into_further_obx_and_read_back() -> None:
    from radlvlm.integrations.hl7 import build_oru_r01, parse_oru
    from radlvlm.integrations.report import DraftReport, StudyIdentifiers

    ids = StudyIdentifiers(study_instance_uid="1.2.3", patient_id="P1", accession_number="A1", patient_name="DOE^JOHN")
    findings = "The lungs are clear without focal consolidation, effusion or pneumothorax. " * 12
    parsed = parse_oru(build_oru_r01(DraftReport(findings, "No acute disease.", "tiny"), ids))
    assert parsed.findings.replace("\n", " ").strip() == findings.strip()
    assert len(parsed.observation_statuses) > 4 and set(parsed.observation_statuses) == {"P"}
