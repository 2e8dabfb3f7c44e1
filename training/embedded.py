"""The embedded default model's recipe, end to end, from the public data in a ``shared/data``-style folder.

    radlvlm embedded build --data ../shared/data --work runs/embedded [--scale default]

Steps (each resumable: a finished step leaves ``done.json`` and is skipped when the command runs again; an
interrupted step resumes from its checkpoints):

1. a byte-level BPE tokenizer trained on the IU-Xray training reports (and the NIH label words);
2. a small Llama-architecture LM pretrained on those reports;
3. a small DINOv2-style vision encoder trained on the NIH ChestX-ray14 and COVID-19 training radiographs (512 px
   where the source has them) with two losses: the NIH finding labels (COVID diagnoses as "Pneumonia") read from
   its patch tokens, and the contrast against the LM's embedding of their label/notes text; its per-label AUROC
   on held-out NIH images is recorded;
4. assembly into a radlvlm model (visual tokens pooled for a short prefill);
5. stage 1 (align: projector only) on image → report pairs: NIH label-templated targets, COVID notes, and IU
   reports paired with NIH images by matching labels (pseudo-pairs);
6. stage 2 (instruct: MoLE experts + projector) on drafting, SIMPLE/COMPLEX error checking over many varied
   errored copies of each IU report, and checks of label-derived reports against NIH images;
7. calibration of the SIMPLE verdicts on validation data (:mod:`radlvlm.training.calibrate`);
8. validation next to the evaluation baselines, with the router's per-task expert usage
   (:mod:`radlvlm.training.embedded_eval`, into ``eval/summary.json``).

``scripts/train-embedded.sh`` runs this, then DPO alignment (``recipes/dpo-embedded.yaml``) and its
before/after evaluation, and installs the better model into the package (:mod:`radlvlm.training.ship`).

What the data allows is limited and the model card says so: the IU reports have no images here, so image
conditioning is learnt from 842 NIH thumbnails (mostly 64 x 64) and ~200 COVID radiographs through label-level
pairs — the model can only associate coarse findings with images, it cannot read fine detail.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from sklearn.metrics import roc_auc_score
from transformers import (
    AutoModel,
    Dinov2Config,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    TrainingArguments,
)

from radlvlm.errors import InputError
from radlvlm.imaging import ImageTransformConfig
from radlvlm.model import load_pretrained
from radlvlm.model.tokenizer import train_tokenizer
from radlvlm.training.calibrate import calibrate_checks
from radlvlm.training.cli import build_datasets
from radlvlm.training.embedded_eval import evaluate
from radlvlm.training.pretrain import (
    VisionSettings,
    assemble,
    embed_texts,
    label_scores,
    load_image_tensors,
    pretrain_language_model,
    train_vision_encoder,
)
from radlvlm.training.pseudo_pairs import NIH_TO_CHEXPERT, LabelMatchedPairs
from radlvlm.training.recipe import recipe_from_dict
from radlvlm.training.sources import NIH_LABELS, CovidSource, IUXraySource, NIHSource, Record
from radlvlm.training.trainer import train

STEPS = ("tokenizer", "lm", "vision", "assembled", "stage1", "stage2", "calibrate", "eval")


@dataclass(frozen=True)
class Scale:
    vocab_size: int
    lm_hidden: int
    lm_layers: int
    lm_heads: int
    lm_steps: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    image_size: int
    pool: int
    vision_epochs: int
    stage1_steps: int
    stage2_steps: int
    batch_size: int
    experts: int
    rank: int
    limit: int | None  # per-source record cap (tiny scale for tests)


SCALES = {
    # A few minutes on 2 CPU cores; for tests of the recipe itself.
    "tiny": Scale(512, 64, 2, 2, 20, 32, 2, 2, 56, 2, 2, 6, 6, 4, 2, 2, 24),
    # The shipped model: about 2 hours on 2 CPU cores, weights < 40 MB in float16.
    "default": Scale(4096, 256, 4, 4, 3000, 192, 4, 3, 224, 8, 15, 1200, 3000, 8, 4, 8, None),
}


def _done(step_dir: Path) -> dict[str, Any] | None:
    marker = step_dir / "done.json"
    return json.loads(marker.read_text()) if marker.is_file() else None


def _finish(step_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    step_dir.mkdir(parents=True, exist_ok=True)
    (step_dir / "done.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info


def _sources(data: Path, scale: Scale) -> dict[str, Any]:
    iu = IUXraySource(data / "iu_xray", limit=scale.limit)
    nih = NIHSource(data / "nih_cxr14" / "manifest.jsonl", limit=scale.limit)
    covid = CovidSource(data / "covid_chestxray" / "manifest.jsonl", limit=scale.limit)
    pairs = LabelMatchedPairs(nih, iu, k=2, seed=0)
    return {"iu": iu, "nih": nih, "covid": covid, "pairs": pairs}


def build_embedded(
    data: Path,
    work: Path,
    *,
    scale_name: str = "default",
    seed: int = 0,
    compare_lora: bool = False,
    lm_from: Path | None = None,
    until: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) every step; returns each step's summary. ``compare_lora`` also trains and evaluates the
    plain-LoRA stage 2 (``stage2_lora``, ``eval_lora``) for the MoLE-vs-LoRA comparison. ``lm_from`` (a model
    directory this recipe made before, such as the shipped default's ``base``) supplies steps 1 and 2; ``until``
    (a name of :data:`STEPS`) stops after that step."""
    if until is not None and until not in STEPS:
        raise InputError(f"unknown step {until!r}; steps: {', '.join(STEPS)}")
    if scale_name not in SCALES:
        raise InputError(f"unknown scale {scale_name!r}; known: {sorted(SCALES)}")
    for folder in ("iu_xray", "nih_cxr14", "covid_chestxray"):
        if not (data / folder).is_dir():
            raise InputError(f"{data / folder}: missing (the recipe needs the IU-Xray, NIH and COVID-19 folders)")
    scale = SCALES[scale_name]
    work.mkdir(parents=True, exist_ok=True)
    sources = _sources(data, scale)
    summary: dict[str, Any] = {"scale": asdict(scale), "seed": seed}
    if lm_from is not None:
        _reuse_language_model(lm_from, work)

    summary["tokenizer"] = _tokenizer_step(work / "tokenizer", sources, scale)
    if until == "tokenizer":
        return summary
    tokenizer = PreTrainedTokenizerFast.from_pretrained(work / "tokenizer")
    summary["lm"] = _language_model_step(work / "lm", sources, scale, tokenizer, seed)
    if until == "lm":
        return summary
    lm = LlamaForCausalLM.from_pretrained(work / "lm" / "final")
    summary["vision"] = _vision_step(work / "vision", sources, scale, tokenizer, lm, seed)
    if until == "vision":
        return summary
    vision = AutoModel.from_pretrained(work / "vision" / "final")
    summary["assembled"] = _assembly_step(work / "assembled", vision, lm, tokenizer, scale, seed)
    if until == "assembled":
        return summary

    # 5 and 6. the two stages, through the same recipe machinery a hospital uses
    summary["stage1"] = _align_stage(work, data, scale, seed)
    if until == "stage1":
        return summary
    summary["stage2"] = _instruct_stage(work, "stage2", "mole", data, scale, seed)
    if until == "stage2":
        return summary
    summary["calibrate"] = _calibrate(work, "calibrate", "stage2", data, scale, seed)
    if until == "calibrate":
        return summary
    summary["eval"] = _evaluate(work, "eval", "stage2", data, scale, seed)
    if compare_lora:
        # The baseline the sparse experts must beat: one plain peft LoRA of the same rank as one expert, so the
        # compute per token is the same; same data, steps and learning rate.
        summary["stage2_lora"] = _instruct_stage(work, "stage2_lora", "lora", data, scale, seed)
        summary["calibrate_lora"] = _calibrate(work, "calibrate_lora", "stage2_lora", data, scale, seed)
        summary["eval_lora"] = _evaluate(work, "eval_lora", "stage2_lora", data, scale, seed)
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _tokenizer_step(step: Path, sources: dict[str, Any], scale: Scale) -> dict[str, Any]:
    """1. A byte-level BPE tokenizer trained on the IU training reports and the NIH label words (which the
    label-templated drafting targets use); skipped when done."""
    if (info := _done(step)) is not None:
        return info
    started = time.perf_counter()
    texts = list(sources["iu"].report_texts("train"))

    texts += [f"IMPRESSION: {label}." for label in NIH_TO_CHEXPERT]
    tokenizer = train_tokenizer(texts, vocab_size=scale.vocab_size, min_frequency=2)
    tokenizer.save_pretrained(step)
    return _finish(step, {"vocab": len(tokenizer), "texts": len(texts), "seconds": time.perf_counter() - started})


