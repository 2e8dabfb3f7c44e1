"""What every benchmark writes: one JSON file with name, commit, device, config, metrics (and targets)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any


def git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
        return result.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def seconds_spread(values: list[float], digits: int = 4) -> dict[str, float]:
    """Median, min and max of timings in seconds, and how many: what every benchmark quotes."""
    return {
        "median_s": round(statistics.median(values), digits),
        "min_s": round(min(values), digits),
        "max_s": round(max(values), digits),
        "n": len(values),
    }


def save_report(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` (name, commit, device, config, metrics …) to ``path`` and print its metrics."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    json.dump(report.get("metrics", {}), sys.stdout, indent=2)
    print()


def served_model(models: dict[str, Any]) -> dict[str, Any]:
    """What ``GET /v1/models`` said of the served model, without server-side paths (a result file is committed
    and read on other machines): id, backend, architecture, whether it is the embedded default."""
    entries = models.get("models") or models.get("data") or [models]
    keep = ("id", "backend", "architecture", "embedded_default")
    return {"models": [{k: entry[k] for k in keep if k in entry} for entry in entries]}
