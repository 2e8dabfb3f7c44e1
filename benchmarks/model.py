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
from pathlib import Path

import torch
from report import git_commit, save_report
from transformers import Dinov2Config, LlamaConfig

from radlvlm.model import (
    GenerationSettings,
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
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def training_step_seconds(
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    batch: dict,
    extra_loss: Callable[[], torch.Tensor] | None,
    device: str,
    repeats: int,
) -> float:
    optimiser = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        out = model(**batch, labels=batch["input_ids"])
        loss = out.loss + (extra_loss() if extra_loss else 0.0)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    model.train()
    return statistics.median(timed(step, repeats, device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "model.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
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

    # Training step: text + image batch, 4 experts of rank 16 vs one LoRA of rank 16 on gate/up/down.
    train_batch = {k: v for k, v in batch.items()}
    lora_model = apply_lora(build_model(config, seed=0).to(device), r=16, alpha=32)
    lora_params = [p for p in lora_model.parameters() if p.requires_grad]
    lora_seconds = training_step_seconds(lora_model, lora_params, train_batch, None, device, args.repeats)
    lora_counts = parameter_counts(lora_model)
    del lora_model

    mole_model = build_model(config, seed=0).to(device)
    adapter = inject_mole(mole_model, MoLEConfig(num_experts=4, r=16, alpha=32))
    mole_params = list(adapter.parameters())
    mole_seconds = training_step_seconds(
        mole_model, mole_params, train_batch, adapter.auxiliary_loss, device, args.repeats
    )
    mole_counts = parameter_counts(mole_model)

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
        },
        "metrics": {
            "forward_tokens_per_s": forward_tps,
            **generation,
            "train_step_seconds_lora": lora_seconds,
            "train_step_seconds_mole": mole_seconds,
            "mole_over_lora_step_ratio": mole_seconds / lora_seconds,
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
