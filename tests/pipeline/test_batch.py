"""``radlvlm eval predict``: a manifest of studies → a predictions file ``radlvlm eval run`` scores."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom import dcmread
from servicesupport import build_tiny_model_dir
from testsupport import pydicom_file, write_dataset
from typer.testing import CliRunner

from radlvlm.cli import app
from radlvlm.errors import InputError
from radlvlm.pipeline.batch import read_manifest

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    return build_tiny_model_dir(tmp_path_factory.mktemp("offline") / "tiny")


def _png(path: Path, seed: int) -> Path:
    # 64 px at least: the guardrails refuse smaller images.
    pixels = np.random.default_rng(seed).integers(0, 256, size=(80, 64), dtype=np.uint8)
    PILImage.fromarray(pixels, mode="L").save(path)
    return path


def _manifest(path: Path, rows: list[dict]) -> Path:  # type: ignore[type-arg]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_drafts_over_a_manifest(tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / "images").mkdir()
    rows = [
        {"id": "s1", "image": "images/a.png", "indication": "cough", "split": "test", "view": "PA"},
        {"id": "s2", "image": str(_png(tmp_path / "images" / "b.png", 1)), "split": "test", "view": "AP"},
        {"id": "s3", "image": "images/a.png", "split": "train"},
        # A PNG says nothing of its view: without the manifest's word it is taken as PA, as at every door.
        {"id": "s4", "image": "images/a.png", "split": "test"},
        # A DICOM says its own: a lateral film is refused, as at every door.
        {"id": "s5", "image": "images/lateral.dcm", "split": "test"},
    ]
    _png(tmp_path / "images" / "a.png", 0)
    lateral = dcmread(pydicom_file("RG1_UNCR.dcm"))
    lateral.ViewPosition = "LL"
    write_dataset(lateral, tmp_path / "images" / "lateral.dcm")
    manifest = _manifest(tmp_path / "studies.jsonl", rows)
    out = tmp_path / "predictions.jsonl"
    result = runner.invoke(
        app,
        [
            *("eval", "predict", str(manifest), "--model", str(model_dir), "-o", str(out), "--split", "test"),
            *("--max-new-tokens", "4", "--chunk-size", "1", "--no-progress"),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["studies"] == 3 and summary["backend"] == "torch" and summary["task"] == "draft"
    assert list(summary["refused"]) == ["s5"] and "lateral" in summary["refused"]["s5"]
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["id"] for p in predictions] == ["s1", "s2", "s4"]
    assert all(set(p) == {"id", "prediction", "model"} and p["model"] == "tiny" for p in predictions)


def test_simple_checks_are_scored_by_eval_run(tmp_path: Path, model_dir: Path) -> None:
    rows = [
        {
            "id": "a",
            "uid": "a",
            "split": "test",
            "text": "FINDINGS: Lungs clear.\nIMPRESSION: Normal chest.",
            "has_error": False,
        },
        {
            "id": "b",
            "uid": "b",
            "split": "test",
            "text": "FINDINGS: Lungs clear.\nIMPRESSION: Effusion.",
            "has_error": True,
        },
    ]
    manifest = _manifest(tmp_path / "errorcheck.jsonl", rows)
    out = tmp_path / "checks.jsonl"
    result = runner.invoke(
        app, ["eval", "predict", str(manifest), "--model", str(model_dir), "-o", str(out), "--task", "check-simple"]
    )
    assert result.exit_code == 0, result.output
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(p["prediction"] in ("yes", "no") and 0.0 <= p["confidence"] <= 1.0 for p in predictions)
    scored = runner.invoke(
        app, ["eval", "run", "-p", str(out), "-r", str(manifest), "-o", str(tmp_path / "study"), "--n-boot", "20"]
    )
    assert scored.exit_code == 0, scored.output


def test_bad_manifests_and_backends_exit_2_in_one_line(tmp_path: Path, model_dir: Path) -> None:
    manifest = _manifest(
        tmp_path / "bad.jsonl",
        [{"id": "x", "image": "missing.png"}, {"id": "x", "image": "missing.png"}, {"image": "y.png"}],
    )
    with pytest.raises(InputError, match=r"1 row\(s\) without an 'id': row 3; 1 duplicate id\(s\): row 2 \(x\); 1 row"):
        read_manifest(manifest, task="draft")
    no_image = _manifest(tmp_path / "no-image.jsonl", [{"id": "x"}])
    with pytest.raises(InputError, match=r"without an 'image' \(a draft needs one\): row 1 \(x\)"):
        read_manifest(no_image, task="draft")
    with pytest.raises(InputError, match=r"without the report to check"):
        read_manifest(no_image, task="check-complex")
    with pytest.raises(InputError, match="task must be"):
        read_manifest(no_image, task="summarise")
    out = str(tmp_path / "p.jsonl")
    for extra, reason in (
        ([], "image file is not found: row 1 (x)"),
        (["--task", "check-simple"], "without the report"),
    ):
        result = runner.invoke(app, ["eval", "predict", str(manifest), "--model", str(model_dir), "-o", out, *extra])
        assert result.exit_code == 2 and reason in result.stderr and "Traceback" not in result.output
    good = _manifest(tmp_path / "good.jsonl", [{"id": "x", "image": str(_png(tmp_path / "x.png", 3))}])
    result = runner.invoke(
        app, ["eval", "predict", str(good), "--model", str(model_dir), "-o", out, "--backend", "vllm"]
    )
    # A radlvlm model directory is not an HF Llava export (and its DINOv2 tower is not one vLLM builds).
    assert result.exit_code == 2 and "torch backend" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(app, ["eval", "predict", str(good), "--model", str(model_dir), "-o", out, "--backend", "x"])
    assert result.exit_code == 2 and "backend: Input should be" in result.stderr and result.stderr.count("\n") == 1


def _draft_manifest(tmp_path: Path, studies: int) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    rows = [
        {"id": f"study-{i:02d}", "image": str(_png(tmp_path / "images" / f"{i}.png", i)), "view": "PA"}
        for i in range(studies)
    ]
    return _manifest(tmp_path / "studies.jsonl", rows)


def _predict_args(manifest: Path, model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        *("eval", "predict", str(manifest), "--model", str(model_dir), "-o", str(out)),
        *("--max-new-tokens", "4", "--batch-size", "1", "--chunk-size", "2", "--no-progress", *extra),
    ]


def test_a_killed_run_resumes_where_it_stopped(tmp_path: Path, model_dir: Path) -> None:
    """Predictions are written chunk by chunk; a rerun keeps the complete rows, drops a line cut by the kill,
    predicts the rest, and ends with the file an uninterrupted run writes."""
    manifest = _draft_manifest(tmp_path, 7)
    whole = tmp_path / "whole.jsonl"
    assert runner.invoke(app, _predict_args(manifest, model_dir, whole)).exit_code == 0
    expected = whole.read_text()

    killed = tmp_path / "killed.jsonl"
    lines = expected.splitlines(keepends=True)
    killed.write_text("".join(lines[:3]) + lines[3][:17])  # three rows written, the fourth cut mid-line
    resumed = runner.invoke(app, _predict_args(manifest, model_dir, killed))
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert summary["resumed_with"] == 3 and summary["predicted_now"] == 4 and summary["studies"] == 7
    assert killed.read_text() == expected

    again = json.loads(runner.invoke(app, _predict_args(manifest, model_dir, killed)).stdout)
    assert again["predicted_now"] == 0 and killed.read_text() == expected  # nothing left to do
    fresh = json.loads(runner.invoke(app, _predict_args(manifest, model_dir, killed, "--no-resume")).stdout)
    assert fresh["predicted_now"] == 7 and killed.read_text() == expected

    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "study-00", "prediction": "x", "model": "another-model"}) + "\n")
    refused = runner.invoke(app, _predict_args(manifest, model_dir, other))
    assert refused.exit_code == 2 and "holds predictions of another-model, not tiny" in refused.stderr


def test_two_processes_split_the_studies_by_hash_and_merge_into_the_one_process_file(
    tmp_path: Path, model_dir: Path
) -> None:
    """Under torchrun each process predicts its share (by a hash of the study id) into a part; when both are done
    the first merges them, in manifest order, into the file one process writes."""
    manifest = _draft_manifest(tmp_path, 9)
    single = tmp_path / "single.jsonl"
    assert runner.invoke(app, _predict_args(manifest, model_dir, single)).exit_code == 0

    split = tmp_path / "split.jsonl"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"),
        *("--master_port", str(port), "-m", "radlvlm", *_predict_args(manifest, model_dir, split)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(chunk) for chunk in _json_documents(result.stdout)]
    shares = sorted(summary["studies"] for summary in summaries)
    assert len(summaries) == 2 and sum(shares) == 9 and shares[0] > 0  # both took part
    first = next(summary for summary in summaries if summary["shard"]["rank"] == 0)
    assert first["merged"]["studies"] == 9 and first["merged"]["parts"] == 2
    assert split.read_text() == single.read_text()

    (tmp_path / "split.jsonl.part-1-of-2.jsonl").unlink()
    missing = runner.invoke(app, ["eval", "merge-predictions", str(split)])
    assert missing.exit_code == 2 and "part(s) [1] of 2 are missing" in missing.stderr


def _json_documents(text: str) -> list[str]:
    """The pretty-printed JSON objects one after another on a stream (one per process)."""
    decoder, documents, index = json.JSONDecoder(), [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        _, end = decoder.raw_decode(text, index)
        documents.append(text[index:end])
        index = end
    return documents
