"""``radlvlm eval predict``: a manifest of studies → a predictions file ``radlvlm eval run`` scores."""

from __future__ import annotations

import json
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
