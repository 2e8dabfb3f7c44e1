"""Drafts as a user meets them: ``POST /v1/drafts`` on a running ``radlvlm serve``, on radiographs of patients the
model never saw (NIH ChestX-ray14 test by default; the COVID-19 collection's test split as out-of-domain).

    python benchmarks/draft_study.py --data ../shared/data [--model DIR] [--split test]

Every image is uploaded as a user would (PNG, with its view); the answer's draft and its ``image_findings`` (the
finding classifier's calibrated probabilities) are scored against the NIH labels:

- the classifier: abnormal-vs-normal AUROC overall and **within each stored size** (512 px, 64 px thumbnails), next
  to the size-only scorer (stored size alone predicts labels in this data); per-label AUROC for labels with
  >= 10 positive patients; the expected calibration error per stored size;
- the drafts (the labeler reads each): abnormal-vs-normal sensitivity and specificity (a draft is abnormal when it
  states any finding), per stored size; **faithfulness** (the labeler's reading equals the findings the draft was
  given); statements no input supports (side, size, devices, comparisons, incidentals, advice); macro F1 over the
  abnormal observations next to three baselines: the most common normal report, nearest-neighbour retrieval (the
  label template of the train image whose classifier reading is nearest), and a template of the classifier's own
  stated findings;
- COVID-19 test: sensitivity (it has no normal images), as out-of-domain evidence.

CIs are percentile bootstraps over **patients**. Writes ``benchmarks/results/drafts.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from report import git_commit, save_report, served_model
from service import start_server

ROOT = Path(__file__).resolve().parents[1]
_LATERAL = {"L", "LL", "LATERAL", "RL"}


def nih_rows(data: Path, split: str) -> list[dict[str, Any]]:
    manifest = data / "nih_cxr14" / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    return [
        {
            **r,
            "path": str(manifest.parent / r["file"]),
            "patient": f"nih-{r['patient_id']}",
            "size": "512" if max(r["stored_size"]) >= 512 else "64" if max(r["stored_size"]) <= 64 else "other",
            "abnormal": r["labels"] != ["No Finding"],
        }
        for r in rows
        if r["split"] == split
    ]


def covid_rows(data: Path, split: str) -> list[dict[str, Any]]:
    manifest = data / "covid_chestxray" / "manifest.jsonl"
    if not manifest.is_file():
        return []
    out, seen = [], set()
    for line in manifest.read_text().splitlines():
        r = json.loads(line)
        finding = str(r.get("finding") or "").strip().lower()
        view = str(r.get("view") or "").strip().upper()
        if r["split"] != split or view in _LATERAL or finding in ("todo", "", "no finding") or r["image_file"] in seen:
            continue
        seen.add(r["image_file"])
        out.append(
            {
                "path": str(manifest.parent / r["image_file"]),
                "view": view if view in ("PA", "AP") else None,
                "patient": f"covid-{r['patientid']}",
                "abnormal": True,
            }
        )
    return out


def draft(client: httpx.Client, row: dict[str, Any]) -> dict[str, Any]:
    files = {"file": ("image.png", Path(row["path"]).read_bytes(), "image/png")}
    data = {"view": row["view"]} if row.get("view") else {}
    response = client.post("/v1/drafts", files=files, data=data)
    if response.status_code != 200:
        return {"status": response.status_code, "findings": "", "impression": "", "finish_reason": "error"}
    return response.json()


def estimate(statistic: Callable[[np.ndarray], float], patients: list[str], n_boot: int) -> dict[str, Any]:
    from radlvlm.clinical_eval.stats import grouped_bootstrap

    value = grouped_bootstrap(statistic, patients, n_boot=n_boot, seed=0)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in value.as_dict().items()}


def auroc_estimate(truth: np.ndarray, score: np.ndarray, patients: list[str], n_boot: int) -> dict[str, Any] | None:
    from radlvlm.clinical_eval.stats import auroc

    if truth.all() or not truth.any():
        return None
    return estimate(lambda i: auroc(truth[i], score[i]), patients, n_boot)


def rate_estimate(values: np.ndarray, patients: list[str], n_boot: int) -> dict[str, Any] | None:
    if values.size == 0:
        return None
    return estimate(lambda i: float(values[i].mean()), patients, n_boot)


def template(observations: list[str]) -> str:
    """A report stating exactly ``observations`` (CheXpert names), in the writer's impression phrases."""
    from radlvlm.training.writer import _IMPRESSION_PHRASES, NORMAL_IMPRESSION

    phrases = [_IMPRESSION_PHRASES[o] for o in observations]
    return "IMPRESSION: " + (" ".join(phrases) if phrases else NORMAL_IMPRESSION)


def truth_observations(labels: list[str]) -> set[str]:
    from radlvlm.tasks.image_findings import report_labels

    return set(report_labels([label for label in labels if label != "No Finding"]))


