"""The draft as an HL7 v2.5.1 ORU^R01 message (built and parsed with hl7apy), written to a file or sent over MLLP.

Message::

    MSH|^~\\&|RADLVLM|<facility>|<receiving app>|<receiving facility>|<now>||ORU^R01^ORU_R01|<control id>|P|2.5.1
        |||||||UNICODE UTF-8
    PID|1||<patient id>^^^<issuer>^MR||<family>^<given>^<middle>^<suffix>^<prefix>||<birth date>|<sex>
    ORC|RE|<placer>|<filler>
    OBR|1|<placer>|<filler>|18748-4^Diagnostic imaging study^LN|||<observed>|...|<accession (OBR-18)>|...
        |<status change (OBR-22)>||RAD|P                                  OBR-25 result status P (preliminary)
    NTE|1|L|PRELIMINARY AI-GENERATED DRAFT - NOT VERIFIED BY A RADIOLOGIST (model <id>)
    OBX|1|ST|110180^Study Instance UID^DCM||<study uid>||||||P
    OBX|2|TX|59776-5^Findings^LN|1|<line 1>||||||P|||<observed>||||<model id>^RADLVLM     one OBX per line
    OBX|n|TX|19005-8^Impressions^LN|2|<line 1>||||||P|||...

Every text value is set through an hl7apy datatype (ST/TX/FT), which escapes the separators and the escape
character (``| ^ & ~ \\``); non-ASCII text passes as UTF-8 (MSH-18). Line breaks become one OBX per line, the
usual layout of radiology ORU messages. hl7apy's OBX-5 is of type "varies", which its STRICT mode cannot
populate, so the message is built in TOLERANT mode and then re-parsed in STRICT mode and validated against the
v2.5.1 ORU_R01 structure before it is returned.

hl7apy does not unescape on parse; ``parse_oru`` reverses the five escape sequences it produces
(``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``) using the message's own encoding characters. Formatting and
hex sequences from other senders (``\\.br\\``, ``\\Xhh\\``) come back literally: hl7apy's parser re-escapes
them, so they cannot be told apart from literal text. Our own messages never contain them.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from hl7apy import v2_5_1 as hl7_types
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Field, Message
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import get_message_type, parse_message, parse_segment
from hl7apy.v2_5_1 import DTM

from radlvlm.errors import InputError, RadlvlmError

from .report import AI_DRAFT_NOTICE, DraftReport, StudyIdentifiers

logger = logging.getLogger(__name__)

HL7_VERSION = "2.5.1"
SENDING_APPLICATION = "RADLVLM"
DEFAULT_SERVICE = ("18748-4", "Diagnostic imaging study", "LN")
FINDINGS_CODE = ("59776-5", "Findings", "LN")
IMPRESSION_CODE = ("19005-8", "Impressions", "LN")
STUDY_UID_CODE = ("110180", "Study Instance UID", "DCM")

MLLP_START = b"\x0b"
MLLP_END = b"\x1c\x0d"
_MAX_ACK_BYTES = 1 << 20


class MLLPError(RadlvlmError):
    """Sending over MLLP failed: the peer is down or slow, closed early, or answered with a negative ACK."""


@dataclass(frozen=True)
class ParsedORU:
    """What ``parse_oru`` reads back from an ORU^R01 message (PHI fields are kept out of ``repr``)."""

    message_type: str
    control_id: str
    version: str
    sending_application: str
    patient_id: str = field(repr=False)
    issuer_of_patient_id: str = field(repr=False)
    patient_name: str = field(repr=False)
    placer_order_number: str = field(repr=False)
    filler_order_number: str = field(repr=False)
    accession_number: str = field(repr=False)
    universal_service_id: tuple[str, str, str]
    result_status: str
    observation_statuses: tuple[str, ...]
    study_instance_uid: str
    findings: str = field(repr=False)
    impression: str = field(repr=False)
    notes: tuple[str, ...]
    equipment: tuple[str, ...]


@dataclass(frozen=True)
class MLLPAck:
    """The peer's acknowledgement: MSA-1 code (AA/CA accept), MSA-2 the acknowledged control id, MSA-3 text."""

    code: str
    control_id: str
    text: str
    raw: str = field(repr=False)


