"""A real Orthanc (Debian's orthanc + orthanc-dicomweb) for the PACS tests, on loopback in a private netns."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


@dataclass
class Orthanc:
    process: subprocess.Popen
    http_url: str
    dicomweb_url: str
    dicom_port: int
    aet: str = "ORTHANC"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_orthanc(workdir: Path) -> Orthanc:
    """Start Orthanc with a config of ours (temp storage, remote access off, DICOMweb on); skip when impossible."""
    if os.environ.get("RADLVLM_PRIVATE_NETNS") != "1":
        pytest.skip(
            "not in a private network namespace (run the tests through scripts/in-private-netns.sh): "
            "Orthanc 1.10 listens on all interfaces"
        )
    if not (os.path.exists(ORTHANC) and os.path.exists(DICOMWEB_PLUGIN)):
        pytest.skip("Debian's orthanc and orthanc-dicomweb are not installed (scripts/setup-system.sh installs them)")
    http_port, dicom_port = _free_port(), _free_port()
    storage = workdir / "orthanc-storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "radlvlm-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "StableAge": 1,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": {},
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config))
    log = open(workdir / "orthanc.log", "wb")  # noqa: SIM115 - kept open for the server's lifetime
    process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited at start-up; see {workdir / 'orthanc.log'}")
        try:
            if requests.get(f"{url}/system", timeout=2).status_code == 200:
                return Orthanc(process, url, f"{url}/dicom-web", dicom_port)
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("Orthanc did not answer within 60 s")


def orthanc_available() -> bool:
    return shutil.which("Orthanc") is not None or os.path.exists(ORTHANC)
