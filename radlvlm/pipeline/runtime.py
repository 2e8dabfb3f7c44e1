"""The runtime every door shares: the engine, the project key, the report de-identifier, the audit trail and the
archive client, built once from :class:`radlvlm.settings.Settings`.

Nothing in it holds request state. De-identification gets a fresh pseudonym context per study or request
(:meth:`Runtime.deidentifier`): the project key makes pseudonyms deterministic, so nothing needs to be kept
between requests, and nothing a request saw (a patient's name tokens) can outlive it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from radlvlm.engine.base import Engine
from radlvlm.errors import ModelError, ModelTimeout
from radlvlm.model.default import choose_model, classifier_beside
from radlvlm.pipeline.task_engine import TaskEngine, TaskRequest, TaskResult
from radlvlm.safety.audit import AuditTrail
from radlvlm.safety.dicom_deid import DicomDeidentifier
from radlvlm.safety.pseudonyms import PseudonymMap, load_or_create_key
from radlvlm.tasks.calibration import find_calibrations
from radlvlm.tasks.image_check import ImageCheckFusion

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from radlvlm.model.findings import FindingClassifier
    from radlvlm.safety.audit import AuditTrail
    from radlvlm.safety.dicom_deid import DeidOptions, DicomDeidentifier
    from radlvlm.safety.text_deid import ReportDeidentifier
    from radlvlm.settings import Settings
    from radlvlm.tasks.image_check import ImageCheckFusion

__all__ = ["Caller", "Runtime", "StudyArchive", "build_engine", "build_runtime"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """Who asked, through which door: ``actor`` is a short code (an API key id, ``cli``, ``pacs-worker``)."""

    actor: str
    door: str


class StudyArchive(Protocol):
    """Where a study named by its UID is fetched from (a DICOMweb archive: WADO-RS)."""

    def retrieve_study(self, study_uid: str) -> list[Dataset]: ...


@dataclass
class Runtime:
    """What the use cases run on.

    Args:
        engine: the started engine, paired with the tasks (:class:`radlvlm.pipeline.task_engine.TaskEngine`).
        model_info: what ``GET /v1/models`` says of the model.
        key: the 32-byte project key (pseudonyms, UIDs, keyed digests in the audit trail).
        audit: the audit trail, or None where nothing is audited (a test, a dry run).
        archive: the DICOMweb archive drafts may name studies in, or None.
        request_timeout_s: how long a use case waits for the model.
        max_new_tokens: a draft's token budget.
        deid_options: the DICOM de-identification profile's options.
        classifier_dir: the finding classifier's directory, or None when the model has none (loaded on first use).
        classifier_is_tower: the classifier is the served model's own vision tower (``classifier_dir`` is its
            base): the runtime reads findings with the served network itself rather than a second copy of it.
    """

    engine: TaskEngine
    model_info: dict[str, Any]
    key: bytes
    audit: AuditTrail | None = None
    archive: StudyArchive | None = None
    request_timeout_s: float = 120.0
    max_new_tokens: int = 256
    deid_options: DeidOptions | None = None
    classifier_dir: Path | None = None
    classifier_is_tower: bool = False
    _classifier: Any = field(default=None, repr=False)
    _fusion: Any = field(default=None, repr=False)
    _report_deidentifier: ReportDeidentifier | None = field(default=None, repr=False)
    _build_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    @property
    def report_deidentifier(self) -> ReportDeidentifier:
        """The report de-identifier (Presidio's analyzer: costly to build, stateless per call, so shared)."""
        # Built once, under a lock: two requests building Presidio and spaCy at once in two threads race on
        # their imports.
        with self._build_lock:
            if self._report_deidentifier is None:
                from radlvlm.safety.text_deid import ReportDeidentifier  # noqa: PLC0415 - Presidio: loaded only when text is de-identified or scanned

                self._report_deidentifier = ReportDeidentifier()
        return self._report_deidentifier

    @property
    def finding_classifier(self) -> FindingClassifier | None:
        """The finding classifier (:mod:`radlvlm.model.findings`), loaded once on first use; None without one."""
        if self.classifier_dir is None:
            return None
        with self._build_lock:
            if self._classifier is None:
                from radlvlm.model.findings import FindingTower, load_finding_classifier  # noqa: PLC0415 - transformers: loaded with the model, after the server listens

                tower_of = getattr(self.engine, "vision_tower", None) if self.classifier_is_tower else None
                served = tower_of() if callable(tower_of) else None
                if isinstance(served, FindingTower):
                    # One network, read once per draft: the tower remembers what it just classified.
                    self._classifier = served
                else:
                    try:
                        self._classifier = load_finding_classifier(self.classifier_dir, dtype=torch.float32)
                    except (OSError, ValueError) as e:
                        raise ModelError(f"the finding classifier could not be loaded ({type(e).__name__})") from e

                # Read with the classifier, once: the image check's fusion belongs to this classifier.
                self._fusion = ImageCheckFusion.load(self.classifier_dir)
        return self._classifier

    @property
    def image_check_fusion(self) -> ImageCheckFusion | None:
        """The image check's fitted fusion (``image_check.json`` beside the classifier); None without one."""
        return self._fusion if self.finding_classifier is not None else None

    def deidentifier(self) -> DicomDeidentifier:
        """A DICOM de-identifier with a pseudonym context of its own: one per study or request, dropped after."""
        return DicomDeidentifier(PseudonymMap(self.key, record=False), self.deid_options, self.report_deidentifier)

    def digest(self, *parts: bytes | str) -> str:
        """A keyed digest (HMAC-SHA-256 under the project key) of request or response content.

        What the audit trail stores: a plain hash of a short text (a name, an MRN) is found again by trying
        guesses, a keyed one only by someone who holds the key.
        """
        mac = hmac.new(self.key, b"radlvlm-audit-content", hashlib.sha256)
        for part in parts:
            data = part.encode("utf-8") if isinstance(part, str) else part
            mac.update(len(data).to_bytes(8, "big"))
            mac.update(data)
        return mac.hexdigest()

    def ensure_auditable(self) -> None:
        """Raise ``AuditIntegrityError`` when the trail cannot take the next entry: a use case checks this before
        it runs the model, so no request is answered that the trail cannot record."""
        if self.audit is not None:
            self.audit.check()

    def run(self, request: TaskRequest) -> TaskResult:
        """Submit to the engine and wait up to the request timeout."""
        future = self.engine.submit(request)
        try:
            return future.result(timeout=self.request_timeout_s)
        except TimeoutError:
            raise ModelTimeout("the model did not answer in time") from None

    def content_uid(self, kind: str, content: bytes | str) -> str:
        """A pseudonymous ``2.25.`` study UID for content that has none (a report checked on its own text, a
        de-identified text): keyed, so the same content is the same study in the trail and nothing is guessable."""
        return PseudonymMap(self.key, record=False).uid(f"{kind}:{self.digest(content)}")

    def answer_digest(self, answer: dict[str, Any]) -> str:
        """The keyed digest of an answer (its canonical JSON): equal answers give equal digests at every door."""
        return self.digest(json.dumps(answer, sort_keys=True))

    def record(
        self, caller: Caller, action: str, study: str, *, request: str, response: str, **details: str | int | bool
    ) -> None:
        """One audit entry (when there is a trail): ``request``/``response`` are keyed digests already; the door
        the request came through is among the details."""
        if self.audit is not None:
            self.audit.record(
                actor=caller.actor,
                action=action,
                study=study,
                request=request,
                response=response,
                details={"door": caller.door, **details},
            )

    def close(self) -> None:
        self.engine.close()


def build_engine(settings: Settings) -> tuple[TaskEngine, dict[str, Any]]:
    """The configured backend started on the configured model (the embedded model when none is named), with the
    tasks (and the model's check calibration) paired with it."""
    from radlvlm.engine.loading import load_engine  # noqa: PLC0415 - transformers: loaded with the model, after the server listens
    from radlvlm.model.generation import GenerationSettings  # noqa: PLC0415 - transformers: loaded with the model, after the server listens

    choice = choose_model(settings.model_dir, settings.adapter_dir)
    engine, info = load_engine(
        settings.backend,
        choice.base,
        adapter_dir=choice.adapter,
        model_id=choice.model_id,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        generation=GenerationSettings(max_new_tokens=settings.max_new_tokens),
        device=settings.device,
        dtype=settings.dtype,
        vllm_options=settings.vllm_options() if settings.backend == "vllm" else None,
    )
    info["embedded_default"] = choice.embedded
    return TaskEngine(engine, find_calibrations(choice.base, choice.adapter)), info


def check_before_loading(settings: Settings) -> None:
    """What can be checked of the configured model without loading it (paths; for vLLM the export and the GPU),
    so that a wrong configuration stops a start at once, before a background load."""
    choice = choose_model(settings.model_dir, settings.adapter_dir)
    if settings.backend == "vllm":
        from radlvlm.engine.vllm_engine import check_vllm_can_start  # noqa: PLC0415 - vLLM: the optional GPU extra

        check_vllm_can_start(choice.base, choice.adapter)
        return
    if not (choice.base / "config.json").is_file():
        raise ModelError(f"{choice.base}: not a model directory (no config.json)")
    if choice.adapter is not None and not choice.adapter.is_dir():
        raise ModelError(f"{choice.adapter}: no such adapter directory")


class LazyEngine:
    """An engine loaded on first use: a command that handles one study checks its input (reading, de-identifying,
    guardrails) before it pays for loading the model, so a wrong file is refused at once."""

    def __init__(self, load: Callable[[], tuple[TaskEngine, dict[str, Any]]]) -> None:
        self._load = load
        self._engine: TaskEngine | None = None
        self._lock = threading.Lock()
        self.info: dict[str, Any] = {}  # what GET /v1/models says, filled in when the model loads

    def _loaded(self) -> TaskEngine:
        with self._lock:
            if self._engine is None:
                self._engine, info = self._load()
                self.info.update(info)
            return self._engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loaded(), name)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def classifier_is_tower(settings: Settings, directory: Path | None) -> bool:
    """Whether the finding classifier in ``directory`` is the configured model's own vision tower (its base)."""
    if directory is None:
        return False
    return directory.resolve() == choose_model(settings.model_dir, settings.adapter_dir).base.resolve()


