"""``radlvlm pacs listen`` (C-STORE SCP to a spool) and ``radlvlm pacs worker`` (draft new studies, write back)."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from radlvlm.cli_support import fail, run_guarded, stderr

pacs_app = typer.Typer(help="PACS integration: DICOM listener and the drafting worker.")


@pacs_app.command("listen")
def listen_command(
    spool: Annotated[Path, typer.Option(help="Where received instances are written.")],
    port: Annotated[int, typer.Option(help="DICOM port.")] = 11112,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    ae_title: Annotated[str, typer.Option(help="Our AE title.")] = "RADLVLM",
    allow: Annotated[list[str] | None, typer.Option(help="Calling AE title allowed to send (repeatable).")] = None,
) -> None:
    """Receive studies by C-STORE (and answer C-ECHO) until interrupted."""
    from radlvlm.integrations.dimse import ListenerSettings, start_listener

    settings = run_guarded(
        lambda: ListenerSettings(
            spool=spool, host=host, port=port, ae_title=ae_title, allowed_callers=tuple(allow or ())
        )
    )
    server, counts = run_guarded(lambda: start_listener(settings))
    stderr.print(f"listening as {ae_title} on {host}:{port}; spool {spool}", highlight=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        typer.echo(
            json.dumps(
                {
                    "received": counts.received,
                    "refused": counts.refused,
                    "failed": counts.failed,
                    "studies": len(counts.studies),
                }
            )
        )


@pacs_app.command("worker")
def worker_command(
    dicomweb: Annotated[str, typer.Option(help="The archive's DICOMweb root, e.g. http://orthanc:8042/dicom-web")],
    model: Annotated[Path, typer.Option(help="A radlvlm model directory.", exists=True, file_okay=False)],
    ledger: Annotated[Path, typer.Option(help="The worker's SQLite ledger (idempotency, resume).")],
    adapter: Annotated[Path | None, typer.Option(help="A MoLE or LoRA adapter.", exists=True, file_okay=False)] = None,
    orthanc: Annotated[
        str | None, typer.Option(help="Orthanc REST root: follow its /changes feed (else QIDO poll).")
    ] = None,
    outbox: Annotated[Path | None, typer.Option(help="Folder for FHIR DiagnosticReport and HL7 ORU files.")] = None,
    mllp: Annotated[str | None, typer.Option(help="HOST:PORT of an HL7 MLLP receiver (RIS) for the ORU^R01.")] = None,
    authorization: Annotated[str | None, typer.Option(help="Authorization header for the archive.")] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(help="Project key for the working copies (default: RADLVLM_DEID_KEY_PATH or the state folder)."),
    ] = None,
    spool: Annotated[
        Path | None, typer.Option(help="Draft studies from the listener's spool instead of the archive.")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Draft what is there now and exit.")] = False,
    poll_s: Annotated[float, typer.Option(help="Seconds between polls.")] = 10.0,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT.")] = None,
) -> None:
    """Draft every new chest CR/DX study once and write the SR back (FHIR/HL7 to the outbox)."""
    from radlvlm.integrations.dicomweb import DicomWebSettings, DicomWebSource
    from radlvlm.integrations.ledger import StudyLedger
    from radlvlm.integrations.worker import (
        DraftWorker,
        OrthancChangesDiscovery,
        PacsPublisher,
        QidoDiscovery,
    )
    from radlvlm.pipeline import build_runtime
    from radlvlm.settings import load_settings

    headers = {"Authorization": authorization} if authorization else {}
    mllp_peer = None
    if mllp is not None:
        host, _, port = mllp.rpartition(":")
        if not host or not port.isdigit():
            raise fail("--mllp must be HOST:PORT")
        mllp_peer = (host, int(port))
    archive = run_guarded(lambda: DicomWebSource(DicomWebSettings(dicomweb, headers=headers)))
    settings = run_guarded(lambda: load_settings(model_dir=model, adapter_dir=adapter, deid_key_path=key_file))
    # The RADLVLM_* settings give the engine (backend, device, dtype), the project key and the audit trail.
    runtime = run_guarded(lambda: build_runtime(settings, archive=archive))
    book = StudyLedger(ledger)
    discovery = OrthancChangesDiscovery(orthanc, book, headers) if orthanc else QidoDiscovery(archive)
    worker = DraftWorker(
        fetch=archive.retrieve_study,
        runtime=runtime,
        ledger=book,
        publish=PacsPublisher(archive, outbox=outbox, mllp=mllp_peer),
        discovery=discovery,
    )
    update_metrics = _serve_metrics(metrics_port, book, worker) if metrics_port else (lambda: None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if once:
            worker.run_once()
        else:
            stderr.print(f"worker polling every {poll_s:g} s; Ctrl-C to stop", highlight=False)
            while not stop.is_set():
                worker.run_once()
                update_metrics()
                stop.wait(poll_s)
    except KeyboardInterrupt:
        pass
    finally:
        runtime.close()
        update_metrics()
    if not book.path.exists():
        raise fail("the ledger was not written")
    typer.echo(json.dumps({"this_run": vars(worker.counts), "ledger": book.counts()}))


def _serve_metrics(port: int, ledger: object, worker: object) -> Callable[[], None]:
    """Prometheus metrics of the worker on 127.0.0.1:``port``: studies by ledger state, this run's counts."""
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    registry = CollectorRegistry()
    studies = Gauge("radlvlm_worker_studies", "Studies in the worker's ledger by state", ["state"], registry=registry)
    run = Gauge(
        "radlvlm_worker_run", "Studies handled since the worker started, by outcome", ["outcome"], registry=registry
    )
    start_http_server(port, addr="127.0.0.1", registry=registry)

    def update() -> None:
        for state, count in ledger.counts().items():  # type: ignore[attr-defined]
            studies.labels(state).set(count)
        for outcome, count in vars(worker.counts).items():  # type: ignore[attr-defined]
            run.labels(outcome).set(count)

    update()
    return update
