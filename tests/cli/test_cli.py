"""The radlvlm command line as a user runs it: JSON out, one-line errors with exit code 2, no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from testsupport import pydicom_file
from typer.testing import CliRunner

import radlvlm
from radlvlm.cli import app

runner = CliRunner()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "radlvlm", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.startswith(f"radlvlm {radlvlm.__version__} (torch ")


def test_inspect_sample_prints_the_study_summary() -> None:
    pydicom_file("RG1_UNCR.dcm")  # skips when pydicom-data is not installed
    result = runner.invoke(app, ["inspect", "--sample", "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_studies"] == 1 and summary["n_failed"] == 0
    image = summary["studies"][0]["series"][0]["images"][0]
    assert (image["modality"], image["view"], image["body_part"]) == ("CR", "PA", "CHEST")
    assert (image["rows"], image["columns"]) == (1955, 1841)


def test_inspect_folder_reports_failures_and_writes_output(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(pydicom_file("CT_small.dcm"), folder / "ct.dcm")
    (folder / "junk.bin").write_bytes(b"\x00\x01junk" * 50)
    out = tmp_path / "summary.json"
    result = runner.invoke(app, ["inspect", str(folder), "--no-progress", "--output", str(out)])
    assert result.exit_code == 0
    summary = json.loads(out.read_text())
    assert summary["n_images"] == 1 and summary["n_failed"] == 1
    assert summary["failures"][0]["error"] == "NotDicomError"
    assert "1 file(s) could not be read" in result.stderr


def test_bad_input_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "note.txt").write_text("hello")
    cases = {
        str(tmp_path / "absent.dcm"): "no such file or folder",
        str(tmp_path / "empty"): "folder contains no files",
        str(tmp_path / "note.txt"): "not a DICOM file",
        str(pydicom_file("rtplan.dcm")): "has no pixel data",
        str(pydicom_file("JPEG-lossy.dcm")): "no installed decoder could decode this JPEG Extended",
        str(pydicom_file("emri_small_jpeg_ls_lossless.dcm")): "multi-frame image with 10 frames",
    }
    for path, reason in cases.items():
        completed = _run("inspect", path, "--no-progress")
        assert completed.returncode == 2, (path, completed.stderr)
        assert "Traceback" not in completed.stderr
        lines = [line for line in completed.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0], completed.stderr
        assert completed.stdout == ""


def test_folder_where_every_file_fails_exits_2(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    result = runner.invoke(app, ["inspect", str(tmp_path), "--no-progress"])
    assert result.exit_code == 2
    assert "no readable image (1 file(s) failed)" in result.stderr


def test_usage_errors_exit_2() -> None:
    assert runner.invoke(app, ["inspect"]).exit_code == 2  # neither PATH nor --sample
    assert runner.invoke(app, ["inspect", "--frame", "x", "a.dcm"]).exit_code == 2
    assert runner.invoke(app, ["no-such-verb"]).exit_code == 2


def test_the_embedded_recipe_verbs_refuse_bad_input_in_one_line(tmp_path: Path) -> None:
    cases = [
        (["embedded", "build", "--data", str(tmp_path), "--work", str(tmp_path / "w"), "--until", "x"], "--until"),
        (["embedded", "build", "--data", str(tmp_path), "--work", str(tmp_path / "w"), "--scale", "x"], "--scale"),
        (["embedded", "ship", "--work", str(tmp_path / "none"), "--to", str(tmp_path / "to")], "none"),
        (["embedded", "dpo-eval", str(tmp_path / "r.yaml"), "--out", str(tmp_path), "--model", "a"], "NAME=BASE"),
    ]
    (tmp_path / "r.yaml").write_text("stage: dpo\n")
    for args, needle in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.stderr and result.stderr.count("\n") == 1, (args, result.stderr)


# What a light verb must not load: each costs seconds at start (torch ~1 s, MONAI's package import ~7 s with
# transformers' BERT, Presidio's NLP engine), and a PACS script may call `radlvlm inspect` once per file.
HEAVY_MODULES = ("torch", "monai", "transformers", "presidio_analyzer", "spacy", "fastapi", "sklearn")


@pytest.mark.parametrize(
    "verb", [["version"], ["inspect", "{file}"], ["--help"], ["deid", "{file}", "{tmp}/out", "--key-file", "{tmp}/k"]]
)
def test_light_verbs_import_nothing_heavy(verb: list[str], tmp_path: Path) -> None:
    """What they load, not how long they take: each heavy module costs seconds at start; ``deid`` of DICOM needs
    no Presidio (it cleans no free text)."""
    args = [a.format(file=pydicom_file("CT_small.dcm"), tmp=tmp_path) for a in verb]
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['radlvlm', *{args!r}]\n"
        "try:\n"
        "    runpy.run_module('radlvlm', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        f"print('LOADED', sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "LOADED []", done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("args", [["deid", "/x"], ["no-such-verb"], ["inspect", "--frame", "x", "a.dcm"], ["draft"]])
def test_usage_errors_are_one_line_from_the_console_script(args: list[str]) -> None:
    """As a user meets them (``radlvlm ...``): a usage error is one line and exit 2, not click's framed box."""
    done = subprocess.run([sys.executable, "-m", "radlvlm", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
