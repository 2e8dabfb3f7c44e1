"""The HTTP API end to end on a real server: drafts, checks, de-identification, auth, limits, errors."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from pydicom import dcmread
from servicesupport import Server, make_settings, start_server
from testsupport import pydicom_file, shared_path, to_bytes

from radlvlm.safety.audit import verify_audit_trail

RG1 = "RG1_UNCR.dcm"


def _png(side: int = 64) -> bytes:
    ramp = (np.add.outer(np.arange(side), np.arange(side)) * 2 % 256).astype(np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(ramp).save(buffer, format="PNG")
    return buffer.getvalue()


def _error(response) -> dict:  # type: ignore[no-untyped-def]
    body = response.json()
    expected = {"code", "message", "request_id"} if response.status_code >= 500 else {"code", "message"}
    assert set(body) == {"error"} and set(body["error"]) == expected, body
    if response.status_code >= 500:  # the service's fault: the caller quotes the id to the operator
        assert body["error"]["request_id"] == response.headers["X-Request-ID"]
    return body["error"]


def test_health_ready_openapi_and_page(server: Server) -> None:
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok", "detail": None}
        assert client.get("/readyz").json()["status"] == "ok"
        spec = client.get("/openapi.json").json()
        assert {"/v1/drafts", "/v1/checks", "/v1/deid", "/v1/models"} <= set(spec["paths"])
        page = client.get("/")
        assert page.status_code == 200 and "radlvlm" in page.text and "/v1/drafts" in page.text
        models = client.get("/v1/models").json()["models"]
        assert models[0]["id"] == "tiny-radlvlm" and models[0]["architecture"]["vision"] == "dinov2"


def test_draft_from_a_real_cr_chest_dicom(server: Server) -> None:
    data = pydicom_file(RG1).read_bytes()
    with server.client() as client:
        response = client.post(
            "/v1/drafts",
            files={"file": ("rg1.dcm", data, "application/dicom")},
            data={"indication": "Cough. Ordered by Dr. Smith on 03/04/2024."},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == {
        "modality": "CR",
        "body_part": "CHEST",
        "view": "PA",
        "view_source": "ViewPosition",
        "rows": 1955,
        "columns": 1841,
    }
    assert "view_assumed" not in {f["code"] for f in body["guardrail_flags"]}
    assert body["model_id"] == "tiny-radlvlm" and "not for clinical use" in body["disclaimer"]
    assert body["timings"]["request_ms"] >= body["timings"]["compute_ms"] > 0
    assert isinstance(body["findings"], str) and isinstance(body["guardrail_flags"], list)


def test_drafts_refuse_what_the_model_is_not_for(server: Server) -> None:
    with server.client() as client:
        ct = client.post("/v1/drafts", files={"file": ("ct.dcm", pydicom_file("CT_small.dcm").read_bytes())})
        assert ct.status_code == 422 and _error(ct)["code"] == "guardrail" and "not CR or DX" in _error(ct)["message"]
        text = client.post("/v1/drafts", files={"file": ("notes.txt", b"hello there, not an image")})
        assert text.status_code == 415 and _error(text)["code"] == "unsupported_file"
        lateral = dcmread(pydicom_file(RG1))
        lateral.ViewPosition = "LL"
        refused = client.post("/v1/drafts", files={"file": ("lat.dcm", to_bytes(lateral))})
        assert refused.status_code == 422 and "lateral" in _error(refused)["message"]
        lateral.ViewPosition = ""
        unmarked = client.post("/v1/drafts", files={"file": ("x.dcm", to_bytes(lateral))})
        assert unmarked.status_code == 422 and "frontal" in _error(unmarked)["message"]
        empty = client.post("/v1/drafts", files={"file": ("empty.dcm", b"")})
        assert empty.status_code == 422 and "the file is empty" in _error(empty)["message"]
        missing = client.post("/v1/drafts", data={"indication": "x"})
        assert missing.status_code == 422 and _error(missing)["code"] == "invalid_request"


def test_a_png_without_a_view_drafts_as_pa_and_says_it_was_assumed(server: Server) -> None:
    with server.client() as client:
        assumed = client.post("/v1/drafts", files={"file": ("cxr.png", _png())})
        assert assumed.status_code == 200, assumed.text
        body = assumed.json()
        assert (body["image"]["view"], body["image"]["view_source"]) == ("PA", "default")
        flag = [f for f in body["guardrail_flags"] if f["code"] == "view_assumed"]
        assert len(flag) == 1 and flag[0]["severity"] == "warning" and "assumed PA" in flag[0]["message"]
        stated = client.post("/v1/drafts", files={"file": ("cxr.png", _png())}, data={"view": "AP"})
        assert stated.status_code == 200, stated.text
        assert (stated.json()["image"]["view"], stated.json()["image"]["view_source"]) == ("AP", "request")
        assert "view_assumed" not in {f["code"] for f in stated.json()["guardrail_flags"]}
        report = "FINDINGS: Small left pleural effusion. IMPRESSION: No pleural effusion."
        checked = client.post("/v1/checks", data={"report": report}, files={"file": ("cxr.png", _png())})
        assert checked.status_code == 200 and checked.json()["check_type"] == "image", checked.text
        assert "view_assumed" in {f["code"] for f in checked.json()["guardrail_flags"]}
        preview = client.post("/v1/render", files={"file": ("cxr.png", _png())})
        assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
        # The page's view menu sends no view by default: the server's rule (DICOM header, else PA) decides.
        page = client.get("/").text
        assert '<option value="">automatic: the DICOM header, or PA for PNG/JPEG</option>' in page


def test_checks_with_and_without_an_image(server: Server) -> None:
    report = "FINDINGS: Small left pleural effusion. IMPRESSION: No pleural effusion."
    with server.client() as client:
        text_only = client.post("/v1/checks", data={"report": report})
        assert text_only.status_code == 200, text_only.text
        body = text_only.json()
        assert body["check_type"] == "text_only" and body["mode"] == "simple"
        assert isinstance(body["has_error"], bool) and 0.5 <= body["confidence"] <= 1
        with_image = client.post(
            "/v1/checks",
            data={"report": report, "mode": "complex"},
            files={"file": ("rg1.dcm", pydicom_file(RG1).read_bytes())},
        )
        assert with_image.status_code == 200 and with_image.json()["check_type"] == "image"
        assert with_image.json()["mode"] == "complex"
        blank = client.post("/v1/checks", data={"report": "   "})
        assert blank.status_code == 422
        bad_mode = client.post("/v1/checks", data={"report": report, "mode": "deep"})
        assert bad_mode.status_code == 422 and _error(bad_mode)["code"] == "invalid_request"


def test_auth_scopes_and_bearer(server: Server) -> None:
    with server.client(key="") as client:
        response = client.post("/v1/checks", data={"report": "FINDINGS: clear.\nIMPRESSION: Normal."})
        assert response.status_code == 401 and _error(response)["code"] == "unauthorized"
    with server.client(key="wrong-key") as client:
        assert client.post("/v1/checks", data={"report": "FINDINGS: clear.\nIMPRESSION: Normal."}).status_code == 401
    with server.client(key=server.check_only_key) as client:
        assert client.post("/v1/checks", data={"report": "FINDINGS: clear.\nIMPRESSION: Normal."}).status_code == 200
        forbidden = client.post("/v1/drafts", files={"file": ("x.png", _png())}, data={"view": "PA"})
        assert forbidden.status_code == 403 and "'draft' scope" in _error(forbidden)["message"]
    import httpx

    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}) as client:
        assert client.post("/v1/checks", data={"report": "FINDINGS: clear.\nIMPRESSION: Normal."}).status_code == 200


def test_deid_of_a_dicom_with_realistic_phi_and_of_text(server: Server) -> None:
    path = shared_path("dicom", "deid-data", "cat.dcm")
    original = dcmread(path, stop_before_pixels=True)
    with server.client() as client:
        response = client.post("/v1/deid", files={"file": ("cat.dcm", path.read_bytes())})
        assert response.status_code == 200 and response.headers["content-type"] == "application/dicom"
        clean = dcmread(io.BytesIO(response.content), stop_before_pixels=True)
        assert str(clean.get("PatientName", "")) != str(original.PatientName)
        assert "Wetzel" not in response.content.decode("latin-1")
        assert clean.StudyInstanceUID != original.StudyInstanceUID and clean.StudyInstanceUID.startswith("2.25.")
        text = client.post("/v1/deid", data={"text": "Discussed with Dr. Patel at 10:30 on 03/04/2024, MRN 1234567."})
        assert text.status_code == 200
        assert "Patel" not in text.json()["text"] and "1234567" not in text.json()["text"]
        both = client.post("/v1/deid", data={"text": "x"}, files={"file": ("a.dcm", b"x")})
        assert both.status_code == 422
    with server.client(key=server.check_only_key) as client:
        assert client.post("/v1/deid", data={"text": "x"}).status_code == 403


def test_oversized_body_is_413(server: Server) -> None:
    with server.client() as client:
        response = client.post("/v1/drafts", files={"file": ("big.dcm", b"\0" * (21 * 2**20))})
    assert response.status_code == 413 and _error(response)["code"] == "payload_too_large"


def test_audit_trail_has_one_entry_per_request_and_no_phi(server: Server) -> None:
    with server.client() as client:
        before = len(server.settings.audit_path.read_text().splitlines()) if server.settings.audit_path.exists() else 0
        client.post("/v1/checks", data={"report": "Discussed with Dr. Patel. FINDINGS: clear.\nIMPRESSION: Normal."})
        client.post("/v1/drafts", files={"file": ("rg1.dcm", pydicom_file(RG1).read_bytes())})
    lines = server.settings.audit_path.read_text().splitlines()
    assert len(lines) == before + 2
    assert "Patel" not in "".join(lines) and "CompressedSamples" not in "".join(lines)
    from radlvlm.safety.pseudonyms import load_or_create_key

    key, _ = load_or_create_key(server.settings.deid_key_path, create=False)
    verification = verify_audit_trail(server.settings.audit_path, key=key)  # raises on any tampering
    assert verification.entries == len(lines) and verification.authenticated


def test_metrics_count_requests_without_phi(server: Server) -> None:
    with server.client() as client:
        client.get("/healthz")
        metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'radlvlm_requests_total{endpoint="/healthz",status="200"}' in metrics.text
    assert "radlvlm_engine_batches" in metrics.text


def test_rate_limit_and_overload(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings, key, _ = make_settings(tmp_path, tiny_model_dir, rate_limit_per_minute=3, max_queue=1, max_batch_size=1)
    uv, thread, url, _ = start_server(settings)
    try:
        import httpx

        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as client:
            codes = [
                client.post("/v1/checks", data={"report": "FINDINGS: clear.\nIMPRESSION: Normal."}).status_code
                for _ in range(4)
            ]
            assert codes[:3] == [200, 200, 200] and codes[3] == 429
            limited = client.post("/v1/checks", data={"report": "FINDINGS: clear.\nIMPRESSION: Normal."})
            assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


def test_draft_streams_server_sent_events(server: Server) -> None:
    data = pydicom_file(RG1).read_bytes()
    events = []
    with server.client() as client, client.stream("POST", "/v1/drafts/stream", files={"file": ("rg1.dcm", data)}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: ") :])))
    assert events and events[-1][0] == "done"
    done = events[-1][1]
    assert done["model_id"] == "tiny-radlvlm" and done["timings"]["batch_size"] == 1
    assert all(kind == "text" for kind, _ in events[:-1])
    with server.client() as client:
        refused = client.post(
            "/v1/drafts/stream", files={"file": ("ct.dcm", pydicom_file("CT_small.dcm").read_bytes())}
        )
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "guardrail"


def test_a_full_queue_answers_503_with_retry_after(tmp_path: Path, tiny_model_dir: Path) -> None:
    import threading

    import httpx

    settings, key, _ = make_settings(tmp_path, tiny_model_dir, max_queue=1, max_batch_size=1)
    uv, thread, url, app = start_server(settings)
    engine = app.state.radlvlm.engine.engine  # type: ignore[attr-defined]  # the bare engine under the tasks
    gate, busy = threading.Event(), threading.Event()
    original = engine._run_batch

    def held(batch):  # type: ignore[no-untyped-def]
        busy.set()
        gate.wait(timeout=60)  # the model is "busy" until the test lets go
        original(batch)

    engine._run_batch = held
    try:
        results: list[int] = []

        def post() -> None:
            with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as client:
                results.append(
                    client.post("/v1/checks", data={"report": "FINDINGS: clear.\nIMPRESSION: Normal."}).status_code
                )

        first = [threading.Thread(target=post) for _ in range(2)]  # one running, one queued
        # One at a time: the first must be running before the second arrives, or the second finds the queue
        # (of one) still holding the first and is refused, as it should be.
        first[0].start()
        assert busy.wait(timeout=60)
        first[1].start()
        deadline = time.monotonic() + 60
        while engine.stats()["queue_depth"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.stats()["queue_depth"] == 1
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as client:
            overloaded = client.post("/v1/checks", data={"report": "FINDINGS: clear.\nIMPRESSION: Normal."})
        assert overloaded.status_code == 503 and _error(overloaded)["code"] == "overloaded"
        assert int(overloaded.headers["Retry-After"]) >= 1
        gate.set()
        for t in first:
            t.join(timeout=60)
        assert results == [200, 200]
    finally:
        gate.set()
        uv.should_exit = True
        thread.join(timeout=30)


def test_study_reference_without_an_archive_is_422(server: Server) -> None:
    with server.client() as client:
        response = client.post("/v1/drafts", data={"study_uid": "1.2.3.4"})
        assert response.status_code == 422 and _error(response)["code"] == "no_archive"
        bad = client.post("/v1/drafts", data={"study_uid": "1.2.x"})
        assert bad.status_code == 422 and _error(bad)["code"] == "invalid_request"