def _dtm(when: dt.datetime) -> DTM:
    offset = when.strftime("%z") if when.tzinfo else ""
    return DTM(when.replace(tzinfo=None), out_format="%Y%m%d%H%M%S", offset=offset)


def _set(element, value: str) -> None:
    """Set a leaf through its own hl7apy datatype (ST, IS, ID, TX, FT …), which escapes the encoding characters."""
    if value:
        element.value = getattr(hl7_types, element.datatype)(value)


def _ce(component, code: tuple[str, str, str]) -> None:
    _set(component.ce_1, code[0])
    _set(component.ce_2, code[1])
    _set(component.ce_3, code[2])


# hl7apy validates a re-parsed OBX-5 ("varies") against ST's 199 characters, so longer lines are wrapped at
# word boundaries into further OBX segments, the way RIS systems display long text anyway. The limit applies
# after escaping, where each separator or escape character becomes three characters (e.g. ``\F\``).
_OBX_LINE = 199
_ESCAPED = set("|^&~\\")


def _escaped_length(text: str) -> int:
    return len(text) + 2 * sum(1 for c in text if c in _ESCAPED)


def _wrap(line: str) -> list[str]:
    pieces: list[str] = []
    current = ""
    for word in line.split(" "):
        candidate = f"{current} {word}" if current else word
        if _escaped_length(candidate) <= _OBX_LINE:
            current = candidate
            continue
        if current:
            pieces.append(current)
        current = ""
        for char in word:  # a single word too long for one line is split wherever it must be
            if _escaped_length(current + char) > _OBX_LINE:
                pieces.append(current)
                current = ""
            current += char
    pieces.append(current)
    return pieces


def _lines(text: str) -> list[str]:
    lines = text.strip("\r\n").splitlines()
    wrapped = [piece for line in lines for piece in _wrap(line)]
    return wrapped or [""]


def _check_oru_arguments(
    report: DraftReport,
    ids: StudyIdentifiers,
    *,
    control_id: str | None,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
    processing_id: str,
) -> str:
    """Refuse bad arguments before anything is built; returns the control id (a random one when omitted).

    The checks run in a fixed order so the first problem named is always the same one for the same call.
    """
    if not isinstance(report, DraftReport) or not isinstance(ids, StudyIdentifiers):
        raise InputError("build_oru_r01 takes a DraftReport and a StudyIdentifiers")
    if processing_id not in ("P", "T", "D"):
        raise InputError("processing_id must be P, T or D")
    control_id = control_id or uuid.uuid4().hex[:20]
    if not re.fullmatch(r"[A-Za-z0-9.\-_]{1,20}", control_id):
        raise InputError("control_id must be 1-20 characters of [A-Za-z0-9.-_]")
    for name, value in (
        ("sending_facility", sending_facility),
        ("receiving_application", receiving_application),
        ("receiving_facility", receiving_facility),
    ):
        # One line each: HL7 escaping leaves line breaks alone, and a \r would end the MSH segment early.
        if not isinstance(value, str) or len(value) > 180 or any(c in value for c in "\r\n"):
            raise InputError(f"{name} must be one line of at most 180 characters")
    return control_id


def _fill_msh(
    msh,
    *,
    control_id: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
    processing_id: str,
) -> None:
    """MSH: who sends to whom, when, the message type and control id, and UTF-8 as the character set."""
    _set(msh.msh_3.hd_1, SENDING_APPLICATION)
    _set(msh.msh_4.hd_1, sending_facility)
    _set(msh.msh_5.hd_1, receiving_application)
    _set(msh.msh_6.hd_1, receiving_facility)
    msh.msh_7 = _dtm(dt.datetime.now(dt.timezone.utc)).to_er7()  # replaces the local time hl7apy put there
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = control_id
    msh.msh_11 = processing_id
    msh.msh_18 = "UNICODE UTF-8"