def macro_f1(truth: list[set[str]], said: list[set[str]], rows: np.ndarray, observations: list[str]) -> float:
    scores = []
    for name in observations:
        y = np.array([name in truth[i] for i in rows])
        p = np.array([name in said[i] for i in rows])
        if not y.any():
            continue
        tp = (y & p).sum()
        scores.append(2 * tp / max(1, y.sum() + p.sum()))
    return float(np.mean(scores)) if scores else float("nan")


def classifier_readings(model_dir: Path | None, rows: list[dict[str, Any]]) -> np.ndarray:
    """The served model's classifier probabilities for images outside the study (the retrieval baseline's index)."""
    import torch

    from radlvlm.imaging import read_image_file
    from radlvlm.model.default import choose_model, classifier_beside
    from radlvlm.model.findings import load_finding_classifier

    folder = classifier_beside(choose_model(model_dir, None))
    if folder is None:
        return np.zeros((len(rows), 1))
    classifier = load_finding_classifier(folder, dtype=torch.float32)
    out = []
    for start in range(0, len(rows), 64):
        images = [torch.from_numpy(read_image_file(r["path"]).array) for r in rows[start : start + 64]]
        with torch.inference_mode():
            out.append(classifier.probabilities(classifier(classifier.pixel_values(images))).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with nih_cxr14/, covid_chestxray/, iu_xray/")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the embedded model)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "drafts.json")
    args = parser.parse_args()
    if not (args.data / "nih_cxr14").is_dir() or not (args.data / "iu_xray").is_dir():
        print(f"error: {args.data} needs nih_cxr14/ and iu_xray/", file=sys.stderr)
        sys.exit(2)
    from radlvlm.clinical_eval.baselines import most_common_normal_report
    from radlvlm.clinical_eval.stats import expected_calibration_error
    from radlvlm.model.findings import FINDING_LABELS
    from radlvlm.reports.labeler import label_report
    from radlvlm.reports.unsupported import unsupported_sentences
    from radlvlm.tasks.drafting import draft_target
    from radlvlm.tasks.image_findings import WRITER_LABELS, report_labels

    nih = nih_rows(args.data, args.split)
    covid = covid_rows(args.data, args.split)
    with tempfile.TemporaryDirectory() as tmp:
        process, url, key = start_server(args.model, Path(tmp), 8, args.max_new_tokens)
        try:
            with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=600) as client:
                info = client.get("/v1/models").json()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    answers = list(pool.map(lambda row: draft(client, row), nih + covid))
        finally:
            process.terminate()
            process.wait(timeout=60)
    nih_answers, covid_answers = answers[: len(nih)], answers[len(nih) :]
    n_boot = args.n_boot

    def writer_view(text: str) -> set[str]:
        return label_report(text).positive() & set(WRITER_LABELS)

    drafts = [draft_target(a.get("findings") or "", a.get("impression") or "") for a in nih_answers]
    said = [writer_view(d) for d in drafts]
    patients = [r["patient"] for r in nih]
    truth_abnormal = np.array([r["abnormal"] for r in nih])
    draft_abnormal = np.array([bool(label_report(d).positive() - {"No Finding", "Support Devices"}) for d in drafts])
    sizes = np.array([r["size"] for r in nih])
    found = [a.get("image_findings") for a in nih_answers]
    has_classifier = all(f is not None for f in found)
    metrics: dict[str, Any] = {
        "images": len(nih),
        "patients": len(set(patients)),
        "images_by_stored_size": dict(Counter(sizes.tolist())),
        "abnormal_images": int(truth_abnormal.sum()),
        "errors": sum(a.get("finish_reason") == "error" for a in answers),
        "withheld_repetition_loops": sum(a.get("finish_reason") == "repetition" for a in answers),
        "distinct_drafts": len(set(drafts)),
    }

    def subset(mask: np.ndarray) -> tuple[np.ndarray, list[str]]:
        rows = np.flatnonzero(mask)
        return rows, [patients[i] for i in rows]

    # -- the classifier, through the answers
    if has_classifier:
        probability = {
            label: np.array([next(x["probability"] for x in f["labels"] if x["label"] == label) for f in found])
            for label in FINDING_LABELS[1:]
        }
        probability["Abnormal"] = np.array([f["abnormal"]["probability"] for f in found])
        classifier: dict[str, Any] = {"abnormal_auroc": {}, "abnormal_ece": {}}
        size_score = (sizes == "512").astype(float)
        for bucket in ("all", "512", "64"):
            mask = np.ones(len(nih), bool) if bucket == "all" else sizes == bucket
            rows, who = subset(mask)
            classifier["abnormal_auroc"][bucket] = auroc_estimate(
                truth_abnormal[rows], probability["Abnormal"][rows], who, n_boot
            )
            classifier["abnormal_ece"][bucket] = round(
                expected_calibration_error(truth_abnormal[rows], probability["Abnormal"][rows]), 4
            )
        classifier["size_only_abnormal_auroc"] = auroc_estimate(truth_abnormal, size_score, patients, n_boot)
        per_label = {}
        for label in FINDING_LABELS[1:]:
            y = np.array([label in r["labels"] for r in nih])
            positive_patients = len({patients[i] for i in np.flatnonzero(y)})
            if positive_patients < 10:
                continue
            per_label[label] = {
                "positive_patients": positive_patients,
                "positives": int(y.sum()),
                "auroc": auroc_estimate(y, probability[label], patients, n_boot),
                "auroc_512": auroc_estimate(
                    y[sizes == "512"],
                    probability[label][sizes == "512"],
                    [p for p, s in zip(patients, sizes, strict=True) if s == "512"],
                    n_boot,
                ),
                "size_only_auroc": auroc_estimate(y, size_score, patients, n_boot),
            }
        classifier["labels_with_10_positive_patients"] = per_label
        values = [v["auroc"]["value"] for v in per_label.values() if v["auroc"]]
        classifier["mean_auroc_labels_ge10_patients"] = round(float(np.mean(values)), 4) if values else None
        metrics["classifier"] = classifier

    # -- the drafts
    drafts_metrics: dict[str, Any] = {}
    for bucket in ("all", "512", "64"):
        mask = np.ones(len(nih), bool) if bucket == "all" else sizes == bucket
        sens_rows, sens_who = subset(mask & truth_abnormal)
        spec_rows, spec_who = subset(mask & ~truth_abnormal)
        drafts_metrics[bucket] = {
            "sensitivity": rate_estimate(draft_abnormal[sens_rows], sens_who, n_boot),
            "specificity": rate_estimate(~draft_abnormal[spec_rows], spec_who, n_boot),
        }
    metrics["drafts_abnormal_vs_normal"] = drafts_metrics
    if has_classifier:
        given = [set(report_labels(f["stated"])) for f in found]
        faithful = np.array([s == g for s, g in zip(said, given, strict=True)])
        metrics["faithfulness"] = rate_estimate(faithful, patients, n_boot)
        metrics["unfaithful_examples"] = [
            {"given": sorted(g), "read": sorted(s)} for s, g in zip(said, given, strict=True) if s != g
        ][:10]
    unsupported = [unsupported_sentences(d) for d in drafts]
    metrics["unsupported_statements"] = {
        "drafts_with_any": rate_estimate(np.array([bool(u) for u in unsupported]), patients, n_boot),
        "by_kind": dict(Counter(kind for u in unsupported for _, kinds in u for kind in kinds)),
    }

    # -- F1 over abnormal observations, next to the baselines
    truth = [truth_observations(r["labels"]) for r in nih]
    observations = [o for o in WRITER_LABELS if any(o in t for t in truth)]
    iu_train = [json.loads(line) for line in (args.data / "iu_xray" / "train.jsonl").read_text().splitlines()]
    normal = writer_view(most_common_normal_report(iu_train))
    systems: dict[str, list[set[str]]] = {"model": said, "baseline_most_common_normal": [normal] * len(nih)}
    if has_classifier:
        systems["baseline_classifier_template"] = [writer_view(template(sorted(g))) for g in given]
        train = nih_rows(args.data, "train")
        index = classifier_readings(args.model, train)
        query = np.stack(
            [
                [probability["Abnormal"][i], *(probability[lab][i] for lab in FINDING_LABELS[1:])]
                for i in range(len(nih))
            ]
        )
        nearest = ((query[:, None, :] - index[None, :, :]) ** 2).sum(-1).argmin(1)
        systems["baseline_nearest_neighbour"] = [truth_observations(train[j]["labels"]) for j in nearest]
    metrics["macro_f1_abnormal_observations"] = {
        "observations": observations,
        **{
            name: estimate(lambda i, s=s: macro_f1(truth, s, i, observations), patients, n_boot)
            for name, s in systems.items()
        },
    }
    metrics["most_common_drafts"] = Counter(drafts).most_common(5)

    # -- COVID-19 test: out-of-domain sensitivity
    if covid:
        covid_drafts = [draft_target(a.get("findings") or "", a.get("impression") or "") for a in covid_answers]
        covid_abnormal = np.array(
            [bool(label_report(d).positive() - {"No Finding", "Support Devices"}) for d in covid_drafts]
        )
        metrics["covid_out_of_domain"] = {
            "images": len(covid),
            "draft_sensitivity": rate_estimate(covid_abnormal, [r["patient"] for r in covid], n_boot),
        }
        if all(a.get("image_findings") for a in covid_answers):
            gate = np.array([a["image_findings"]["abnormal"]["present"] for a in covid_answers])
            metrics["covid_out_of_domain"]["classifier_sensitivity"] = rate_estimate(
                gate, [r["patient"] for r in covid], n_boot
            )
    save_report(
        args.out,
        {
            "name": "drafts",
            "commit": git_commit(),
            "model": served_model(info),
            "config": {
                "split": args.split,
                "max_new_tokens": args.max_new_tokens,
                "door": "POST /v1/drafts",
                "ci": "95% percentile bootstrap over patients",
            },
            "metrics": metrics,
        },
    )


if __name__ == "__main__":
    main()
