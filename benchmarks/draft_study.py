"""Drafts as a user meets them: ``POST /v1/drafts`` on a running ``radlvlm serve``, for held-out NIH images.

    python benchmarks/draft_study.py --data ../shared/data [--model DIR] [--split test]

Uploads every NIH image of the split (PNG, with its view), labels each draft with the CheXpert labeler and
compares it with the image's NIH labels (mapped to CheXpert observations): CheXpert-14 micro/macro F1 next to
two baselines (the most common normal IU report for every image; the report of the training image nearest in
the model's own image embedding), abnormal-vs-normal sensitivity and specificity (a draft is abnormal when it
names any finding), the number of distinct drafts per 100 images (a template scores 1), withheld repetition
loops, and the images' resolution. Writes ``benchmarks/results/drafts.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from report import git_commit, save_report, served_model
from service import start_server

ROOT = Path(__file__).resolve().parents[1]


def nih_rows(data: Path, split: str) -> list[dict[str, Any]]:
    manifest = data / "nih_cxr14" / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    return [{**r, "path": str(manifest.parent / r["file"])} for r in rows if r["split"] == split]


def reference_text(labels: list[str]) -> str:
    from radlvlm.training.sources import nih_impression

    return "IMPRESSION: " + nih_impression([label for label in labels if label != "No Finding"])


def draft(client: httpx.Client, row: dict[str, Any]) -> dict[str, Any]:
    files = {"file": ("image.png", Path(row["path"]).read_bytes(), "image/png")}
    response = client.post("/v1/drafts", files=files, data={"view": row["view"]})
    if response.status_code != 200:
        return {"status": response.status_code, "findings": "", "impression": "", "finish_reason": "error"}
    return response.json()


def abnormal(report: Any) -> bool:
    return any(name not in ("No Finding",) for name in report.positive(uncertain_as_positive=True))


def embeddings(model_dir: Path | None, paths: list[str]) -> np.ndarray:
    """The served model's own image embedding (vision tower CLS, L2-normalised), for the retrieval baseline."""
    import torch
    from PIL import Image

    from radlvlm.model.default import choose_model
    from radlvlm.model.pretrained import load_pretrained

    choice = choose_model(model_dir, None)
    model, processor = load_pretrained(choice.base)
    tower = model.model.vision_tower
    out = []
    with torch.inference_mode():
        for start in range(0, len(paths), 32):
            images = [
                torch.from_numpy(np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255.0)
                for p in paths[start : start + 32]
            ]
            cls = tower(pixel_values=processor.pixel_values(images)).last_hidden_state[:, 0]
            out.append(torch.nn.functional.normalize(cls, dim=-1).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with nih_cxr14/ and iu_xray/")
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
    from radlvlm.clinical_eval.metrics import clinical_metrics
    from radlvlm.reports.labeler import label_report
    from radlvlm.tasks.drafting import draft_target

    target = nih_rows(args.data, args.split)
    with tempfile.TemporaryDirectory() as tmp:
        process, url, key = start_server(args.model, Path(tmp), 8, args.max_new_tokens)
        try:
            with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=600) as client:
                info = client.get("/v1/models").json()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    answers = list(pool.map(lambda row: draft(client, row), target))
        finally:
            process.terminate()
            process.wait(timeout=60)
    drafts = [draft_target(a.get("findings") or "", a.get("impression") or "") for a in answers]
    references = [label_report(reference_text(r["labels"])) for r in target]
    labelled = [label_report(d) for d in drafts]

    train = nih_rows(args.data, "train")
    vectors = embeddings(args.model, [r["path"] for r in train + target])
    nearest = (vectors[len(train) :] @ vectors[: len(train)].T).argmax(1)
    retrieval = [label_report(reference_text(train[j]["labels"])) for j in nearest]
    iu_train = [json.loads(line) for line in (args.data / "iu_xray" / "train.jsonl").read_text().splitlines()]
    normal = label_report(most_common_normal_report(iu_train))

    def f1(predictions: list[Any]) -> dict[str, Any]:
        scores = clinical_metrics(predictions, references, n_boot=args.n_boot)["chexpert14_positive"]
        return {"micro_f1": scores["micro_f1"], "macro_f1": scores["macro_f1"]}

    truth = np.array([abnormal(r) for r in references])
    said = np.array([abnormal(r) for r in labelled])
    by_size = Counter(r["stored_size"][0] for r in target)
    metrics = {
        "images": len(target),
        "images_by_stored_size": dict(sorted(by_size.items())),
        "abnormal_images": int(truth.sum()),
        "model": f1(labelled),
        "baseline_most_common_normal": f1([normal] * len(target)),
        "baseline_nearest_neighbour_image": f1(retrieval),
        "abnormal_sensitivity": float(said[truth].mean()) if truth.any() else None,
        "abnormal_specificity": float((~said[~truth]).mean()) if (~truth).any() else None,
        "distinct_drafts": len(set(drafts)),
        "distinct_drafts_per_100_images": round(100 * len(set(drafts)) / max(len(drafts), 1), 1),
        "withheld_repetition_loops": sum(a.get("finish_reason") == "repetition" for a in answers),
        "errors": sum(a.get("finish_reason") == "error" for a in answers),
        "most_common_drafts": Counter(drafts).most_common(5),
    }
    save_report(
        args.out,
        {
            "name": "drafts",
            "commit": git_commit(),
            "model": served_model(info),
            "config": {"split": args.split, "max_new_tokens": args.max_new_tokens, "door": "POST /v1/drafts"},
            "metrics": metrics,
        },
    )


if __name__ == "__main__":
    main()