def _fill_pid(pid, ids: StudyIdentifiers) -> None:
    """PID: the patient as the archive identifies them (ID and issuer as an MR number, name, birth date, sex)."""
    pid.pid_1 = "1"
    _set(pid.pid_3.cx_1, ids.patient_id)
    _set(pid.pid_3.cx_4.hd_1, ids.issuer_of_patient_id)
    pid.pid_3.cx_5 = "MR"
    if ids.patient_name:
        # DICOM PN order is Family^Given^Middle^Prefix^Suffix; HL7 XPN puts the suffix before the prefix.
        family, given, middle, prefix, suffix = [*ids.patient_name.split("^"), "", "", "", ""][:5]
        _set(pid.pid_5.xpn_1.fn_1, family)
        _set(pid.pid_5.xpn_2, given)
        _set(pid.pid_5.xpn_3, middle)
        _set(pid.pid_5.xpn_4, suffix)
        _set(pid.pid_5.xpn_5, prefix)
    if ids.patient_birth_date:
        pid.pid_7.ts_1 = ids.patient_birth_date
    if ids.patient_sex:
        pid.pid_8 = ids.patient_sex


def _fill_order(
    order,
    report: DraftReport,
    ids: StudyIdentifiers,
    *,
    observed_at: dt.datetime,
    universal_service_id: tuple[str, str, str],
) -> None:
    """ORC, OBR and the NTE notice: the order the result answers, marked preliminary and as an AI draft."""
    # Placer and filler order numbers default to the accession number, which every archive study has.
    placer = ids.placer_order_number or ids.accession_number
    filler = ids.filler_order_number or ids.accession_number
    order.orc.orc_1 = "RE"
    _set(order.orc.orc_2.ei_1, placer)
    _set(order.orc.orc_3.ei_1, filler)
    obr = order.obr
    obr.obr_1 = "1"
    _set(obr.obr_2.ei_1, placer)
    _set(obr.obr_3.ei_1, filler)
    _ce(obr.obr_4, universal_service_id)
    obr.obr_7.ts_1 = _dtm(observed_at)
    _set(obr.obr_18, ids.accession_number)
    obr.obr_22.ts_1 = _dtm(observed_at)
    obr.obr_24 = "RAD"
    obr.obr_25 = "P"
    nte = order.add_segment("NTE")
    nte.nte_1 = "1"
    nte.nte_2 = "L"
    _set(nte.nte_3, f"{AI_DRAFT_NOTICE} (model {report.model_id})")


def _add_obx(
    order,
    set_id: int,
    value_type: str,
    code: tuple[str, str, str],
    sub_id: str,
    value: str,
    *,
    observed_at: dt.datetime,
    equipment_id: str | None,
) -> None:
    """One OBX (set id ``set_id``), its value set through a hand-made OBX-5 field of ``value_type``.

    OBX-5 is of type "varies", which hl7apy cannot populate by itself, so the field is built with the datatype
    it is to hold. ``equipment_id`` (the model) goes to OBX-18 for the drafted text, not for the study UID.
    """
    segment = order.add_group("ORU_R01_OBSERVATION").obx
    segment.obx_1 = str(set_id)
    segment.obx_2 = value_type
    _ce(segment.obx_3, code)
    if sub_id:
        segment.obx_4 = sub_id
    value_field = Field("OBX_5", datatype=value_type, version=HL7_VERSION, validation_level=VALIDATION_LEVEL.TOLERANT)
    value_field.value = getattr(hl7_types, value_type)(value)
    segment.add(value_field)
    segment.obx_11 = "P"
    segment.obx_14.ts_1 = _dtm(observed_at)
    if equipment_id is not None:
        _set(segment.obx_18.ei_1, equipment_id)
        _set(segment.obx_18.ei_2, SENDING_APPLICATION)


