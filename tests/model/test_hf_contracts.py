"""transformers' contracts: a config that checks itself on load, an image processor and a processor that the Auto
classes find, and directories of the older layout that still load."""

from __future__ import annotations

import json
import shutil
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from testsupport import REPORT_CORPUS
from tinymodels import tiny_text_config, tiny_vision_config
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoProcessor,
    LlavaForConditionalGeneration,
)
from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name

from radlvlm.errors import InputError, ModelError
from radlvlm.imaging import ImageTransformConfig
from radlvlm.model import RadProcessor, build_config, build_model, train_tokenizer
from radlvlm.model.configuration import PooledRadLlavaConfig, RadLlavaConfig, load_config
from radlvlm.model.default import embedded_model
from radlvlm.model.image_processing import RadImageProcessor
from radlvlm.model.pretrained import load_pretrained, save_pretrained
from radlvlm.model.processor import LEGACY_PROCESSOR_FILE, PROCESSOR_CONFIG


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return train_tokenizer(REPORT_CORPUS * 5, vocab_size=300, min_frequency=1)


def _saved(tokenizer, directory: Path, **config_kwargs: object) -> Path:  # type: ignore[no-untyped-def]
    config = build_config(
        tiny_vision_config("dinov2"),
        tiny_text_config("llama", vocab_size=len(tokenizer)),
        image_token_id=3,
        **config_kwargs,  # type: ignore[arg-type]
    )
    image_config = ImageTransformConfig(size=28, mean=(0.4,), std=(0.3,))
    return save_pretrained(
        build_model(config, seed=0), RadProcessor.for_model(tokenizer, config, image_config), directory
    )


