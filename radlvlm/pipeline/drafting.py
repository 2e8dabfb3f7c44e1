"""The drafting use case: a study → a preliminary findings + impression draft, the same at every door.

ingest (one DICOM reader) → de-identify (a pseudonym context of this request's own) → input guardrails →
engine → PHI scan and output guardrails → one audit entry. :func:`draft_study` does it all; a door that batches
many studies itself (``eval predict``) calls :func:`prepare_draft` and :func:`finish_draft` around its own
engine calls, and the streaming door wraps the same two steps in a :class:`DraftStream`.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from radlvlm.engine.base import Timings
from radlvlm.errors import ModelError
from radlvlm.imaging import Image
from radlvlm.imaging.heatmap import heatmap_png, normalised_heat
from radlvlm.pipeline.flags import Flag
from radlvlm.pipeline.ingest import StudyInput, ingest_study
from radlvlm.pipeline.output import clean_output, release_sentences
from radlvlm.pipeline.runtime import Caller, Runtime
from radlvlm.safety.dicom_deid import DicomDeidentifier
from radlvlm.tasks.drafting import REPETITION, DraftRequest, DraftResult, DraftStream, StreamDraftRequest, draft_target
from radlvlm.tasks.image_findings import draft_disagreement, report_labels

if TYPE_CHECKING:
    from radlvlm.model.findings import ImageFindings

__all__ = [
    "DraftOutcome",
    "DraftSession",
    "ImageFacts",
    "PreparedDraft",
    "draft_study",
    "finish_draft",
    "prepare_draft",
    "start_draft_stream",
]


@dataclass(frozen=True)
class ImageFacts:
    """The image as the model saw it. ``view_source`` says where ``view`` came from: a DICOM attribute (such as
    "ViewPosition"), "request" (the caller's ``view``/``--view``), or "default" (a PNG/JPEG, which states no view,
    taken as PA)."""

    modality: str | None
    body_part: str | None
    view: str
    view_source: str
    rows: int
    columns: int

    @classmethod
    def of(cls, image: Image) -> ImageFacts:
        return cls(image.modality, image.body_part, image.view.value, image.view_source, image.shape[0], image.shape[1])


@dataclass
class PreparedDraft:
    """A draft request ready for the engine: the de-identified image, its flags, the request's keyed digest, and
    the request's own de-identifier (its pseudonym context scans the output too)."""

    request: DraftRequest
    image: Image
    flags: list[Flag]
    request_digest: str
    deidentifier: DicomDeidentifier
    image_findings: ImageFindings | None = None
    explain: bool = False  # the answer also shows where the classifier saw each stated finding
    started: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class DraftOutcome:
    """What every door answers: the draft (PHI-scanned), the image's facts, every guardrail flag, why generation
    stopped, the timings, and the pseudonymous study UID it was audited under."""

    model_id: str
    findings: str
    impression: str
    image: ImageFacts
    flags: list[Flag]
    finish_reason: str
    timings: Timings
    request_ms: float
    study: str
    image_findings: dict[str, Any] | None = None
    activation_maps: list[dict[str, Any]] | None = None

    def answer(self) -> dict[str, Any]:
        """The answer without timings: the same request gives the same answer at every door (what is audited)."""
        return {
            "model_id": self.model_id,
            "findings": self.findings,
            "impression": self.impression,
            "image": vars(self.image),
            "image_findings": self.image_findings,
            "activation_maps": self.activation_maps,
            "guardrail_flags": [f.as_dict() for f in self.flags],
            "finish_reason": self.finish_reason,
        }


def read_findings(runtime: Runtime, image: Image) -> ImageFindings | None:
    """The finding classifier's reading of the (de-identified, frontal) image; None when the model has none."""
    classifier = runtime.finding_classifier
    if classifier is None:
        return None
    return classifier.classify([image])[0]


def finding_maps(runtime: Runtime, image: Image, found: ImageFindings) -> list[dict[str, Any]]:
    """Where the classifier saw each finding it states: per stated label, its class activation map over the
    image (the letterbox padding cut off) as a transparent PNG to lay over the radiograph, base64-encoded."""
    classifier = runtime.finding_classifier
    labels = list(found.stated)
    if classifier is None or not labels:
        return []
    scores = classifier.activation_maps(image, labels)
    rows, columns = classifier.input_region(image)
    maps = []
    for label, label_scores in zip(labels, scores, strict=True):
        finding = found.get(label)
        png = heatmap_png(normalised_heat(label_scores[rows, columns].numpy()))
        maps.append(
            {
                "label": label,
                "probability": round(finding.probability, 4),
                "threshold": None if finding.threshold is None else round(finding.threshold, 4),
                "png_base64": base64.b64encode(png).decode("ascii"),
            }
        )
    return maps


