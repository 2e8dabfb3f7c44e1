"""The SIMPLE error check as a user meets it: ``POST /v1/checks`` on a running ``radlvlm serve``.

    python benchmarks/errorcheck_study.py --data ../shared/data [--model DIR] [--splits validation,test]

Starts the service on the model (default: the embedded model), sends every report of these sets through the
HTTP API (text-only unless an image is named) and scores the verdicts next to the rule consistency checker:

* ``independent_<split>`` — IU-Xray reports, half with one error from the independent injector
  (:mod:`radlvlm.clinical_eval.independent_injection`, written without reading the training injector): the
  figure that says whether the checker generalises;
* ``training_injector_<split>`` — the same reports with errors from the training injector's families
  (:func:`radlvlm.tasks.build_errorcheck_training_set`, one row per study): the in-distribution figure;
* ``blatant`` — the hand-written suite of blatant contradictions and clean reports (tests/data);
* ``nih_image_<split>`` / ``nih_text_<split>`` — reports faithful to an NIH image's labels or with one finding
  added, removed or negated, checked with the image uploaded and without it.

Accuracy, sensitivity, specificity (95% bootstrap CIs) at the shipped operating point, AUROC of the calibrated
P(error); checks the service could not do (``answer_valid: false``) are counted and left out of the figures, for
the rule checker too. Writes ``benchmarks/results/errorcheck.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from report import git_commit, save_report, served_model
from service import start_server

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "tests" / "data" / "errorcheck_blatant.json"


def _iu_rows(data: Path, split: str) -> list[dict[str, Any]]:
    path = data / "iu_xray" / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_sets(data: Path, splits: list[str], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Every evaluation set as rows of ``text``, ``has_error`` (and ``image``/``view`` for image checks)."""
    from radlvlm.clinical_eval.independent_injection import build_independent_set, compose_text
    from radlvlm.clinical_eval.text_evidence import edit_reveals_error, text_reveals_error
    from radlvlm.reports.consistency import says_no_prior
    from radlvlm.reports.sections import with_comparison
    from radlvlm.tasks.errorcheck import build_errorcheck_training_set
    from radlvlm.tasks.image_checks import image_check_reports

    sets: dict[str, list[dict[str, Any]]] = {}
    for split in splits:
        rows = _iu_rows(data, split)
        # Each report with its study's COMPARISON section, as a radiologist's report carries it.
        comparison = {str(r["uid"]): r.get("comparison") or "" for r in rows}
        independent, _ = build_independent_set(rows, seed=seed)
        original = {str(r["uid"]): compose_text(r.get("findings") or "", r.get("impression") or "") for r in rows}
        sets[f"independent_{split}"] = [
            {
                "text": with_comparison(r["text"], comparison[str(r["uid"])]),
                "has_error": r["has_error"],
                "family": r["family"],
                "no_prior": says_no_prior(comparison[str(r["uid"])]),
                # Whether the error leaves evidence in the text (clinical_eval.text_evidence): the text-only ceiling.
                "revealed": r["has_error"]
                and text_reveals_error(original[str(r["uid"])], r["text"], r["category"], comparison[str(r["uid"])]),
            }
            for r in independent
        ]
        trained, _ = build_errorcheck_training_set(rows, seed=seed, variants_per_report=1)
        sets[f"training_injector_{split}"] = [
            {
                "text": with_comparison(r["text"], comparison[str(r["uid"])]),
                "has_error": r["has_error"],
                "revealed": edit_reveals_error(r, comparison[str(r["uid"])]),
            }
            for r in trained
        ]
        manifest = data / "nih_cxr14" / "manifest.jsonl"
        images = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        image_rows = []
        for row in (r for r in images if r["split"] == split):
            labels = [label for label in row["labels"] if label != "No Finding"]
            path = manifest.parent / row["file"]
            for checked in image_check_reports(labels, seed=zlib.crc32(f"{seed}:{row['image_index']}".encode())):
                image_rows.append(
                    {"text": checked.text, "has_error": checked.has_error, "image": str(path), "view": row["view"]}
                )
        sets[f"nih_image_{split}"] = image_rows
        sets[f"nih_text_{split}"] = [{"text": r["text"], "has_error": r["has_error"]} for r in image_rows]
    suite = json.loads(SUITE.read_text())["cases"]
    sets["blatant"] = [{"text": c["text"], "has_error": c["kind"] == "contradiction", "id": c["id"]} for c in suite]
    return sets


def check(client: httpx.Client, row: dict[str, Any]) -> dict[str, Any]:
    files = None
    data = {"report": row["text"], "mode": "simple"}
    if "image" in row:
        files = {"file": ("image.png", Path(row["image"]).read_bytes(), "image/png")}
        data["view"] = row["view"]
    response = client.post("/v1/checks", data=data, files=files)
    if response.status_code != 200:
        return {"status": response.status_code, "answer_valid": False, "reason": response.json().get("code")}
    return response.json()


