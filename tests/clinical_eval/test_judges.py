"""CheXprompt-like judges: the structured judge on pairs with known errors; the LLM judge against a real
OpenAI-compatible HTTP server on 127.0.0.1 (bounded, no external network)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from radlvlm.clinical_eval.judges import JudgeError, LLMJudge, StructuredJudge, parse_judge_answer
from radlvlm.tasks import ErrorCategory as C

REFERENCE = "Mild cardiomegaly. Small left pleural effusion. No pneumothorax."


def _errors(candidate: str, reference: str = REFERENCE) -> list[tuple[C, bool]]:
    return sorted(
        ((e.category, e.significant) for e in StructuredJudge().judge(candidate, reference).errors),
        key=lambda x: (x[0].value, x[1]),
    )


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        (REFERENCE, []),
        (
            "Severe cardiomegaly. Small right pleural effusion. No pneumothorax.",
            [(C.WRONG_LOCATION, True), (C.WRONG_SEVERITY, True)],
        ),
        ("Moderate cardiomegaly. Small left pleural effusion.", [(C.WRONG_SEVERITY, False)]),
        ("Mild cardiomegaly. Small left pleural effusion. Right pneumothorax.", [(C.FALSE_FINDING, True)]),
        ("Mild cardiomegaly. No effusion.", [(C.OMITTED_FINDING, True)]),
        ("Mild cardiomegaly. Small left pleural effusion. Possible pneumonia.", [(C.FALSE_FINDING, False)]),
        ("No acute disease.", [(C.OMITTED_FINDING, True), (C.OMITTED_FINDING, True)]),
        ("Mild cardiomegaly. Small left pleural effusion, new since prior.", [(C.UNSUPPORTED_COMPARISON, True)]),
        ("Mild cardiomegaly. Small left pleural effusion, stable.", [(C.UNSUPPORTED_COMPARISON, False)]),
    ],
)
def test_structured_judge_counts_known_errors(candidate: str, expected: list[tuple[C, bool]]) -> None:
    assert _errors(candidate) == expected


def test_structured_judge_omitted_comparison_and_counts() -> None:
    result = StructuredJudge().judge("Mild cardiomegaly.", "Mild cardiomegaly, increased since the prior study.")
    assert [(e.category, e.significant) for e in result.errors] == [(C.OMITTED_COMPARISON, True)]
    assert result.count() == 1 and result.count(C.OMITTED_COMPARISON, significant=True) == 1
    assert result.as_dict()["n_significant"] == 1


def test_parse_judge_answer_is_strict() -> None:
    good = '{"errors": [{"category": "omitted_finding", "clinically_significant": true}]}'
    assert parse_judge_answer(good).count(C.OMITTED_FINDING) == 1
    assert parse_judge_answer("```json\n" + good + "\n```").count() == 1
    for bad in [
        "{}",
        '{"errors": [{"category": "omitted_finding"}]}',
        "nonsense",
        '{"errors": [{"category": "negation_flip", "clinically_significant": true}]}',
        '{"errors": [{"category": "typo", "clinically_significant": false}]}',
    ]:
        with pytest.raises(ValueError):
            parse_judge_answer(bad)


class _Server:
    """A tiny OpenAI-compatible chat endpoint answering from a script of (status, content) replies."""

    def __init__(self, replies: list[tuple[int, str]]) -> None:
        self.replies = list(replies)
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                status, content = outer.replies.pop(0) if len(outer.replies) > 1 else outer.replies[0]
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)


@pytest.fixture
def server() -> Iterator[callable]:
    started: list[_Server] = []

    def start(replies: list[tuple[int, str]]) -> _Server:
        s = _Server(replies)
        s.thread.start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.httpd.shutdown()
        s.httpd.server_close()


GOOD = (
    '{"errors": [{"category": "wrong_location", "clinically_significant": true}, '
    '{"category": "false_finding", "clinically_significant": false}]}'
)


def test_llm_judge_parses_sends_prompt_and_caches(server, tmp_path: Path) -> None:
    s = server([(200, GOOD)])
    judge = LLMJudge(s.url, "judge-model", api_key="k123", cache_dir=tmp_path / "cache", backoff=0)
    result = judge.judge("cand text", "ref text")
    assert result.count() == 2 and result.count(C.WRONG_LOCATION, significant=True) == 1
    request = s.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer k123"
    assert request["body"]["model"] == "judge-model" and request["body"]["temperature"] == 0
    prompt = request["body"]["messages"][1]["content"]
    assert "REFERENCE REPORT:\nref text" in prompt and "CANDIDATE REPORT:\ncand text" in prompt
    assert judge.judge("cand text", "ref text") == result  # from the cache
    assert len(s.requests) == 1
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1


def test_llm_judge_retries_bad_answers_and_server_errors(server) -> None:
    s = server([(200, "Sure! Here are the errors."), (503, ""), (200, GOOD)])
    judge = LLMJudge(s.url, "m", max_attempts=3, backoff=0)
    assert judge.judge("a", "b").count() == 2
    assert len(s.requests) == 3


def test_llm_judge_gives_up_with_a_clear_error(server) -> None:
    s = server([(500, "")])
    with pytest.raises(JudgeError, match=r"failed after 2 attempt\(s\): HTTP 500"):
        LLMJudge(s.url, "m", max_attempts=2, backoff=0).judge("a", "b")
    assert len(s.requests) == 2
    refused = server([(400, "")])
    with pytest.raises(JudgeError, match="refused the request"):
        LLMJudge(refused.url, "m", max_attempts=3, backoff=0).judge("a", "b")
    assert len(refused.requests) == 1  # a client error is not retried


def test_llm_judge_endpoint_down() -> None:
    with socket.socket() as sock:  # a port nobody listens on: bind, note it, close
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    judge = LLMJudge(f"http://127.0.0.1:{port}/v1", "m", max_attempts=2, backoff=0, timeout=2)
    with pytest.raises(JudgeError, match="unreachable") as info:
        judge.judge("secret candidate", "secret reference")
    assert "secret" not in str(info.value)
    with pytest.raises(JudgeError, match="http"):
        LLMJudge("ftp://x", "m")


def test_cli_run_with_llm_judge(server, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from radlvlm.clinical_eval.cli import eval_app

    s = server([(200, GOOD)])
    refs = tmp_path / "r.jsonl"
    preds = tmp_path / "p.jsonl"
    refs.write_text("".join(json.dumps({"id": i, "reference": REFERENCE}) + "\n" for i in range(3)))
    preds.write_text("".join(json.dumps({"id": i, "prediction": "No acute disease."}) + "\n" for i in range(3)))
    args = [
        "run",
        "-p",
        str(preds),
        "-r",
        str(refs),
        "-o",
        str(tmp_path / "o"),
        "--n-boot",
        "10",
        "--no-structured-judge",
        "--llm-judge-url",
        s.url,
        "--llm-judge-model",
        "m",
        "--llm-judge-attempts",
        "1",
        "--llm-judge-cache",
        str(tmp_path / "cache"),
    ]
    result = CliRunner().invoke(eval_app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["significant_errors_per_report:llm:m"]["value"] == 1.0
    assert len(s.requests) == 1  # three identical pairs: one request, then the cache
    s.httpd.shutdown()
    s.httpd.server_close()
    result = CliRunner().invoke(eval_app, [*args[:-2], "--llm-judge-cache", str(tmp_path / "other")])
    assert result.exit_code == 2 and "LLM judge at" in result.stderr and "Traceback" not in result.output
