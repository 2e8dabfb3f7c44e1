"""The embedded default model's recipe, end to end, from the public data in a ``shared/data``-style folder.

    python -m radlvlm.training.embedded --data ../shared/data --work runs/embedded [--scale default]

Steps (each resumable: a finished step leaves ``done.json`` and is skipped when the command runs again; an
interrupted step resumes from its checkpoints):

1. a byte-level BPE tokenizer trained on the IU-Xray training reports (and the NIH label words);
2. a small Llama-architecture LM pretrained on those reports;
3. a small DINOv2-style vision encoder trained contrastively on the NIH ChestX-ray14 and COVID-19 training
   radiographs against the LM's embedding of their label/notes text;
4. assembly into a radlvlm model (visual tokens pooled for a short prefill);
5. stage 1 (align: projector only) on image → report pairs: NIH label-templated targets, COVID notes, and IU
   reports paired with NIH images by matching labels (pseudo-pairs);
6. stage 2 (instruct: MoLE experts + projector) on drafting and SIMPLE/COMPLEX error checking;
7. validation next to the evaluation baselines, with the router's per-task expert usage
   (:mod:`radlvlm.training.embedded_eval`, into ``eval/summary.json``).

``scripts/train-embedded.sh`` runs this, then DPO alignment (``recipes/dpo-embedded.yaml``) and its
before/after evaluation, and installs the better model into the package (:mod:`radlvlm.training.ship`).

What the data allows is limited and the model card says so: the IU reports have no images here, so image
conditioning is learnt from 842 NIH thumbnails (mostly 64 x 64) and ~200 COVID radiographs through label-level
pairs — the model can only associate coarse findings with images, it cannot read fine detail.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
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
from radlvlm.model.tokenizer import train_tokenizer

STEPS = ("tokenizer", "lm", "vision", "assembled", "stage1", "stage2", "eval")


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
    contrastive_epochs: int
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
    "default": Scale(4096, 256, 4, 4, 3000, 192, 4, 3, 224, 8, 8, 1200, 1800, 8, 4, 8, None),
}


def _done(step_dir: Path) -> dict[str, Any] | None:
    marker = step_dir / "done.json"
    return json.loads(marker.read_text()) if marker.is_file() else None


def _finish(step_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    step_dir.mkdir(parents=True, exist_ok=True)
    (step_dir / "done.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info


def _sources(data: Path, scale: Scale) -> dict[str, Any]:
    from radlvlm.training.pseudo_pairs import LabelMatchedPairs
    from radlvlm.training.sources import CovidSource, IUXraySource, NIHSource

    iu = IUXraySource(data / "iu_xray", limit=scale.limit)
    nih = NIHSource(data / "nih_cxr14" / "manifest.jsonl", limit=scale.limit)
    covid = CovidSource(data / "covid_chestxray" / "manifest.jsonl", limit=scale.limit)
    pairs = LabelMatchedPairs(nih, iu, k=2, seed=0)
    return {"iu": iu, "nih": nih, "covid": covid, "pairs": pairs}


def build_embedded(
    data: Path, work: Path, *, scale_name: str = "default", seed: int = 0, compare_lora: bool = False
) -> dict[str, Any]:
    """Run (or resume) every step; returns each step's summary. ``compare_lora`` also trains and evaluates the
    plain-LoRA stage 2 (``stage2_lora``, ``eval_lora``) for the MoLE-vs-LoRA comparison."""
    if scale_name not in SCALES:
        raise InputError(f"unknown scale {scale_name!r}; known: {sorted(SCALES)}")
    for folder in ("iu_xray", "nih_cxr14", "covid_chestxray"):
        if not (data / folder).is_dir():
            raise InputError(f"{data / folder}: missing (the recipe needs the IU-Xray, NIH and COVID-19 folders)")
    scale = SCALES[scale_name]
    work.mkdir(parents=True, exist_ok=True)
    sources = _sources(data, scale)
    summary: dict[str, Any] = {"scale": asdict(scale), "seed": seed}

    # 1. tokenizer
    step = work / "tokenizer"
    if (info := _done(step)) is None:
        started = time.perf_counter()
        texts = list(sources["iu"].report_texts("train"))
        from radlvlm.training.pseudo_pairs import NIH_TO_CHEXPERT

        texts += [f"IMPRESSION: {label}." for label in NIH_TO_CHEXPERT]
        tokenizer = train_tokenizer(texts, vocab_size=scale.vocab_size, min_frequency=2)
        tokenizer.save_pretrained(step)
        info = _finish(step, {"vocab": len(tokenizer), "texts": len(texts), "seconds": time.perf_counter() - started})
    summary["tokenizer"] = info
    tokenizer = PreTrainedTokenizerFast.from_pretrained(step)

    # 2. language model
    step = work / "lm"
    if (info := _done(step)) is None:
        from radlvlm.training.pretrain import pretrain_language_model

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
        info = _finish(step, {**stats, "parameters": lm.num_parameters(), "seconds": time.perf_counter() - started})
    summary["lm"] = info
    lm = LlamaForCausalLM.from_pretrained(step / "final")

    # 3. vision encoder (contrastive)
    step = work / "vision"
    if (info := _done(step)) is None:
        from radlvlm.training.pretrain import ContrastiveSettings, embed_texts, pretrain_vision_encoder
        from radlvlm.training.sources import Record

        started = time.perf_counter()
        images, texts = [], []
        for name in ("nih", "covid"):
            for item in sources[name].records():
                if isinstance(item, Record) and item.split == "train" and item.image is not None:
                    images.append(item.image.load)
                    texts.append(" ".join(part for part in (item.findings, item.impression) if part) or "normal")
        vision_config = Dinov2Config(
            hidden_size=scale.vision_hidden,
            num_hidden_layers=scale.vision_layers,
            num_attention_heads=scale.vision_heads,
            image_size=scale.image_size,
            patch_size=14,
            mlp_ratio=4,
        )
        embeddings = embed_texts(texts, tokenizer, lm)
        settings = ContrastiveSettings(
            epochs=scale.contrastive_epochs, batch_size=32, image_size=scale.image_size, seed=seed
        )
        encoder, stats = pretrain_vision_encoder(images, embeddings, vision_config, step / "state", settings)
        encoder.save_pretrained(step / "final")
        info = _finish(
            step,
            {
                **stats,
                "images": len(images),
                "parameters": sum(p.numel() for p in encoder.parameters()),
                "seconds": time.perf_counter() - started,
            },
        )
    summary["vision"] = info
    vision = AutoModel.from_pretrained(step / "final")

    # 4. assembly
    step = work / "assembled"
    if (info := _done(step)) is None:
        from radlvlm.training.pretrain import assemble

        image_config = ImageTransformConfig(
            size=scale.image_size, resize_mode="pad", channels=3, mean=(0.5,), std=(0.5,)
        )
        assemble(
            vision, lm, tokenizer, step / "model", image_config=image_config, visual_token_pool=scale.pool, seed=seed
        )
        info = _finish(step, {"model": str(step / "model")})
    summary["assembled"] = info

    # 5 and 6. the two stages, through the same recipe machinery a hospital uses
    summary["stage1"] = _stage(
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

    def instruct(name: str, adapter: str) -> dict[str, Any]:
        return _stage(
            work,
            name,
            "instruct",
            work / "stage1" / "run" / "base",
            data,
            scale,
            seed,
            {"draft": 1.0, "check_simple": 0.5, "check_complex": 0.5},
            scale.stage2_steps,
            3e-4,
            adapter=adapter,
        )

    summary["stage2"] = instruct("stage2", "mole")
    summary["eval"] = _evaluate(work, "eval", "stage2", data, scale, seed)
    if compare_lora:
        # The baseline the sparse experts must beat: one plain peft LoRA of the same rank as one expert, so the
        # compute per token is the same; same data, steps and learning rate.
        summary["stage2_lora"] = instruct("stage2_lora", "lora")
        summary["eval_lora"] = _evaluate(work, "eval_lora", "stage2_lora", data, scale, seed)
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _evaluate(work: Path, name: str, run_name: str, data: Path, scale: Scale, seed: int) -> dict[str, Any]:
    step = work / name
    if (info := _done(step)) is not None:
        return info
    from radlvlm.training.embedded_eval import evaluate

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
    from radlvlm.training.cli import build_datasets
    from radlvlm.training.recipe import recipe_from_dict
    from radlvlm.training.trainer import train

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the embedded default model from public data (resumable).")
    parser.add_argument("--data", type=Path, required=True, help="folder with iu_xray/, nih_cxr14/, covid_chestxray/")
    parser.add_argument("--work", type=Path, required=True, help="working folder (checkpoints, step summaries)")
    parser.add_argument("--scale", default="default", choices=sorted(SCALES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare-lora", action="store_true", help="also train and evaluate a plain-LoRA stage 2 (the baseline)"
    )
    args = parser.parse_args(argv)
    try:
        summary = build_embedded(
            args.data, args.work, scale_name=args.scale, seed=args.seed, compare_lora=args.compare_lora
        )
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k in ("stage1", "stage2")}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    sys.exit(main())
