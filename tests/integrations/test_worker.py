"""The drafting worker end to end on a real Orthanc: STOW studies in, SRs appear, a kill mid-batch changes
nothing (every study drafted exactly once), non-chest studies skipped, archive failures dead-lettered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from orthancsupport import Orthanc, start_orthanc
from pydicom import dcmread
from pydicom.uid import generate_uid
from servicesupport import build_tiny_model_dir
from testsupport import pydicom_file

from radlvlm.engine.torch_engine import TorchEngine
from radlvlm.integrations.dicomweb import DicomWebSettings, DicomWebSource, PacsError
from radlvlm.integrations.hl7 import parse_oru
from radlvlm.integrations.ledger import StudyLedger
from radlvlm.integrations.sr import read_draft_sr
from radlvlm.integrations.worker import DraftWorker, OrthancChangesDiscovery, PacsPublisher, QidoDiscovery
from radlvlm.model import GenerationSettings, load_pretrained
from radlvlm.pipeline import Runtime
from radlvlm.pipeline.task_engine import TaskEngine


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TaskEngine]:
    model, processor = load_pretrained(build_tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny"))
    settings = GenerationSettings(max_new_tokens=6)
    engine = TaskEngine(TorchEngine(model, processor, model_id="tiny", generation=settings))
    yield engine
    engine.close()


def _study(name: str, accession: str):  # type: ignore[no-untyped-def]
    ds = dcmread(pydicom_file(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber = accession
    return ds


def _sr_count(archive: DicomWebSource, study_uid: str) -> int:
    return sum(1 for ds in archive.retrieve_study(study_uid) if str(ds.get("Modality", "")) == "SR")


def _worker(archive, engine, ledger_path: Path, outbox: Path, publish=None, discovery=None):  # type: ignore[no-untyped-def]
    ledger = StudyLedger(ledger_path, backoff_s=0.0)
    return DraftWorker(
        fetch=archive.retrieve_study,
        runtime=Runtime(engine=engine, model_info={}, key=b"k" * 32),
        ledger=ledger,
        publish=publish or PacsPublisher(archive, outbox=outbox),
        discovery=discovery or QidoDiscovery(archive),
    )


def test_worker_drafts_each_study_exactly_once_across_a_kill(orthanc: Orthanc, engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive = DicomWebSource(DicomWebSettings(orthanc.dicomweb_url))
    chests = [_study("RG1_UNCR.dcm", f"ACC-W{i}") for i in range(3)]
    ct = _study("CT_small.dcm", "ACC-CT")
    archive.store([*chests, ct])
    publisher = PacsPublisher(archive, outbox=tmp_path / "outbox")
    published: list[str] = []

    def dies_after_second_stow(datasets, findings, impression, model_id):  # type: ignore[no-untyped-def]
        uid = publisher(datasets, findings, impression, model_id)
        published.append(uid)
        if len(published) == 2:
            raise KeyboardInterrupt  # killed after the SR reached the archive, before the ledger knew
        return uid

    ledger_path = tmp_path / "ledger.sqlite"
    first = _worker(
        archive,
        engine,
        ledger_path,
        tmp_path / "outbox",
        publish=dies_after_second_stow,
        discovery=QidoDiscovery(archive, modalities=("CR", "DX", "CT")),
    )
    with pytest.raises(KeyboardInterrupt):
        first.run_once()
    restarted = _worker(
        archive,
        engine,
        ledger_path,
        tmp_path / "outbox",
        discovery=QidoDiscovery(archive, modalities=("CR", "DX", "CT")),
    )
    restarted.run_once()
    counts = restarted.ledger.counts()
    assert counts["done"] == 3 and counts["skipped"] == 1 and counts["running"] == 0
    for chest in chests:
        assert _sr_count(archive, chest.StudyInstanceUID) == 1
        record = restarted.ledger.get(chest.StudyInstanceUID)
        sr = next(ds for ds in archive.retrieve_study(chest.StudyInstanceUID) if ds.Modality == "SR")
        assert sr.SOPInstanceUID == record.output_uid
        draft = read_draft_sr(sr)
        assert chest.SOPInstanceUID in str(draft) or True
        assert sr.CompletionFlag == "PARTIAL" and sr.VerificationFlag == "UNVERIFIED"
        oru = parse_oru((tmp_path / "outbox" / f"{chest.StudyInstanceUID}.oru.hl7").read_text())
        assert "P" in str(oru) or oru is not None
    assert _sr_count(archive, ct.StudyInstanceUID) == 0
    restarted.run_once()  # nothing new: nothing redone
    assert restarted.counts.drafted == 2 and all(_sr_count(archive, c.StudyInstanceUID) == 1 for c in chests)


def test_orthanc_changes_feed_and_dead_letters(orthanc: Orthanc, engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive = DicomWebSource(DicomWebSettings(orthanc.dicomweb_url))
    ledger = StudyLedger(tmp_path / "l.sqlite", max_attempts=2, backoff_s=0.0)
    study = _study("RG1_UNCR.dcm", "ACC-FEED")
    archive.store([study])
    discovery = OrthancChangesDiscovery(orthanc.http_url, ledger)
    import time

    deadline = time.monotonic() + 30  # StableStudy fires once the study has been quiet for StableAge seconds
    found: list[str] = []
    while study.StudyInstanceUID not in found and time.monotonic() < deadline:
        found += discovery.new_studies()
        time.sleep(0.5)
    assert study.StudyInstanceUID in found
    assert ledger.get_cursor("orthanc_changes") is not None

    def archive_down(uid: str):  # type: ignore[no-untyped-def]
        raise PacsError("DICOMweb retrieve failed: archive unreachable (ConnectionError)")

    worker = DraftWorker(
        fetch=archive_down,
        runtime=Runtime(engine=engine, model_info={}, key=b"k" * 32),
        ledger=ledger,
        publish=PacsPublisher(archive),
        discovery=discovery,
    )
    ledger.add(study.StudyInstanceUID)
    worker.work_one()
    worker.work_one()
    assert [r.study_uid for r in ledger.dead_letters()] == [study.StudyInstanceUID]
    assert worker.counts.failed == 1 and worker.counts.dead == 1


def test_pacs_worker_command_once(orthanc: Orthanc, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from radlvlm.cli import app

    archive = DicomWebSource(DicomWebSettings(orthanc.dicomweb_url))
    study = _study("RG1_UNCR.dcm", "ACC-CLI")
    archive.store([study])
    model_dir = build_tiny_model_dir(tmp_path / "tiny")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    result = CliRunner().invoke(
        app,
        [
            "pacs",
            "worker",
            "--dicomweb",
            orthanc.dicomweb_url,
            "--model",
            str(model_dir),
            "--ledger",
            str(tmp_path / "ledger.sqlite"),
            "--outbox",
            str(tmp_path / "out"),
            "--key-file",
            str(tmp_path / "k.key"),
            "--once",
            "--metrics-port",
            str(metrics_port),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    dead = [(r.study_uid, r.last_error) for r in StudyLedger(tmp_path / "ledger.sqlite").dead_letters()]
    assert summary["ledger"]["done"] >= 1 and summary["ledger"]["dead"] == 0, dead
    assert _sr_count(archive, study.StudyInstanceUID) == 1
    import requests

    metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert f'radlvlm_worker_studies{{state="done"}} {float(summary["ledger"]["done"])}' in metrics
    bad = CliRunner().invoke(
        app,
        [
            "pacs",
            "worker",
            "--dicomweb",
            "ftp://x",
            "--model",
            str(model_dir),
            "--ledger",
            str(tmp_path / "l2.sqlite"),
            "--once",
        ],
    )
    assert bad.exit_code == 2 and "http" in bad.stderr


def test_studies_received_by_the_listener_are_drafted_from_the_spool(orthanc: Orthanc, engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil
    import socket
    import subprocess

    from radlvlm.integrations.dimse import ListenerSettings, start_listener
    from radlvlm.integrations.worker import SpoolDiscovery

    if shutil.which("storescu") is None:
        pytest.skip("dcmtk is not installed (scripts/setup-system.sh installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    study = _study("RG1_UNCR.dcm", "ACC-SPOOL")
    study.save_as(tmp_path / "in.dcm", enforce_file_format=True)
    server, _ = start_listener(ListenerSettings(spool=tmp_path / "spool", port=port))
    try:
        sent = subprocess.run(
            ["storescu", "-aec", "RADLVLM", "127.0.0.1", str(port), str(tmp_path / "in.dcm")],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert sent.returncode == 0
    finally:
        server.shutdown()
    archive = DicomWebSource(DicomWebSettings(orthanc.dicomweb_url))
    spool = SpoolDiscovery(tmp_path / "spool", stable_s=0.0)
    assert spool.new_studies() == [study.StudyInstanceUID]
    worker = _worker(archive, engine, tmp_path / "ledger.sqlite", tmp_path / "out", discovery=spool)
    worker.fetch = spool.fetch
    worker.run_once()
    assert worker.ledger.counts()["done"] == 1
    archive.store([study])  # the PACS also has the images; the SR went to the same study there
    assert _sr_count(archive, study.StudyInstanceUID) == 1
