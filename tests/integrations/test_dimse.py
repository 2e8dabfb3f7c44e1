"""The C-STORE SCP driven by real SCUs: dcmtk's storescu and pynetdicom; C-ECHO; refused callers."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from testsupport import pydicom_file

from radlvlm.integrations.dimse import ListenerSettings, echo, send_instances, start_listener


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def listener(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = ListenerSettings(spool=tmp_path / "spool", port=_port(), allowed_callers=("MODALITY", "STORESCU"))
    server, counts = start_listener(settings)
    yield settings, counts
    server.shutdown()


def test_dcmtk_storescu_sends_a_real_chest_study(listener) -> None:  # type: ignore[no-untyped-def]
    settings, counts = listener
    if shutil.which("storescu") is None:
        pytest.skip("dcmtk is not installed (scripts/setup-system.sh installs it)")
    source = pydicom_file("RG1_UNCR.dcm")
    result = subprocess.run(
        ["storescu", "-aet", "STORESCU", "-aec", settings.ae_title, "127.0.0.1", str(settings.port), str(source)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    original = dcmread(source)
    spooled = settings.spool / str(original.StudyInstanceUID) / f"{original.SOPInstanceUID}.dcm"
    assert spooled.is_file() and counts.received == 1
    assert (dcmread(spooled).pixel_array == original.pixel_array).all()
    assert not list(settings.spool.rglob(".*.partial"))


def test_pynetdicom_scu_echo_and_refused_caller(listener) -> None:  # type: ignore[no-untyped-def]
    settings, counts = listener
    ds = dcmread(pydicom_file("CT_small.dcm"))
    assert echo(host="127.0.0.1", port=settings.port, called_ae=settings.ae_title, calling_ae="MODALITY")
    assert send_instances(
        [ds], host="127.0.0.1", port=settings.port, called_ae=settings.ae_title, calling_ae="MODALITY"
    ) == [0x0000]
    refused = send_instances(
        [ds], host="127.0.0.1", port=settings.port, called_ae=settings.ae_title, calling_ae="INTRUDER"
    )
    assert refused == [0x0124] and counts.refused == 1
    from radlvlm.integrations.dicomweb import PacsError

    with pytest.raises(PacsError, match="no DICOM association"):
        send_instances([ds], host="127.0.0.1", port=_port(), called_ae="NOBODY")
