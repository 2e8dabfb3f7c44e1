"""GPU benchmark: a LLaVA-Rad-shaped model drafting ~100-token findings, HF generate vs vLLM on one GPU.

The model: a 7B Llama-architecture LM (Vicuna-7B's shape: 32 layers x 4096, MLP 11008, vocabulary 32000) and a
ViT-B/14 vision tower at 518 px (1369 visual tokens) with LLaVA-1.5's projector; random bf16 weights (speed does
not depend on them). The tower is a CLIP ViT-B/14: LLaVA-Rad's DINOv2 ViT-B/14 has the same shape and cost, but
vLLM's Llava builds CLIP, SigLIP and Pixtral towers only, and both backends must run the same model. The EOS
and pad rows of the LM head are zeroed, so every draft runs its full length on both backends.

Measured:
- HF generate (the torch backend's path): single-request latency p50/p95 and studies/s at batch 1, 8, 32, 64,
  with peak GPU memory;
- vLLM (radlvlm's vLLM backend: the service's engine for single requests, the batch engine for batches): the
  same figures, and whether its greedy drafts equal HF's;
- the effect of visual-token pooling (HF; vLLM's Llava cannot pool), prefix caching (vLLM on vs off: a SIMPLE
  check of a study just drafted reuses the image prefix) and n-gram speculative decoding (vLLM), each with a
  greedy-output equality check against the configuration without it.

Each vLLM configuration runs in a process of its own (a clean GPU each time). Writes benchmarks/results/gpu.json.

    python benchmarks/gpu.py [--out PATH] [--parts hf,pool,vllm,prefix,ngram] [--requests 20] [--new-tokens 100]
    python benchmarks/gpu.py --smoke [--out PATH]   # the HF half on CPU with a tiny model (exercises the script)

Without a CUDA GPU (and without --smoke) it exits 2 with one line.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import git_commit, save_report

PARTS = ("hf", "pool", "vllm", "prefix", "ngram")
VLLM_VARIANTS = {
    "vllm": {"enable_prefix_caching": True, "ngram_speculative_tokens": 0},
    "prefix": {"enable_prefix_caching": False, "ngram_speculative_tokens": 0},
    "ngram": {"enable_prefix_caching": True, "ngram_speculative_tokens": 4},
}
TARGETS = {"single_p50_s_max_h100": 1.0, "batched_studies_per_s_min": 20.0, "vllm_over_hf_at_batch_32_min": 10.0}
CHECK_REPORT = "FINDINGS: The lungs are clear. IMPRESSION: No acute cardiopulmonary abnormality."


class BenchmarkError(Exception):
    """A condition that ends the benchmark with one line and exit code 2."""


# -- the model -------------------------------------------------------------------------------------


def benchmark_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer with exactly ``vocab_size`` entries (radlvlm's special tokens first).

    Random weights generate any id of the vocabulary, so every id must decode; a trained BPE on a little text
    cannot fill 32000 entries.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from radlvlm.model.tokenizer import SPECIAL_TOKENS, UNK, wrap_tokenizer

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"▁w{index}": index for index in range(len(vocab), vocab_size)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # SentencePiece-style word marks, as Llama's tokenizer has: vLLM's incremental detokenizer handles them.
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return wrap_tokenizer(tokenizer)


def model_config(shape: str, vocab_size: int) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig

    from radlvlm.model import build_config

    if shape == "7b":
        vision = CLIPVisionConfig(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=518
        )
        text = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
        )
    else:  # tiny: the smoke run on CPU
        vision = CLIPVisionConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=56
        )
        text = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
        )
    vision.patch_size = 14
    for key, value in {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}.items():
        setattr(text, key, value)
    return build_config(vision, text, image_token_id=3)


def build(config: Any, device: str, dtype: torch.dtype, tokenizer: Any) -> Any:
    """The random model, initialised directly on ``device`` in ``dtype``, with EOS and pad unreachable."""
    from radlvlm.model import build_model

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = build_model(config, seed=0)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        # A zero logit is below the maximum of thousands of random ones: no draft ends early, on either backend.
        model.lm_head.weight[[tokenizer.eos_token_id, tokenizer.pad_token_id]] = 0
    return model.eval()


def study_images(count: int, size: int) -> list[torch.Tensor]:
    """Distinct grayscale studies at the encoder's size, in exact 8-bit levels (both backends see the same)."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (size, size), generator=generator).float() / 255 for _ in range(count)]


