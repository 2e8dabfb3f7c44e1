"""Start-up of ``radlvlm serve``: the server listens (liveness) while the model loads in the background; until it
is ready every API path answers 503 "starting" and /readyz says so; a load that fails stops the server."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from servicesupport import make_settings, start_server
from typer.testing import CliRunner

import radlvlm.pipeline.runtime as runtime_module
from radlvlm.cli import app as cli_app


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray((np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _wait_ready(client: httpx.Client, seconds: float = 60) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        answer = client.get("/readyz")
        if answer.status_code == 200 or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def test_the_server_is_live_while_the_model_loads_and_serves_once_ready(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_build = runtime_module.build_engine

    def held_build(settings):  # type: ignore[no-untyped-def]
        release.wait(60)  # the load takes as long as the test says: "still loading" is observed for certain
        return real_build(settings)

    monkeypatch.setattr(runtime_module, "build_engine", held_build)
    settings, key, _ = make_settings(tmp_path, tiny_model_dir)
    uv, thread, url, _ = start_server(settings, load_in_background=True)
    try:
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as client:
            assert client.get("/healthz").status_code == 200
            readiness = client.get("/readyz")
            assert readiness.status_code == 503 and readiness.json()["status"] == "starting"
            early = client.post("/v1/drafts", files={"file": ("cxr.png", png_bytes(), "image/png")})
            assert early.status_code == 503 and early.json()["error"]["code"] == "starting"
            assert early.headers["Retry-After"] == "2"
            assert client.get("/metrics").status_code == 200  # does not wait for the model
            assert client.post("/v1/drafts", headers={"X-API-Key": "wrong"}).status_code == 401
            release.set()
            assert _wait_ready(client).status_code == 200
            draft = client.post("/v1/drafts", files={"file": ("cxr.png", png_bytes())}, data={"view": "PA"})
            assert draft.status_code == 200, draft.text
            assert client.get("/v1/models").json()["models"][0]["id"]
    finally:
        release.set()
        uv.should_exit = True
        thread.join(timeout=60)
    entries = [json.loads(line) for line in settings.audit_path.read_text().splitlines()]
    refusals = [e["details"]["status"] for e in entries if e["action"] == "refused"]
    assert refusals == [503, 401]  # the early refusal is audited like any other


def test_a_model_that_fails_to_load_stops_the_server_and_says_why(tmp_path: Path, tiny_model_dir: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for item in tiny_model_dir.iterdir():
        if item.is_file():
            (broken / item.name).write_bytes(item.read_bytes())
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    settings, key, _ = make_settings(tmp_path, broken)
    stopped = threading.Event()
    uv, thread, url, _ = start_server(settings, load_in_background=True, on_load_failure=stopped.set)
    try:
        assert stopped.wait(60), "the failed load was not reported"
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as client:
            readiness = client.get("/readyz")
            assert readiness.status_code == 503 and readiness.json()["status"] == "failed"
            assert readiness.json()["detail"] == "the model did not load; see the server log"
            assert str(tmp_path) not in readiness.text  # an unauthenticated caller learns no server path
            refused = client.post("/v1/drafts", files={"file": ("cxr.png", png_bytes(), "image/png")})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"
    finally:
        uv.should_exit = True
        thread.join(timeout=60)


def test_serve_refuses_a_wrong_model_path_before_listening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADLVLM_AUTH_DISABLED", "true")
    monkeypatch.setenv("RADLVLM_HOME", str(tmp_path))
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "not a model directory" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_what_the_server_imports_before_it_listens_holds_no_model_stack() -> None:
    """``radlvlm serve`` listens first and loads the model behind it; the app, its routes and the use cases' types
    must not pull transformers (seconds) in before the port opens (torch itself is the engine's request types)."""
    heavy = ("transformers", "monai", "presidio_analyzer", "spacy")
    code = (
        "import sys\n"
        "import radlvlm.service.app, radlvlm.service.schemas, radlvlm.pipeline.task_engine\n"
        f"print('LOADED', sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "LOADED []" in out.stdout, out.stdout + out.stderr