def prepare_draft(
    runtime: Runtime,
    study: StudyInput,
    *,
    indication: str | None = None,
    stream: bool = False,
    explain: bool = False,
) -> PreparedDraft:
    """Ingest, de-identify and check a study; the engine request it becomes (nothing is sent yet)."""
    runtime.ensure_auditable()
    deidentifier = runtime.deidentifier()
    image, flags = ingest_study(study, deidentifier, runtime.archive)
    clean_indication = None
    if indication and indication.strip():
        clean_indication = runtime.report_deidentifier.deidentify(indication).text
    kind = StreamDraftRequest if stream else DraftRequest
    # With a finding classifier, the writer is told what it read in the image (and the answer shows it).
    found = read_findings(runtime, image)
    request = kind(
        image=image,
        indication=clean_indication,
        max_new_tokens=runtime.max_new_tokens,
        findings=None if found is None else report_labels(found.stated),
    )
    # The same image and indication give the same digest whichever door they came through (upload, file,
    # archive): it covers the de-identified instance's UID and pixels, and the indication as sent.
    digest = runtime.digest(image.sop_instance_uid, image.array.tobytes(), indication or "")
    return PreparedDraft(request, image, flags, digest, deidentifier, found, explain)


def finish_draft(runtime: Runtime, prepared: PreparedDraft, result: DraftResult, caller: Caller) -> DraftOutcome:
    """Scan the model's draft, add its flags, and audit the request."""
    findings, findings_flags = clean_output(result.findings, prepared.deidentifier, has_prior=False, has_lateral=False)
    impression, impression_flags = clean_output(
        result.impression, prepared.deidentifier, has_prior=False, has_lateral=False
    )
    flags = prepared.flags + findings_flags + impression_flags
    given = prepared.request.findings
    if given is not None and result.finish_reason != REPETITION:
        # The writer is told what the image showed; a draft that says otherwise is shown as such, not hidden.
        differs = draft_disagreement(draft_target(findings, impression), given)
        if differs is not None:
            flags.append(Flag("draft_differs_from_image_findings", differs.message()))
    elapsed_ms = round((time.perf_counter() - prepared.started) * 1000, 2)
    outcome = DraftOutcome(
        model_id=result.model_id,
        findings=findings,
        impression=impression,
        image=ImageFacts.of(prepared.image),
        flags=flags,
        finish_reason=result.finish_reason,
        timings=result.timings,
        request_ms=elapsed_ms,
        study=prepared.image.study_instance_uid,
        image_findings=None if prepared.image_findings is None else prepared.image_findings.as_dict(),
        activation_maps=_maps_if_asked(runtime, prepared),
    )
    runtime.record(
        caller,
        "draft",
        outcome.study,
        request=prepared.request_digest,
        response=runtime.answer_digest(outcome.answer()),
        model=result.model_id.replace(" ", "_"),
        flags=len(outcome.flags),
        ms=round(elapsed_ms),
    )
    return outcome


def _maps_if_asked(runtime: Runtime, prepared: PreparedDraft) -> list[dict[str, Any]] | None:
    if not prepared.explain:
        return None
    return [] if prepared.image_findings is None else finding_maps(runtime, prepared.image, prepared.image_findings)


def draft_study(
    runtime: Runtime, study: StudyInput, caller: Caller, *, indication: str | None = None, explain: bool = False
) -> DraftOutcome:
    """Draft findings and impression for one study: the use case every door calls. With ``explain`` the answer
    also shows where the classifier saw each finding it states (:func:`finding_maps`)."""
    prepared = prepare_draft(runtime, study, indication=indication, explain=explain)
    result = runtime.run(prepared.request)
    if not isinstance(result, DraftResult):
        raise ModelError(f"the engine answered a draft with a {type(result).__name__}")
    return finish_draft(runtime, prepared, result, caller)


class DraftSession:
    """A draft streamed sentence by sentence: each released only after its PHI scan, then the whole outcome
    (scanned and audited like any draft) from :meth:`finish`."""

    def __init__(self, runtime: Runtime, prepared: PreparedDraft, stream: DraftStream, caller: Caller) -> None:
        self._runtime, self._prepared, self._stream, self._caller = runtime, prepared, stream, caller

    def sentences(self) -> Iterator[str]:
        for sentence, _ in release_sentences(iter(self._stream), self._prepared.deidentifier):
            yield sentence

    def finish(self) -> DraftOutcome:
        result = self._stream.result(timeout=self._runtime.request_timeout_s)
        if result is None:
            raise ModelError("generation failed")
        return finish_draft(self._runtime, self._prepared, result, self._caller)


def start_draft_stream(
    runtime: Runtime, study: StudyInput, caller: Caller, *, indication: str | None = None, explain: bool = False
) -> DraftSession:
    """Prepare a draft and start generating it; returns once the model has begun."""
    prepared = prepare_draft(runtime, study, indication=indication, stream=True, explain=explain)
    stream = runtime.run(prepared.request)
    if not isinstance(stream, DraftStream):
        raise ModelError(f"the engine answered a streamed draft with a {type(stream).__name__}")
    return DraftSession(runtime, prepared, stream, caller)