def study_sets(requests: int, batches: Sequence[int], size: int) -> dict[str, list[torch.Tensor]]:
    """A warm-up study, the single requests' studies and each batch's: no study is seen twice, so no cache
    (prefix, multimodal) flatters a figure; both backends get the same sets."""
    images = study_images(1 + requests + sum(batches), size)
    sets = {"warmup": images[:1], "single": images[1 : 1 + requests]}
    start = 1 + requests
    for batch in batches:
        sets[f"batch_{batch}"] = images[start : start + batch]
        start += batch
    return sets


# -- timing helpers --------------------------------------------------------------------------------


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(job: Callable[[], Any]) -> tuple[float, Any]:
    sync()
    start = time.perf_counter()
    out = job()
    sync()
    return time.perf_counter() - start, out


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    return {
        "p50_s": round(percentile(seconds, 0.5), 4),
        "p95_s": round(percentile(seconds, 0.95), 4),
        "mean_s": round(statistics.fmean(seconds), 4),
        "n": len(seconds),
    }


def equal_fraction(a: Sequence[str], b: Sequence[str]) -> float | None:
    pairs = list(zip(a, b, strict=False))
    return round(sum(x == y for x, y in pairs) / len(pairs), 4) if pairs else None


def gpu_mb() -> dict[str, float]:
    if not torch.cuda.is_available():
        return {}
    free, total = torch.cuda.mem_get_info()
    return {
        "peak_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        "device_in_use_mb": round((total - free) / 2**20, 1),
    }


def out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


# -- HF generate (the torch backend's path) --------------------------------------------------------


def measure_hf(
    model: Any, processor: Any, studies: dict[str, list[torch.Tensor]], *, new_tokens: int, batches: Sequence[int]
) -> dict[str, Any]:
    from radlvlm.model import GenerationSettings, generate
    from radlvlm.tasks.drafting import draft_prompt

    settings = GenerationSettings(max_new_tokens=new_tokens)
    prompt = processor.chat_prompt(draft_prompt(None))

    def run(batch: list[torch.Tensor]) -> Any:
        return generate(model, processor, [prompt] * len(batch), batch, settings)

    run(studies["warmup"])  # kernels, allocator
    latencies, texts, tokens = [], [], []
    for image in studies["single"]:
        seconds, out = timed(lambda image=image: run([image]))
        latencies.append(seconds)
        texts.append(out.generations[0].text)
        tokens.append(out.generations[0].new_tokens)
    throughput: dict[str, Any] = {}
    for size in batches:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            seconds, _ = timed(lambda size=size: run(studies[f"batch_{size}"]))
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            if not out_of_memory(e):
                raise
            torch.cuda.empty_cache()
            throughput[f"batch_{size}"] = {"error": "out of memory"}
            continue
        throughput[f"batch_{size}"] = {
            "seconds": round(seconds, 3),
            "studies_per_s": round(size / seconds, 3),
            **gpu_mb(),
        }
    return {
        "single_request": latency_summary(latencies),
        "new_tokens_mean": statistics.fmean(tokens),
        "throughput": throughput,
        "texts": texts,
    }


def measure_pooling(
    model: Any, tokenizer: Any, studies: dict[str, list[torch.Tensor]], *, pool: int, new_tokens: int, batch: int
) -> dict[str, Any]:
    """The same weights with the patch grid average-pooled to pool x pool before the projector (HF only)."""
    from radlvlm.model import RadProcessor
    from radlvlm.model.modeling import PoolingProjector, image_token_count

    original = model.model.multi_modal_projector
    pooled_config = copy.deepcopy(model.config)
    pooled_config.visual_token_pool = pool
    pooled_config.image_seq_length = image_token_count(pooled_config)
    projector = PoolingProjector(pooled_config, pool)
    projector.load_state_dict(original.state_dict())
    model.model.multi_modal_projector = projector.to(device=model.device, dtype=model.dtype)
    try:
        pooled = measure_hf(
            model, RadProcessor.for_model(tokenizer, pooled_config), studies, new_tokens=new_tokens, batches=[batch]
        )
    finally:
        model.model.multi_modal_projector = original
    pooled.pop("texts")
    return {"visual_tokens": pool * pool, **pooled}


