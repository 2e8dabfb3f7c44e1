"""One study through every door: the HTTP API, the CLI, ``eval predict`` and the PACS worker give the same answer
and write the same audit entry (same pseudonymous study, same keyed request and response digests), because each
is a thin adapter over one use case on a runtime built from the same settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydicom import dcmread
from servicesupport import build_tiny_model_dir, make_settings, start_server
from testsupport import pydicom_file
from typer.testing import CliRunner

from radlvlm.cli import app
from radlvlm.integrations.ledger import StudyLedger
from radlvlm.integrations.worker import DraftWorker
from radlvlm.pipeline import build_runtime
from radlvlm.settings import load_settings

runner = CliRunner()
TOKENS = "8"  # the same draft budget at every door
REPORT = "FINDINGS: The lungs are clear. No pleural effusion.\nIMPRESSION: No acute cardiopulmonary abnormality."


class _OneStudy:
    """Discovery of one study (the archive side of the worker is tested against Orthanc elsewhere)."""

    def __init__(self, uid: str) -> None:
        self.uid = uid

    def new_studies(self) -> list[str]:
        return [self.uid]


def _entries(path: Path, action: str) -> list[dict]:  # type: ignore[type-arg]
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["action"] == action]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny")


def test_one_study_gets_one_answer_and_one_kind_of_audit_entry_at_every_door(model_dir: Path, tmp_path: Path) -> None:
    home = Path(os.environ["RADLVLM_HOME"])  # the state folder every door defaults to (see conftest)
    audit = home / "audit.jsonl"
    study = pydicom_file("RG1_UNCR.dcm")
    report = tmp_path / "report.txt"
    report.write_text(REPORT)

    # HTTP, on the same key and trail as the other doors.
    settings, key, _ = make_settings(
        tmp_path, model_dir, audit_path=audit, deid_key_path=home / "deid.key", max_new_tokens=int(TOKENS)
    )
    server, thread, url, _ = start_server(settings)
    try:
        import httpx

        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as client:
            upload = {"file": ("study.dcm", study.read_bytes(), "application/dicom")}
            http_draft = client.post("/v1/drafts", files=upload)
            http_check = client.post("/v1/checks", data={"report": REPORT}, files=upload)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert http_draft.status_code == 200 and http_check.status_code == 200, (http_draft.text, http_check.text)

    # The CLI.
    cli_draft = runner.invoke(app, ["draft", str(study), "--model", str(model_dir), "--max-new-tokens", TOKENS])
    cli_check = runner.invoke(app, ["check", str(study), "--report", str(report), "--model", str(model_dir)])
    assert cli_draft.exit_code == 0 and cli_check.exit_code == 0, (cli_draft.output, cli_check.output)

    # eval predict over a manifest naming the same file.
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": "s1", "image": str(study), "text": REPORT}) + "\n")
    for task in ("draft", "check-simple"):
        predicted = runner.invoke(
            app,
            [
                *("eval", "predict", str(manifest), "--model", str(model_dir), "--task", task),
                *("-o", str(tmp_path / f"{task}.jsonl"), "--max-new-tokens", TOKENS, "--no-progress"),
            ],
        )
        assert predicted.exit_code == 0, predicted.output

    # The PACS worker, drafting the study as its archive would hand it over.
    runtime = build_runtime(load_settings(model_dir=model_dir, max_new_tokens=int(TOKENS)))
    published: list[tuple[str, str]] = []
    original = dcmread(study)
    worker = DraftWorker(
        fetch=lambda uid: [original],
        runtime=runtime,
        ledger=StudyLedger(tmp_path / "ledger.sqlite"),
        publish=lambda datasets, findings, impression, model_id: published.append((findings, impression)) or "x",
        discovery=_OneStudy(str(original.StudyInstanceUID)),
    )
    try:
        assert worker.run_once().drafted == 1
    finally:
        runtime.close()

    # The same answer at every door...
    answer = http_draft.json()
    assert json.loads(cli_draft.stdout)["findings"] == answer["findings"]
    assert json.loads(cli_draft.stdout)["impression"] == answer["impression"]
    assert published == [(answer["findings"], answer["impression"])]
    verdict = http_check.json()
    assert json.loads(cli_check.stdout)["error_probability"] == pytest.approx(verdict["error_probability"])
    # ...and the same audit entry: one per request, differing only in the door (and the actor, the time).
    drafts = _entries(audit, "draft")
    assert sorted(e["details"]["door"] for e in drafts) == ["cli", "eval", "http", "pacs"]
    assert len({(e["study"], e["request_sha256"], e["response_sha256"]) for e in drafts}) == 1
    checks = _entries(audit, "check_simple")
    assert sorted(e["details"]["door"] for e in checks) == ["cli", "eval", "http"]
    assert len({(e["study"], e["request_sha256"], e["response_sha256"]) for e in checks}) == 1
    # Nothing of the report or the header reaches the trail in the clear.
    trail = audit.read_text()
    for value in (str(original.PatientName), str(original.PatientID), str(original.StudyInstanceUID), "lungs"):
        assert value not in trail
