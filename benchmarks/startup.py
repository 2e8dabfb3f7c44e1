"""Start-up where the user waits: ``radlvlm serve`` on the embedded model until ``/healthz`` answers (the server
listens) and until ``/readyz`` answers 200 (the model loaded and warmed up, Presidio built), and ``radlvlm deid``
of one real CR chest DICOM file, each as a fresh process. Medians and ranges into one JSON file.

    python benchmarks/startup.py [--runs 3] [--out benchmarks/results/startup.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from pydicom.data import get_testdata_file
from report import git_commit, save_report, seconds_spread
from service import free_port

POLL_S = 0.02


def _answers(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return None


def serve_once(work: Path) -> tuple[float, float]:
    """Seconds from starting ``radlvlm serve`` to the first /healthz 200 and to the first /readyz 200."""
    port = free_port()
    env = {
        **os.environ,
        "RADLVLM_AUTH_DISABLED": "true",
        "RADLVLM_AUDIT_PATH": str(work / "audit.jsonl"),
        "RADLVLM_DEID_KEY_PATH": str(work / "deid.key"),
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "radlvlm", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    live = ready = None
    try:
        while ready is None:
            if process.poll() is not None:
                raise RuntimeError("the server exited during start-up")
            if time.perf_counter() - started > 300:
                raise RuntimeError("the server was not ready in 300 s")
            if live is None and _answers(f"{url}/healthz") == 200:
                live = time.perf_counter() - started
            if live is not None and _answers(f"{url}/readyz") == 200:
                ready = time.perf_counter() - started
            time.sleep(POLL_S)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return live, ready  # type: ignore[return-value]


def deid_once(work: Path, source: Path) -> float:
    out = work / f"deid-{time.monotonic_ns()}"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "radlvlm", "deid", str(source), str(out), "--key-file", str(work / "deid.key")],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "startup.json")
    args = parser.parse_args()
    source = Path(get_testdata_file("RG1_UNCR.dcm", download=False))
    live, ready, deid = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        deid_once(work, source)  # creates the key; the runs below find it, as a user's later runs do
        for _ in range(args.runs):
            seconds_live, seconds_ready = serve_once(work)
            live.append(seconds_live)
            ready.append(seconds_ready)
            deid.append(deid_once(work, source))
            print(f"healthz {seconds_live:.2f} s, readyz {seconds_ready:.2f} s, deid {deid[-1]:.2f} s", file=sys.stderr)
    save_report(
        args.out,
        {
            "name": "startup",
            "commit": git_commit(),
            "device": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "config": {"model": "embedded default (MoLE adapter)", "runs": args.runs, "poll_s": POLL_S},
            "metrics": {
                "serve_to_healthz": seconds_spread(live, 2),
                "serve_to_readyz": seconds_spread(ready, 2),
                "deid_one_dicom_file": seconds_spread(deid, 2),
            },
            "target": {"serve_to_healthz_max_s": 5},
        },
    )


if __name__ == "__main__":
    main()
