"""Stage ``dpo``: Direct Preference Optimization of the stage-2 adapter on clinical-safety preference pairs.

Why our own loss and not trl's ``DPOTrainer`` (trl 1.16): tried with ``RadProcessor`` as a ``ProcessorMixin`` on
the tiny stage-2 MoLE fixture of the tests (docs/training.md gives the figures). trl trains our model and follows our
run once given an explicit reference and a subclass overriding ``compute_loss``, ``_save`` and
``_load_from_checkpoint``, which are what this module already owns. Measured reasons that remain:

* the reference: with no ``ref_model`` trl reloads the base *without* its MoLE adapter (step-1 rewards not 0), and
  ``precompute_ref_log_probs=True`` is refused for vision datasets, so it holds a second full model and runs a
  reference forward every step; here the reference is computed once per pair and cached;
* resume: trl's checkpoints come back with every MoLE tensor skipped under a warning, so a resumed run silently
  restarts the experts; ``RadTrainer``'s strict ``radlvlm_state.safetensors`` resumes exactly;
* MoE balancing is only read from ``output_router_logits`` in the model config and refuses our model; MoLE's Switch
  loss would be dropped.

So the loss is trl's sigmoid DPO (Rafailov et al. 2023; ``label_smoothing`` gives cDPO, ``rpo_alpha`` adds the
chosen answers' NLL as in RPO), inside :class:`~radlvlm.training.trainer.RadTrainer` (same checkpoints, same
resume, same outputs), with trl's metric names (``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``).

The reference is the stage-2 model *with* its adapter. It is the policy at step 0, so its log-probabilities are
computed once per pair by the freshly loaded model (eval mode, no gradient, accelerate's autocast) before the
first step, and cached in the output directory (``reference_logps.json``, keyed by a fingerprint of pairs and
model files). No second model is held in memory, and a resumed run uses the same numbers. Dropout is switched
off, as trl does by default, so that policy and reference agree at step 0 (every reward starts at 0).

Only the adapter (MoLE experts and routers, or LoRA) trains, plus the projector with ``model.train_projector``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint

from radlvlm.errors import InputError
from radlvlm.model.pretrained import load_pretrained
from radlvlm.model.processor import RadProcessor
from radlvlm.training.preferences import (
    COUNTS_FILE,
    PreferencePair,
    PreferenceSet,
    PreferenceSettings,
    build_preferences,
    check_no_leakage,
    model_sampler,
    read_preferences,
    write_preferences,
)
from radlvlm.training.recipe import Recipe
from radlvlm.training.sources import sources_from_config
from radlvlm.training.trainer import JsonlMetrics, RadTrainer, prepare_model, save_outputs

__all__ = [
    "DPOTrainer",
    "PreferenceCollator",
    "PreferenceDataset",
    "dpo_loss",
    "dry_run_dpo",
    "preference_logps",
    "prepare_preferences",
    "train_dpo",
]

logger = logging.getLogger(__name__)

REFERENCE_FILE = "reference_logps.json"
SETTINGS_FILE = "settings.json"


# --------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class PreferenceItem:
    """One pair as the collator consumes it: texts, the image pixels, and the reference log-probabilities."""

    pair_id: str
    instruction: str
    chosen: str
    rejected: str
    image: torch.Tensor | None
    ref_chosen: float | None = None
    ref_rejected: float | None = None


class PreferenceDataset(torch.utils.data.Dataset):
    """Pairs (images read on access) with, once computed, each pair's reference log-probabilities."""

    def __init__(self, pairs: Sequence[PreferencePair]) -> None:
        self.pairs = list(pairs)
        self.reference: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> PreferenceItem:
        pair = self.pairs[index]
        image = pair.image.load() if pair.image is not None else None
        ref = self.reference.get(pair.pair_id)
        return PreferenceItem(
            pair.pair_id,
            pair.instruction,
            pair.chosen,
            pair.rejected,
            image,
            ref[0] if ref is not None else None,
            ref[1] if ref is not None else None,
        )