def _edit_config(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    values = json.loads(path.read_text())
    values.update(changes)
    path.write_text(json.dumps(values))


# -- 1. the config -----------------------------------------------------------------------------------


def test_an_unpooled_model_stays_a_plain_llava_and_its_config_is_checked_on_load(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    directory = _saved(tokenizer, tmp_path / "plain")
    saved = json.loads((directory / "config.json").read_text())
    assert saved["model_type"] == "llava" and saved["prompt_profile"] == "radlvlm"
    assert type(LlavaForConditionalGeneration.from_pretrained(directory)) is LlavaForConditionalGeneration
    config = load_config(directory)
    assert isinstance(config, RadLlavaConfig) and config.visual_token_pool is None

    _edit_config(directory, prompt_profile="gpt")
    with pytest.raises(ModelError, match=r"plain: unknown prompt profile 'gpt'"):
        load_pretrained(directory)
    _edit_config(directory, prompt_profile="radlvlm", image_token_index=10_000)
    with pytest.raises(ModelError, match=r"image_token_id 10000 is outside the LM vocabulary"):
        load_pretrained(directory)
    _edit_config(directory, image_token_index=3, vision_feature_select_strategy="sometimes")
    with pytest.raises(ModelError, match=r"not a valid Llava config.*vision_feature_select_strategy"):
        load_config(directory)


def test_a_pooled_model_has_its_own_type_that_the_auto_classes_know(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    directory = _saved(tokenizer, tmp_path / "pooled", visual_token_pool=1)
    saved = json.loads((directory / "config.json").read_text())
    assert saved["model_type"] == "radlvlm_llava" and saved["visual_token_pool"] == 1
    config = AutoConfig.from_pretrained(directory)
    assert isinstance(config, PooledRadLlavaConfig)
    model = AutoModelForImageTextToText.from_pretrained(directory)
    assert model.num_image_tokens == 1
    model2, _ = load_pretrained(directory)
    assert model2.config.visual_token_pool == 1

    _edit_config(directory, visual_token_pool=99)  # an edited file is checked as a built config is
    with pytest.raises(ModelError, match=r"visual_token_pool must be between 1 and the patch grid side 2, got 99"):
        AutoConfig.from_pretrained(directory)
    with pytest.raises(ModelError, match=r"pooled: visual_token_pool must be between"):
        load_pretrained(directory)


# -- 2, 3. the image processor and the processor --------------------------------------------------------


def test_the_auto_classes_load_the_processor_and_it_prepares_what_the_model_was_trained_on(
    tmp_path: Path,
    tokenizer,  # type: ignore[no-untyped-def]
) -> None:
    directory = _saved(tokenizer, tmp_path / "m")
    ours = RadProcessor.from_pretrained(directory)
    auto = AutoProcessor.from_pretrained(directory)
    assert isinstance(auto, RadProcessor) and isinstance(auto.image_processor, RadImageProcessor)
    assert auto.image_config == ours.image_config == ImageTransformConfig(size=28, mean=(0.4,), std=(0.3,))
    assert isinstance(AutoImageProcessor.from_pretrained(directory), RadImageProcessor)

    prompt = ours.chat_prompt("Findings?")
    image = torch.rand(40, 30, generator=torch.Generator().manual_seed(0))
    batch = auto(text=[prompt], images=[image])  # HF's keyword names work as our positional call does
    assert torch.equal(batch["input_ids"], ours([prompt], [image])["input_ids"])
    assert torch.equal(batch["pixel_values"], ours.pixel_values([image]))
    assert batch["pixel_values"].shape == (1, 3, 28, 28)


def test_the_image_processor_keeps_the_depth_of_what_it_is_given() -> None:
    processor = RadImageProcessor(size=16, resize_mode="crop", channels=1)
    pixels = np.linspace(0.0, 1.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    reference = processor(torch.from_numpy(pixels))["pixel_values"][0]
    as_float = processor(PILImage.fromarray(pixels, mode="F"))["pixel_values"][0]
    assert torch.equal(as_float, reference)
    sixteen = PILImage.fromarray(np.round(pixels * 65535).astype(np.uint16))
    assert torch.allclose(processor(sixteen)["pixel_values"][0], reference, atol=1e-4)
    eight = processor(PILImage.fromarray(np.round(pixels * 255).astype(np.uint8)))["pixel_values"][0]
    assert not torch.equal(eight, reference) and torch.allclose(eight, reference, atol=2 / 255 / 0.5)
    assert processor([torch.from_numpy(pixels)] * 2, return_tensors="np")["pixel_values"].shape == (2, 1, 16, 16)
    with pytest.raises(InputError, match=r"no setting\(s\) do_resize"):
        RadImageProcessor(do_resize=True)
    with pytest.raises(InputError, match="unsupported type str"):
        processor(["a radiograph"])


# -- 4. the older layout ------------------------------------------------------------------------------


def _to_legacy_layout(directory: Path, processor: RadProcessor) -> None:
    """What radlvlm wrote before 0.6: ``radlvlm_processor.json``, no processor config, no profile in config.json."""
    config = processor.image_config
    settings = {
        "image_config": {**config.__dict__, "mean": list(config.mean), "std": list(config.std)},
        "num_image_tokens": processor.num_image_tokens,
        "image_token": processor.image_token,
        "max_length": processor.max_length,
        "prompt_profile": processor.prompt_profile,
    }
    (directory / PROCESSOR_CONFIG).unlink()
    (directory / LEGACY_PROCESSOR_FILE).write_text(json.dumps(settings))
    values = json.loads((directory / "config.json").read_text())
    values.pop("prompt_profile")
    (directory / "config.json").write_text(json.dumps(values))


def test_a_directory_in_the_older_layout_loads_and_prepares_the_same_batch(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    directory = _saved(tokenizer, tmp_path / "new")
    model, processor = load_pretrained(directory)
    old = tmp_path / "old"
    shutil.copytree(directory, old)
    _to_legacy_layout(old, processor)
    old_model, old_processor = load_pretrained(old)
    assert old_processor.image_config == processor.image_config and old_processor.profile is processor.profile
    prompt = processor.chat_prompt("Findings?")
    image = torch.rand(30, 30, generator=torch.Generator().manual_seed(2))
    new_batch, old_batch = processor([prompt], [image]), old_processor([prompt], [image])
    assert all(torch.equal(new_batch[k], old_batch[k]) for k in new_batch)
    with torch.inference_mode():
        assert torch.equal(model(**new_batch).logits, old_model(**old_batch).logits)
    # Saving it again writes today's layout.
    save_pretrained(old_model, old_processor, tmp_path / "again")
    assert (tmp_path / "again" / PROCESSOR_CONFIG).is_file()
    assert not (tmp_path / "again" / LEGACY_PROCESSOR_FILE).exists()


def test_the_shipped_model_loads_whichever_layout_it_is_in() -> None:
    shipped = embedded_model()
    _, processor = load_pretrained(shipped.base, adapter=shipped.adapter)
    assert processor.profile.name == "radlvlm" and processor.num_image_tokens > 0
    assert isinstance(processor.image_processor, RadImageProcessor)


def test_vllm_finds_radlvlm_through_its_plugin_entry_point() -> None:
    """vLLM loads every ``vllm.general_plugins`` entry point in each of its processes; ours registers the classes
    an export's processor names."""
    (plugin,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "radlvlm"]
    register = plugin.load()
    register()
    assert get_image_processor_class_from_name("RadImageProcessor") is RadImageProcessor


def test_hf_style_chat_content_and_nested_image_lists_are_taken_as_radlvlm_prompts() -> None:
    """What trl and HF chat pipelines send: structured message content (an image part, a text part) and one list of
    images per prompt. The shipped model's template renders them as ``chat_prompt`` writes its prompts."""
    shipped = embedded_model()
    processor = RadProcessor.from_pretrained(shipped.base)
    structured = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Write the findings."}]}]
    text = processor.tokenizer.apply_chat_template(structured, tokenize=False, add_generation_prompt=True)
    assert text == processor.chat_prompt("Write the findings.")
    image = torch.rand(40, 40)
    nested = processor(text=[text], images=[[image]])
    flat = processor([text], [image])
    assert all(torch.equal(nested[k], flat[k]) for k in flat)
    with pytest.raises(InputError, match="2 images; a radlvlm prompt takes one image"):
        processor(text=[text], images=[[image, image]])