# -- vLLM (one process per configuration) ----------------------------------------------------------


def vllm_worker(args: argparse.Namespace) -> None:
    """Measure one vLLM configuration on the exported model; write its JSON into the work directory."""
    import vllm

    from radlvlm.engine.vllm_engine import load_vllm_engine
    from radlvlm.model import GenerationSettings
    from radlvlm.pipeline.task_engine import TaskEngine
    from radlvlm.settings import VLLMOptions
    from radlvlm.tasks.calibration import find_calibrations
    from radlvlm.tasks.checking import CheckRequest
    from radlvlm.tasks.drafting import DraftRequest

    workdir = Path(args.workdir)
    variant = VLLM_VARIANTS[args.worker]
    options = VLLMOptions(
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
        enable_prefix_caching=variant["enable_prefix_caching"],
        ngram_speculative_tokens=variant["ngram_speculative_tokens"],
    )
    started = time.perf_counter()
    loaded, spec = load_vllm_engine(
        workdir / "model",
        options=options,
        max_wait_ms=0,
        generation=GenerationSettings(max_new_tokens=args.new_tokens),
    )
    engine = TaskEngine(loaded, find_calibrations(spec.model_dir, spec.adapter_dir))
    startup_s = time.perf_counter() - started
    studies = study_sets(args.requests, args.batches, args.image_size)
    try:
        engine.run(DraftRequest(image=studies["warmup"][0]), timeout=600)
        latencies, texts, tokens, check_latencies = [], [], [], []
        for image in studies["single"]:
            seconds, result = timed(lambda image=image: engine.run(DraftRequest(image=image), timeout=600))
            latencies.append(seconds)
            texts.append(result.text)
            tokens.append(result.new_tokens)
            # A check of the study just drafted: its image prefix is in the KV cache when prefix caching is on.
            check = CheckRequest(report=CHECK_REPORT, image=image)
            seconds, _ = timed(lambda check=check: engine.run(check, timeout=600))
            check_latencies.append(seconds)
        throughput: dict[str, Any] = {}
        for size in args.batches:
            requests = [DraftRequest(image=image) for image in studies[f"batch_{size}"]]
            seconds, _ = timed(lambda requests=requests: engine.run_all(requests))
            throughput[f"batch_{size}"] = {"seconds": round(seconds, 3), "studies_per_s": round(size / seconds, 3)}
        result = {
            "variant": args.worker,
            "options": dataclasses.asdict(options),
            "vllm": vllm.__version__,
            "startup_s": round(startup_s, 1),
            "single_request": latency_summary(latencies),
            "check_after_draft": latency_summary(check_latencies),
            "new_tokens_mean": statistics.fmean(tokens),
            "throughput": throughput,
            "memory": {**gpu_mb(), "note": "vLLM reserves gpu_memory_utilization of the GPU for weights and KV cache"},
            "image_tokens": spec.image_tokens,
            "texts": texts,
        }
    finally:
        engine.close()
    (workdir / f"vllm-{args.worker}.json").write_text(json.dumps(result, indent=2))


def run_vllm_variant(variant: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        "--workdir",
        str(workdir),
        "--new-tokens",
        str(args.new_tokens),
        "--requests",
        str(args.requests),
        "--batches",
        ",".join(str(b) for b in args.batches),
        "--image-size",
        str(args.image_size),
        "--gpu-memory-utilization",
        str(args.gpu_memory_utilization),
        "--max-model-len",
        str(args.max_model_len),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=args.worker_timeout)
    path = workdir / f"vllm-{variant}.json"
    if done.returncode != 0 or not path.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return {"error": f"worker exited {done.returncode}", "stderr_tail": tail}
    return json.loads(path.read_text())


# -- the run ---------------------------------------------------------------------------------------


def versions() -> dict[str, Any]:
    import transformers

    import radlvlm

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "radlvlm": radlvlm.__version__,
    }
    if importlib.util.find_spec("vllm") is not None:
        import vllm

        info["vllm"] = vllm.__version__
    return info