class PreferenceCollator:
    """Pairs → one batch of ``2B`` rows (chosen rows, then rejected rows), formatted exactly as stage 2 trained.

    ``completion_mask`` marks the answer and end-of-text tokens (what the log-probabilities sum over); prompt
    and padding are 0. The reference log-probabilities ride along when the items carry them.
    """

    def __init__(self, processor: RadProcessor) -> None:
        self.processor = processor

    def prompt_length(self, prompt: str, has_image: bool) -> int:
        """Tokens of a formatted prompt once ``<image>`` is expanded (no image is transformed for this)."""
        ids = self.processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        images = sum(1 for token in ids if token == self.processor.image_token_id) if has_image else 0
        return len(ids) + images * (self.processor.num_image_tokens - 1)

    def __call__(self, items: Sequence[PreferenceItem]) -> dict[str, torch.Tensor]:
        if not items:
            raise InputError("an empty batch")
        processor = self.processor
        eos = processor.tokenizer.eos_token
        prompts = [processor.chat_prompt(i.instruction, image=i.image is not None) for i in items]
        # The same "prompt answer<eos>" text as ExampleCollator, so DPO scores what stage 2 learnt to write.
        texts = [f"{p} {i.chosen}{eos}" for p, i in zip(prompts, items, strict=True)]
        texts += [f"{p} {i.rejected}{eos}" for p, i in zip(prompts, items, strict=True)]
        images = [i.image for i in items] * 2
        batch = processor(texts, images, padding_side="right")
        lengths = [self.prompt_length(p, i.image is not None) for p, i in zip(prompts, items, strict=True)] * 2
        mask = batch["attention_mask"].clone()
        for row, length in enumerate(lengths):
            mask[row, :length] = 0
        out = {**dict(batch), "completion_mask": mask}
        if all(i.ref_chosen is not None for i in items):
            out["ref_chosen_logps"] = torch.tensor([i.ref_chosen for i in items], dtype=torch.float32)
            out["ref_rejected_logps"] = torch.tensor([i.ref_rejected for i in items], dtype=torch.float32)
        return out


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum over each row's completion tokens of log p(token | everything before it)."""
    logits = logits[:, :-1].float()
    labels = input_ids[:, 1:]
    mask = completion_mask[:, 1:].to(logits.dtype)
    # gather - logsumexp: the log-softmax of the taken token without materialising the whole distribution twice.
    taken = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (taken * mask).sum(-1)


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO (cDPO with ``label_smoothing``): per-pair losses, chosen rewards and rejected rewards."""
    chosen_rewards = beta * (chosen - ref_chosen)
    rejected_rewards = beta * (rejected - ref_rejected)
    logits = chosen_rewards - rejected_rewards
    losses = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def _forward_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
    keys = ("input_ids", "attention_mask", "pixel_values")
    outputs = model(**{k: batch[k] for k in keys if k in batch}, use_cache=False)
    return sequence_logps(outputs.logits, batch["input_ids"], batch["completion_mask"]), outputs


# --------------------------------------------------------------------------------------------- trainer
class DPOTrainer(RadTrainer):
    """``RadTrainer`` (strict checkpoints, MoLE balance loss) with the DPO loss and trl-style reward metrics."""

    loss_is_scaled_for_ga = False  # a mean over pairs: the Trainer divides by the accumulation steps

    def __init__(self, *args: Any, beta: float, label_smoothing: float = 0.0, rpo_alpha: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.beta, self.label_smoothing, self.rpo_alpha = beta, label_smoothing, rpo_alpha
        self.model_accepts_loss_kwargs = False
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
        if "ref_chosen_logps" not in inputs:
            raise InputError("a DPO batch without reference log-probabilities (they are computed before training)")
        collecting = (
            self.mole.collect_balance_loss(inputs.get("attention_mask"))
            if self.mole is not None and model.training
            else nullcontext()
        )
        with collecting as balance:
            logps, outputs = _forward_logps(model, inputs)
        chosen, rejected = logps.chunk(2)
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            chosen,
            rejected,
            inputs["ref_chosen_logps"],
            inputs["ref_rejected_logps"],
            beta=self.beta,
            label_smoothing=self.label_smoothing,
        )
        loss = losses.mean()
        mode = "train" if model.training else "eval"
        if self.rpo_alpha > 0:
            tokens = inputs["completion_mask"][: len(chosen), 1:].sum(-1).clamp(min=1)
            nll = (-chosen / tokens).mean()
            loss = loss + self.rpo_alpha * nll
            self._metrics[mode]["nll_loss"].append(nll.item())
        if balance is not None:
            loss = loss + balance.auxiliary_loss()
        metrics = self._metrics[mode]
        metrics["rewards/chosen"].append(chosen_rewards.mean().item())
        metrics["rewards/rejected"].append(rejected_rewards.mean().item())
        metrics["rewards/margins"].append((chosen_rewards - rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append((chosen_rewards > rejected_rewards).float().mean().item())
        metrics["logps/chosen"].append(chosen.detach().mean().item())
        metrics["logps/rejected"].append(rejected.detach().mean().item())
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):  # type: ignore[no-untyped-def]
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        averaged = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        prefix = "eval_" if mode == "eval" else ""
        logs = {**logs, **{f"{prefix}{key}": value for key, value in averaged.items()}}
        self._metrics[mode].clear()
        super().log(logs, start_time)


# --------------------------------------------------------------------------------------------- reference
@torch.no_grad()
def preference_logps(
    model: torch.nn.Module,
    processor: RadProcessor,
    dataset: torch.utils.data.Dataset,
    *,
    batch_size: int = 8,
    context: Any = None,
    progress: bool = False,
) -> dict[str, tuple[float, float]]:
    """``{pair_id: (log p(chosen), log p(rejected))}`` under ``model`` (eval mode, no gradient)."""
    collator = PreferenceCollator(processor)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=lambda x: x)
    if progress:
        loader = tqdm(loader, desc="reference log-probabilities", file=sys.stderr)  # type: ignore[assignment]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, tuple[float, float]] = {}
    try:
        for items in loader:
            batch = {k: v.to(device) for k, v in collator(items).items()}
            with context() if context is not None else contextlib.nullcontext():
                logps, _ = _forward_logps(model, batch)
            chosen, rejected = logps.float().cpu().chunk(2)
            for item, c, r in zip(items, chosen.tolist(), rejected.tolist(), strict=True):
                out[item.pair_id] = (c, r)
    finally:
        model.train(was_training)
    return out


def _file_identity(path: Path, *, content: bool) -> list[Any]:
    """A file's name and sha256 (``content``) or size and mtime (large base weights are not read)."""
    if not path.is_file():
        return [path.name, None]
    if content:
        return [path.name, hashlib.sha256(path.read_bytes()).hexdigest()]
    stat = path.stat()
    return [path.name, stat.st_size, int(stat.st_mtime)]


