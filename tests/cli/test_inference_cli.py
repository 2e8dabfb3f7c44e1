"""``radlvlm draft`` / ``radlvlm check`` on a tiny saved model, through the de-identification path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom import dcmread
from servicesupport import build_tiny_classifier
from testsupport import REPORT_CORPUS, pydicom_file, write_dataset
from tinymodels import tiny_text_config, tiny_vision_config
from typer.testing import CliRunner

from radlvlm.cli import app
from radlvlm.model import RadProcessor, build_config, build_model, train_tokenizer
from radlvlm.model.pretrained import save_pretrained

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = train_tokenizer([*REPORT_CORPUS, "yes", "no"] * 10, vocab_size=300, min_frequency=1)
    config = build_config(
        tiny_vision_config("dinov2"), tiny_text_config("llama", vocab_size=len(tokenizer)), image_token_id=3
    )
    return save_pretrained(
        build_model(config, seed=0), RadProcessor.for_model(tokenizer, config), tmp_path_factory.mktemp("m") / "tiny"
    )


def test_draft_and_check_print_json(model_dir: Path, tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    study = str(pydicom_file("RG1_UNCR.dcm"))
    drafted = runner.invoke(
        app,
        [
            "draft",
            study,
            "--model",
            str(model_dir),
            "--max-new-tokens",
            "6",
            "--key-file",
            str(key),
            "--indication",
            "Cough. Seen by Dr. Patel.",
        ],
    )
    assert drafted.exit_code == 0, drafted.output
    body = json.loads(drafted.stdout)
    assert body["model_id"] == "tiny" and "not for clinical use" in body["disclaimer"]
    report = tmp_path / "report.txt"
    report.write_text("FINDINGS: Small left pleural effusion. IMPRESSION: No effusion.")
    checked = runner.invoke(app, ["check", "--report", str(report), "--model", str(model_dir), "--key-file", str(key)])
    assert checked.exit_code == 0, checked.output
    verdict = json.loads(checked.stdout)
    assert verdict["check_type"] == "text_only" and isinstance(verdict["has_error"], bool)
    with_image = runner.invoke(
        app, ["check", study, "--report", str(report), "--model", str(model_dir), "--key-file", str(key)]
    )
    assert json.loads(with_image.stdout)["check_type"] == "image"


def test_bad_input_exits_2(model_dir: Path, tmp_path: Path) -> None:
    ct = str(pydicom_file("CT_small.dcm"))
    refused = runner.invoke(app, ["draft", ct, "--model", str(model_dir), "--key-file", str(tmp_path / "k")])
    assert refused.exit_code == 2 and "not CR or DX" in refused.stderr
    adapter_alone = runner.invoke(
        app, ["draft", str(pydicom_file("RG1_UNCR.dcm")), "--adapter", str(tmp_path), "--key-file", str(tmp_path / "k")]
    )
    assert adapter_alone.exit_code == 2 and "--adapter needs --model" in adapter_alone.stderr
    (tmp_path / "empty.txt").write_text("  ")
    empty = runner.invoke(app, ["check", "--report", str(tmp_path / "empty.txt"), "--model", str(model_dir)])
    assert empty.exit_code == 2 and "empty" in empty.stderr
    # Errors name the file as the user gave it (not "upload"), in one line, for a file, a folder, nothing at all.
    notes = tmp_path / "notes.txt"
    notes.write_text("hello, not an image")
    for path, reason in ((notes, "not a DICOM file"), (tmp_path, "not a file"), (tmp_path / "gone.dcm", "no such")):
        result = runner.invoke(app, ["draft", str(path), "--model", str(model_dir)])
        assert result.exit_code == 2 and reason in result.stderr, result.output
        assert str(path) in result.stderr and "upload" not in result.stderr and result.stderr.count("\n") == 1
    no_scopes = runner.invoke(app, ["apikey", "--scopes", ""])
    assert no_scopes.exit_code == 2 and "at least one scope" in no_scopes.stderr


def test_a_png_without_view_drafts_as_pa_and_says_the_view_was_assumed(model_dir: Path, tmp_path: Path) -> None:
    png = tmp_path / "cxr.png"
    PILImage.fromarray((np.add.outer(np.arange(96), np.arange(80)) * 2 % 256).astype(np.uint8)).save(png)
    base = ["--model", str(model_dir), "--key-file", str(tmp_path / "k")]
    drafted = runner.invoke(app, ["draft", str(png), *base, "--max-new-tokens", "4"])
    assert drafted.exit_code == 0, drafted.output
    body = json.loads(drafted.stdout)
    assert (body["image"]["view"], body["image"]["view_source"]) == ("PA", "default")
    assumed = [f for f in body["guardrail_flags"] if f["code"] == "view_assumed"]
    assert len(assumed) == 1 and "--view AP" in assumed[0]["message"]
    stated = json.loads(runner.invoke(app, ["draft", str(png), *base, "--max-new-tokens", "4", "--view", "AP"]).stdout)
    assert (stated["image"]["view"], stated["image"]["view_source"]) == ("AP", "request")
    assert "view_assumed" not in {f["code"] for f in stated["guardrail_flags"]}
    report = tmp_path / "report.txt"
    report.write_text("FINDINGS: Small left pleural effusion. IMPRESSION: No effusion.")
    checked = runner.invoke(app, ["check", str(png), "--report", str(report), *base])
    assert checked.exit_code == 0, checked.output
    verdict = json.loads(checked.stdout)
    assert verdict["check_type"] == "image" and "view_assumed" in {f["code"] for f in verdict["guardrail_flags"]}
    # A DICOM says its own view: a lateral film is still refused, --view or not.
    ds = dcmread(pydicom_file("RG1_UNCR.dcm"))
    ds.ViewPosition = "LL"
    lateral = str(write_dataset(ds, tmp_path / "lateral.dcm"))
    refused = runner.invoke(app, ["draft", lateral, *base])
    assert refused.exit_code == 2 and "lateral" in refused.stderr, refused.output
    for command in ("draft", "check"):
        help_text = " ".join(runner.invoke(app, [command, "--help"]).stdout.replace("│", " ").split())
        assert "PNG/JPEG" in help_text and "default PA" in help_text


def test_draft_and_check_default_to_the_embedded_model(tmp_path: Path) -> None:
    """No --model: the model shipped in the package drafts and checks (text-only check without an image)."""
    study = str(pydicom_file("RG1_UNCR.dcm"))
    drafted = runner.invoke(app, ["draft", study, "--max-new-tokens", "24", "--key-file", str(tmp_path / "k")])
    assert drafted.exit_code == 0, drafted.output
    draft = json.loads(drafted.stdout)
    assert draft["model_id"].startswith("radlvlm-embedded") and "not for clinical use" in draft["disclaimer"]
    report = tmp_path / "report.txt"
    report.write_text("FINDINGS: Heart size is normal. The lungs are clear.\nIMPRESSION: No acute disease.")
    checked = runner.invoke(app, ["check", "--report", str(report), "--key-file", str(tmp_path / "k")])
    assert checked.exit_code == 0, checked.output
    verdict = json.loads(checked.stdout)
    assert verdict["check_type"] == "text_only" and 0.0 <= verdict["confidence"] <= 1.0
    assert verdict["calibrated"] and 0.0 <= verdict["error_probability"] <= 1.0
    # A text-only check needs both sections: without an impression it says why instead of "no error".
    report.write_text("FINDINGS: Large right pneumothorax.")
    unchecked = json.loads(
        runner.invoke(app, ["check", "--report", str(report), "--key-file", str(tmp_path / "k")]).stdout
    )
    assert unchecked["answer_valid"] is False and unchecked["has_error"] is None and "impression" in unchecked["reason"]


def test_draft_explain_prints_where_each_stated_finding_was_seen(model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "tiny"
    shutil.copytree(model_dir, model)
    build_tiny_classifier(model / "findings", abnormal_threshold=0.01)  # reads "abnormal": a finding is stated
    base = [str(pydicom_file("RG1_UNCR.dcm")), "--model", str(model), "--key-file", str(tmp_path / "k")]
    plain = json.loads(runner.invoke(app, ["draft", *base, "--max-new-tokens", "4"]).stdout)
    assert plain["activation_maps"] is None
    explained = runner.invoke(app, ["draft", *base, "--max-new-tokens", "4", "--explain"])
    assert explained.exit_code == 0, explained.output
    body = json.loads(explained.stdout)
    assert [m["label"] for m in body["activation_maps"]] == body["image_findings"]["stated"] == ["Effusion"]
    assert body["activation_maps"][0]["png_base64"].startswith("iVBOR")  # a PNG
