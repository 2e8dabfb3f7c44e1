"""The drafting worker: new chest CR/DX studies in the archive → a preliminary AI draft written back.

For each new study: fetch it → the drafting use case, as at every other door (:func:`radlvlm.pipeline.draft_study`:
a de-identified working copy, guardrails, the engine, the PHI scan, the audit entry) → publish (a DICOM SR
referencing the original images, stored back by STOW; FHIR and HL7 to the outbox). The ledger (SQLite) makes it
idempotent and resumable: each study is claimed before work starts and marked done only after its outputs were
accepted; the SR's SOP Instance UID is derived from the study UID and the model, so a study redone after a kill
at the worst moment replaces its SR instead of adding a second one. Archive failures are retried with back-off
and dead-lettered after the last attempt; studies the model is not for are skipped with their reason. Nothing
identifying is logged: pseudonymous counts and codes only.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import requests
from pydicom import dcmread
from pydicom.dataset import Dataset

from radlvlm.errors import EngineError, GuardrailViolation, ModelTimeout, RadlvlmError
from radlvlm.integrations.dicomweb import DicomWebSource, PacsError
from radlvlm.integrations.fhir import build_diagnostic_report, diagnostic_report_to_json
from radlvlm.integrations.hl7 import build_oru_r01, send_mllp
from radlvlm.integrations.ledger import StudyLedger
from radlvlm.integrations.report import DraftReport, StudyIdentifiers
from radlvlm.integrations.sr import build_draft_sr
from radlvlm.pipeline import Caller, Runtime, StudyInput, draft_study
from radlvlm.pipeline.ingest import RADIOGRAPH_MODALITIES

logger = logging.getLogger(__name__)

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class Discovery(Protocol):
    def new_studies(self) -> Iterable[str]: ...


@dataclass
class QidoDiscovery:
    """Polls the archive with QIDO-RS for CR/DX studies (optionally from a date on)."""

    source: DicomWebSource
    study_date: str | None = None
    modalities: tuple[str, ...] = RADIOGRAPH_MODALITIES

    def new_studies(self) -> list[str]:
        found: list[str] = []
        for modality in self.modalities:
            for study in self.source.search_studies(modality=modality, study_date=self.study_date):
                uid = study.get("0020000D", {}).get("Value", [None])[0]
                if uid and uid not in found:
                    found.append(str(uid))
        return found


@dataclass
class OrthancChangesDiscovery:
    """Follows Orthanc's ``/changes`` feed for StableStudy events; the position is kept in the ledger."""

    base_url: str
    ledger: StudyLedger
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 30.0

    def new_studies(self) -> list[str]:
        since = int(self.ledger.get_cursor("orthanc_changes") or 0)
        found: list[str] = []
        while True:
            try:
                response = requests.get(
                    f"{self.base_url}/changes",
                    params={"since": since, "limit": 200},
                    headers=self.headers,
                    timeout=self.timeout_s,
                )
                response.raise_for_status()
                page = response.json()
                for change in page.get("Changes", []):
                    if change.get("ChangeType") == "StableStudy":
                        study = requests.get(
                            f"{self.base_url}/studies/{change['ID']}", headers=self.headers, timeout=self.timeout_s
                        )
                        study.raise_for_status()
                        uid = study.json().get("MainDicomTags", {}).get("StudyInstanceUID")
                        if uid:
                            found.append(str(uid))
            except (requests.RequestException, ValueError, KeyError) as e:
                raise PacsError(f"Orthanc /changes failed ({type(e).__name__})") from None
            since = int(page.get("Last", since))
            self.ledger.set_cursor("orthanc_changes", str(since))
            if page.get("Done", True):
                return found


@dataclass
class SpoolDiscovery:
    """Studies the C-STORE listener spooled (``<spool>/<study uid>/*.dcm``), once no file arrived for
    ``stable_s`` seconds (a modality sends a study's images one association at a time)."""

    spool: Path
    stable_s: float = 10.0

    def new_studies(self) -> list[str]:
        if not self.spool.is_dir():
            return []
        now = time.time()
        found = []
        for folder in sorted(p for p in self.spool.iterdir() if p.is_dir()):
            files = list(folder.glob("*.dcm"))
            if files and now - max(f.stat().st_mtime for f in files) >= self.stable_s:
                found.append(folder.name)
        return found

    def fetch(self, study_uid: str) -> list[Dataset]:
        """The spooled instances of a study (the worker's ``fetch`` for spool-fed studies)."""
        folder = self.spool / study_uid
        if not folder.is_dir():
            raise PacsError("the study is no longer in the spool")
        datasets = []
        for path in sorted(folder.glob("*.dcm")):
            try:
                datasets.append(dcmread(path))
            except Exception:  # a damaged spool file is skipped; the guardrails judge what is left
                logger.warning("unreadable spool file skipped")
        return datasets


Publisher = Callable[[Sequence[Dataset], str, str, str], str | None]
"""publish(original datasets, findings, impression, model id) → the output's UID (e.g. the SR's)."""


