"""Draft latency as one user meets it: ``POST /v1/drafts`` at batch 1 (one request at a time) on the embedded
model, for a 512 px PNG and up to 128 new tokens, with the finding classifier in the path.

    python benchmarks/draft_latency.py [--image PNG] [--requests 20] [--model DIR]

Without ``--image`` a 512 x 512 PNG is made from pydicom's real CR chest (RG1). Writes
``benchmarks/results/draft_latency.json`` (p50/p95/min/max of the request as the client sees it, and the new tokens
the drafts had). Time it with nothing else running on the machine.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from report import git_commit, save_report, served_model
from service import start_server

ROOT = Path(__file__).resolve().parents[1]


def rg1_png() -> bytes:
    import numpy as np
    from PIL import Image
    from pydicom.data import get_testdata_file

    from radlvlm.imaging import read_image_file

    image = read_image_file(get_testdata_file("RG1_UNCR.dcm", read=False))
    picture = Image.fromarray((np.clip(image.array, 0, 1) * 255).astype(np.uint8)).resize((512, 512))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=None, help="a 512 px PNG (default: RG1 resized)")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "draft_latency.json")
    args = parser.parse_args()
    png = args.image.read_bytes() if args.image else rg1_png()
    seconds, tokens = [], []
    with tempfile.TemporaryDirectory() as tmp:
        process, url, key = start_server(args.model, Path(tmp), 8, args.max_new_tokens)
        try:
            with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=600) as client:
                info = client.get("/v1/models").json()
                for index in range(args.requests + 2):  # two warm-up requests, not counted
                    started = time.perf_counter()
                    response = client.post("/v1/drafts", files={"file": ("x.png", png, "image/png")})
                    elapsed = time.perf_counter() - started
                    response.raise_for_status()
                    if index >= 2:
                        seconds.append(elapsed)
                        tokens.append(len((response.json()["findings"] + response.json()["impression"]).split()))
        finally:
            process.terminate()
            process.wait(timeout=60)
    ordered = sorted(seconds)
    save_report(
        args.out,
        {
            "name": "draft_latency",
            "commit": git_commit(),
            "model": served_model(info),
            "config": {"door": "POST /v1/drafts", "batch": 1, "max_new_tokens": args.max_new_tokens, "png": "512 px"},
            "metrics": {
                "requests": len(seconds),
                "p50_s": round(statistics.median(seconds), 4),
                "p95_s": round(ordered[int(0.95 * (len(ordered) - 1))], 4),
                "min_s": round(ordered[0], 4),
                "max_s": round(ordered[-1], 4),
                "draft_words_median": statistics.median(tokens),
            },
        },
    )


if __name__ == "__main__":
    main()
