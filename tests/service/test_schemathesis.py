"""Property-based fuzzing of the API from its own OpenAPI document: no request may cause a 5xx."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from servicesupport import make_settings, start_server


def test_no_request_causes_a_server_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    # A server of its own, with a rate limit that fuzzing does not exhaust for the other tests.
    settings, key, _ = make_settings(tmp_path, tiny_model_dir, rate_limit_per_minute=100_000)
    uv, thread, url, _ = start_server(settings)
    try:
        _fuzz(url, key)
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


def _fuzz(url: str, key: str) -> None:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/drafts", "/v1/checks", "/v1/deid", "/v1/models"}
    calls = 0
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case) -> None:  # type: ignore[no-untyped-def]
            nonlocal calls
            response = case.call(base_url=url, headers={"X-API-Key": key}, timeout=120)
            calls += 1
            case.validate_response(response, checks=[not_a_server_error])

        fuzz()
    assert calls >= 20 * len(operations) // 2