def _add_observations(order, report: DraftReport, ids: StudyIdentifiers, *, observed_at: dt.datetime) -> int:
    """The study UID, then one OBX per line of findings (sub-id 1) and of impression (sub-id 2); returns how many."""
    # (value type, code, sub-id, text, equipment) in the order the OBX segments are numbered.
    observations: list[tuple[str, tuple[str, str, str], str, str, str | None]] = [
        ("ST", STUDY_UID_CODE, "", ids.study_instance_uid, None)
    ]
    for code, sub_id, text in ((FINDINGS_CODE, "1", report.findings), (IMPRESSION_CODE, "2", report.impression)):
        if text.strip():
            observations += [("TX", code, sub_id, line, report.model_id) for line in _lines(text)]
    for set_id, (value_type, code, sub_id, value, equipment_id) in enumerate(observations, 1):
        _add_obx(order, set_id, value_type, code, sub_id, value, observed_at=observed_at, equipment_id=equipment_id)
    return len(observations)


def build_oru_r01(
    report: DraftReport,
    ids: StudyIdentifiers,
    *,
    control_id: str | None = None,
    sending_facility: str = "",
    receiving_application: str = "",
    receiving_facility: str = "",
    processing_id: str = "P",
    observed_at: dt.datetime | None = None,
    universal_service_id: tuple[str, str, str] = DEFAULT_SERVICE,
) -> str:
    """An HL7 v2.5.1 ORU^R01 of the draft, ER7-encoded with ``\\r`` segment separators.

    Args:
        report (`DraftReport`): the model's text and model id.
        ids (`StudyIdentifiers`): the original identifiers (patient ID/issuer/name, accession, order numbers,
            study UID). Placer and filler order numbers default to the accession number.
        control_id (`str`, optional): MSH-10; a random 20-character id when omitted.
        sending_facility, receiving_application, receiving_facility (`str`, default ``""``): MSH-4/5/6.
        processing_id (`str`, default ``"P"``): MSH-11, P(roduction), T(raining) or D(ebugging).
        observed_at (`datetime`, optional): OBR-7/OBR-22/OBX-14; now (UTC) when omitted.
        universal_service_id (`tuple`, default LOINC 18748-4): OBR-4 as (code, text, coding system).

    Raises:
        InputError: bad arguments, or a message that fails hl7apy's ORU_R01 structure validation.
    """
    control_id = _check_oru_arguments(
        report,
        ids,
        control_id=control_id,
        sending_facility=sending_facility,
        receiving_application=receiving_application,
        receiving_facility=receiving_facility,
        processing_id=processing_id,
    )
    observed_at = observed_at or dt.datetime.now(dt.timezone.utc)
    try:
        # TOLERANT while building (OBX-5 "varies" cannot be set in STRICT mode); the STRICT check comes after.
        msg = Message("ORU_R01", version=HL7_VERSION, validation_level=VALIDATION_LEVEL.TOLERANT)
        _fill_msh(
            msg.msh,
            control_id=control_id,
            sending_facility=sending_facility,
            receiving_application=receiving_application,
            receiving_facility=receiving_facility,
            processing_id=processing_id,
        )
        result = msg.add_group("ORU_R01_PATIENT_RESULT")
        _fill_pid(result.add_group("ORU_R01_PATIENT").pid, ids)
        order = result.add_group("ORU_R01_ORDER_OBSERVATION")
        _fill_order(order, report, ids, observed_at=observed_at, universal_service_id=universal_service_id)
        n_obx = _add_observations(order, report, ids, observed_at=observed_at)
        text = msg.to_er7()
    except HL7apyException as e:
        raise InputError(f"building the ORU^R01 failed: {type(e).__name__}") from None
    _strict_parse(text)  # the structure check: raises InputError naming what hl7apy rejected
    logger.info("built ORU^R01 (control id %s) with %d OBX, model %s", control_id, n_obx, report.model_id)
    return text


def _strict_parse(text: str) -> Message:
    try:
        msg = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        msg.validate()
    except HL7apyException as e:
        # hl7apy's messages name segments and fields, but some quote the offending value: keep only the class.
        raise InputError(f"not a valid HL7 v2 ORU^R01 message ({type(e).__name__})") from None
    return msg


