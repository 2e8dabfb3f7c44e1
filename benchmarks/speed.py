"""Speed where the user waits: the engine against plain HF ``generate``, and MoLE against LoRA and the base model.

    python benchmarks/speed.py [--repeats 5] [--tokens 64]

On the embedded default model (CPU unless ``--device``), every comparison is measured as alternated pairs
(A, B, A, B, ...) after a warm-up, so a stall of the machine hits both sides; medians and ranges are written to
``benchmarks/results/speed.json``:

* ``engine_vs_generate``: a draft through :class:`~radlvlm.engine.torch_engine.TorchEngine` (its worker thread,
  queue and batching) against ``model.generate`` on the same model, prompt, image and generation config, at
  batch 1; and N concurrent requests through the engine against the same N as one ``generate`` batch (the best a
  caller could do by hand) and one at a time (what a caller without batching does);
* ``continuous_batching``: transformers' ``generate_batch`` (paged attention, continuous batching) against one
  ``generate`` batch on the text-only requests it can take (its manager accepts token ids, not images);
* ``adapters``: decode time for exactly ``--tokens`` new tokens (``min_new_tokens = max_new_tokens``) of the
  base model, the base with a plain LoRA (peft, rank 8 on the MLP projections) and with the shipped MoLE
  adapter (4 experts of rank 8), at batch 1 and 8.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from report import git_commit, save_report, seconds_spread

ROOT = Path(__file__).resolve().parents[1]


def alternated(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, float]]:
    """Each callable once to warm up, then ``repeats`` rounds of all of them in turn."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: seconds_spread(values) for name, values in times.items()}