def device_info(device: str) -> dict[str, Any]:
    if device != "cuda":
        return {"kind": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    properties = torch.cuda.get_device_properties(0)
    return {
        "kind": "cuda",
        "name": properties.name,
        "compute_capability": f"{properties.major}.{properties.minor}",
        "memory_gb": round(properties.total_memory / 2**30, 1),
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    from radlvlm.model import RadProcessor
    from radlvlm.model.convert import export_hf_llava

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError(
            "benchmarks/gpu.py needs a CUDA GPU and none is visible (--smoke runs the HF half on CPU with a tiny model)"
        )
    parts = [part for part in args.parts.split(",") if part]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise BenchmarkError(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if args.smoke:
        parts = [part for part in parts if part in ("hf", "pool")]
    vllm_parts = [part for part in parts if part in VLLM_VARIANTS]
    if vllm_parts and importlib.util.find_spec("vllm") is None:
        raise BenchmarkError(
            "vLLM is not installed in this environment: run the benchmark from the [vllm] extra's environment "
            '(python3 -m venv .venv-vllm && .venv-vllm/bin/pip install -e ".[vllm]"), or pass --parts hf,pool'
        )
    shape = "tiny" if args.smoke else "7b"
    tokenizer = benchmark_tokenizer(512 if args.smoke else 32000)
    config = model_config(shape, len(tokenizer))
    args.image_size = int(config.vision_config.image_size)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    batches = sorted(set(args.batches) | ({args.pool_batch} if "pool" in parts else set()))
    studies = study_sets(args.requests, batches, args.image_size)
    processor = RadProcessor.for_model(tokenizer, config)
    metrics: dict[str, Any] = {}
    build_s, model = timed(lambda: build(config, device, dtype, tokenizer))
    parameters = sum(p.numel() for p in model.parameters())
    hf_texts: list[str] = []
    if "hf" in parts:
        hf = measure_hf(model, processor, studies, new_tokens=args.new_tokens, batches=args.batches)
        hf_texts = hf.pop("texts")
        metrics["hf_generate"] = hf
    if "pool" in parts:
        metrics["pooling"] = measure_pooling(
            model, tokenizer, studies, pool=args.pool, new_tokens=args.new_tokens, batch=args.pool_batch
        )
        metrics["pooling"]["quality_cost"] = (
            "not measured here (random weights): compare CheXpert F1 of the trained model with and without pooling"
        )
    if vllm_parts:
        with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
            workdir = Path(scratch)
            export_hf_llava(model, processor, workdir / "model")
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            runs = {variant: run_vllm_variant(variant, args, workdir) for variant in vllm_parts}
        metrics.update(compare(runs, hf_texts, metrics.get("hf_generate")))
    return {
        "name": "gpu" if not args.smoke else "gpu-smoke",
        "commit": git_commit(),
        "device": device_info(device),
        "versions": versions(),
        "config": {
            "shape": shape,
            "vision": f"CLIP ViT ({config.vision_config.num_hidden_layers} x {config.vision_config.hidden_size}) "
            f"at {args.image_size} px / 14 ({processor.num_image_tokens} visual tokens)",
            "text": f"Llama {config.text_config.num_hidden_layers} x {config.text_config.hidden_size}, "
            f"MLP {config.text_config.intermediate_size}, vocabulary {config.text_config.vocab_size}",
            "parameters": parameters,
            "dtype": str(dtype).removeprefix("torch."),
            "new_tokens": args.new_tokens,
            "requests": args.requests,
            "batches": args.batches,
            "pool": args.pool,
            "parts": parts,
            "model_build_s": round(build_s, 1),
        },
        "metrics": metrics,
        "targets": TARGETS,
    }


def compare(runs: dict[str, dict[str, Any]], hf_texts: list[str], hf: dict[str, Any] | None) -> dict[str, Any]:
    """The vLLM runs side by side: speed-ups, and greedy-output equality between configurations."""
    texts = {variant: run.pop("texts", []) for variant, run in runs.items()}
    out: dict[str, Any] = {"vllm": runs}
    base = runs.get("vllm", {})
    ratios: dict[str, float] = {}
    if hf is not None and "throughput" in base:
        for key, value in base["throughput"].items():
            ours, theirs = value.get("studies_per_s"), hf["throughput"].get(key, {}).get("studies_per_s")
            if ours and theirs:
                ratios[key] = round(ours / theirs, 2)
        out["vllm_over_hf_studies_per_s"] = ratios
        out["greedy_equal_fraction_vllm_vs_hf"] = equal_fraction(texts.get("vllm", []), hf_texts)
    effects: dict[str, Any] = {}
    if "prefix" in runs and "single_request" in base and "single_request" in runs["prefix"]:
        effects["prefix_caching"] = {
            "check_after_draft_p50_s": {
                "on": base["check_after_draft"]["p50_s"],
                "off": runs["prefix"]["check_after_draft"]["p50_s"],
            },
            "single_draft_p50_s": {
                "on": base["single_request"]["p50_s"],
                "off": runs["prefix"]["single_request"]["p50_s"],
            },
            "greedy_equal_fraction": equal_fraction(texts.get("vllm", []), texts.get("prefix", [])),
        }
    if "ngram" in runs and "single_request" in base and "single_request" in runs["ngram"]:
        effects["ngram_speculative_decoding"] = {
            "single_draft_p50_s": {
                "off": base["single_request"]["p50_s"],
                "on": runs["ngram"]["single_request"]["p50_s"],
            },
            "throughput": {"off": base["throughput"], "on": runs["ngram"]["throughput"]},
            "greedy_equal_fraction": equal_fraction(texts.get("vllm", []), texts.get("ngram", [])),
            "note": "random weights repeat themselves, which flatters n-gram lookup; confirm on the trained model",
        }
    if effects:
        out["effects"] = effects
    single = base.get("single_request", {}).get("p50_s")
    rates = [v.get("studies_per_s") or 0.0 for run in runs.values() for v in run.get("throughput", {}).values()]
    out["targets_met"] = {
        "single_p50_s": single is not None and single < TARGETS["single_p50_s_max_h100"],
        "batched_studies_per_s": bool(rates) and max(rates) >= TARGETS["batched_studies_per_s_min"],
        "vllm_over_hf_at_batch_32": ratios.get("batch_32", 0.0) >= TARGETS["vllm_over_hf_at_batch_32_min"],
    }
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default benchmarks/results/gpu.json)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"what to measure, from {','.join(PARTS)}")
    parser.add_argument("--requests", type=int, default=None, help="single requests timed one at a time (20)")
    parser.add_argument("--new-tokens", type=int, default=100, help="tokens per draft")
    parser.add_argument("--batches", default="1,8,32,64", help="batch sizes for studies/s")
    parser.add_argument("--pool", type=int, default=12, help="pooled grid side (12: 144 visual tokens)")
    parser.add_argument("--pool-batch", type=int, default=32, help="batch size for the pooled throughput")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--workdir", default=None, help="where the exported model is written (about 14 GB)")
    parser.add_argument("--worker-timeout", type=int, default=1800)
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, HF half only")
    parser.add_argument("--worker", choices=sorted(VLLM_VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--image-size", type=int, default=518, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.batches = [int(b) for b in str(args.batches).split(",") if b]
    except ValueError:
        parser.error(f"--batches takes comma-separated integers, got {args.batches!r}")
    if args.requests is None:
        args.requests = 3 if args.smoke else 20
    if args.smoke:
        args.new_tokens = min(args.new_tokens, 8)
        args.batches = [b for b in args.batches if b <= 2] or [1]
        args.pool, args.pool_batch = 2, 2
    if args.requests < 1 or args.new_tokens < 1 or not args.batches or min(args.batches) < 1:
        parser.error("--requests, --new-tokens and --batches must be positive")
    return args


def entry() -> int:
    args = parse_args()
    from radlvlm.errors import RadlvlmError

    try:
        if args.worker:
            vllm_worker(args)
            return 0
        report = main(args)
    except (BenchmarkError, RadlvlmError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or (None if args.smoke else Path(__file__).parent / "results" / "gpu.json")
    if out is None:
        json.dump(report["metrics"], sys.stdout, indent=2)
        print()
    else:
        save_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(entry())
