"""Pretraining the embedded model's parts from scratch: LM on report text, contrastive vision encoder, assembly."""

from __future__ import annotations

from pathlib import Path

import torch
from testsupport import REPORT_CORPUS
from tinymodels import tiny_text_config, tiny_vision_config
from transformers import TrainingArguments

from radlvlm.imaging import ImageTransformConfig
from radlvlm.model import load_pretrained, train_tokenizer
from radlvlm.training.pretrain import (
    VisionSettings,
    assemble,
    augment_batch,
    embed_texts,
    label_scores,
    load_image_tensors,
    pretrain_language_model,
    train_vision_encoder,
)


def _args(out: Path, steps: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=6,
        learning_rate=3e-3,
        logging_steps=1,
        save_steps=steps,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )


def test_lm_vision_pretraining_and_assembly(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(REPORT_CORPUS * 10, vocab_size=300, min_frequency=1)
    lm_config = tiny_text_config("llama", vocab_size=len(tokenizer))
    lm, lm_stats = pretrain_language_model(REPORT_CORPUS * 4, tokenizer, lm_config, _args(tmp_path / "lm", 30))
    assert lm_stats["steps"] == 30
    first = tokenizer("The lungs are clear.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        trained_loss = float(lm(input_ids=first, labels=first).loss)
    assert trained_loss < 4.0  # a fresh 300-token model starts near ln(300) = 5.7

    # Two kinds of image (bright / dark) described by two kinds of text and labels: the encoder must tell them
    # apart. The last label is unknown (masked) for every image, so it must not be learnt.
    generator = torch.Generator().manual_seed(0)
    pixels = [torch.rand(32, 32, generator=generator) * 0.3 + (0.6 if i % 2 else 0.0) for i in range(16)]
    texts = ["Large left pleural effusion." if i % 2 else "The lungs are clear." for i in range(16)]
    labels = torch.tensor([[float(i % 2), 1.0] for i in range(16)])
    mask = torch.tensor([[1.0, 0.0]] * 16)
    embeddings = embed_texts(texts, tokenizer, lm)
    vision_config = tiny_vision_config("dinov2")
    cached = load_image_tensors([lambda p=p: p for p in pixels], 28)
    assert cached.shape == (16, 1, 28, 28) and cached.dtype == torch.float16

    def run(epochs: int):  # type: ignore[no-untyped-def]
        settings = VisionSettings(epochs=epochs, batch_size=8, learning_rate=3e-3, image_size=28)
        return train_vision_encoder(
            cached, embeddings, vision_config, tmp_path / "vision", settings, labels=labels, label_mask=mask
        )

    encoder, heads, stats = run(6)
    losses = stats["epoch_losses"]
    assert losses[-1] < losses[0], losses
    scores = label_scores(encoder, heads, cached)
    assert scores[1::2, 0].min() > scores[0::2, 0].max()  # bright images score higher for the known label
    # Resume: a second call with more epochs continues from the saved epoch instead of starting over.
    _, _, resumed = run(8)
    assert resumed["epoch_losses"][:6] == losses and len(resumed["epoch_losses"]) == 8

    out = assemble(encoder, lm, tokenizer, tmp_path / "model", image_config=ImageTransformConfig(size=28))
    model, processor = load_pretrained(out)
    batch = processor([processor.chat_prompt("Findings?")], [pixels[1]])
    with torch.no_grad():
        assert model(**batch).logits.shape[-1] == len(tokenizer)
    torch.testing.assert_close(model.model.language_model.embed_tokens.weight, lm.model.embed_tokens.weight)


def test_augmentation_keeps_shape_and_range_and_is_seeded() -> None:
    batch = torch.rand(6, 1, 28, 28) * 2 - 1
    settings = VisionSettings(image_size=28, low_resolution=7, low_resolution_p=0.5)
    first = augment_batch(batch, settings, torch.Generator().manual_seed(1))
    again = augment_batch(batch, settings, torch.Generator().manual_seed(1))
    assert first.shape == batch.shape and first.min() >= -1 and first.max() <= 1
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, batch)