def classifier_dir(settings: Settings) -> Path | None:
    """The finding classifier the settings name, or the one that travels with the model, or None."""
    if settings.findings_disabled:
        return None
    if settings.findings_model is not None:
        if not (settings.findings_model / "config.json").is_file():
            raise ModelError(f"{settings.findings_model}: not a finding classifier directory (no config.json)")
        return settings.findings_model
    return classifier_beside(choose_model(settings.model_dir, settings.adapter_dir))


def build_runtime(
    settings: Settings,
    *,
    engine: TaskEngine | Engine | None = None,
    model_info: dict[str, Any] | None = None,
    audit: bool = True,
    lazy: bool = False,
    archive: StudyArchive | None = None,
) -> Runtime:
    """The runtime of ``settings``: its engine (or ``engine``, already started; a bare engine is paired with the
    tasks here, without a check calibration), the project key (created when
    absent, and said so in the log), the audit trail (unless ``audit`` is False) and ``archive``, the client of
    the archive drafts may name studies in (a door builds it: the use cases import no archive client). With
    ``lazy`` the model and the report de-identifier are built on first use (or by whoever warms them up), so
    the runtime itself is ready in well under a second."""
    key, created = load_or_create_key(settings.deid_key_path)
    if created:
        logger.warning("created a new project key at %s; keep it secret and back it up", settings.deid_key_path)
    trail = AuditTrail(settings.audit_path, key=key) if audit else None
    if trail is not None:
        trail.check()  # a torn or unreadable trail stops the start, before the model is loaded
    if engine is None and lazy:
        lazy_engine = LazyEngine(lambda: build_engine(settings))
        engine, model_info = lazy_engine, lazy_engine.info  # type: ignore[assignment]
    elif engine is None:
        engine, model_info = build_engine(settings)
    elif isinstance(engine, Engine):
        engine = TaskEngine(engine)
    found = classifier_dir(settings)
    runtime = Runtime(
        engine=engine,
        classifier_dir=found,
        classifier_is_tower=classifier_is_tower(settings, found),
        model_info=model_info if model_info is not None else {"id": engine.model_id},
        key=key,
        audit=trail,
        archive=archive,
        request_timeout_s=settings.request_timeout_s,
        max_new_tokens=settings.max_new_tokens,
    )
    if not lazy:
        runtime.report_deidentifier  # noqa: B018 - built now, not on the first request
    return runtime
