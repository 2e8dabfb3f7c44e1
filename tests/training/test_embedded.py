"""The embedded model's recipe end to end at its tiny scale on the real public data (resumable steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from testsupport import shared_path

from radlvlm.errors import InputError
from radlvlm.model import load_pretrained
from radlvlm.model.default import embedded_model, model_card
from radlvlm.training.embedded import STEPS, build_embedded
from radlvlm.training.ship import ship


def test_tiny_embedded_recipe_runs_and_resumes(tmp_path: Path) -> None:
    data = shared_path("iu_xray").parent
    shared_path("nih_cxr14")
    shared_path("covid_chestxray")
    summary = build_embedded(data, tmp_path / "work", scale_name="tiny")
    assert all((tmp_path / "work" / step / "done.json").is_file() for step in STEPS)
    stage2 = summary["stage2"]
    model, processor = load_pretrained(stage2["base"], adapter=stage2["adapter"])
    assert getattr(model, "_mole_adapter", None) is not None and processor.num_image_tokens == 4
    vision_losses = json.loads((tmp_path / "work" / "vision" / "state" / "vision_history.json").read_text())
    assert len(vision_losses) == 2
    auroc = summary["vision"]["label_auroc"]["test"]
    assert auroc["n"] > 0 and all(0 <= v["auroc"] <= 1 for v in auroc["per_label"].values())
    evaluation = json.loads((tmp_path / "work" / "eval" / "summary.json").read_text())
    assert set(evaluation["sets"]) == {
        "draft_nih_cxr14",
        "draft_covid",
        "check_simple_iu_xray",
        "check_complex_iu_xray",
    }
    assert set(evaluation["router"]) == {"draft", "check_simple", "check_complex"}
    assert "baseline_most_common_normal" in evaluation["sets"]["draft_nih_cxr14"]
    again = build_embedded(data, tmp_path / "work", scale_name="tiny")  # every step is done: nothing reruns
    assert again["stage2"]["seconds"] == stage2["seconds"]

    # Installing it as a default model: float16, loadable through the default-model path, with its card.
    shipped = ship(tmp_path / "work", tmp_path / "default")
    assert shipped["final_stage"] == "stage2" and shipped["bytes"] < 40 * 2**20
    choice = embedded_model(tmp_path / "default")
    assert choice.embedded and choice.adapter is not None
    model, _ = load_pretrained(choice.base, adapter=choice.adapter)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # stored float16, loaded float32
    assert load_file(str(choice.base / "model.safetensors"))["lm_head.weight"].dtype == torch.float16
    card = model_card(tmp_path / "default")
    assert "Not for clinical use" in card and "CC BY-NC-ND" in card and "this model" in card
    # The tokenizer and LM can come from a model this recipe made; the next steps build on them.
    reused = build_embedded(data, tmp_path / "reuse", scale_name="tiny", lm_from=Path(stage2["base"]), until="lm")
    assert reused["lm"]["reused_from"] == stage2["base"] and "vision" not in reused
    with pytest.raises(InputError, match="unknown step"):
        build_embedded(data, tmp_path / "x", scale_name="tiny", until="everything")
    with pytest.raises(InputError, match="unknown scale"):
        build_embedded(data, tmp_path / "x", scale_name="huge")
    with pytest.raises(InputError, match="missing"):
        build_embedded(tmp_path, tmp_path / "y", scale_name="tiny")