def _unescape(value: str, encoding_chars: dict[str, str]) -> str:
    esc = encoding_chars["ESCAPE"]
    table = {
        "F": encoding_chars["FIELD"],
        "S": encoding_chars["COMPONENT"],
        "T": encoding_chars["SUBCOMPONENT"],
        "R": encoding_chars["REPETITION"],
        "E": esc,
    }
    pattern = re.compile(re.escape(esc) + r"([FSTRE])" + re.escape(esc))
    return pattern.sub(lambda m: table[m.group(1)], value)


def _leaf(element, encoding_chars: dict[str, str]) -> str:
    """The unescaped text of a parsed field/component ('' when absent)."""
    text = element.to_er7() if element is not None else ""
    return _unescape(text, encoding_chars)


def parse_oru(text: str | bytes) -> ParsedORU:
    """Parse an ORU^R01 (ours or another sender's) with hl7apy, validating its structure.

    Raises:
        InputError: not an HL7 message, not ORU^R01, or a structure hl7apy rejects.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"HL7 message is not UTF-8 (byte offset {e.start})") from None
    text = text.strip(MLLP_START.decode() + MLLP_END.decode() + "\n")
    if not text.startswith("MSH"):
        raise InputError("not an HL7 v2 message (does not start with MSH)")
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    try:
        declared = get_message_type(text)
    except HL7apyException:
        raise InputError("not an HL7 v2 message (MSH cannot be read)") from None
    if not re.match(r"^ORU.R01", declared):
        raise InputError(f"HL7 message is not an ORU^R01 (MSH-9 says {declared[:20]})")
    msg = _strict_parse(text)
    try:
        return _read_oru(msg)
    except (HL7apyException, AttributeError, LookupError) as e:
        raise InputError(f"ORU^R01 lacks a segment or field this reader needs ({type(e).__name__})") from None


def _read_oru(msg: Message) -> ParsedORU:
    enc = msg.encoding_chars
    msh = msg.msh
    result = msg.oru_r01_patient_result
    pid = result.oru_r01_patient.pid
    order = result.oru_r01_order_observation
    obr = order.obr

    def comp(element, index: int) -> str:
        parts = element.to_er7().split(enc["COMPONENT"])
        return _unescape(parts[index], enc) if index < len(parts) else ""

    name_parts = pid.pid_5.to_er7().split(enc["COMPONENT"]) if pid.pid_5.to_er7() else []
    name_parts = [_unescape(p.split(enc["SUBCOMPONENT"])[0], enc) for p in name_parts] + [""] * 5
    patient_name = "^".join([name_parts[0], name_parts[1], name_parts[2], name_parts[4], name_parts[3]]).rstrip("^")

    findings: list[str] = []
    impression: list[str] = []
    statuses: list[str] = []
    equipment: list[str] = []
    study_uid = ""
    for observation in order.children.get("ORU_R01_OBSERVATION"):
        segment = observation.obx
        code = comp(segment.obx_3, 0)
        # Other senders may put lines in OBX-5 repetitions instead of one OBX per line.
        value = "\n".join(_leaf(rep, enc) for rep in segment.children.get("OBX_5"))
        statuses.append(_leaf(segment.obx_11, enc))
        if segment.obx_18.to_er7():
            equipment.append(comp(segment.obx_18, 0))
        if code == FINDINGS_CODE[0]:
            findings.append(value)
        elif code == IMPRESSION_CODE[0]:
            impression.append(value)
        elif code == STUDY_UID_CODE[0]:
            study_uid = value
    notes = tuple(_leaf(nte.nte_3, enc) for nte in order.children.get("NTE"))
    return ParsedORU(
        message_type=_leaf(msh.msh_9, enc),
        control_id=_leaf(msh.msh_10, enc),
        version=_leaf(msh.msh_12, enc),
        sending_application=comp(msh.msh_3, 0),
        patient_id=comp(pid.pid_3, 0),
        issuer_of_patient_id=comp(pid.pid_3, 3).split(enc["SUBCOMPONENT"])[0],
        patient_name=patient_name,
        placer_order_number=comp(obr.obr_2, 0),
        filler_order_number=comp(obr.obr_3, 0),
        accession_number=_leaf(obr.obr_18, enc),
        universal_service_id=(comp(obr.obr_4, 0), comp(obr.obr_4, 1), comp(obr.obr_4, 2)),
        result_status=_leaf(obr.obr_25, enc),
        observation_statuses=tuple(statuses),
        study_instance_uid=study_uid,
        findings="\n".join(findings),
        impression="\n".join(impression),
        notes=notes,
        equipment=tuple(dict.fromkeys(equipment)),
    )


def write_oru(message: str, path: str | Path) -> Path:
    """Write the message to ``path`` as UTF-8 with ``\\r`` segment separators (as a file drop expects)."""
    path = Path(path)
    path.write_bytes(message.encode("utf-8"))
    return path


def send_mllp(message: str, host: str, port: int, timeout: float = 10.0) -> MLLPAck:
    """Send one message framed with MLLP (``0x0b`` … ``0x1c 0x0d``) and return the peer's ACK.

    Args:
        message (`str`): an ER7 message (``build_oru_r01``'s output).
        host (`str`), port (`int`): the interface engine / RIS listener.
        timeout (`float`, default 10): seconds for connecting and for each read.

    Raises:
        MLLPError: the peer is down or unreachable, does not answer within ``timeout``, closes before a full
            ACK, sends something that is not an ACK, or answers AE/AR/CE/CR. Messages name the host and port and
            the ACK code, never message content.
    """
    if not isinstance(message, str) or not message.startswith("MSH"):
        raise InputError("send_mllp takes an ER7 message string starting with MSH")
    where = f"{host}:{port}"
    try:
        sent_id = parse_segment(message.split("\r", 1)[0], version=HL7_VERSION).msh_10.to_er7()
    except HL7apyException:
        raise InputError("send_mllp: the message's MSH segment cannot be read") from None
    payload = MLLP_START + message.encode("utf-8") + MLLP_END
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(payload)
            received = bytearray()
            while MLLP_END not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    raise MLLPError(f"MLLP peer {where} closed the connection before a complete ACK")
                received += chunk
                if len(received) > _MAX_ACK_BYTES:
                    raise MLLPError(f"MLLP peer {where} sent more than {_MAX_ACK_BYTES} bytes without an end block")
    except ConnectionRefusedError as e:
        raise MLLPError(f"MLLP peer {where} is down (connection refused)") from e
    except TimeoutError as e:
        raise MLLPError(f"MLLP peer {where} did not answer within {timeout:g} s") from e
    except OSError as e:
        raise MLLPError(f"MLLP peer {where} unreachable: {type(e).__name__}: {e.strerror or e}") from e
    start = received.find(MLLP_START)
    end = received.find(MLLP_END)
    raw = bytes(received[start + 1 if start >= 0 else 0 : end]).decode("utf-8", errors="replace")
    try:
        ack = parse_message(raw.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
        enc = ack.encoding_chars
        msa = ack.msa
        code = _leaf(msa.msa_1, enc)
        acked = _leaf(msa.msa_2, enc)
        text = _leaf(msa.msa_3, enc)
    except (HL7apyException, AttributeError, LookupError) as e:
        raise MLLPError(f"MLLP peer {where} answered with something that is not an HL7 ACK ({type(e).__name__})") from e
    if code not in ("AA", "CA"):
        raise MLLPError(f"MLLP peer {where} rejected the message: MSA-1 {code or 'missing'}")
    if acked != _unescape(sent_id, ack.encoding_chars):
        raise MLLPError(f"MLLP peer {where} acknowledged control id {acked[:20]!r}, not the one sent")
    logger.info("MLLP %s acknowledged control id %s (%s)", where, acked, code)
    return MLLPAck(code=code, control_id=acked, text=text, raw=raw)


__all__ = ["HL7_VERSION", "MLLPAck", "MLLPError", "ParsedORU", "build_oru_r01", "parse_oru", "send_mllp", "write_oru"]
