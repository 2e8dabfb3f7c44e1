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
class VisionSettings:
    """Training of the vision encoder: supervised by finding labels where an image has them, plus CLIP-style
    contrast against the text embedding of its notes and labels (the way BiomedCLIP was made).

    Args:
        epochs (int, default 10), batch_size (int, default 32), learning_rate (float, default 3e-4),
        temperature (float, default 0.07): the InfoNCE temperature (learned from this start value).
        image_size (int, default 224): encoder input size (grayscale repeated to 3 channels).
        contrastive_weight (float, default 1.0): weight of the contrastive loss next to the label loss.
        augment (bool, default True): random affine (scale, small rotation, shift), brightness/contrast jitter
            and, with ``low_resolution_p``, a round trip through ``low_resolution`` pixels, so an encoder
            trained on 512 px radiographs also reads 64 px thumbnails and does not learn resolution as a cue.
        low_resolution_p (float, default 0.25), low_resolution (int, default 64).
    """

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 3e-4
    temperature: float = 0.07
    image_size: int = 224
    seed: int = 0
    contrastive_weight: float = 1.0
    augment: bool = True
    low_resolution_p: float = 0.25
    low_resolution: int = 64


class _VisionHeads(nn.Module):
    """Projects image CLS features and text embeddings into one space (the temperature is learned), and reads
    the finding labels from the mean of the patch tokens — the tokens the LVLM's projector sees."""

    def __init__(self, image_width: int, text_width: int, dim: int, temperature: float, n_labels: int) -> None:
        super().__init__()
        self.image = nn.Linear(image_width, dim, bias=False)
        self.text = nn.Linear(text_width, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.labels = nn.Linear(image_width, max(n_labels, 1))


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


def load_image_tensors(images: Sequence[Callable[[], torch.Tensor]], image_size: int) -> torch.Tensor:
    """Every image once through the model-input transform, kept as one float16 channel (N, 1, S, S): decoding
    and resizing 512 px PNGs each epoch would cost more than the encoder's step on this CPU."""
    transform = ToModelInput(ImageTransformConfig(size=image_size, channels=1, mean=(0.5,), std=(0.5,)))
    out = torch.empty(len(images), 1, image_size, image_size, dtype=torch.float16)
    for index, load in enumerate(tqdm(images, desc="loading images", leave=False)):
        out[index] = transform(load()).to(torch.float16)
    return out


def augment_batch(pixels: torch.Tensor, settings: VisionSettings, generator: torch.Generator) -> torch.Tensor:
    """Random, label-preserving changes of a normalised (B, 1, S, S) batch.

    Written with torch's ``affine_grid``/``grid_sample`` over the whole cached batch rather than MONAI's
    per-image dictionary transforms: one batched call, the same result, a fraction of the time on 2 cores.
    No horizontal flip: it would move the heart and swap left and right findings.
    """
    b, _, size, _ = pixels.shape
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731 - four draws below
    angle = (rand(b) - 0.5) * 2 * math.radians(7)
    scale = 1 + (rand(b) - 0.5) * 0.2
    shift = (rand(b, 2) - 0.5) * 0.1
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    # Padding is the normalised black level (-1), the colour of the letterbox the transform pads with.
    out = F.grid_sample(pixels + 1, grid, align_corners=False, padding_mode="zeros") - 1
    contrast = 1 + (rand(b, 1, 1, 1) - 0.5) * 0.4
    brightness = (rand(b, 1, 1, 1) - 0.5) * 0.2
    out = (out * contrast + brightness).clamp(-1, 1)
    low = rand(b) < settings.low_resolution_p
    if low.any():
        small = F.interpolate(out[low], size=settings.low_resolution, mode="area")
        out[low] = F.interpolate(small, size=size, mode="bilinear", align_corners=False)
    return out


def _patch_mean(hidden: torch.Tensor) -> torch.Tensor:
    return hidden[:, 1:].mean(1)  # token 0 is CLS; the projector reads the patch tokens


def train_vision_encoder(
    pixels: torch.Tensor,
    text_embeddings: torch.Tensor,
    vision_config: PretrainedConfig,
    out: Path,
    settings: VisionSettings | None = None,
    *,
    labels: torch.Tensor | None = None,
    label_mask: torch.Tensor | None = None,
) -> tuple[nn.Module, nn.Module, dict[str, float]]:
    """Train ``AutoModel.from_config(vision_config)`` on cached images (:func:`load_image_tensors`).

    Losses: the contrastive match of each image's CLS feature to ``text_embeddings[i]`` (weighted by
    ``settings.contrastive_weight``), plus, when ``labels`` (N, L) are given, binary cross-entropy of a linear
    read-out of the mean patch token, counted only where ``label_mask`` is 1 (an image whose source does not
    say whether a finding is there teaches nothing about it). Resumable: an epoch checkpoint in ``out`` is
    picked up by the next call. Returns the encoder, the heads (the label read-out is ``heads.labels``) and the
    per-epoch losses.
    """
    settings = settings or VisionSettings()
    if len(pixels) != len(text_embeddings) or len(pixels) < 2:
        raise InputError(f"need matching images and texts (at least 2), got {len(pixels)} and {len(text_embeddings)}")
    if labels is not None:
        label_mask = torch.ones_like(labels) if label_mask is None else label_mask
        if labels.shape[0] != len(pixels) or label_mask.shape != labels.shape:
            raise InputError(f"labels {tuple(labels.shape)} / mask do not match {len(pixels)} images")
    set_seed(settings.seed)
    encoder = AutoModel.from_config(vision_config)
    n_labels = 0 if labels is None else labels.shape[1]
    heads = _VisionHeads(vision_config.hidden_size, text_embeddings.shape[1], 128, settings.temperature, n_labels)
    run = _VisionRun(encoder, heads, settings, _VisionData(pixels, text_embeddings, labels, label_mask))
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "vision_state.pt"
    start_epoch, history = run.resume(state_path) if state_path.is_file() else (0, [])
    generator = torch.Generator().manual_seed(settings.seed)
    # Every epoch's order is drawn up front, so a resumed run visits the images in the order a straight run does.
    orders = [torch.randperm(len(pixels), generator=generator) for _ in range(settings.epochs)]
    for epoch in range(start_epoch, settings.epochs):
        history.append(run.train_epoch(epoch, orders[epoch]))
        run.save(state_path, epoch + 1, history)
        logger.info("vision epoch %d: loss %.4f", epoch + 1, history[-1])
    (out / "vision_history.json").write_text(json.dumps(history) + "\n")
    return encoder, heads, {"epoch_losses": history}  # type: ignore[dict-item]


@dataclass(frozen=True)
class _VisionData:
    """What the vision encoder learns from: cached images, their text embeddings and (optionally) their finding
    labels with the mask of the labels known (set whenever ``labels`` is)."""

    pixels: torch.Tensor
    text_embeddings: torch.Tensor
    labels: torch.Tensor | None
    label_mask: torch.Tensor | None


class _VisionRun:
    """The encoder, heads, optimiser and learning-rate schedule of one training run, with the epoch checkpoint
    that makes it resumable."""

    def __init__(self, encoder: nn.Module, heads: _VisionHeads, settings: VisionSettings, data: _VisionData) -> None:
        self.encoder, self.heads, self.settings, self.data = encoder, heads, settings, data
        self.parameters = list(encoder.parameters()) + list(heads.parameters())
        self.optimiser = torch.optim.AdamW(self.parameters, lr=settings.learning_rate, weight_decay=0.05)
        steps_per_epoch = math.ceil(len(data.pixels) / settings.batch_size)
        total = steps_per_epoch * settings.epochs
        warmup = max(total // 20, 1)
        # Linear warm-up over the first 5% of the steps, then a cosine decay to 0.
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimiser,
            lambda step: min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))),
        )

    def resume(self, state_path: Path) -> tuple[int, list[float]]:
        """Load the last epoch checkpoint; the number of epochs done and their losses."""
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        self.encoder.load_state_dict(state["encoder"])
        self.heads.load_state_dict(state["heads"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.schedule.load_state_dict(state["schedule"])
        return int(state["epoch"]), list(state["history"])

    def save(self, state_path: Path, epochs_done: int, history: list[float]) -> None:
        """The checkpoint :meth:`resume` reads, written after every epoch."""
        torch.save(
            {
                "encoder": self.encoder.state_dict(),
                "heads": self.heads.state_dict(),
                "optimiser": self.optimiser.state_dict(),
                "schedule": self.schedule.state_dict(),
                "epoch": epochs_done,
                "history": history,
            },
            state_path,
        )

    def train_epoch(self, epoch: int, order: torch.Tensor) -> float:
        """One epoch over the images in ``order`` (batches of fewer than 2 images skipped: a contrastive batch
        needs a negative); the mean loss of its steps."""
        self.encoder.train()
        augment = torch.Generator().manual_seed(self.settings.seed * 1000 + epoch)  # same draws when an epoch reruns
        losses = []
        size = self.settings.batch_size
        for start in tqdm(range(0, len(order), size), desc=f"vision epoch {epoch + 1}", leave=False):
            index = order[start : start + size]
            if len(index) < 2:
                continue
            loss = self._batch_loss(index, augment)
            self.optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
            self.optimiser.step()
            self.schedule.step()
            losses.append(float(loss.detach()))
        return sum(losses) / max(len(losses), 1)

    def _batch_loss(self, index: torch.Tensor, augment: torch.Generator) -> torch.Tensor:
        """The weighted contrastive loss of the images at ``index``, plus their masked label loss when there are
        labels."""
        settings, heads, data = self.settings, self.heads, self.data
        batch = data.pixels[index].float()
        if settings.augment:
            batch = augment_batch(batch, settings, augment)
        hidden = self.encoder(pixel_values=batch.expand(-1, 3, -1, -1)).last_hidden_state
        loss = settings.contrastive_weight * _contrastive_loss(heads, hidden[:, 0], data.text_embeddings[index])
        if data.labels is not None:
            mask = data.label_mask[index]
            per_label = F.binary_cross_entropy_with_logits(
                heads.labels(_patch_mean(hidden)), data.labels[index], reduction="none"
            )
            loss = loss + (per_label * mask).sum() / mask.sum().clamp(min=1)
        return loss


def _contrastive_loss(heads: _VisionHeads, cls: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    image_vec = F.normalize(heads.image(cls), dim=-1)
    text_vec = F.normalize(heads.text(texts), dim=-1)
    logits = heads.logit_scale.exp().clamp(max=100) * image_vec @ text_vec.t()
    # Images that share a text (e.g. the same finding labels) are all correct matches.
    same = (texts.unsqueeze(1) == texts.unsqueeze(0)).all(-1).float()
    targets = same / same.sum(1, keepdim=True)
    return (
        torch.sum(-targets * logits.log_softmax(1), 1).mean()
        + torch.sum(-targets * logits.t().log_softmax(1), 1).mean()
    ) / 2


@torch.no_grad()
def label_scores(encoder: nn.Module, heads: nn.Module, pixels: torch.Tensor, *, batch_size: int = 32) -> torch.Tensor:
    """The label read-out's probabilities (N, L) for cached images, without augmentation."""
    encoder.eval()
    scores = []
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start : start + batch_size].float().expand(-1, 3, -1, -1)
        scores.append(torch.sigmoid(heads.labels(_patch_mean(encoder(pixel_values=batch).last_hidden_state))))
    return torch.cat(scores)


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
