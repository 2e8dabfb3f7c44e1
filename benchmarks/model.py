"""Model benchmark on a small LVLM: forward and generate throughput, peak memory, MoLE vs LoRA training step.

The model: a 6-layer DINOv2-style tower at 224 px (256 visual tokens) and an 8-layer, 512-wide Llama.
Random weights (speed does not depend on them). Writes one JSON file.

    python benchmarks/model.py [--out benchmarks/results/model.json] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from report import git_commit, save_report
from transformers import Dinov2Config, LlamaConfig

from radlvlm.model import (
    GenerationSettings,
    MoLEAdapter,
    MoLEConfig,
    RadProcessor,
    build_config,
    build_model,
    generate,
    inject_mole,
    parameter_counts,
    train_tokenizer,
)
from radlvlm.model.lora import apply_lora

CORPUS = [
    "The lungs are clear without focal consolidation, pleural effusion or pneumothorax.",
    "Heart size is normal. Mediastinal and hilar contours are unremarkable.",
    "Small bilateral pleural effusions with bibasilar atelectasis. Mild pulmonary edema.",
    "Stable cardiomegaly. No acute osseous abnormality.",
]


def small_config(vocab: int) -> object:
    vision = Dinov2Config(
        hidden_size=192, num_hidden_layers=6, num_attention_heads=3, image_size=224, patch_size=14, mlp_ratio=4
    )
    text = LlamaConfig(
        vocab_size=vocab,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return build_config(vision, text, image_token_id=3)


def timed(fn: Callable[[], object], repeats: int, device: str) -> list[float]:
    fn()  # warm-up
    return [timed_once(fn, device) for _ in range(repeats)]


def training_step(
    model: torch.nn.Module, params: list[torch.nn.Parameter], batch: dict, adapter: MoLEAdapter | None
) -> Callable[[], None]:
    """One optimiser step; with a MoLE ``adapter``, its balance loss is added as training adds it."""
    optimiser = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step() -> None:
        with adapter.collect_balance_loss() if adapter is not None else nullcontext() as balance:
            out = model(**batch, labels=batch["input_ids"])
        loss = out.loss + (balance.auxiliary_loss() if balance is not None else 0.0)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    return step


def alternated_seconds(steps: dict[str, Callable[[], None]], repeats: int, device: str) -> dict[str, list[float]]:
    """One warm-up of each, then ``repeats`` rounds of each in turn: a stall of the machine hits both sides."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(timed_once(step, device))
    return times


def timed_once(fn: Callable[[], object], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "model.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-repeats", type=int, default=9, help="alternated LoRA/MoLE training-step pairs")
    args = parser.parse_args()
    device = args.device
    torch.manual_seed(0)
    tokenizer = train_tokenizer(CORPUS * 50, vocab_size=2048, min_frequency=1)
    config = small_config(len(tokenizer))
    model = build_model(config, seed=0).to(device)
    processor = RadProcessor.for_model(tokenizer, config)
    counts = parameter_counts(model)

    batch_size = 4
    prompts = [processor.chat_prompt("Write the findings section for this chest radiograph.")] * batch_size
    images = [torch.rand(256, 200) for _ in range(batch_size)]
    batch = {k: v.to(device) for k, v in processor(prompts, images).items()}
    tokens_in_batch = int(batch["attention_mask"].sum())

    with torch.inference_mode():
        forward_times = timed(lambda: model(**batch), args.repeats, device)
    forward_tps = tokens_in_batch / statistics.median(forward_times)

    generation: dict[str, float] = {}
    new_tokens = 64
    settings = GenerationSettings(max_new_tokens=new_tokens)
    # A random model rarely emits EOS; forbid it so every row generates exactly new_tokens.
    model.generation_config.suppress_tokens = [tokenizer.eos_token_id]
    for n in (1, batch_size):
        runs = timed(lambda n=n: generate(model, processor, prompts[:n], images[:n], settings), 2, device)
        generation[f"batch_{n}_tokens_per_s"] = n * new_tokens / statistics.median(runs)
        generation[f"batch_{n}_seconds"] = statistics.median(runs)

    # Training step: text + image batch, 4 experts of rank 16 vs one LoRA of rank 16 on gate/up/down, both
    # models alive and their steps alternated.
    train_batch = {k: v for k, v in batch.items()}
    lora_model = apply_lora(build_model(config, seed=0).to(device), r=16, alpha=32)
    lora_params = [p for p in lora_model.parameters() if p.requires_grad]
    lora_counts = parameter_counts(lora_model)
    mole_model = build_model(config, seed=0).to(device)
    adapter = inject_mole(mole_model, MoLEConfig(num_experts=4, r=16, alpha=32))
    mole_counts = parameter_counts(mole_model)
    steps = alternated_seconds(
        {
            "lora": training_step(lora_model, lora_params, train_batch, None),
            "mole": training_step(mole_model, list(adapter.parameters()), train_batch, adapter),
        },
        args.train_repeats,
        device,
    )
    pair_ratios = [m / lo for m, lo in zip(steps["mole"], steps["lora"], strict=True)]

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    report = {
        "name": "model",
        "commit": git_commit(),
        "device": {
            "kind": device,
            "name": torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine()),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "config": {
            "vision": "dinov2 6x192 @224px/14 (256 visual tokens)",
            "text": "llama 8x512, mlp 1376",
            "batch_size": batch_size,
            "tokens_in_forward_batch": tokens_in_batch,
            "generate_new_tokens": new_tokens,
            "lora": {"r": 16, "alpha": 32, "targets": ["gate_proj", "up_proj", "down_proj"]},
            "mole": {"num_experts": 4, "r": 16, "alpha": 32},
            "training_steps": "LoRA and MoLE alternated after one warm-up each; medians, ranges, per-pair ratios",
        },
        "metrics": {
            "forward_tokens_per_s": forward_tps,
            **generation,
            "train_step_seconds_lora": spread(steps["lora"]),
            "train_step_seconds_mole": spread(steps["mole"]),
            "mole_over_lora_step_ratio": statistics.median(steps["mole"]) / statistics.median(steps["lora"]),
            "mole_over_lora_step_ratio_per_pair": spread(pair_ratios),
            "parameters_total": counts["total"],
            "parameters_trainable_lora": lora_counts["trainable"],
            "parameters_trainable_mole": mole_counts["trainable"],
            "peak_rss_mb": peak_mb,
            **({"peak_gpu_mb": peak_gpu_mb} if device == "cuda" else {}),
        },
        "target": {"mole_over_lora_step_ratio_max": 1.15},
    }
    save_report(args.out, report)


if __name__ == "__main__":
    main()