@dataclass
class WorkerCounts:
    drafted: int = 0
    skipped: int = 0
    failed: int = 0
    dead: int = 0


class DraftWorker:
    """Args:
    fetch: StudyInstanceUID → the study's datasets (e.g. ``DicomWebSource.retrieve_study``).
    runtime: the runtime the drafting use case runs on (engine, project key, audit trail).
    ledger: the durable study ledger.
    publish: writes the outputs; returns the output UID recorded in the ledger.
    discovery: where new studies come from.
    """

    def __init__(
        self,
        *,
        fetch: Callable[[str], list[Dataset]],
        runtime: Runtime,
        ledger: StudyLedger,
        publish: Publisher,
        discovery: Discovery,
        actor: str = "pacs-worker",
    ) -> None:
        self.fetch = fetch
        self.runtime = runtime
        self.ledger = ledger
        self.publish = publish
        self.discovery = discovery
        self.caller = Caller(actor, "pacs")
        self.counts = WorkerCounts()

    def poll(self) -> int:
        """Record newly discovered studies; returns how many were new."""
        try:
            return sum(1 for uid in self.discovery.new_studies() if self.ledger.add(uid))
        except PacsError as e:
            logger.warning("discovery failed: %s", e)
            return 0

    def work_one(self) -> bool:
        """Draft the next due study; False when nothing is due."""
        uid = self.ledger.claim()
        if uid is None:
            return False
        try:
            datasets = self.fetch(uid)
            outcome = draft_study(self.runtime, StudyInput(datasets=datasets), self.caller)
            findings, impression = _printable(outcome.findings), _printable(outcome.impression)
            output_uid = self.publish(datasets, findings, impression, outcome.model_id)
        except GuardrailViolation as e:
            self.ledger.failed(uid, f"not_for_model: {e}"[:200], permanent=True, skipped=True)
            self.counts.skipped += 1
            return True
        except (PacsError, TimeoutError, ModelTimeout, EngineError, OSError) as e:  # ours or the archive's: retried
            state = self.ledger.failed(uid, f"{type(e).__name__}: {e}"[:200])
            self._count_failure(state)
            return True
        except RadlvlmError as e:  # radlvlm messages name attributes and counts, never values
            state = self.ledger.failed(uid, f"{type(e).__name__}: {e}"[:200], permanent=True)
            self._count_failure(state)
            return True
        self.ledger.done(uid, output_uid)
        self.counts.drafted += 1
        return True

    def run_once(self) -> WorkerCounts:
        """Poll, then drain everything due."""
        self.poll()
        while self.work_one():
            pass
        return self.counts

    def _count_failure(self, state: str) -> None:
        if state == "dead":
            self.counts.dead += 1
        else:
            self.counts.failed += 1


def _printable(text: str) -> str:
    """Text without control characters (which DICOM text VRs, HL7 and MLLP framing forbid)."""
    return _CONTROL_CHARACTERS.sub("", text)


def draft_sop_instance_uid(study_uid: str, model_id: str) -> str:
    """The SR's SOP Instance UID: the same study and model always give the same UID (idempotent STOW)."""
    digest = hashlib.sha256(f"radlvlm-draft-sr\x00{study_uid}\x00{model_id}".encode()).digest()[:16]
    return "2.25." + str(int.from_bytes(digest, "big"))


def outbox_path(outbox: Path, study_uid: str, suffix: str) -> Path:
    outbox.mkdir(parents=True, exist_ok=True)
    return outbox / f"{study_uid}{suffix}"


@dataclass
class PacsPublisher:
    """Writes a draft back: DICOM SR by STOW to the archive; FHIR DiagnosticReport and HL7 ORU^R01 to an outbox
    folder (and ORU over MLLP when a peer is configured). Identifiers come from the archive's own headers."""

    archive: DicomWebSource
    outbox: Path | None = None
    mllp: tuple[str, int] | None = None

    def __call__(self, datasets: Sequence[Dataset], findings: str, impression: str, model_id: str) -> str:
        evidence = [ds for ds in datasets if str(ds.get("Modality", "")) in RADIOGRAPH_MODALITIES]
        study_uid = str(evidence[0].StudyInstanceUID)
        sop_uid = draft_sop_instance_uid(study_uid, model_id)
        series_uid = draft_sop_instance_uid(study_uid, model_id + "\x00series")
        sr = build_draft_sr(
            evidence, findings, impression, model_id=model_id, sop_instance_uid=sop_uid, series_instance_uid=series_uid
        )
        self.archive.store([sr])
        report = DraftReport(findings, impression, model_id)
        ids = StudyIdentifiers.from_dataset(evidence[0])
        if self.outbox is not None:
            fhir = build_diagnostic_report(report, ids, sr_sop_instance_uid=sop_uid)
            outbox_path(self.outbox, study_uid, ".fhir.json").write_text(diagnostic_report_to_json(fhir))
            outbox_path(self.outbox, study_uid, ".oru.hl7").write_text(build_oru_r01(report, ids))
        if self.mllp is not None:
            send_mllp(build_oru_r01(report, ids), self.mllp[0], self.mllp[1])
        return sop_uid