def _language_model_step(
    step: Path, sources: dict[str, Any], scale: Scale, tokenizer: PreTrainedTokenizerFast, seed: int
) -> dict[str, Any]:
    """2. A small Llama-architecture LM pretrained from scratch on the IU training reports (resumes from its
    Trainer checkpoints); skipped when done."""
    if (info := _done(step)) is not None:
        return info

    started = time.perf_counter()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=scale.lm_hidden,
        intermediate_size=int(scale.lm_hidden * 8 / 3) // 8 * 8,
        num_hidden_layers=scale.lm_layers,
        num_attention_heads=scale.lm_heads,
        num_key_value_heads=scale.lm_heads,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    args = TrainingArguments(
        output_dir=str(step / "checkpoints"),
        max_steps=scale.lm_steps,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        warmup_steps=0.05,
        lr_scheduler_type="cosine",
        weight_decay=0.01,
        logging_steps=50,
        save_steps=max(scale.lm_steps // 4, 1),
        save_total_limit=1,
        report_to="none",
        use_cpu=True,
        seed=seed,
        disable_tqdm=False,
    )
    lm, stats = pretrain_language_model(list(sources["iu"].report_texts("train")), tokenizer, config, args)
    lm.save_pretrained(step / "final")
    return _finish(step, {**stats, "parameters": lm.num_parameters(), "seconds": time.perf_counter() - started})


def _vision_step(
    step: Path,
    sources: dict[str, Any],
    scale: Scale,
    tokenizer: PreTrainedTokenizerFast,
    lm: LlamaForCausalLM,
    seed: int,
) -> dict[str, Any]:
    """3. The vision encoder, trained on the training radiographs against their finding labels and the LM's
    embedding of their text, with its per-label AUROC on held-out NIH images; skipped when done."""
    if (info := _done(step)) is not None:
        return info

    started = time.perf_counter()
    examples = vision_examples(sources)
    train = [e for e in examples if e.split == "train"]
    vision_config = Dinov2Config(
        hidden_size=scale.vision_hidden,
        num_hidden_layers=scale.vision_layers,
        num_attention_heads=scale.vision_heads,
        image_size=scale.image_size,
        patch_size=14,
        mlp_ratio=4,
    )
    embeddings = embed_texts([e.text for e in train], tokenizer, lm)
    settings = VisionSettings(
        epochs=scale.vision_epochs, batch_size=32, learning_rate=5e-4, image_size=scale.image_size, seed=seed
    )
    pixels = load_image_tensors([e.image for e in train], scale.image_size)
    encoder, heads, stats = train_vision_encoder(
        pixels,
        embeddings,
        vision_config,
        step / "state",
        settings,
        labels=torch.stack([e.labels for e in train]),
        label_mask=torch.stack([e.mask for e in train]),
    )
    encoder.save_pretrained(step / "final")
    torch.save(heads.labels.state_dict(), step / "final" / "label_head.pt")
    held_out = {
        split: label_auroc(encoder, heads, [e for e in examples if e.split == split and e.source == "nih"], scale)
        for split in ("validation", "test")
    }
    return _finish(
        step,
        {
            **stats,
            "images": len(train),
            "parameters": sum(p.numel() for p in encoder.parameters()),
            "label_auroc": held_out,
            "seconds": time.perf_counter() - started,
        },
    )


def _assembly_step(
    step: Path, vision: Any, lm: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, scale: Scale, seed: int
) -> dict[str, Any]:
    """4. The encoder and LM assembled into a radlvlm model (visual tokens pooled for a short prefill); skipped
    when done."""
    if (info := _done(step)) is not None:
        return info

    image_config = ImageTransformConfig(size=scale.image_size, resize_mode="pad", channels=3, mean=(0.5,), std=(0.5,))
    assemble(vision, lm, tokenizer, step / "model", image_config=image_config, visual_token_pool=scale.pool, seed=seed)
    return _finish(step, {"model": str(step / "model")})


def _align_stage(work: Path, data: Path, scale: Scale, seed: int) -> dict[str, Any]:
    """5. Stage 1 (projector only) on image-to-report pairs, from the assembled model."""
    return _stage(
        work,
        "stage1",
        "align",
        work / "assembled" / "model",
        data,
        scale,
        seed,
        {"draft": 1.0, "check_simple": 0.0, "check_complex": 0.0},
        scale.stage1_steps,
        1e-3,
    )


def _instruct_stage(work: Path, name: str, adapter: str, data: Path, scale: Scale, seed: int) -> dict[str, Any]:
    """6. Stage 2 (``adapter``: MoLE, or the plain LoRA it is compared with) on stage 1's model."""
    return _stage(
        work,
        name,
        "instruct",
        work / "stage1" / "run" / "base",
        data,
        scale,
        seed,
        # Text checks over many varied, errored copies of each IU report (check_variants), and checks of
        # label-derived reports against NIH images.
        {"draft": 1.0, "check_simple": 2.0, "check_complex": 0.5, "check_image": 0.5, "check_variants": 8},
        scale.stage2_steps,
        3e-4,
        adapter=adapter,
    )


@dataclass(frozen=True)
class VisionExample:
    """One radiograph for the vision step: lazy pixels, its text, its NIH label vector and which labels count."""

    image: Any
    text: str
    labels: torch.Tensor
    mask: torch.Tensor
    split: str
    source: str


# COVID-19 collection diagnoses that are an infectious or aspiration pneumonia (the NIH "Pneumonia" label);
# ARDS alone and "todo" (not yet filed) say nothing about NIH labels and are masked out.
_COVID_PNEUMONIA = (
    "covid",
    "pneumo",
    "strepto",
    "klebsiella",
    "mycoplasma",
    "legionella",
    "lipoid",
    "varicella",
    "e.coli",
    "bacterial",
    "influenza",
    "sars",
    "mers",
    "chlamydophila",
    "staphylococcus",
)


def vision_examples(sources: dict[str, Any]) -> list[VisionExample]:
    """NIH images of every split (labels known for all 14 findings) and COVID-19 training radiographs (only the
    Pneumonia label known, from the diagnosis; "No Finding" images known negative for all)."""
    out = []
    for item in sources["nih"].records():
        if isinstance(item, Record) and item.image is not None:
            present = set(item.labels)
            labels = torch.tensor([float(name in present) for name in NIH_LABELS])
            text = " ".join(part for part in (item.findings, item.impression) if part) or "normal"
            out.append(VisionExample(item.image.load, text, labels, torch.ones_like(labels), item.split, "nih"))
    pneumonia = NIH_LABELS.index("Pneumonia")
    for item in sources["covid"].records():
        if not (isinstance(item, Record) and item.split == "train" and item.image is not None):
            continue
        finding = str(item.extra.get("finding", "")).lower()
        labels, mask = torch.zeros(len(NIH_LABELS)), torch.zeros(len(NIH_LABELS))
        if finding == "no finding":
            mask[:] = 1
        elif any(word in finding for word in _COVID_PNEUMONIA):
            labels[pneumonia], mask[pneumonia] = 1, 1
        text = " ".join(part for part in (item.findings, item.impression) if part) or "normal"
        out.append(VisionExample(item.image.load, text, labels, mask, item.split, "covid"))
    return out


def label_auroc(encoder: Any, heads: Any, examples: list[VisionExample], scale: Scale) -> dict[str, Any]:
    """Per-label AUROC of the encoder's label read-out on held-out NIH images (labels with >= 1 positive and
    >= 1 negative), with positives counted so a reader can ignore the thin ones; the mean over labels with
    >= 10 positives is the figure the model card quotes."""
    if not examples:
        return {"n": 0}
    scores = label_scores(encoder, heads, load_image_tensors([e.image for e in examples], scale.image_size))
    truth = torch.stack([e.labels for e in examples])
    per_label = {}
    for j, name in enumerate(NIH_LABELS):
        positives = int(truth[:, j].sum())
        if 0 < positives < len(examples):
            auc = roc_auc_score(truth[:, j].numpy(), scores[:, j].numpy())
            per_label[name] = {"auroc": round(float(auc), 4), "positives": positives}
    abnormal = truth.max(1).values
    any_score = scores.max(1).values
    wide = [v["auroc"] for v in per_label.values() if v["positives"] >= 10]
    return {
        "n": len(examples),
        "per_label": per_label,
        "mean_auroc_labels_ge10": round(sum(wide) / len(wide), 4) if wide else None,
        "abnormal_auroc": round(float(roc_auc_score(abnormal.numpy(), any_score.numpy())), 4)
        if 0 < int(abnormal.sum()) < len(examples)
        else None,
    }


def _reuse_language_model(model_dir: Path, work: Path) -> None:
    """Steps 1 and 2 (tokenizer, report LM) taken from a model this recipe assembled before.

    Stages 1, 2 and DPO never train the LM's own weights (only the projector and adapters), so the LM inside
    a model this recipe shipped is the pretrained LM, stored in float16; the 30 CPU-minutes of step 2 need not
    be spent again when only later steps change. The done markers say where the two steps came from.
    """
    if _done(work / "tokenizer") is not None and _done(work / "lm") is not None:
        return

    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: not a model directory (no config.json) to take the tokenizer and LM from")
    model, processor = load_pretrained(model_dir)
    # A shipped model records the time its steps took (model.json beside base/): the card keeps counting it.
    shipped = model_dir.parent / "model.json"
    earlier = json.loads(shipped.read_text()).get("training", {}).get("seconds", {}) if shipped.is_file() else {}
    processor.tokenizer.save_pretrained(work / "tokenizer")
    _finish(
        work / "tokenizer",
        {
            "vocab": len(processor.tokenizer),
            "reused_from": str(model_dir),
            "seconds_earlier_sessions": earlier.get("tokenizer", 0.0),
        },
    )
    lm = LlamaForCausalLM(model.config.text_config)
    lm.model.load_state_dict(model.model.language_model.state_dict(), strict=True)
    lm.lm_head.load_state_dict(model.lm_head.state_dict(), strict=True)
    lm.save_pretrained(work / "lm" / "final")
    _finish(
        work / "lm",
        {
            "parameters": lm.num_parameters(),
            "reused_from": str(model_dir),
            "seconds_earlier_sessions": earlier.get("lm", 0.0),
        },
    )


def _calibrate(work: Path, name: str, run_name: str, data: Path, scale: Scale, seed: int) -> dict[str, Any]:
    step = work / name
    if (info := _done(step)) is not None:
        return info

    started = time.perf_counter()
    run = work / run_name / "run"
    fitted = calibrate_checks(data, run / "base", run / "adapter", seed=seed, limit=scale.limit)
    return _finish(step, {**fitted, "seconds": time.perf_counter() - started})


def _evaluate(work: Path, name: str, run_name: str, data: Path, scale: Scale, seed: int) -> dict[str, Any]:
    step = work / name
    if (info := _done(step)) is not None:
        return info

    started = time.perf_counter()
    run = work / run_name / "run"
    evaluate(
        data,
        run / "base",
        step,
        adapter=run / "adapter",
        seed=seed,
        name=f"embedded-{run_name}",
        limit=scale.limit,
        n_boot=1000 if scale.limit is None else 100,
    )
    return _finish(step, {"summary": str(step / "summary.json"), "seconds": time.perf_counter() - started})


def _stage(
    work: Path,
    name: str,
    stage: str,
    base: Path,
    data: Path,
    scale: Scale,
    seed: int,
    mixture: dict[str, float],
    steps: int,
    lr: float,
    *,
    adapter: str = "mole",
) -> dict[str, Any]:
    step = work / name
    if (info := _done(step)) is not None:
        return info

    sources = [
        {"type": "nih_cxr14", "manifest": str(data / "nih_cxr14" / "manifest.jsonl"), "name": "nih_cxr14"},
        {"type": "covid", "manifest": str(data / "covid_chestxray" / "manifest.jsonl"), "name": "covid"},
        {"type": "iu_xray", "root": str(data / "iu_xray"), "name": "iu_xray"},
        {"type": "pseudo_pairs", "images": "nih_cxr14", "reports": "iu_xray", "k": 2, "seed": seed},
    ]
    if scale.limit is not None:
        for source in sources[:3]:
            source["limit"] = scale.limit
    recipe = recipe_from_dict(
        {
            "name": f"embedded-{name}",
            "stage": stage,
            "seed": seed,
            "model": {
                "base": str(base),
                "adapter": "none" if stage == "align" else adapter,
                "num_experts": scale.experts,
                "r": scale.rank,
                "alpha": 2 * scale.rank,
            },
            "data": {"sources": sources, "mixture": mixture},
            "training": {
                "output_dir": str(step / "run"),
                "max_steps": steps,
                "per_device_train_batch_size": scale.batch_size,
                "learning_rate": lr,
                "warmup_steps": 0.03,
                "lr_scheduler_type": "cosine",
                "logging_steps": 20,
                "save_steps": max(steps // 4, 1),
                "save_total_limit": 1,
                "use_cpu": True,
            },
        }
    )
    started = time.perf_counter()
    train_set, _, report = build_datasets(recipe)
    result = train(recipe, train_set)
    return _finish(step, {**result, "data": report.to_dict(), "seconds": time.perf_counter() - started})
