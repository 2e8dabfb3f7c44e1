"""PACS benchmark: studies per minute through the drafting worker, end to end, on a real Orthanc.

STOWs N chest studies (the real RG1 CR chest under fresh UIDs) into an Orthanc started for the run, then times
the worker draining them: QIDO discovery, WADO retrieve, de-identification, drafting, PHI scan, SR build and
STOW back, FHIR + HL7 to an outbox. Run it inside the loopback-only namespace (Orthanc binds every interface):

    scripts/in-private-netns.sh .venv/bin/python benchmarks/pacs.py [--studies 20] [--model DIR]

Without --model the small random LVLM of benchmarks/model.py is built (32-token drafts). Writes one JSON file.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).parent))
from report import git_commit, save_report

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pacs.json")
    args = parser.parse_args()
    if os.environ.get("RADLVLM_PRIVATE_NETNS") != "1":
        sys.exit("run through scripts/in-private-netns.sh: Orthanc listens on every interface")

    from orthancsupport import start_orthanc  # the tests' Orthanc launcher (temp storage, DICOMweb on)
    from service import build_small_model

    from radlvlm.engine.torch_engine import TorchEngine
    from radlvlm.integrations.dicomweb import DicomWebSettings, DicomWebSource
    from radlvlm.integrations.ledger import StudyLedger
    from radlvlm.integrations.worker import DraftWorker, PacsPublisher, QidoDiscovery
    from radlvlm.model import GenerationSettings, load_pretrained
    from radlvlm.pipeline import Runtime
    from radlvlm.pipeline.task_engine import TaskEngine

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        orthanc = start_orthanc(work)
        try:
            archive = DicomWebSource(DicomWebSettings(orthanc.dicomweb_url))
            source = dcmread(get_testdata_file("RG1_UNCR.dcm", download=False))
            started = time.perf_counter()
            for _ in range(args.studies):
                ds = source.copy()
                ds.file_meta = source.file_meta.copy()
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
                    generate_uid(),
                    generate_uid(),
                    generate_uid(),
                )
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                archive.store([ds])
            stow_seconds = time.perf_counter() - started
            model_dir = args.model or build_small_model(work)
            model, processor = load_pretrained(model_dir)
            engine = TaskEngine(
                TorchEngine(
                    model,
                    processor,
                    model_id=Path(model_dir).name,
                    generation=GenerationSettings(max_new_tokens=args.new_tokens),
                )
            )
            worker = DraftWorker(
                fetch=archive.retrieve_study,
                runtime=Runtime(engine=engine, model_info={"id": engine.model_id}, key=b"b" * 32),
                ledger=StudyLedger(work / "ledger.sqlite"),
                publish=PacsPublisher(archive, outbox=work / "outbox"),
                discovery=QidoDiscovery(archive),
            )
            engine.warmup()
            started = time.perf_counter()
            counts = worker.run_once()
            seconds = time.perf_counter() - started
            engine.close()
        finally:
            orthanc.stop()
    report = {
        "name": "pacs",
        "commit": git_commit(),
        "device": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "config": {
            "studies": args.studies,
            "model": str(args.model) if args.model else "small random LVLM",
            "draft_new_tokens": args.new_tokens,
            "archive": "Orthanc 1.10 + DICOMweb plugin, loopback",
        },
        "metrics": {
            "studies_drafted": counts.drafted,
            "failed": counts.failed + counts.dead,
            "worker_seconds": seconds,
            "studies_per_minute": 60 * counts.drafted / seconds if seconds else 0.0,
            "stow_in_seconds": stow_seconds,
        },
    }
    save_report(args.out, report)


if __name__ == "__main__":
    main()
