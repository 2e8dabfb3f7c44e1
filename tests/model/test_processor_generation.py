"""Processor (image-token expansion, left padding, limits) and batched generation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from testsupport import pydicom_file

from radlvlm.errors import InputError, ModelError
from radlvlm.imaging import read_image_file
from radlvlm.model import GenerationSettings, RadProcessor, generate
from radlvlm.model.pretrained import load_pretrained, save_pretrained


def test_prompt_template_and_image_expansion(tiny) -> None:  # type: ignore[no-untyped-def]
    _, processor = tiny
    prompt = processor.chat_prompt("Describe the findings.")
    assert prompt == "<s>USER: <image>\nDescribe the findings. ASSISTANT:"
    batch = processor([prompt], [torch.rand(40, 30)])
    ids = batch["input_ids"][0]
    assert int((ids == processor.image_token_id).sum()) == processor.num_image_tokens == 4
    assert batch["pixel_values"].shape == (1, 3, 28, 28)
    assert processor.chat_prompt("Check this report.", image=False).count("<image>") == 0


def test_mixed_lengths_are_left_padded(tiny) -> None:  # type: ignore[no-untyped-def]
    _, processor = tiny
    short = processor.chat_prompt("Findings?")
    long = processor.chat_prompt("Write the findings and the impression of this chest radiograph, please.")
    batch = processor([short, long], [torch.rand(28, 28), None if False else torch.rand(28, 28)])
    mask = batch["attention_mask"]
    assert mask[1].all() and not mask[0].all()
    first_real = int(mask[0].nonzero()[0])
    assert (batch["input_ids"][0, :first_real] == processor.tokenizer.pad_token_id).all()
    assert mask[0, first_real:].all()


def test_images_as_study_image_pil_and_preprocessed_tensor(tiny) -> None:  # type: ignore[no-untyped-def]
    _, processor = tiny
    image = read_image_file(pydicom_file("CT_small.dcm"))
    pil = PILImage.fromarray((np.random.default_rng(0).random((30, 20)) * 255).astype(np.uint8))
    ready = torch.zeros(3, 28, 28)
    values = processor.pixel_values([image, pil, ready])
    assert values.shape == (3, 3, 28, 28) and torch.equal(values[2], ready)
    with pytest.raises(InputError, match="neither pixels"):
        processor.pixel_values([torch.zeros(3, 5, 5)])


@pytest.mark.parametrize(
    ("texts", "images", "message"),
    [
        (["USER: hello"], [torch.rand(8, 8)], "0 <image> placeholder"),
        (["USER: <image> hi"], [None], "1 <image> placeholder"),
        (["a", "b"], [None], "2 prompts but 1 images"),
        ([], None, "no prompts"),
    ],
)
def test_bad_requests(tiny, texts, images, message) -> None:  # type: ignore[no-untyped-def]
    _, processor = tiny
    with pytest.raises(InputError, match=message):
        processor(texts, images)


def test_prompt_longer_than_the_context_is_refused(tiny) -> None:  # type: ignore[no-untyped-def]
    _, processor = tiny
    processor.max_length = 20
    with pytest.raises(InputError, match=r"longer than the model's context of 20"):
        processor([processor.chat_prompt("the lungs are clear " * 10)], [torch.rand(28, 28)])


def test_processor_and_model_round_trip(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    model, processor = tiny
    save_pretrained(model, processor, tmp_path / "m")
    _, reloaded = load_pretrained(tmp_path / "m")
    prompt = processor.chat_prompt("Findings?")
    assert torch.equal(
        reloaded([prompt], [torch.ones(28, 28)])["input_ids"], processor([prompt], [torch.ones(28, 28)])["input_ids"]
    )
    assert reloaded.image_config == processor.image_config
    with pytest.raises(ModelError, match=r"no processor_config\.json \(nor the older radlvlm_processor\.json\)"):
        RadProcessor.from_pretrained(tmp_path)


def test_batched_generation_equals_unbatched(tiny) -> None:  # type: ignore[no-untyped-def]
    model, processor = tiny
    prompts = [processor.chat_prompt("Findings?"), processor.chat_prompt("Describe the chest radiograph in detail.")]
    images = [torch.rand(30, 40), torch.rand(40, 30)]
    settings = GenerationSettings(max_new_tokens=12)
    batched = generate(model, processor, prompts, images, settings).generations
    one_by_one = [
        generate(model, processor, [p], [i], settings).generations[0] for p, i in zip(prompts, images, strict=True)
    ]
    assert [g.text for g in batched] == [g.text for g in one_by_one]
    assert all(g.new_tokens <= 12 for g in batched)


def test_sampling_is_reproducible_with_a_seed_and_beam_runs(tiny) -> None:  # type: ignore[no-untyped-def]
    model, processor = tiny
    prompt, image = [processor.chat_prompt("Findings?")], [torch.rand(28, 28)]
    sample = GenerationSettings(strategy="sample", max_new_tokens=10, seed=7, temperature=1.0)
    first = generate(model, processor, prompt, image, sample).generations[0].text
    assert generate(model, processor, prompt, image, sample).generations[0].text == first
    beam = generate(model, processor, prompt, image, GenerationSettings(strategy="beam", num_beams=3, max_new_tokens=6))
    assert beam.generations[0].new_tokens <= 6


def test_stop_strings_and_length_cap(tiny) -> None:  # type: ignore[no-untyped-def]
    model, processor = tiny
    prompt, image = [processor.chat_prompt("Findings?")], [torch.rand(28, 28)]
    free = generate(model, processor, prompt, image, GenerationSettings(max_new_tokens=16)).generations[0]
    assert free.finish_reason == "length" and free.new_tokens == 16
    candidates = [c for c in free.text[2:] if c.isalnum()]
    assert candidates, free.text
    stop = candidates[0]
    stopped = generate(
        model, processor, prompt, image, GenerationSettings(max_new_tokens=16, stop_strings=(stop,))
    ).generations[0]
    assert stop not in stopped.text and stopped.finish_reason == "stop"
    with pytest.raises(InputError):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(InputError):
        GenerationSettings(strategy="beam", num_beams=1)
