"""The embedded default model: chosen when no model is given, refused clearly when absent or misused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from radlvlm.errors import ModelError
from radlvlm.model import load_pretrained
from radlvlm.model.default import DEFAULT_MODEL_ROOT, choose_model, classifier_beside, embedded_model, model_card
from radlvlm.training.ship import MAX_SHIPPED_BYTES, dpo_is_better


def test_shipped_model_loads_with_its_adapter_and_card() -> None:
    choice = choose_model(None, None)
    assert choice.embedded and choice.base == DEFAULT_MODEL_ROOT / "base" and choice.adapter is not None
    model, processor = load_pretrained(choice.base, adapter=choice.adapter)
    assert getattr(model, "_mole_adapter", None) is not None and processor.num_image_tokens > 0
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_ROOT.rglob("*") if p.is_file())
    assert size <= MAX_SHIPPED_BYTES
    card = model_card()
    assert "Not for clinical use" in card and "pseudo-pairs" in card and "baseline" in card


def test_explicit_model_wins_and_an_adapter_alone_is_refused(tmp_path: Path) -> None:
    choice = choose_model(tmp_path / "mine", None)
    assert not choice.embedded and choice.model_id == "mine" and choice.adapter is None
    with pytest.raises(ModelError, match="--adapter needs --model"):
        choose_model(None, tmp_path / "adapter")


def test_a_release_folder_given_as_the_model_loads_as_that_release(tmp_path: Path) -> None:
    """A copy of a release (the embedded layout: base/, adapter/, model.json; the classifier is the tower in base/)
    works as --model, with its own id and its classifier."""
    release = tmp_path / "release"
    shutil.copytree(DEFAULT_MODEL_ROOT, release)
    choice = choose_model(release, None)
    assert not choice.embedded and choice.base == release / "base" and choice.adapter == release / "adapter"
    assert choice.model_id == embedded_model().model_id
    assert classifier_beside(choice) == release / "base"


def test_missing_weights_say_how_to_give_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"not installed.*--model DIR"):
        embedded_model(tmp_path)
    with pytest.raises(ModelError, match="not installed"):
        model_card(tmp_path)


def _alignment(before: dict[str, float], after: dict[str, float]) -> dict:
    def side(values: dict[str, float]) -> dict:
        return {k: {"value": v, "ci_low": v, "ci_high": v} for k, v in values.items()}

    return {"metrics": {"before": side(before), "after": side(after)}}


def test_dpo_replaces_stage_2_only_when_safer_without_losing_f1() -> None:
    base = {
        "false_findings_per_report": 1.0,
        "omitted_findings_per_report": 0.3,
        "unsupported_comparison_rate": 0.10,
        "identifier_in_output_rate": 0.0,
        "abstention_accuracy_out_of_scope": 0.2,
        "chexpert14_micro_f1": 0.50,
    }
    safer = {**base, "unsupported_comparison_rate": 0.02, "abstention_accuracy_out_of_scope": 0.9}
    assert dpo_is_better(_alignment(base, safer))[0]
    assert not dpo_is_better(_alignment(base, {**safer, "chexpert14_micro_f1": 0.48}))[0]  # F1 -2 points
    assert not dpo_is_better(_alignment(base, {**safer, "false_findings_per_report": 1.2}))[0]
    # fewer inventions bought with more omissions in all is not better
    traded = {**safer, "false_findings_per_report": 0.5, "omitted_findings_per_report": 0.9}
    assert dpo_is_better(_alignment(base, traded)) == (False, "more false plus omitted findings per report after DPO")
    assert dpo_is_better(_alignment(base, base)) == (False, "no safety figure changed")


def test_every_saved_model_generates_with_the_kv_cache(tmp_path: Path) -> None:
    """Training saves with the cache off (gradient checkpointing); the shipped model and every model saved by
    radlvlm must tell HF ``generate`` to use it, or plain ``generate`` on them is 2-3x slower."""
    import json

    from tinymodels import tiny_text_config, tiny_vision_config

    from radlvlm.model import build_config, build_model
    from radlvlm.model.modeling import save_model

    shipped = json.loads((DEFAULT_MODEL_ROOT / "base" / "generation_config.json").read_text())
    assert shipped["use_cache"] is True
    config = build_config(tiny_vision_config("dinov2"), tiny_text_config("llama", vocab_size=64), image_token_id=3)
    model = build_model(config, seed=0)
    model.generation_config.use_cache = False  # as training leaves it
    save_model(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "generation_config.json").read_text())["use_cache"] is True
