"""``radlvlm convert``: export a saved model to HF Llava; bad input exits 2 with one line."""

from __future__ import annotations

from pathlib import Path

from transformers import LlavaForConditionalGeneration
from typer.testing import CliRunner

from radlvlm.cli import app
from radlvlm.model.pretrained import save_pretrained

runner = CliRunner()


def test_export_hf_from_the_command_line(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    model, processor = tiny
    save_pretrained(model, processor, tmp_path / "ours")
    result = runner.invoke(
        app, ["convert", "export-hf", "--model", str(tmp_path / "ours"), "--out", str(tmp_path / "hf")]
    )
    assert result.exit_code == 0, result.output
    assert LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").config.image_token_id == 3
    again = runner.invoke(
        app, ["convert", "export-hf", "--model", str(tmp_path / "ours"), "--out", str(tmp_path / "hf")]
    )
    assert again.exit_code == 2 and "not empty" in again.stderr


def test_bad_checkpoints_exit_2_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "tower").mkdir()
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    result = runner.invoke(
        app,
        [
            "convert",
            "llava-rad",
            "--model",
            str(tmp_path / "empty"),
            "--base",
            str(tmp_path / "empty"),
            "--vision-checkpoint",
            str(tmp_path / "ckpt.pt"),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 2
    assert "config.json: missing" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(
        app,
        [
            "convert",
            "llava-1.5",
            "--model",
            str(tmp_path / "empty"),
            "--vision-tower",
            str(tmp_path / "tower"),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 2 and "config.json: missing" in result.stderr
