"""Pretraining the parts of a small LVLM from scratch, for the embedded default model (no weights can be
downloaded here): a report tokenizer, a causal LM on report text, and a vision encoder trained contrastively
against the text of its images (clinical notes, finding labels), the way BiomedCLIP was made; then the parts
are assembled into a radlvlm model directory for stages 1 and 2.

Each function is resumable the way the stages are (transformers' Trainer checkpoints for the LM; a plain
checkpoint per epoch for the contrastive encoder) and seeded.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    AutoModel,
    DataCollatorForLanguageModeling,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from radlvlm.errors import InputError
from radlvlm.imaging import ImageTransformConfig, ToModelInput
from radlvlm.model.modeling import RadLlavaForConditionalGeneration, build_config
from radlvlm.model.pretrained import save_pretrained
from radlvlm.model.processor import RadProcessor

logger = logging.getLogger(__name__)


class _TextDataset(torch.utils.data.Dataset):
    def __init__(self, encodings: list[list[int]]) -> None:
        self.encodings = encodings

    def __len__(self) -> int:
        return len(self.encodings)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return {"input_ids": self.encodings[index]}


def pretrain_language_model(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerFast,
    config: LlamaConfig,
    args: TrainingArguments,
    *,
    max_length: int = 256,
) -> tuple[LlamaForCausalLM, dict[str, float]]:
    """Train a causal LM from scratch on ``texts`` (each one report); resumes from ``args.output_dir``."""
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise InputError("no report text to pretrain the language model on")
    if config.vocab_size < len(tokenizer):
        raise InputError(f"LM vocabulary {config.vocab_size} is smaller than the tokenizer's {len(tokenizer)}")
    set_seed(args.seed)
    encodings = [
        tokenizer(
            f"{tokenizer.bos_token}{t}{tokenizer.eos_token}",
            add_special_tokens=False,
            truncation=True,
            max_length=max_length,
        )["input_ids"]
        for t in texts
    ]
    model = LlamaForCausalLM(config)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer = Trainer(model=model, args=args, train_dataset=_TextDataset(encodings), data_collator=collator)
    out = Path(args.output_dir)
    checkpoint = get_last_checkpoint(str(out)) if out.is_dir() else None
    result = trainer.train(resume_from_checkpoint=checkpoint)
    return model, {"train_loss": float(result.training_loss), "steps": trainer.state.global_step}


@dataclass
class ContrastiveSettings:
    """CLIP-style training of the vision encoder against text embeddings of each image's notes and labels.

    Args:
        epochs (int, default 10), batch_size (int, default 32), learning_rate (float, default 3e-4),
        temperature (float, default 0.07): the InfoNCE temperature (learned from this start value).
        image_size (int, default 224): encoder input size (grayscale repeated to 3 channels).
    """

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 3e-4
    temperature: float = 0.07
    image_size: int = 224
    seed: int = 0


class _ContrastiveHead(nn.Module):
    """Projects image CLS features and text embeddings into one space; the temperature is learned."""

    def __init__(self, image_width: int, text_width: int, dim: int, temperature: float) -> None:
        super().__init__()
        self.image = nn.Linear(image_width, dim, bias=False)
        self.text = nn.Linear(text_width, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))


@torch.no_grad()
def embed_texts(
    texts: Sequence[str], tokenizer: PreTrainedTokenizerFast, lm: nn.Module, *, max_length: int = 128
) -> torch.Tensor:
    """Mean-pooled last hidden states of the (frozen) report LM: the text side of the contrastive task."""
    base = lm.get_decoder() if hasattr(lm, "get_decoder") else lm
    vectors = []
    for start in range(0, len(texts), 32):
        batch = tokenizer(
            list(texts[start : start + 32]),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
            add_special_tokens=False,
        )
        hidden = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        vectors.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
    return torch.cat(vectors)


def pretrain_vision_encoder(
    images: Sequence[Callable[[], torch.Tensor]],
    text_embeddings: torch.Tensor,
    vision_config: PretrainedConfig,
    out: Path,
    settings: ContrastiveSettings | None = None,
) -> tuple[nn.Module, dict[str, float]]:
    """Train ``AutoModel.from_config(vision_config)`` so each image's CLS feature matches its text embedding.

    ``images[i]`` loads image i's display pixels (rows, columns) lazily; ``text_embeddings[i]`` is its text.
    Resumable: an epoch checkpoint in ``out`` is picked up by the next call.
    """
    settings = settings or ContrastiveSettings()
    if len(images) != len(text_embeddings) or len(images) < 2:
        raise InputError(f"need matching images and texts (at least 2), got {len(images)} and {len(text_embeddings)}")
    set_seed(settings.seed)
    encoder = AutoModel.from_config(vision_config)
    head = _ContrastiveHead(vision_config.hidden_size, text_embeddings.shape[1], 128, settings.temperature)
    parameters = list(encoder.parameters()) + list(head.parameters())
    optimiser = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.05)
    transform = ToModelInput(ImageTransformConfig(size=settings.image_size, channels=3, mean=(0.5,), std=(0.5,)))
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "contrastive_state.pt"
    start_epoch, history = 0, []
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        encoder.load_state_dict(state["encoder"])
        head.load_state_dict(state["head"])
        optimiser.load_state_dict(state["optimiser"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        torch.set_rng_state(state["rng"])
    generator = torch.Generator().manual_seed(settings.seed)
    orders = [torch.randperm(len(images), generator=generator) for _ in range(settings.epochs)]
    for epoch in range(start_epoch, settings.epochs):
        encoder.train()
        losses = []
        order = orders[epoch]
        for start in tqdm(
            range(0, len(order), settings.batch_size), desc=f"contrastive epoch {epoch + 1}", leave=False
        ):
            index = order[start : start + settings.batch_size]
            if len(index) < 2:
                continue
            pixels = torch.stack([transform(images[int(i)]()) for i in index])
            features = encoder(pixel_values=pixels).last_hidden_state[:, 0]
            image_vec = F.normalize(head.image(features), dim=-1)
            text_vec = F.normalize(head.text(text_embeddings[index]), dim=-1)
            logits = head.logit_scale.exp().clamp(max=100) * image_vec @ text_vec.t()
            # Images that share a text (e.g. the same finding labels) are all correct matches.
            same = (text_embeddings[index].unsqueeze(1) == text_embeddings[index].unsqueeze(0)).all(-1).float()
            targets = same / same.sum(1, keepdim=True)
            loss = (
                torch.sum(-targets * logits.log_softmax(1), 1).mean()
                + torch.sum(-targets * logits.t().log_softmax(1), 1).mean()
            ) / 2
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        history.append(sum(losses) / max(len(losses), 1))
        torch.save(
            {
                "encoder": encoder.state_dict(),
                "head": head.state_dict(),
                "optimiser": optimiser.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "rng": torch.get_rng_state(),
            },
            state_path,
        )
        logger.info("contrastive epoch %d: loss %.4f", epoch + 1, history[-1])
    (out / "contrastive_history.json").write_text(json.dumps(history) + "\n")
    return encoder, {"epoch_losses": history}  # type: ignore[dict-item]


def assemble(
    vision: nn.Module,
    lm: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    out: Path,
    *,
    image_config: ImageTransformConfig,
    visual_token_pool: int | None = None,
    seed: int = 0,
) -> Path:
    """A radlvlm model directory from a pretrained vision encoder and LM (projector freshly initialised)."""
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = build_config(
        vision.config,
        lm.config,
        image_token_id=image_token_id,
        visual_token_pool=visual_token_pool,
        pad_token_id=tokenizer.pad_token_id,
    )
    set_seed(seed)
    model = RadLlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(vision.state_dict(), strict=True)
    model.model.language_model.load_state_dict(lm.model.state_dict(), strict=True)
    model.lm_head.load_state_dict(lm.lm_head.state_dict(), strict=True)
    processor = RadProcessor.for_model(tokenizer, config, image_config)
    return save_pretrained(model, processor, out)


def save_module(module: nn.Module, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))


def load_module(module: nn.Module, path: Path) -> nn.Module:
    module.load_state_dict(load_file(str(path)), strict=True)
    return module
