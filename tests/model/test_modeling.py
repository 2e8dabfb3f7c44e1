"""The LVLM: every encoder/LM pairing builds and runs; save/load round trips; partial loads are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tinymodels import tiny_text_config, tiny_vision_config

from radlvlm.errors import ModelError
from radlvlm.model import build_config, build_model, load_model, save_model


@pytest.mark.parametrize("vision", ["dinov2", "clip", "siglip", "vit"])
@pytest.mark.parametrize("text", ["llama", "mistral", "qwen2", "phi"])
def test_every_encoder_and_lm_pairing_runs(vision: str, text: str) -> None:
    config = build_config(tiny_vision_config(vision), tiny_text_config(text), image_token_id=3)
    model = build_model(config, seed=0)
    n = config.image_seq_length
    assert n == 4  # 28 px / 14 px patches, CLS dropped (SigLIP has none)
    ids = torch.tensor([[1, *([3] * n), 5, 6]])
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=torch.rand(1, 3, 28, 28)).logits
    assert logits.shape == (1, n + 3, 128)


def test_save_and_load_round_trip_gives_equal_logits(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    model, _ = tiny
    save_model(model, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    reloaded = load_model(tmp_path / "m")
    ids, pixels = torch.tensor([[1, 3, 3, 3, 3, 9, 10]]), torch.rand(1, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids, pixel_values=pixels).logits, reloaded(input_ids=ids, pixel_values=pixels).logits
        )


def test_missing_and_mismatched_weights_are_refused(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    model, _ = tiny
    directory = save_model(model, tmp_path / "m")
    weights = load_file(str(directory / "model.safetensors"))
    # (transformers decides the on-disk key names; find ours by suffix)
    removed = next(k for k in weights if k.endswith("layers.1.mlp.down_proj.weight"))
    save_file({k: v for k, v in weights.items() if k != removed}, str(directory / "model.safetensors"))
    with pytest.raises(ModelError, match=r"refusing a partial load: 1 missing weight\(s\), e\.g\. .*down_proj"):
        load_model(directory)
    assert load_model(directory, allow_missing=True) is not None

    weights[next(k for k in weights if k.endswith("multi_modal_projector.linear_2.weight"))] = torch.zeros(3, 3)
    save_file(weights, str(directory / "model.safetensors"))
    with pytest.raises(ModelError, match="multi_modal_projector"):
        load_model(directory)
    with pytest.raises(ModelError, match=r"no config\.json"):
        load_model(tmp_path)


def test_image_token_count_must_match_the_features(tiny) -> None:  # type: ignore[no-untyped-def]
    model, _ = tiny
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model(input_ids=torch.tensor([[1, 3, 3, 9]]), pixel_values=torch.rand(1, 3, 28, 28))


def test_visual_token_pooling_keeps_weights_and_shrinks_the_sequence(tmp_path: Path) -> None:
    vision = tiny_vision_config("dinov2", image_size=56)  # 4 x 4 patch grid
    full = build_model(build_config(vision, tiny_text_config("llama"), image_token_id=3), seed=0)
    pooled_config = build_config(vision, tiny_text_config("llama"), image_token_id=3, visual_token_pool=2)
    pooled = build_model(pooled_config, seed=0)
    assert full.config.image_seq_length == 16 and pooled.config.image_seq_length == 4
    assert set(full.state_dict()) == set(pooled.state_dict())
    pooled.load_state_dict(full.state_dict())
    with torch.no_grad():
        logits = pooled(input_ids=torch.tensor([[1, 3, 3, 3, 3, 7]]), pixel_values=torch.rand(1, 3, 56, 56)).logits
    assert logits.shape[1] == 6
    save_model(pooled, tmp_path / "pooled")
    assert load_model(tmp_path / "pooled").config.visual_token_pool == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_token_id": 500}, "outside the LM vocabulary"),
        ({"image_token_id": 3, "visual_token_pool": 9}, "visual_token_pool must be between"),
        (
            {"image_token_id": 3, "vision_feature_select_strategy": "cls"},
            "vision_feature_select_strategy.*'default', 'full'",
        ),
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        build_config(tiny_vision_config("dinov2"), tiny_text_config("llama"), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="has no CLS token"):
        build_config(
            tiny_vision_config("siglip"),
            tiny_text_config("llama"),
            image_token_id=3,
            vision_feature_select_strategy="default",
        )
