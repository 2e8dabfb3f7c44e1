"""Stages 1 and 2 on transformers' Trainer: model set-up per stage, batching, MoLE's auxiliary loss, outputs.

Stage ``dpo`` reuses the model set-up, checkpoints and outputs here; its loss is in :mod:`radlvlm.training.dpo`.

What is ours is only what the Trainer cannot know: which parameters a stage trains, how an ``Example``
becomes a batch (prompt tokens are not learned from), the MoLE balance loss, and saving the result as a base
directory plus an adapter that ``radlvlm.model.load_pretrained`` reads. Checkpointing, resuming, mixed
precision, gradient accumulation and DDP/FSDP/DeepSpeed are the Trainer's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments, set_seed
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint

from radlvlm.errors import InputError
from radlvlm.model.lora import apply_lora
from radlvlm.model.modeling import RadLlavaForConditionalGeneration, load_model, save_model
from radlvlm.model.mole import MoLEAdapter, MoLEConfig, inject_mole, load_mole_adapter
from radlvlm.model.processor import RadProcessor
from radlvlm.training.recipe import ModelSpec, Recipe

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
CHECKPOINT_WEIGHTS = "radlvlm_state.safetensors"
BASE_DIR, ADAPTER_DIR = "base", "adapter"


class TrainingExample(Protocol):
    instruction: str
    response: str
    image: torch.Tensor | None
    task: str


class ExampleCollator:
    """Examples → one batch: chat-formatted prompt + response, labels only on the response and end-of-text."""

    def __init__(self, processor: RadProcessor) -> None:
        self.processor = processor

    def __call__(self, examples: Sequence[TrainingExample]) -> dict[str, torch.Tensor]:
        if not examples:
            raise InputError("an empty batch")
        processor = self.processor
        prompts = [processor.chat_prompt(e.instruction, image=e.image is not None) for e in examples]
        texts = [f"{p} {e.response}{processor.tokenizer.eos_token}" for p, e in zip(prompts, examples, strict=True)]
        images = [e.image for e in examples]
        batch = processor(texts, images, padding_side="right")
        prompt_lengths = processor(prompts, images, padding_side="right")["attention_mask"].sum(dim=1)
        labels = batch["input_ids"].clone()
        for row, length in enumerate(prompt_lengths.tolist()):
            labels[row, :length] = IGNORE_INDEX
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
        return {**dict(batch), "labels": labels}


class RadTrainer(Trainer):
    """The Trainer plus MoLE's load-balancing loss on every step, and checkpoints that resume exactly.

    Checkpoints hold the model's own state dict (adapter wrappers included) in one safetensors file, loaded
    back strictly. transformers 5 writes ``save_pretrained`` files under renamed keys that its Trainer's
    resume path does not map back, so a resumed run silently restarted from fresh weights; a strict load of
    our own file cannot do that.
    """

    def __init__(self, *args: Any, mole: MoLEAdapter | None = None, **kwargs: Any) -> None:
        training_args = kwargs.get("args")
        if training_args is not None and training_args.ddp_find_unused_parameters is None:
            # Under DDP every trainable weight is given a (zero) gradient on every step (compute_loss), so DDP need
            # not search the graph for unused ones, with or without activation checkpointing.
            training_args.ddp_find_unused_parameters = False
        super().__init__(*args, **kwargs)
        self.mole = mole
        self.balance_history: list[torch.Tensor] = []

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        directory = Path(output_dir or self.args.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        state = state_dict if state_dict is not None else self.model.state_dict()
        seen: set[int] = set()
        tensors = {}
        for key, tensor in state.items():
            tensor = tensor.detach().cpu().contiguous()
            if tensor.data_ptr() in seen:  # tied weights: safetensors stores each storage once
                tensor = tensor.clone()
            seen.add(tensor.data_ptr())
            tensors[key] = tensor
        save_file(tensors, str(directory / CHECKPOINT_WEIGHTS), metadata={"format": "pt"})
        torch.save(self.args, directory / TRAINING_ARGS_NAME)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        model = model or self.model
        path = Path(resume_from_checkpoint) / CHECKPOINT_WEIGHTS
        if not path.is_file():
            raise InputError(f"{resume_from_checkpoint}: not a radlvlm checkpoint (no {CHECKPOINT_WEIGHTS})")
        result = model.load_state_dict(load_file(str(path)), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise InputError(
                f"{resume_from_checkpoint}: checkpoint does not fit this recipe's model: "
                f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[:2]}), "
                f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})"
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
        """The Trainer's own loss (a mean over the global batch's tokens: ``num_items_in_batch`` counted over every
        rank and the loss scaled by their number, so it does not grow with world size) plus, with MoLE while
        training, the balance loss of this pass over its real tokens (padding left out)."""
        if self.mole is not None and model.training:
            loss, outputs = self._loss_with_balance(model, inputs, num_items_in_batch)
        else:
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if model.training and self.args.world_size > 1 and not self.args.ddp_find_unused_parameters:
            # Every trainable weight in the graph, with a zero weight. One rank's batch routes to some experts
            # only, and a text-only batch leaves the projector out; DDP must still find a gradient for each on
            # every rank. Asking DDP to search for unused parameters instead is what the Trainer turns off with
            # activation checkpointing, and a static graph is wrong when routing changes every step.
            loss = loss + self._every_trainable_weight_times_zero()
        return (loss, outputs) if return_outputs else loss

    def _loss_with_balance(self, model, inputs, num_items_in_batch):  # type: ignore[no-untyped-def]
        with self.mole.collect_balance_loss(inputs.get("attention_mask")) as balance:  # type: ignore[union-attr]
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if not balance.terms:
            # Reentrant activation checkpointing runs the forward without grad (and the recomputation outside
            # this block): no pass can give the balance term. The Trainer's default is non-reentrant.
            raise InputError(
                "MoLE's balance loss needs non-reentrant activation checkpointing: set "
                "training.gradient_checkpointing_kwargs: {use_reentrant: false}"
            )
        auxiliary = balance.auxiliary_loss()
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            # training_step then leaves the loss as it is (already a share of the accumulated batch's tokens);
            # the balance term is a mean per pass, so it takes its share of the accumulation here.
            auxiliary = auxiliary / self.current_gradient_accumulation_steps
        self.balance_history.append(balance.value().detach())
        return loss + auxiliary, outputs

    def _every_trainable_weight_times_zero(self) -> torch.Tensor:
        total = torch.zeros((), device=self.args.device)
        for parameter in self.model.parameters():
            if parameter.requires_grad:
                total = total + parameter.sum()
        return total * 0.0

    def balance_loss_over_ranks(self) -> float | None:
        """The mean balance loss of this run's training passes, over every rank (None without MoLE)."""
        if not self.balance_history:
            return None
        mean = torch.stack(self.balance_history).float().mean().reshape(1).to(self.args.device)
        return float(self.accelerator.reduce(mean, reduction="mean").item())

    def expert_usage_over_ranks(self) -> dict[str, dict[str, list[int]]]:
        """Tokens per expert counted while training, summed over every rank (each rank counts its own batch)."""
        if self.mole is None:
            return {}
        usage = self.mole.usage.counts
        summed: dict[str, dict[str, list[int]]] = {}
        for task in sorted(usage):  # the same order on every rank: each reduce is a collective
            summed[task] = {
                layer: self.accelerator.reduce(usage[task][layer].to(self.args.device), reduction="sum").tolist()
                for layer in sorted(usage[task])
            }
        return summed

    def trainable_checksums_by_rank(self) -> list[str]:
        """A fingerprint of the trained weights from each rank: DDP keeps them equal, and this shows it."""
        sums = torch.zeros(2, dtype=torch.float64)
        for parameter in self.model.parameters():
            if parameter.requires_grad:
                values = parameter.detach().double().cpu()
                sums += torch.stack([values.sum(), values.square().sum()])
        gathered = self.accelerator.gather(sums.to(self.args.device).reshape(1, 2)).reshape(-1, 2).cpu()
        return [f"{row[0].item():.15e}/{row[1].item():.15e}" for row in gathered]


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` / ``accelerate launch`` run, or the only process: the one that writes and answers."""
    return int(os.environ.get("RANK", "0")) == 0


class JsonlMetrics(TrainerCallback):
    """Every log line of the Trainer, appended to ``metrics.jsonl`` in the output directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        if logs and state.is_world_process_zero:
            record = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def fit_to_context(dataset: torch.utils.data.Dataset, processor: RadProcessor) -> tuple[torch.utils.data.Dataset, int]:
    """Drop examples longer than the model's context (counted, never silently truncated mid-answer).

    Uses ``dataset.text(i)`` / ``has_image(i)`` when the dataset offers them, so no image is read.
    """
    limit = processor.max_length
    if limit is None:
        return dataset, 0
    keep = []
    for index in range(len(dataset)):  # type: ignore[arg-type]
        if hasattr(dataset, "text"):
            instruction, response = dataset.text(index)
            has_image = dataset.has_image(index)
        else:
            example = dataset[index]
            instruction, response, has_image = example.instruction, example.response, example.image is not None
        text = f"{processor.chat_prompt(instruction, image=False)} {response}{processor.tokenizer.eos_token}"
        length = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        length += processor.num_image_tokens + 1 if has_image else 0  # <image> and its newline are in the prompt
        if length <= limit:
            keep.append(index)
    dropped = len(dataset) - len(keep)  # type: ignore[arg-type]
    if not keep:
        raise InputError(f"every one of {len(dataset)} examples is longer than the model's context of {limit}")  # type: ignore[arg-type]
    return (torch.utils.data.Subset(dataset, keep) if dropped else dataset), dropped


def prepare_model(
    spec: ModelSpec, stage: str, *, seed: int = 0
) -> tuple[torch.nn.Module, RadProcessor, MoLEAdapter | None]:
    """Load the base, freeze what the stage keeps fixed, attach the stage's adapter (initialised from ``seed``)."""
    set_seed(seed)  # adapter and router initialisation must not depend on what ran before in this process
    model = load_model(spec.base)
    processor = RadProcessor.from_pretrained(spec.base)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    mole: MoLEAdapter | None = None
    if spec.adapter == "mole":
        if spec.adapter_init:
            mole = load_mole_adapter(model, spec.adapter_init)
        else:
            mole = inject_mole(
                model,
                MoLEConfig(
                    num_experts=spec.num_experts,
                    r=spec.r,
                    alpha=spec.alpha,
                    dropout=spec.dropout,
                    target_modules=tuple(spec.target_modules),
                    balance_loss_weight=spec.balance_loss_weight,
                ),
            )
    elif spec.adapter == "lora" and spec.adapter_init:
        try:
            model = PeftModel.from_pretrained(model, spec.adapter_init, is_trainable=True)
        except (ValueError, RuntimeError, KeyError, OSError) as e:
            raise InputError(f"{spec.adapter_init}: LoRA adapter does not fit {spec.base} ({type(e).__name__})") from e
        if not spec.train_projector:  # a stage-2 adapter may carry the projector (modules_to_save)
            for name, parameter in model.named_parameters():
                if "modules_to_save" in name:
                    parameter.requires_grad_(False)
    elif spec.adapter == "lora":
        # peft saves the projector with the adapter (modules_to_save), so a resumed run keeps its progress.
        model = apply_lora(
            model,
            r=spec.r,
            alpha=spec.alpha,
            dropout=spec.dropout,
            target_modules=tuple(spec.target_modules),
            modules_to_save=["multi_modal_projector"] if spec.train_projector else None,
        )
    if spec.train_projector and spec.adapter != "lora":
        for parameter in _projector(model).parameters():
            parameter.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise InputError(f"stage {stage!r} with this model spec trains no parameter")
    return model, processor, mole


def _projector(model: torch.nn.Module) -> torch.nn.Module:
    for name, module in model.named_modules():
        if name.endswith("multi_modal_projector"):
            return module
    raise InputError("the model has no multi_modal_projector")


def dense_model(model: torch.nn.Module) -> RadLlavaForConditionalGeneration:
    """The trained model without adapter wrappers (projector updates kept), as a plain radlvlm model.

    Works from the state dict: MoLE's ``base_layer`` and peft's ``base_layer`` / ``modules_to_save`` wrappers
    are unwrapped and adapter tensors dropped, so LoRA is *not* merged (the adapter stays separate).
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    state = {}
    for key, tensor in inner.state_dict().items():
        if any(part in key for part in (".lora_", ".router.", ".original_module.")):
            continue
        # peft's wrappers and MoLE's (an MLP's ``base_mlp``, a projection's ``base_layer``) hold the base weights.
        key = key.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".").replace(".base_mlp.", ".")
        state[key] = tensor
    dense = RadLlavaForConditionalGeneration(inner.config)
    dense.load_state_dict(state, strict=True)
    return dense


def save_outputs(
    model: torch.nn.Module, processor: RadProcessor, mole: MoLEAdapter | None, out: Path
) -> dict[str, str]:
    """``out/base`` (a radlvlm model directory with the trained projector) and ``out/adapter`` (MoLE or LoRA)."""
    base = out / BASE_DIR
    save_model(dense_model(model), base)
    processor.save_pretrained(base)
    written = {"base": str(base)}
    if mole is not None:
        mole.save(out / ADAPTER_DIR)
        written["adapter"] = str(out / ADAPTER_DIR)
    elif hasattr(model, "peft_config"):
        model.save_pretrained(out / ADAPTER_DIR)
        written["adapter"] = str(out / ADAPTER_DIR)
    return written


def train(
    recipe: Recipe,
    train_dataset: torch.utils.data.Dataset,
    eval_dataset: torch.utils.data.Dataset | None = None,
    *,
    resume: bool = True,
) -> dict[str, Any]:
    """Run one stage. With ``resume`` (default) a run killed earlier continues from its last checkpoint."""
    model, processor, mole = prepare_model(recipe.model, recipe.stage, seed=recipe.training.seed)
    args = recipe.training
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if eval_dataset is None and args.eval_strategy != "no":
        raise InputError("training.eval_strategy asks for evaluation but there is no validation data")
    train_dataset, too_long = fit_to_context(train_dataset, processor)
    if too_long:
        logger.warning(
            "%d training example(s) longer than the context of %s were left out", too_long, processor.max_length
        )
    if eval_dataset is not None:
        eval_dataset, _ = fit_to_context(eval_dataset, processor)
    trainer = RadTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=ExampleCollator(processor),
        callbacks=[JsonlMetrics(out / "metrics.jsonl")],
        mole=mole,
    )
    # Log lines go to metrics.jsonl and the progress bar to stderr; stdout stays free for the summary.
    trainer.remove_callback(PrinterCallback)
    checkpoint = get_last_checkpoint(str(out)) if resume and out.is_dir() else None
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    started = time.perf_counter()
    with mole.routing_statistics("train") if mole is not None else contextlib.nullcontext():
        result = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - started
    summary: dict[str, Any] = {
        "recipe": recipe.name,
        "stage": recipe.stage,
        "resumed_from": checkpoint,
        "world_size": trainer.accelerator.num_processes,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "seconds": seconds,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "trainable_checksums_by_rank": trainer.trainable_checksums_by_rank(),
        "examples": len(train_dataset),  # type: ignore[arg-type]
        "examples_left_out_too_long": too_long,
    }
    if mole is not None:
        # Over every rank, from this run's passes (a resumed run counts the steps it ran).
        summary["expert_usage"] = trainer.expert_usage_over_ranks()
        summary["balance_loss"] = trainer.balance_loss_over_ranks()
    if is_main_process():  # rank 0 writes the outputs and the summary; the others took part in the reductions
        summary.update(save_outputs(trainer.model, processor, mole, out))
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    # Every rank leaves together, after rank 0 has written: a rank that exited while another still used the group
    # once died in gloo's threads (SIGABRT, "terminate called without an active exception") after a finished run.
    # The group is not destroyed here: in torch 2.13 ProcessGroupGloo's destructor joins a thread that waits for
    # the GIL the destroying thread holds, and hangs.
    trainer.accelerator.wait_for_everyone()
    return summary
