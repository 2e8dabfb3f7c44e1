"""``radlvlm train`` end to end on real IU-Xray reports (error-check tasks) with a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from servicesupport import build_tiny_model_dir
from testsupport import shared_path
from typer.testing import CliRunner

from radlvlm.cli import app

runner = CliRunner()


def test_train_from_a_recipe_on_iu_reports(tmp_path: Path) -> None:
    iu = shared_path("iu_xray")
    base = build_tiny_model_dir(tmp_path / "base")
    recipe = {
        "name": "tiny-check",
        "stage": "instruct",
        "seed": 0,
        "model": {"base": str(base), "adapter": "mole", "num_experts": 2, "r": 2, "alpha": 4},
        "data": {
            "sources": [{"type": "iu_xray", "root": str(iu), "limit": 40}],
            "mixture": {"draft": 0.0, "check_simple": 1.0, "check_complex": 1.0},
            "limit": 16,
        },
        "training": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": 3,
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-3,
            "logging_steps": 1,
            "save_steps": 3,
            "use_cpu": True,
            "disable_tqdm": True,
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    dry = runner.invoke(app, ["train", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    counts = json.loads(dry.stdout)
    used = {task for task, n in counts["tasks"].items() if n}
    assert counts["train_examples"] == 16 and used == {"check_simple", "check_complex"}
    trained = runner.invoke(app, ["train", str(path)])
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["global_step"] == 3 and Path(summary["adapter"]).is_dir()


def test_recipe_asking_for_drafts_without_images_is_refused(tmp_path: Path) -> None:
    iu = shared_path("iu_xray")
    recipe = {
        "name": "bad",
        "stage": "instruct",
        "model": {"base": str(tmp_path)},
        "data": {"sources": [{"type": "iu_xray", "root": str(iu), "limit": 20}], "mixture": {"draft": 1.0}},
        "training": {"output_dir": str(tmp_path / "run")},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = runner.invoke(app, ["train", str(path), "--dry-run"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "draft" in result.stderr
