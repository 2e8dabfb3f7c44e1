"""The shipped model's error check, as a user meets it through ``POST /v1/checks``, on reports no part of
training saw: a hand-written suite (tests/data/errorcheck_blatant.json, written without reading the checker)
of blatant contradictions, which must all be flagged, and clean reports, of which at least 90% must pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from servicesupport import make_settings, start_server

SUITE = Path(__file__).resolve().parents[1] / "data" / "errorcheck_blatant.json"


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict, dict]]:
    settings, key, _ = make_settings(tmp_path_factory.mktemp("shipped"), None)  # type: ignore[arg-type]
    server, thread, url, _ = start_server(settings)
    cases = json.loads(SUITE.read_text())["cases"]
    try:
        import httpx

        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as client:
            out = []
            for case in cases:
                response = client.post("/v1/checks", data={"report": case["text"], "mode": "simple"})
                assert response.status_code == 200, response.text
                out.append((case, response.json()))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    return out


def test_the_suite_is_what_the_issue_asks_for() -> None:
    cases = json.loads(SUITE.read_text())["cases"]
    kinds = [c["kind"] for c in cases]
    directions = {c["direction"] for c in cases if c["kind"] == "contradiction"}
    assert kinds.count("contradiction") >= 20 and kinds.count("clean") >= 20
    assert {"abnormal_findings_normal_impression", "impression_names_denied_finding"} <= directions


def test_every_blatant_contradiction_is_flagged(answers: list[tuple[dict, dict]]) -> None:
    missed = [case["id"] for case, answer in answers if case["kind"] == "contradiction" and not answer["has_error"]]
    assert missed == []
    flagged = [answer for case, answer in answers if case["kind"] == "contradiction"]
    assert all(a["answer_valid"] and a["calibrated"] for a in flagged)


def test_clean_reports_pass(answers: list[tuple[dict, dict]]) -> None:
    clean = [(case, answer) for case, answer in answers if case["kind"] == "clean"]
    passed = [case["id"] for case, answer in clean if answer["has_error"] is False]
    assert len(passed) >= 0.9 * len(clean), sorted({c["id"] for c, _ in clean} - set(passed))
    assert all(answer["check_type"] == "text_only" for _, answer in clean)
