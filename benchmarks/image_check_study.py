"""The image check as a user meets it: ``POST /v1/checks`` with the radiograph, on an agree/contradict set built
from NIH **test** radiographs and IU **test** reports (patients and reports the model never saw).

    python benchmarks/image_check_study.py --data ../shared/data [--model DIR] [--seed 0] [--split validation]

Each IU test report is sent twice, once with a radiograph it agrees with and once with one it contradicts
(:func:`radlvlm.tasks.image_pairs.image_report_pairs`: a normal-vs-abnormal swap or a single-finding
contradiction, matched on the labeler and IU's own MeSH problems), so the text alone cannot separate the two: a
TF-IDF classifier fitted on the train pairs is scored on these to show it. Reported: AUROC of the answer's
``error_probability`` overall and per contradiction type, accuracy, sensitivity and specificity at the served
threshold, and the same report checked without the image (the text-only check) beside it. Single-finding
contradictions are also scored apart by whether the finding that differs is one the check compares (the answer's
``image_comparison.compared``) or one it lists as not checked: no image check can see the latter. CIs are
percentile bootstraps over the radiographs' patients. Writes ``benchmarks/results/image_check.json``; with
``--split validation`` (for choosing between candidates; test is for a release's figures) write elsewhere.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from draft_study import auroc_estimate, rate_estimate
from report import git_commit, save_report, served_model
from service import start_server

ROOT = Path(__file__).resolve().parents[1]


def check(client: httpx.Client, report: str, image: str | None) -> dict[str, Any]:
    files = {"file": ("image.png", Path(image).read_bytes(), "image/png")} if image else None
    response = client.post("/v1/checks", data={"report": report}, files=files)
    if response.status_code != 200:
        return {"status": response.status_code, "answer_valid": False}
    return response.json()


def tfidf_auroc(train: list[Any], test: list[Any]) -> float:
    """A TF-IDF + logistic text classifier fitted on the train pairs, scored on the test pairs (text alone)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2)
    x = vectorizer.fit_transform([p.report.text for p in train])
    model = LogisticRegression(max_iter=1000).fit(x, [p.has_error for p in train])
    scores = model.predict_proba(vectorizer.transform([p.report.text for p in test]))[:, 1]
    return float(roc_auc_score([p.has_error for p in test], scores))


# Contradiction kinds scored apart; "single_finding" covers both of the last two.
_KINDS = ("normal_vs_abnormal", "single_finding", "single_finding_checked", "single_finding_unchecked")


def _kind(pair: Any, answer: dict[str, Any]) -> str:
    """The pair's contradiction kind; a single-finding one split by whether the check compares the finding that
    differs (it is in the answer's ``image_comparison.compared``) or lists it as not checked."""
    if pair.kind != "single_finding":
        return str(pair.kind)
    compared = {c["observation"] for c in ((answer.get("image_comparison") or {}).get("compared") or [])}
    differing = pair.image.observations ^ pair.report.observations
    return "single_finding_checked" if differing <= compared else "single_finding_unchecked"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with nih_cxr14/ and iu_xray/")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the embedded model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("test", "validation"), default="test")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "image_check.json")
    args = parser.parse_args()
    if not (args.data / "nih_cxr14").is_dir() or not (args.data / "iu_xray").is_dir():
        print(f"error: {args.data} needs nih_cxr14/ and iu_xray/", file=sys.stderr)
        sys.exit(2)
    from radlvlm.tasks.image_pairs import image_report_pairs
    from radlvlm.training.image_check_fit import iu_pair_reports, nih_pair_images

    pairs = image_report_pairs(
        list(nih_pair_images(args.data, args.split).values()), iu_pair_reports(args.data, args.split), seed=args.seed
    )
    train_pairs = image_report_pairs(
        list(nih_pair_images(args.data, "train").values()), iu_pair_reports(args.data, "train"), seed=args.seed
    )
    with tempfile.TemporaryDirectory() as tmp:
        process, url, key = start_server(args.model, Path(tmp), 8, 16)
        try:
            with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=600) as client:
                info = client.get("/v1/models").json()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    with_image = list(pool.map(lambda p: check(client, p.report.text, p.image.id), pairs))
                    text_only = list(pool.map(lambda p: check(client, p.report.text, None), pairs))
        finally:
            process.terminate()
            process.wait(timeout=60)
    truth = np.array([p.has_error for p in pairs])
    patients = [p.image.patient for p in pairs]
    kinds = np.array([_kind(p, a) for p, a in zip(pairs, with_image, strict=True)])
    metrics: dict[str, Any] = {
        "pairs": len(pairs),
        "reports": len({p.report.id for p in pairs}),
        "images": len({p.image.id for p in pairs}),
        "patients": len(set(patients)),
        "kinds": dict(Counter(p.kind for p in pairs)),
        "single_finding_checked": int(sum(k == "single_finding_checked" for k in kinds)),
        "tfidf_text_classifier_auroc": round(tfidf_auroc(train_pairs, pairs), 4),
    }
    for name, answers in (("with_image", with_image), ("text_only", text_only)):
        valid = np.array([bool(a.get("answer_valid")) for a in answers])
        entry: dict[str, Any] = {
            "answered": int(valid.sum()),
            "not_answered": dict(Counter(str(a.get("reason")) for a in answers if not a.get("answer_valid"))),
        }
        # Scored on the pairs this check answered (a text-only check needs findings and an impression).
        rows = np.flatnonzero(valid)
        if rows.size:
            probability = np.array([answers[i]["error_probability"] for i in rows], dtype=float)
            verdict = np.array([bool(answers[i]["has_error"]) for i in rows])
            y, who, kind = truth[rows], [patients[i] for i in rows], kinds[rows]
            entry["auroc"] = auroc_estimate(y, probability, who, args.n_boot)
            entry["accuracy"] = rate_estimate(verdict == y, who, args.n_boot)
            entry["sensitivity"] = rate_estimate(verdict[y], [p for p, t in zip(who, y, strict=True) if t], args.n_boot)
            entry["specificity"] = rate_estimate(
                ~verdict[~y], [p for p, t in zip(who, y, strict=True) if not t], args.n_boot
            )
            entry["auroc_by_kind"] = {}
            ids = [pairs[i].report.id for i in rows]
            for contradiction in _KINDS:
                # The contradicting rows of this kind with the agreeing rows of the same reports.
                reports = {ids[j] for j in range(len(rows)) if kind[j].startswith(contradiction)}
                if not reports:
                    continue
                chosen = np.array([ids[j] in reports for j in range(len(rows))])
                entry["auroc_by_kind"][contradiction] = auroc_estimate(
                    y[chosen], probability[chosen], [who[j] for j in np.flatnonzero(chosen)], args.n_boot
                )
        metrics[name] = entry
    save_report(
        args.out,
        {
            "name": "image_check",
            "commit": git_commit(),
            "model": served_model(info),
            "config": {
                "door": "POST /v1/checks (with and without the radiograph)",
                "set": f"NIH {args.split} radiographs x IU {args.split} reports, each report once agreeing and once "
                "contradicting",
                "seed": args.seed,
                "ci": "95% percentile bootstrap over the radiographs' patients",
            },
            "metrics": metrics,
        },
    )


if __name__ == "__main__":
    main()