def _rate(values: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    from radlvlm.clinical_eval.stats import bootstrap

    if values.size == 0:
        return {"value": float("nan")}
    return bootstrap(lambda idx: float(values[idx].mean()), values.size, n_boot=n_boot, seed=seed).as_dict()


def score(truth: list[bool], verdict: list[bool], probability: list[float], n_boot: int, seed: int) -> dict[str, Any]:
    from radlvlm.clinical_eval.stats import auroc, bootstrap

    t, p, c = np.array(truth, bool), np.array(verdict, bool), np.array(probability, float)
    out = {
        "n": int(t.size),
        "errors": int(t.sum()),
        "accuracy": _rate(t == p, n_boot, seed),
        "sensitivity": _rate(p[t], n_boot, seed),
        "specificity": _rate(~p[~t], n_boot, seed),
    }
    if 0 < t.sum() < t.size:
        out["auroc"] = bootstrap(lambda idx: auroc(t[idx], c[idx]), t.size, n_boot=n_boot, seed=seed).as_dict()
    return out


def by_family(rows: list[dict[str, Any]], model: list[bool], rules: list[bool]) -> dict[str, dict[str, Any]]:
    """Sensitivity per injected error family (model and rule checker): which kinds of error a check catches."""
    families: dict[str, dict[str, Any]] = {}
    for row, flagged, ruled in zip(rows, model, rules, strict=True):
        if not row["has_error"]:
            continue
        entry = families.setdefault(
            row["family"], {"n": 0, "model": 0, "rule_checker": 0, "no_prior": 0, "revealed": 0, "model_revealed": 0}
        )
        entry["n"] += 1
        entry["model"] += bool(flagged)
        entry["rule_checker"] += bool(ruled)
        entry["no_prior"] += bool(row.get("no_prior"))
        entry["revealed"] += bool(row.get("revealed"))
        entry["model_revealed"] += bool(row.get("revealed") and flagged)
    out = {}
    for name, e in sorted(families.items()):
        out[name] = {
            "n": e["n"],
            "model_sensitivity": round(e["model"] / e["n"], 3),
            "rule_checker_sensitivity": round(e["rule_checker"] / e["n"], 3),
            # The ceiling: the share whose error leaves evidence in the text; and the model's catch among those.
            "text_reveals_share": round(e["revealed"] / e["n"], 3),
            "model_sensitivity_where_revealed": round(e["model_revealed"] / e["revealed"], 3)
            if e["revealed"]
            else None,
        }
        if name == "unsupported_comparison":
            # What the text can prove: a made-up change is certain only where COMPARISON says there is no prior;
            # where a prior is cited, any change may be real (a check can still find one implausible).
            out[name]["provable_share"] = round(e["no_prior"] / e["n"], 3)
    return out


def rule_checker(texts: list[str]) -> tuple[list[bool], list[float]]:
    from radlvlm.clinical_eval.baselines import consistency_predictions

    rows = [{"id": str(i), "text": text} for i, text in enumerate(texts)]
    predictions = consistency_predictions(rows)
    return [json.loads(p["prediction"])["has_error"] for p in predictions], [p["confidence"] for p in predictions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with iu_xray/ and nih_cxr14/")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the embedded model)")
    parser.add_argument("--splits", default="validation,test")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "errorcheck.json")
    args = parser.parse_args()
    for folder in ("iu_xray", "nih_cxr14"):
        if not (args.data / folder).is_dir():
            print(f"error: {args.data / folder} is missing", file=sys.stderr)
            sys.exit(2)
    sets = build_sets(args.data, args.splits.split(","), args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        process, url, key = start_server(args.model, Path(tmp), 8, 64)
        try:
            info = httpx.get(f"{url}/v1/models", headers={"X-API-Key": key}, timeout=30).json()
            metrics: dict[str, Any] = {}
            with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=300) as client:
                for name, rows in sets.items():
                    with ThreadPoolExecutor(args.concurrency) as pool:
                        answers = list(pool.map(lambda row: check(client, row), rows))
                    answered = [(row, a) for row, a in zip(rows, answers, strict=True) if a.get("answer_valid")]
                    truth = [row["has_error"] for row, _ in answered]
                    texts = [row["text"] for row, _ in answered]
                    rules = rule_checker(texts)
                    entry = {
                        "rows": len(rows),
                        "unanswered": len(rows) - len(answered),
                        "calibrated": all(a.get("calibrated") for _, a in answered),
                        "model": score(
                            truth,
                            [a["has_error"] for _, a in answered],
                            [a["error_probability"] for _, a in answered],
                            args.n_boot,
                            args.seed,
                        ),
                        "rule_checker": score(truth, rules[0], rules[1], args.n_boot, args.seed),
                    }
                    if name.startswith("independent_"):
                        entry["by_family"] = by_family(
                            [row for row, _ in answered], [a["has_error"] for _, a in answered], rules[0]
                        )
                    if all("revealed" in row for row, _ in answered):
                        # The target's set: clean reports and the errors their text reveals.
                        keep = [k for k, (row, _) in enumerate(answered) if not row["has_error"] or row["revealed"]]
                        entry["text_revealed_errors"] = {
                            system: score(
                                [truth[k] for k in keep],
                                [verdicts[k] for k in keep],
                                [scores[k] for k in keep],
                                args.n_boot,
                                args.seed,
                            )
                            for system, verdicts, scores in (
                                (
                                    "model",
                                    [a["has_error"] for _, a in answered],
                                    [a["error_probability"] for _, a in answered],
                                ),
                                ("rule_checker", rules[0], rules[1]),
                            )
                        }
                    if name == "blatant":
                        entry["missed_contradictions"] = [
                            row["id"] for row, a in answered if row["has_error"] and not a["has_error"]
                        ]
                        entry["flagged_clean"] = [
                            row["id"] for row, a in answered if not row["has_error"] and a["has_error"]
                        ]
                    metrics[name] = entry
                    print(
                        name, json.dumps({k: v for k, v in entry.items() if k != "rule_checker"})[:400], file=sys.stderr
                    )
        finally:
            process.terminate()
            process.wait(timeout=60)
    save_report(
        args.out,
        {
            "name": "errorcheck",
            "commit": git_commit(),
            "model": served_model(info),
            "config": {"splits": args.splits, "seed": args.seed, "n_boot": args.n_boot, "door": "POST /v1/checks"},
            "metrics": metrics,
        },
    )


if __name__ == "__main__":
    main()