def continuous_batching(vlm: Any, processor: Any, config: Any, repeats: int) -> dict[str, Any]:
    """transformers' continuous batching (``generate_batch``, paged attention) against one ``generate`` batch.

    Its manager takes token ids only (no pixel values, no image features), so it cannot run a draft; what it can
    run is a text-only check. Measured on that: the shipped model's own LM as a ``LlamaForCausalLM`` (same
    weights), 8 report prompts, the manager kept alive and warmed up (its best case)."""
    from transformers import LlamaForCausalLM

    from radlvlm.tasks.errorcheck import errorcheck_prompt

    lm = LlamaForCausalLM(vlm.config.text_config).eval()
    weights = {f"model.{k}": v for k, v in vlm.model.language_model.state_dict().items()}
    weights |= {f"lm_head.{k}": v for k, v in vlm.lm_head.state_dict().items()}
    lm.load_state_dict(weights)
    reports = [
        f"Findings: {finding} Impression: {impression}"
        for finding, impression in [
            ("The lungs are clear. No pleural effusion.", "No acute disease."),
            ("Small left pleural effusion with basilar atelectasis.", "Small left effusion."),
            ("Heart size is enlarged. Mild pulmonary edema.", "Cardiomegaly with mild edema."),
            ("No pneumothorax. Right lower lobe opacity.", "Right lower lobe pneumonia."),
        ]
        * 2
    ]
    ids = [processor.prompt_ids(processor.chat_prompt(errorcheck_prompt("complex", r), image=False)) for r in reports]
    width = max(len(row) for row in ids)
    pad = processor.tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids])  # left-padded, as generate wants
    attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids])

    @torch.inference_mode()
    def one_batch() -> None:
        lm.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)

    @torch.inference_mode()
    def managed() -> None:
        lm.generate_batch(inputs=ids, generation_config=config, persistent_manager=True, warmup=False)

    timed = alternated({"generate_one_batch": one_batch, "generate_batch_continuous": managed}, repeats)
    timed["continuous_over_generate"] = round(
        timed["generate_batch_continuous"]["median_s"] / timed["generate_one_batch"]["median_s"], 2
    )
    timed["requests"] = len(ids)
    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed.json")
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import GenerationConfig

    from radlvlm.engine.loading import load_engine
    from radlvlm.model.default import embedded_model
    from radlvlm.model.generation import GenerationSettings
    from radlvlm.model.pretrained import load_pretrained
    from radlvlm.pipeline.task_engine import TaskEngine
    from radlvlm.tasks.drafting import DraftRequest

    choice = embedded_model()
    settings = GenerationSettings(max_new_tokens=args.tokens)
    loaded, _ = load_engine("torch", choice.base, adapter_dir=choice.adapter, generation=settings)
    engine = TaskEngine(loaded)
    model, processor = loaded.model, loaded.processor  # type: ignore[attr-defined]
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(512, 512, generator=generator)
    prompt = engine.drafts.prompt(None)
    config = settings.to_generation_config(processor)

    @torch.inference_mode()
    def plain(batch: int) -> None:
        inputs = processor([prompt] * batch, [image] * batch)
        model.generate(**inputs, generation_config=config)

    def through_engine(concurrent: int) -> None:
        futures = [engine.submit(DraftRequest(image=image, max_new_tokens=args.tokens)) for _ in range(concurrent)]
        for future in futures:
            future.result(timeout=600)

    def threads(concurrent: int) -> None:  # N clients, each waiting for its own answer (as HTTP callers do)
        workers = [threading.Thread(target=through_engine, args=(1,)) for _ in range(concurrent)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    results: dict[str, Any] = {
        "engine_vs_generate": {
            "batch_1": alternated({"engine": lambda: through_engine(1), "generate": lambda: plain(1)}, args.repeats)
        }
    }
    for concurrent in args.concurrency:
        batches_before = engine.stats()["batches"]
        timed = alternated(
            {
                "engine": lambda n=concurrent: threads(n),
                "generate_one_batch": lambda n=concurrent: plain(n),
                "generate_one_at_a_time": lambda n=concurrent: [plain(1) for _ in range(n)],
            },
            args.repeats,
        )
        # How many batches the engine split each round of concurrent clients into (1: all in one batch).
        timed["engine_batches_per_round"] = (engine.stats()["batches"] - batches_before) / (args.repeats + 1)
        results["engine_vs_generate"][f"concurrent_{concurrent}"] = timed
        print("engine", concurrent, results["engine_vs_generate"][f"concurrent_{concurrent}"], file=sys.stderr)
    engine.close()

    fixed = GenerationConfig(
        max_new_tokens=args.tokens,
        min_new_tokens=args.tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=processor.tokenizer.pad_token_id,
        eos_token_id=processor.tokenizer.eos_token_id,
    )
    base, _ = load_pretrained(choice.base)
    lora_model, _ = load_pretrained(choice.base)
    lora_config = LoraConfig(r=8, lora_alpha=16, target_modules=["gate_proj", "up_proj", "down_proj"])
    lora = get_peft_model(lora_model, lora_config)
    mole, _ = load_pretrained(choice.base, adapter=choice.adapter)
    models = {"base": base.eval(), "lora": lora.eval(), "mole": mole.eval()}

    @torch.inference_mode()
    def decode(name: str, batch: int) -> None:
        inputs = processor([prompt] * batch, [image] * batch)
        models[name].generate(**inputs, generation_config=fixed)

    adapters: dict[str, Any] = {}
    for batch in (1, 8):
        timed = alternated({name: lambda n=name, b=batch: decode(n, b) for name in models}, args.repeats)
        timed["mole_over_lora"] = round(timed["mole"]["median_s"] / timed["lora"]["median_s"], 3)
        timed["mole_over_base"] = round(timed["mole"]["median_s"] / timed["base"]["median_s"], 3)
        adapters[f"batch_{batch}"] = timed
        print("adapters", batch, timed, file=sys.stderr)
    results["adapters"] = adapters
    results["continuous_batching"] = continuous_batching(base, processor, fixed, args.repeats)
    print("continuous batching", results["continuous_batching"], file=sys.stderr)
    save_report(
        args.out,
        {
            "name": "speed",
            "commit": git_commit(),
            "config": {
                "model": "embedded default (MoLE adapter)",
                "device": "cpu",
                "threads": torch.get_num_threads(),
                "new_tokens": args.tokens,
                "repeats": args.repeats,
                "image": "512 x 512",
                "order": "alternated pairs after one warm-up each",
            },
            "metrics": results,
        },
    )


if __name__ == "__main__":
    main()
