"""The routers' own job, without a model: read the form, refuse what the caller must fix, hand the use case what
was asked, shape its answer, and map its errors by whose fault they are. The use cases are swapped in with
FastAPI's ``dependency_overrides`` (they are tested with a model elsewhere, and across doors in test_golden)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from radlvlm.engine.base import Timings
from radlvlm.errors import EngineError, InputError, ModelError
from radlvlm.pipeline.checking import CheckOutcome, FoundError
from radlvlm.pipeline.deid import DeidentifiedText
from radlvlm.pipeline.drafting import DraftOutcome, ImageFacts
from radlvlm.pipeline.flags import Flag
from radlvlm.pipeline.ingest import StudyInput
from radlvlm.service.dependencies import UseCases, get_state, get_use_cases, require
from radlvlm.service.errors import install_error_handlers
from radlvlm.service.routers import checks, deid, drafts
from radlvlm.service.security import Principal
from radlvlm.service.state import Metrics

TIMINGS = Timings(1.0, 2.0, 3.0, 1)
RUNTIME = object()  # what the state holds; a use case must be handed exactly this


@dataclass
class State:
    """The part of the service state a router reads: the runtime it passes on, and the metrics it counts into."""

    runtime: object = RUNTIME
    metrics: Metrics = field(default_factory=Metrics)


@dataclass
class Calls:
    made: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    error: Exception | None = None

    def recorder(self, name: str, answer: Any) -> Any:
        def use_case(*args: Any, **kwargs: Any) -> Any:
            self.made.append((name, args, kwargs))
            if self.error is not None:
                raise self.error
            return answer

        return use_case


def _draft() -> DraftOutcome:
    return DraftOutcome(
        model_id="m",
        findings="Small left pleural effusion.",
        impression="Pleural effusion.",
        image=ImageFacts("CR", "CHEST", "PA", "ViewPosition", 64, 48),
        flags=[Flag("view_assumed", "no view given")],
        finish_reason="stop",
        timings=TIMINGS,
        request_ms=5.0,
        study="2.25.1",
    )


def _check() -> CheckOutcome:
    return CheckOutcome(
        model_id="m",
        mode="simple",
        text_only=True,
        has_error=True,
        confidence=0.8,
        error_probability=0.8,
        calibrated=True,
        errors=[FoundError("negation_flip", None, "Pleural Effusion")],
        answer_valid=True,
        reason=None,
        flags=[],
        timings=TIMINGS,
        request_ms=4.0,
        study="2.25.2",
    )


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def client(calls: Calls) -> Iterator[TestClient]:
    app = FastAPI()
    install_error_handlers(app)
    for module in (drafts, checks, deid):
        app.include_router(module.router)
    state = State()
    app.dependency_overrides[get_state] = lambda: state
    app.dependency_overrides[get_use_cases] = lambda: UseCases(
        draft=calls.recorder("draft", _draft()),
        check=calls.recorder("check", _check()),
        deidentify_dicom=calls.recorder("deidentify_dicom", b"DICM"),
        deidentify_text=calls.recorder("deidentify_text", DeidentifiedText("[NAME]", {"PERSON": 1})),
    )
    principal = Principal("k1", frozenset({"draft", "check", "deid"}))
    for scope in ("draft", "check", "deid"):
        app.dependency_overrides[require(scope)] = lambda: principal
    with TestClient(app) as test_client:
        test_client.state = state  # type: ignore[attr-defined]
        yield test_client


def test_a_draft_hands_the_use_case_what_was_asked_and_answers_its_outcome(client: TestClient, calls: Calls) -> None:
    response = client.post(
        "/v1/drafts",
        files={"file": ("cxr.png", b"PNGDATA", "image/png")},
        data={"indication": "cough", "view": "AP", "explain": "true"},
    )
    assert response.status_code == 200, response.text
    ((name, args, kwargs),) = calls.made
    runtime, study, caller = args
    assert name == "draft" and runtime is RUNTIME and caller.actor == "k1" and caller.door == "http"
    assert study == StudyInput(data=b"PNGDATA", view="AP")
    assert kwargs == {"indication": "cough", "explain": True}
    body = response.json()
    assert body["findings"] == "Small left pleural effusion." and "not for clinical use" in body["disclaimer"]
    assert body["image"]["view"] == "PA" and body["activation_maps"] is None
    assert body["timings"]["request_ms"] == 5.0
    counted = client.state.metrics.guardrail_flags.labels("view_assumed")._value.get()  # type: ignore[attr-defined]
    assert counted == 1


@pytest.mark.parametrize(
    ("files", "data", "message"),
    [
        ({}, {}, "exactly one of 'file'"),
        ({"file": ("a.png", b"x", "image/png")}, {"study_uid": "1.2.3"}, "exactly one of 'file'"),
        ({}, {"study_uid": "1.2.x"}, "study_uid"),
        ({"file": ("a.png", b"x", "image/png")}, {"view": "LATERAL"}, "view"),
    ],
)
def test_a_draft_request_the_caller_must_fix_is_refused_before_any_use_case_runs(
    client: TestClient, calls: Calls, files: dict, data: dict, message: str
) -> None:
    response = client.post("/v1/drafts", files=files, data=data)
    assert response.status_code == 422 and message in response.text
    assert calls.made == []


def test_a_repeated_field_is_refused(client: TestClient, calls: Calls) -> None:
    form = {"content-type": "application/x-www-form-urlencoded"}
    response = client.post("/v1/checks", content="report=a&report=b", headers=form)
    assert response.status_code == 422 and "repeated: report" in response.text and calls.made == []


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (InputError("the image is not a chest radiograph"), 422, None),
        (EngineError("CUDA out of memory at 0x7f"), 500, "engine_error"),
        (ModelError("weights missing in /srv/models"), 500, "model_error"),
    ],
)
def test_a_use_case_error_is_answered_by_whose_fault_it_is(
    client: TestClient, calls: Calls, error: Exception, status: int, code: str | None
) -> None:
    calls.error = error
    response = client.post("/v1/drafts", files={"file": ("cxr.png", b"x", "image/png")})
    assert response.status_code == status
    body = response.json()["error"]
    if code is not None:
        assert body["code"] == code
    if status >= 500:  # our fault: no internals leave
        assert "0x7f" not in response.text and "/srv" not in response.text
    else:
        assert "not a chest radiograph" in body["message"]


def test_a_check_passes_report_mode_and_image_and_answers_the_findings(client: TestClient, calls: Calls) -> None:
    response = client.post("/v1/checks", data={"report": "FINDINGS: x. IMPRESSION: y.", "mode": "complex"})
    assert response.status_code == 200, response.text
    ((name, args, kwargs),) = calls.made
    assert name == "check" and args[0] is RUNTIME and args[1] == "FINDINGS: x. IMPRESSION: y."
    assert kwargs == {"image": None, "mode": "complex"}
    body = response.json()
    assert body["check_type"] == "text_only" and body["has_error"] is True
    assert body["findings"] == [{"category": "negation_flip", "span": None, "text": "Pleural Effusion"}]
    refused = client.post("/v1/checks", data={"report": "x", "mode": "thorough"})
    assert refused.status_code == 422 and len(calls.made) == 1


def test_deid_answers_dicom_for_a_file_and_json_for_text(client: TestClient, calls: Calls) -> None:
    dicom = client.post("/v1/deid", files={"file": ("a.dcm", b"raw", "application/dicom")})
    assert (
        dicom.status_code == 200 and dicom.headers["content-type"] == "application/dicom" and dicom.content == b"DICM"
    )
    text = client.post("/v1/deid", data={"text": "Seen by Dr. Patel."})
    assert text.json() == {"text": "[NAME]", "replaced": {"PERSON": 1}}
    assert [name for name, _, _ in calls.made] == ["deidentify_dicom", "deidentify_text"]
    both = client.post("/v1/deid", files={"file": ("a.dcm", b"raw", "application/dicom")}, data={"text": "x"})
    assert both.status_code == 422 and len(calls.made) == 2
