"""Errors say whose fault they are, at every door (issue 27, item 2). The engine's model failing while it answers
is radlvlm's fault: the API answers 500 with a request id (also in the ``X-Request-ID`` header and the log line,
which holds no request content), the CLI and ``eval predict`` exit 1, the PACS worker retries the study. What the
caller can fix stays 4xx / exit 2. The failure is real: the torch engine's generation raises, as an out-of-memory
or a kernel fault would."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from servicesupport import build_tiny_model_dir, make_settings, start_server
from testsupport import pydicom_file
from typer.testing import CliRunner

from radlvlm.cli import app
from radlvlm.engine import torch_engine
from radlvlm.integrations.ledger import StudyLedger
from radlvlm.integrations.worker import DraftWorker
from radlvlm.pipeline import build_runtime

SECRET = "Mrs Jane Roe, MRN 998877"  # what a failure's message could quote; must reach no caller and no log


def _fail(*args: object, **kwargs: object) -> None:
    raise RuntimeError(f"CUDA error while drafting for {SECRET}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture
def failing_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch_engine, "generate", _fail)


def test_http_a_model_failure_is_a_500_with_the_request_id_and_a_bad_file_stays_4xx(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings, key, _ = make_settings(tmp_path, model_dir)
    server, thread, url, _ = start_server(settings)
    monkeypatch.setattr(torch_engine, "generate", _fail)  # after the start-up's warm-up draft
    study = pydicom_file("RG1_UNCR.dcm").read_bytes()
    try:
        with caplog.at_level(logging.INFO), httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as c:
            failed = c.post("/v1/drafts", files={"file": ("s.dcm", study, "application/dicom")})
            refused = c.post("/v1/drafts", files={"file": ("s.png", b"", "image/png")})
            healthy = c.get("/healthz")
    finally:
        server.should_exit = True
        thread.join(timeout=30)

    assert failed.status_code == 500, failed.text
    error = failed.json()["error"]
    assert error["code"] == "engine_error"
    assert error["request_id"] == failed.headers["X-Request-ID"]
    assert SECRET not in failed.text and "CUDA" not in failed.text and "RuntimeError" not in failed.text
    # The operator finds the incident by the id the caller quotes; the log names the type, never the content.
    assert error["request_id"] in caplog.text and "RuntimeError" in caplog.text
    assert SECRET not in caplog.text

    assert refused.status_code == 422 and "request_id" not in refused.json()["error"]  # the caller's to fix
    assert refused.headers["X-Request-ID"] and refused.headers["X-Request-ID"] != failed.headers["X-Request-ID"]
    assert healthy.status_code == 200 and healthy.headers["X-Request-ID"]


def test_cli_a_model_failure_exits_1_in_one_line_and_a_bad_file_exits_2(
    model_dir: Path, tmp_path: Path, failing_generation: None
) -> None:
    runner = CliRunner()
    study = pydicom_file("RG1_UNCR.dcm")
    failed = runner.invoke(app, ["draft", str(study), "--model", str(model_dir), "--max-new-tokens", "4"])
    assert failed.exit_code == 1, failed.output
    errors = [line for line in failed.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not in the input" in errors[0], failed.output
    assert SECRET not in failed.output and "Traceback" not in failed.output

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    refused = runner.invoke(app, ["draft", str(empty), "--model", str(model_dir)])
    assert refused.exit_code == 2, refused.output


def test_eval_predict_a_model_failure_exits_1(model_dir: Path, tmp_path: Path, failing_generation: None) -> None:
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": "s1", "image": str(pydicom_file("RG1_UNCR.dcm"))}) + "\n")
    result = CliRunner().invoke(
        app,
        ["eval", "predict", str(manifest), "--task", "draft", "--model", str(model_dir), "--out", str(tmp_path / "p")],
    )
    assert result.exit_code == 1, result.output
    assert SECRET not in result.output and "Traceback" not in result.output


def test_pacs_worker_retries_a_study_the_model_failed_on(
    model_dir: Path, tmp_path: Path, failing_generation: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radlvlm.settings import load_settings

    monkeypatch.setenv("RADLVLM_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("RADLVLM_MAX_NEW_TOKENS", "4")
    runtime = build_runtime(load_settings(), audit=False)
    ledger = StudyLedger(tmp_path / "ledger.sqlite", backoff_s=0.0)
    uid = "1.2.826.0.1.3680043.8.498.1"
    ledger.add(uid)
    published: list[str] = []
    worker = DraftWorker(
        fetch=lambda _uid: [dcmread(pydicom_file("RG1_UNCR.dcm"))],
        runtime=runtime,
        ledger=ledger,
        publish=lambda *args: published.append("sr") or "out",  # type: ignore[func-returns-value]
        discovery=None,  # type: ignore[arg-type]
    )
    try:
        assert worker.work_one()
    finally:
        runtime.close()
    record = ledger.get(uid)
    assert record is not None and record.state == "failed", record  # retried after a back-off, not dead-lettered
    assert "EngineError" in (record.last_error or "") and SECRET not in (record.last_error or "")
    assert published == []
