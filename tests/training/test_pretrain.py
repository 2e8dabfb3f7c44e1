"""Pretraining the embedded model's parts from scratch: LM on report text, contrastive vision encoder, assembly."""

from __future__ import annotations

from pathlib import Path

import torch
from testsupport import REPORT_CORPUS
from transformers import TrainingArguments

from radlvlm.imaging import ImageTransformConfig
from radlvlm.model import load_pretrained, train_tokenizer
from radlvlm.model.tiny import tiny_text_config, tiny_vision_config
from radlvlm.training.pretrain import (
    ContrastiveSettings,
    assemble,
    embed_texts,
    pretrain_language_model,
    pretrain_vision_encoder,
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

    # Two kinds of image (bright / dark) described by two kinds of text: the encoder must tell them apart.
    generator = torch.Generator().manual_seed(0)
    pixels = [torch.rand(32, 32, generator=generator) * 0.3 + (0.6 if i % 2 else 0.0) for i in range(16)]
    texts = ["Large left pleural effusion." if i % 2 else "The lungs are clear." for i in range(16)]
    embeddings = embed_texts(texts, tokenizer, lm)
    vision_config = tiny_vision_config("dinov2")
    settings = ContrastiveSettings(epochs=6, batch_size=8, learning_rate=3e-3, image_size=28)
    images = [lambda p=p: p for p in pixels]
    encoder, stats = pretrain_vision_encoder(images, embeddings, vision_config, tmp_path / "vision", settings)
    losses = stats["epoch_losses"]
    assert losses[-1] < losses[0], losses
    # Resume: a second call with more epochs continues from the saved epoch instead of starting over.
    more = ContrastiveSettings(epochs=8, batch_size=8, learning_rate=3e-3, image_size=28)
    _, resumed = pretrain_vision_encoder(images, embeddings, vision_config, tmp_path / "vision", more)
    assert resumed["epoch_losses"][:6] == losses and len(resumed["epoch_losses"]) == 8

    out = assemble(encoder, lm, tokenizer, tmp_path / "model", image_config=ImageTransformConfig(size=28))
    model, processor = load_pretrained(out)
    batch = processor([processor.chat_prompt("Findings?")], [pixels[1]])
    with torch.no_grad():
        assert model(**batch).logits.shape[-1] == len(tokenizer)
    torch.testing.assert_close(model.model.language_model.embed_tokens.weight, lm.model.embed_tokens.weight)