def model_identity(recipe: Recipe) -> str:
    """A fingerprint of the reference model's files (adapter hashed, base by size and time)."""
    base, adapter = Path(recipe.model.base), Path(str(recipe.model.adapter_init))
    parts = [_file_identity(p, content=p.suffix == ".json") for p in sorted(base.glob("*")) if p.is_file()]
    parts += [_file_identity(p, content=True) for p in sorted(adapter.glob("*")) if p.is_file()]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def _pairs_identity(pairs: Sequence[PreferencePair]) -> str:
    digest = hashlib.sha256()
    for p in pairs:
        digest.update(json.dumps(p.to_dict(), sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()


def _reference_logps(
    trainer: DPOTrainer,
    processor: RadProcessor,
    datasets: dict[str, PreferenceDataset],
    cache: Path,
    identity: str,
    batch_size: int,
) -> None:
    """Fill each dataset's reference log-probabilities from ``cache``, or compute them now (step 0) and cache."""
    fingerprint = {
        name: hashlib.sha256(f"{identity}:{_pairs_identity(ds.pairs)}".encode()).hexdigest()
        for name, ds in datasets.items()
    }
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    for name, dataset in datasets.items():
        entry = stored.get(name, {})
        if entry.get("fingerprint") == fingerprint[name]:
            dataset.reference = {k: (float(v[0]), float(v[1])) for k, v in entry["logps"].items()}
            logger.info("reference log-probabilities for %s read from %s", name, cache)
            continue
        started = time.perf_counter()
        if next(trainer.model.parameters()).device != trainer.args.device:
            # DeepSpeed and FSDP place the model only inside train(); the reference pass runs on the accelerator.
            trainer.model.to(trainer.args.device)
        dataset.reference = preference_logps(
            trainer.model,
            processor,
            dataset,
            batch_size=batch_size,
            context=trainer.accelerator.autocast,  # the mixed precision training steps run under
            progress=not trainer.args.disable_tqdm,
        )
        stored[name] = {"fingerprint": fingerprint[name], "logps": dataset.reference}
        logger.info(
            "reference log-probabilities for %d %s pairs in %.1f s", len(dataset), name, time.perf_counter() - started
        )
        if trainer.is_world_process_zero():  # every rank computes the same numbers; one writes them
            tmp = cache.with_name(cache.name + ".tmp")
            tmp.write_text(json.dumps(stored) + "\n")
            tmp.replace(cache)


# --------------------------------------------------------------------------------------------- preferences
def _settings_record(recipe: Recipe) -> dict[str, Any]:
    settings = PreferenceSettings.from_dict(recipe.data.preferences)
    return {"seed": recipe.seed, "settings": settings.to_dict(), "sources": recipe.data.sources}


def prepare_preferences(recipe: Recipe, *, progress: bool = True, dry_run: bool = False) -> PreferenceSet:
    """The recipe's preference pairs: read from ``data.preferences.dir``, or built there first.

    Building draws ``model_sample`` rejects from the stage-2 model (``model.base`` + ``model.adapter_init``);
    drafts are cached batch by batch in the folder, so an interrupted build resumes. A folder built with other
    settings, seed or sources is refused rather than mixed with this recipe's pairs. ``dry_run`` builds in memory
    without model samples and writes nothing.
    """
    preferences = recipe.data.preferences or {}
    directory = Path(str(preferences["dir"]))
    settings = PreferenceSettings.from_dict(preferences)
    record = _settings_record(recipe)
    marker = directory / SETTINGS_FILE
    if (directory / COUNTS_FILE).is_file():
        built = json.loads(marker.read_text()) if marker.is_file() else None
        if built is not None and not recipe.data.sources:  # a recipe may use a built folder without its sources
            built.pop("sources", None)
            record.pop("sources")
        if built != json.loads(json.dumps(record)):
            raise InputError(
                f"{directory}: preference pairs built with other settings, seed or sources than this recipe; "
                "remove the folder or point data.preferences.dir at another one"
            )
        pairs = {split: read_preferences(directory, split) for split in settings.splits}
        check_no_leakage(pairs)
        return PreferenceSet(pairs, json.loads((directory / COUNTS_FILE).read_text()))

    sources = sources_from_config(recipe.data.sources)
    sampler = None
    if not dry_run and settings.model_samples is not None:
        args = recipe.training
        dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
        model, processor = load_pretrained(recipe.model.base, adapter=recipe.model.adapter_init, dtype=dtype)
        model.to(args.device).eval()  # the training device: a 7B model is not sampled on a CPU
        sampler = model_sampler(model, processor, settings.model_samples)
    result = build_preferences(
        sources, settings, seed=recipe.seed, sampler=sampler, cache_dir=directory, progress=progress
    )
    if not dry_run:
        directory.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(record, indent=2) + "\n")
        write_preferences(result, directory)
    return result


def dry_run_dpo(recipe: Recipe) -> dict[str, Any]:
    """Validate the data and count the pairs without sampling, training or writing anything."""
    directory = Path(str((recipe.data.preferences or {})["dir"]))
    built = (directory / COUNTS_FILE).is_file()
    result = prepare_preferences(recipe, progress=False, dry_run=True)
    return {
        "recipe": recipe.name,
        "stage": recipe.stage,
        "preferences": str(directory),
        "built": built,
        "note": None if built else "model_sample pairs are drawn from the stage-2 model when training starts",
        "splits": {split: counts for split, counts in result.counts["splits"].items()},
    }


# --------------------------------------------------------------------------------------------- training
def _fit_pairs(pairs: Sequence[PreferencePair], processor: RadProcessor) -> tuple[list[PreferencePair], int]:
    """Pairs whose prompt plus longer answer fits the context (counted, never truncated)."""
    limit = processor.max_length
    if limit is None:
        return list(pairs), 0
    collator = PreferenceCollator(processor)
    eos = processor.tokenizer.eos_token
    keep = []
    for pair in pairs:
        prompt = processor.chat_prompt(pair.instruction, image=pair.image is not None)
        longest = 0
        for answer in (pair.chosen, pair.rejected):
            text = f"{prompt} {answer}{eos}"
            longest = max(longest, collator.prompt_length(text, pair.image is not None))
        if longest <= limit:
            keep.append(pair)
    return keep, len(pairs) - len(keep)


def _disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def train_dpo(
    recipe: Recipe,
    *,
    resume: bool = True,
    preferences: PreferenceSet | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Run stage ``dpo``: pairs (read or built), reference log-probabilities, then the Trainer.

    With ``resume`` (default) a run killed earlier continues from its last checkpoint. Writes ``out/base``,
    ``out/adapter``, ``metrics.jsonl`` and ``summary.json`` like the other stages.
    """
    if recipe.stage != "dpo":
        raise InputError(f"train_dpo runs stage 'dpo', not {recipe.stage!r}")
    preferences = preferences or prepare_preferences(recipe, progress=progress)
    args = recipe.training
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, processor, mole = prepare_model(recipe.model, recipe.stage, seed=args.seed)
    _disable_dropout(model)
    datasets, too_long = _preference_datasets(recipe, preferences, processor)
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("eval"),
        data_collator=PreferenceCollator(processor),
        callbacks=[JsonlMetrics(out / "metrics.jsonl"), *callbacks],
        mole=mole,
        beta=recipe.dpo.beta,
        label_smoothing=recipe.dpo.label_smoothing,
        rpo_alpha=recipe.dpo.rpo_alpha,
    )
    trainer.remove_callback(PrinterCallback)
    # The model is still the stage-2 model here (a checkpoint is loaded inside train()): the reference.
    started = time.perf_counter()
    _reference_logps(
        trainer,
        processor,
        datasets,
        out / REFERENCE_FILE,
        model_identity(recipe),
        recipe.dpo.precompute_batch_size or args.per_device_eval_batch_size,
    )
    reference_seconds = time.perf_counter() - started
    checkpoint = get_last_checkpoint(str(out)) if resume else None
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - started
    written = save_outputs(trainer.model, processor, mole, out)
    summary = {
        "recipe": recipe.name,
        "stage": recipe.stage,
        "resumed_from": checkpoint,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "seconds": seconds,
        "reference_seconds": reference_seconds,
        **_run_counts(recipe, trainer, datasets, too_long),
        **written,
    }
    if mole is not None:
        summary["expert_usage"] = mole.statistics()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _preference_datasets(
    recipe: Recipe, preferences: PreferenceSet, processor: RadProcessor
) -> tuple[dict[str, PreferenceDataset], int]:
    """The training pairs that fit the context (and the evaluation split's, when the recipe evaluates), and how
    many training pairs were too long; the others are left out, never truncated (:func:`_fit_pairs`)."""
    train_pairs, too_long = _fit_pairs(preferences.pairs["train"], processor)
    if not train_pairs:
        raise InputError("no training pair fits the model's context")
    if too_long:
        logger.warning("%d training pair(s) longer than the context of %s left out", too_long, processor.max_length)
    datasets = {"train": PreferenceDataset(train_pairs)}
    if recipe.training.eval_strategy != "no":
        split = recipe.data.validation_split
        if split not in preferences.pairs:
            raise InputError(f"training.eval_strategy asks for evaluation but there are no {split!r} pairs")
        datasets["eval"] = PreferenceDataset(_fit_pairs(preferences.pairs[split], processor)[0])
    return datasets, too_long


def _run_counts(
    recipe: Recipe, trainer: DPOTrainer, datasets: dict[str, PreferenceDataset], too_long: int
) -> dict[str, Any]:
    """The summary's account of what trained and on what: parameters, pairs (by dataset and kind), the last
    logged rewards and evaluation figures, and the DPO settings."""
    last = {k: v for line in trainer.state.log_history for k, v in line.items() if k.startswith(("rewards/", "eval_"))}
    return {
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "pairs": {name: len(ds) for name, ds in datasets.items()},
        "pairs_left_out_too_long": too_long,
        "pairs_by_kind": {name: _kinds(ds.pairs) for name, ds in datasets.items()},
        "last_logged": last,
        "dpo": {
            "beta": recipe.dpo.beta,
            "label_smoothing": recipe.dpo.label_smoothing,
            "rpo_alpha": recipe.dpo.rpo_alpha,
        },
    }


def _kinds(pairs: Sequence[PreferencePair]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p.kind] = counts.get(p.kind, 0) + 1
    return dict(sorted(counts.items()))
