"""Service benchmark: a bounded load from this process against `radlvlm serve` running in another.

For each concurrency level it sends a fixed number of /v1/drafts requests (a real CR chest DICOM) and
records requests/s, p50/p95 latency and errors; the server's resident memory is read from /proc after each
level, and the busiest level is run twice so that growth (a leak) shows as a difference. The whole run is
repeated with dynamic batching off (batch size 1) to measure its speed-up. Only 127.0.0.1 is contacted.
Writes one JSON file.

    python benchmarks/service.py [--model DIR] [--requests 60] [--levels 1,4,16]

Without --model a small random model (the shape benchmarks/model.py uses) is built in a temp directory.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from pydicom.data import get_testdata_file

sys.path.insert(0, str(Path(__file__).parent))
from report import git_commit, save_report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_small_model(directory: Path) -> Path:
    from model import CORPUS, small_config

    from radlvlm.model import RadProcessor, build_model, train_tokenizer
    from radlvlm.model.pretrained import save_pretrained

    tokenizer = train_tokenizer(CORPUS * 50, vocab_size=2048, min_frequency=1)
    config = small_config(len(tokenizer))
    model = build_model(config, seed=0)
    model.generation_config.suppress_tokens = [tokenizer.eos_token_id]  # random weights: fixed-length drafts
    return save_pretrained(model, RadProcessor.for_model(tokenizer, config), directory / "small")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Current (VmRSS) or peak (VmHWM) resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(
    model_dir: Path | None,
    work: Path,
    batch_size: int,
    max_new_tokens: int,
    *,
    scopes: tuple[str, ...] = ("draft", "check"),
    log: Path | None = None,
    env_overrides: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, str, str]:
    """``radlvlm serve`` on ``model_dir`` (None: the embedded default model) on a free local port; its output
    goes to ``log`` when given."""
    from radlvlm.service.security import new_key

    key, entry = new_key(scopes)
    port = free_port()
    env = {
        **os.environ,
        "RADLVLM_API_KEYS": entry,
        **({"RADLVLM_MODEL_DIR": str(model_dir)} if model_dir is not None else {}),
        "RADLVLM_MAX_BATCH_SIZE": str(batch_size),
        "RADLVLM_MAX_WAIT_MS": "10",
        "RADLVLM_MAX_QUEUE": "256",
        "RADLVLM_MAX_NEW_TOKENS": str(max_new_tokens),
        "RADLVLM_RATE_LIMIT_PER_MINUTE": "100000",
        "RADLVLM_AUDIT_PATH": str(work / f"audit-{batch_size}.jsonl"),
        "RADLVLM_DEID_KEY_PATH": str(work / "deid.key"),
        **(env_overrides or {}),
    }
    output = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - the server's lifetime
    process = subprocess.Popen(
        [sys.executable, "-m", "radlvlm", "serve", "--port", str(port)],
        env=env,
        stdout=output,
        stderr=output,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url, key
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("the server did not become ready in 300 s")


def load(url: str, key: str, study: bytes, requests: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0

    def one(_: int) -> tuple[float, bool]:
        start = time.perf_counter()
        try:
            response = httpx.post(
                f"{url}/v1/drafts",
                files={"file": ("study.dcm", study, "application/dicom")},
                headers={"X-API-Key": key},
                timeout=300,
            )
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        return time.perf_counter() - start, ok

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for latency, ok in pool.map(one, range(requests)):
            latencies.append(latency)
            errors += 0 if ok else 1
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": requests,
        "concurrency": concurrency,
        "errors": errors,
        "requests_per_s": requests / wall,
        "p50_s": statistics.median(ordered),
        "p95_s": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
    }


def run(model_dir: Path, work: Path, batch_size: int, levels: list[int], requests: int, new_tokens: int) -> dict:
    study = Path(get_testdata_file("RG1_UNCR.dcm", download=False)).read_bytes()
    process, url, key = start_server(model_dir, work, batch_size, new_tokens)
    try:
        load(url, key, study, 4, 2)  # warm-up
        results, rss_after = [], []
        for level in levels:
            results.append(load(url, key, study, requests, level))
            rss_after.append(rss_mb(process.pid))
        # Steady state: the busiest level once more; a leak shows as growth over its first pass.
        repeat = load(url, key, study, requests, levels[-1])
        rss_repeat = rss_mb(process.pid)
        peak = rss_mb(process.pid, "VmHWM")
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        process.terminate()
        process.wait(timeout=60)
    batches = [line for line in metrics.splitlines() if line.startswith("radlvlm_engine_batches ")]
    return {
        "max_batch_size": batch_size,
        "levels": results,
        "repeat_of_last_level": repeat,
        "server_rss_mb_after_each_level": rss_after,
        "server_rss_growth_mb_on_repeat": rss_repeat - rss_after[-1],
        "server_peak_rss_mb": peak,
        "engine_batches": float(batches[0].split()[1]) if batches else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "service.json")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = args.model or build_small_model(work)
        batched = run(model_dir, work, 8, levels, args.requests, args.new_tokens)
        unbatched = run(model_dir, work, 1, levels, args.requests, args.new_tokens)
    speedup = {
        str(b["concurrency"]): b["requests_per_s"] / u["requests_per_s"]
        for b, u in zip(batched["levels"], unbatched["levels"], strict=True)
    }
    report = {
        "name": "service",
        "commit": git_commit(),
        "device": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "config": {
            "model": str(args.model) if args.model else "small random LVLM (benchmarks/model.py shape)",
            "requests_per_level": args.requests,
            "draft_new_tokens": args.new_tokens,
            "study": "RG1_UNCR.dcm (CR chest PA, 1955x1841, uncompressed)",
        },
        "metrics": {"batched": batched, "batch_size_1": unbatched, "batching_speedup_by_concurrency": speedup},
        "target": {"errors": 0, "p50_draft_s_at_concurrency_1": 1.5},
    }
    save_report(args.out, report)


if __name__ == "__main__":
    main()
