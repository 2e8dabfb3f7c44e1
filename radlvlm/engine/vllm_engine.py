"""The vLLM backend (A100/H100-class GPUs): an HF Llava export served by vLLM's engine, behind ``Engine``.

What it serves: a directory written by ``radlvlm convert export-hf`` (plain HF Llava + LlavaProcessor) whose
vision tower vLLM's Llava can build (CLIP or SigLIP), optionally with a peft LoRA adapter served
through vLLM's multi-LoRA. What it refuses at load, pointing to the torch backend: a MoLE adapter (each token
picks its expert, so it cannot be merged and vLLM has no kernel for it), any other vision tower (LLaVA-Rad's
DINOv2 among them: vLLM's Llava builds CLIP, SigLIP and Pixtral towers only, until a radlvlm model plugin lands),
visual-token pooling (vLLM's Llava does not pool), and GPUs older than compute capability 8.0 (V100), on which
vLLM's engine does not run.

Requests go through the same dynamic-batching queue as the torch backend; each group is one ``LLM.generate``
call, inside which vLLM batches continuously. ``run_all`` hands a whole offline validation run to one
``LLM.generate`` per group of requests decoded alike. The model's inputs are built exactly as the torch backend
builds them: the same prompt token ids (so vLLM adds no second BOS), and the radiograph's own pixels, which vLLM's
LlavaProcessor prepares with the image processor exported with the model: radlvlm's ``RadImageProcessor``, the
torch backend's transform (registered in vLLM's processes by radlvlm's ``vllm.general_plugins`` entry point).
Outputs are decoded by the same function as the torch backend's.

The mapping in both directions is pure functions over plain data (token ids, PIL images, dicts of sampling
arguments, duck-typed ``RequestOutput``), tested on CPU without vLLM; vLLM is imported only when an engine starts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage

from radlvlm.engine.base import EngineImage, Generated, GenerateRequest, GenerationStream, Request, Result
from radlvlm.engine.batching import BatchingEngine, Pending, validate_request
from radlvlm.errors import InputError, ModelError
from radlvlm.model.configuration import PooledRadLlavaConfig, read_json_object
from radlvlm.model.generation import Generation, GenerationSettings, decode_generation
from radlvlm.model.image_processing import RadImageProcessor
from radlvlm.model.processor import PROCESSOR_CONFIG, RadProcessor
from radlvlm.settings import VLLMOptions

logger = logging.getLogger(__name__)

# vision_config.model_type → the tower vLLM's Llava builds for it (init_vision_tower_for_llava). It also builds
# Pixtral, whose variable-size images and own processor radlvlm models do not use.
VLLM_VISION_TOWERS: dict[str, str] = {"clip_vision_model": "CLIP", "siglip_vision_model": "SigLIP"}
MIN_COMPUTE_CAPABILITY = (8, 0)
# LoRA ranks vLLM's max_lora_rank accepts; an adapter's rank is rounded up to the next one.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
HF_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
MOLE_CONFIG = "mole_config.json"
PEFT_CONFIG = "adapter_config.json"

INSTALL_HINT = (
    "install the [vllm] extra in its own CUDA environment "
    '(python3 -m venv .venv-vllm && .venv-vllm/bin/pip install -e ".[vllm]")'
)
TORCH_BACKEND = "serve it with the torch backend (RADLVLM_BACKEND=torch, or --backend torch)"


# -- options -------------------------------------------------------------------------------------


# -- what vLLM can load --------------------------------------------------------------------------


@dataclass(frozen=True)
class VLLMModelSpec:
    """A model directory (and adapter) checked for vLLM: what ``engine_kwargs`` and the engine need."""

    model_dir: Path
    vision_model: str  # the vision config's model_type (clip_vision_model or siglip_vision_model)
    text_model: str
    image_tokens: int | None
    adapter_dir: Path | None = None
    lora_rank: int | None = None
    radlvlm_images: bool = True  # the export's image processor is radlvlm's (it takes float pixels)


def check_vllm_config(config: Mapping[str, Any], where: str) -> None:
    """Refuse a model config vLLM's Llava cannot run as radlvlm means it, saying what to do instead."""
    architectures = list(config.get("architectures") or [])
    pooled = config.get("model_type") == PooledRadLlavaConfig.model_type or config.get("visual_token_pool")
    if pooled or "RadLlavaForConditionalGeneration" in architectures:
        raise ModelError(
            f"{where}: visual-token pooling is a radlvlm extension that vLLM's Llava does not run; {TORCH_BACKEND}"
        )
    if config.get("model_type") != "llava":
        raise ModelError(f"{where}: model_type is {config.get('model_type')!r}, not an HF Llava model")
    vision = config.get("vision_config") or {}
    tower = vision.get("model_type")
    if tower not in VLLM_VISION_TOWERS:
        raise ModelError(
            f"{where}: vLLM's Llava serves radlvlm models with {' or '.join(VLLM_VISION_TOWERS.values())} vision "
            f"towers only, not {tower!r} (LLaVA-Rad's tower is DINOv2); {TORCH_BACKEND} until the radlvlm vLLM "
            "model plugin lands"
        )
    if int(vision.get("num_channels", 3)) != 3:
        raise ModelError(
            f"{where}: vLLM's Llava processor makes RGB images; a {vision['num_channels']}-channel "
            f"tower needs the torch backend"
        )


def check_adapter(adapter_dir: Path) -> int:
    """The rank of a peft LoRA adapter vLLM can serve; refuses MoLE and anything else."""
    if not adapter_dir.is_dir():
        raise ModelError(f"{adapter_dir}: adapter directory not found")
    if (adapter_dir / MOLE_CONFIG).is_file():
        raise ModelError(
            f"{adapter_dir}: a MoLE adapter cannot be served by vLLM (each token uses its own expert, so it "
            f"cannot be merged, and vLLM has no MoLE kernel); {TORCH_BACKEND}"
        )
    path = adapter_dir / PEFT_CONFIG
    if not path.is_file():
        raise ModelError(
            f"{adapter_dir}: neither a MoLE adapter ({MOLE_CONFIG}) nor a peft LoRA adapter ({PEFT_CONFIG})"
        )
    config = read_json_object(path)
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise ModelError(f"{adapter_dir}: peft adapter type {config.get('peft_type')!r}; vLLM serves LoRA only")
    if config.get("modules_to_save"):
        # vLLM's multi-LoRA serves low-rank deltas only; fully trained modules must be merged into the export.
        raise ModelError(
            f"{adapter_dir}: the adapter also saves whole modules ({', '.join(map(str, config['modules_to_save']))}), "
            "which vLLM's multi-LoRA cannot serve; merge it into the export instead: "
            f"radlvlm convert export-hf --model BASE --adapter {adapter_dir} --out MERGED"
        )
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise ModelError(f"{adapter_dir}: {PEFT_CONFIG} has no positive LoRA rank 'r'")
    if rank > VLLM_LORA_RANKS[-1]:
        raise ModelError(f"{adapter_dir}: LoRA rank {rank} is above vLLM's largest ({VLLM_LORA_RANKS[-1]})")
    return rank


def vllm_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of ``rank``."""
    return next(allowed for allowed in VLLM_LORA_RANKS if allowed >= rank)


def inspect_model_dir(model_dir: str | Path, adapter_dir: str | Path | None = None) -> VLLMModelSpec:
    """Check that vLLM can serve ``model_dir`` (+ ``adapter_dir``) before any GPU work; refusals say why."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir}: no config.json; not a model directory")
    config = read_json_object(model_dir / "config.json")
    check_vllm_config(config, str(model_dir))
    export_hint = (
        f"vLLM needs an HF Llava export: radlvlm convert export-hf --model {model_dir} --out {model_dir.name}-hf"
    )
    if not any((model_dir / name).is_file() for name in HF_PROCESSOR_FILES):
        raise ModelError(f"{model_dir}: no HF processor files ({' or '.join(HF_PROCESSOR_FILES)}); {export_hint}")
    if (model_dir / PROCESSOR_CONFIG).is_file():
        kind = read_json_object(model_dir / PROCESSOR_CONFIG).get("processor_class")
        if kind != "LlavaProcessor":
            raise ModelError(f"{model_dir}: its processor is a {kind!r}, not HF's LlavaProcessor; {export_hint}")
    vision, text = config["vision_config"], config.get("text_config") or {}
    image_tokens = None
    if vision.get("image_size") and vision.get("patch_size"):
        image_tokens = (int(vision["image_size"]) // int(vision["patch_size"])) ** 2
        if config.get("vision_feature_select_strategy") == "full" and vision["model_type"] != "siglip_vision_model":
            image_tokens += 1  # the CLS token is kept
    adapter = Path(adapter_dir) if adapter_dir is not None else None
    rank = check_adapter(adapter) if adapter is not None else None
    return VLLMModelSpec(
        radlvlm_images=image_processor_type(model_dir) == RadImageProcessor.__name__,
        model_dir=model_dir,
        vision_model=str(vision["model_type"]),
        text_model=str(text.get("model_type", "llama")),
        image_tokens=image_tokens,
        adapter_dir=adapter,
        lora_rank=rank,
    )


def image_processor_type(model_dir: Path) -> str | None:
    """The class an export's image processor names (nested in ``processor_config.json`` or on its own)."""
    processor = read_json_object(model_dir / PROCESSOR_CONFIG) if (model_dir / PROCESSOR_CONFIG).is_file() else {}
    image = processor.get("image_processor")
    if not isinstance(image, dict):
        path = model_dir / "preprocessor_config.json"
        image = read_json_object(path) if path.is_file() else {}
    kind = image.get("image_processor_type")
    return str(kind) if kind else None


def check_gpu(capability: tuple[int, int] | None, name: str = "this GPU") -> None:
    """Refuse to start vLLM without a CUDA GPU of compute capability 8.0 or newer (A100, L4, H100 …)."""
    if capability is None:
        raise ModelError(f"the vLLM backend needs a CUDA GPU and none is visible; {TORCH_BACKEND} (it runs on CPU)")
    if tuple(capability) < MIN_COMPUTE_CAPABILITY:
        major, minor = capability
        raise ModelError(
            f"{name} has compute capability {major}.{minor}; vLLM's engine needs "
            f"{MIN_COMPUTE_CAPABILITY[0]}.{MIN_COMPUTE_CAPABILITY[1]} or newer (A100/H100-class): on V100-class "
            f"GPUs {TORCH_BACKEND}"
        )


def engine_kwargs(spec: VLLMModelSpec, options: VLLMOptions) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM``: local files only, one image per prompt, radlvlm's options."""
    kwargs: dict[str, Any] = {
        "model": str(spec.model_dir),
        "tokenizer": str(spec.model_dir),
        "dtype": options.dtype,
        "seed": options.seed,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "enable_prefix_caching": options.enable_prefix_caching,
        "enforce_eager": options.enforce_eager,
        "limit_mm_per_prompt": {"image": 1},
        # Our sampling parameters are explicit; the export's generation_config.json must not override them.
        "generation_config": "vllm",
        # A SIMPLE check reads the yes/no log-probabilities after the allowed-token mask (both are returned).
        "logprobs_mode": "processed_logprobs",
    }
    if options.max_model_len is not None:
        kwargs["max_model_len"] = options.max_model_len
    if options.max_num_seqs is not None:
        kwargs["max_num_seqs"] = options.max_num_seqs
    if spec.lora_rank is not None:
        kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=vllm_lora_rank(spec.lora_rank))
    if options.ngram_speculative_tokens:
        kwargs["speculative_config"] = {
            "method": "ngram",
            "num_speculative_tokens": options.ngram_speculative_tokens,
            "prompt_lookup_min": options.ngram_lookup_min,
            "prompt_lookup_max": options.ngram_lookup_max,
        }
    return kwargs


def processor_for(model_dir: Path) -> RadProcessor:
    """radlvlm's processor for an export (an HF ``LlavaProcessor`` directory; see ``RadProcessor.from_pretrained``)."""
    return RadProcessor.from_pretrained(model_dir)


# -- our requests → vLLM inputs ------------------------------------------------------------------


def vllm_image(image: EngineImage, *, float_pixels: bool = True) -> PILImage.Image:
    """The image as vLLM's processor should receive it: the radiograph itself, not a prepared tensor.

    A radlvlm export names radlvlm's image processor (``RadImageProcessor``), which vLLM's ``LlavaProcessor``
    runs (radlvlm registers it in every vLLM process through its plugin), so vLLM prepares the image exactly as
    the torch backend does: it gets the display pixels in [0, 1] as a 32-bit float image (mode ``F``), no 8-bit
    rounding. A llava-hf checkpoint's CLIP image processor takes 8-bit RGB (``float_pixels=False``), as it was
    trained on.
    """
    if isinstance(image, torch.Tensor):
        if image.ndim == 3 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 2:
            raise InputError(f"the vLLM backend takes grayscale pixels (rows, columns), got {tuple(image.shape)}")
        pixels = image.float().clamp(0.0, 1.0).numpy()
    else:
        pixels = image.array
    if float_pixels:
        return PILImage.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F")
    gray = PILImage.fromarray(np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8), mode="L")
    return gray.convert("RGB")


def prompt_input(prompt_ids: Sequence[int], image: EngineImage | None, *, float_pixels: bool = True) -> dict[str, Any]:
    """One vLLM prompt: the prompt's token ids (one ``<image>``, which vLLM expands) and the image.

    Token ids, not text: they are the ones the model's family was trained on (``processor.prompt_ids``: the
    chat template's BOS, or LLaVA's piece-by-piece tokenisation), which vLLM's own tokenising would not give.
    """
    prompt: dict[str, Any] = {"prompt_token_ids": [int(t) for t in prompt_ids]}
    if image is not None:
        prompt["multi_modal_data"] = {"image": vllm_image(image, float_pixels=float_pixels)}
    return prompt


def generation_sampling(settings: GenerationSettings) -> dict[str, Any]:
    """``SamplingParams`` arguments equivalent to ``settings`` (greedy or sampling; beam search is refused).

    vLLM has no n-gram ban: ``no_repeat_ngram_size`` (a task's second try for a looping draft) is served by the
    repetition penalty alone."""
    if settings.strategy == "beam":
        raise ModelError("beam search is not served by the vLLM backend; use greedy or sampling, or the torch backend")
    kwargs: dict[str, Any] = {
        "max_tokens": settings.max_new_tokens,
        "repetition_penalty": settings.repetition_penalty,
        "skip_special_tokens": True,
    }
    if settings.stop_strings:
        kwargs["stop"] = list(settings.stop_strings)
    if settings.strategy == "greedy":
        kwargs["temperature"] = 0.0
    else:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed)
    return kwargs


def score_sampling(candidates: Sequence[int]) -> dict[str, Any]:
    """One greedy token restricted to the candidates, with the log-probability of each."""
    return {"max_tokens": 1, "temperature": 0.0, "logprobs": len(candidates), "allowed_token_ids": list(candidates)}


# -- vLLM outputs → our results ------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """What radlvlm reads of a vLLM ``RequestOutput``: the generated ids, why it ended, first-step logprobs."""

    token_ids: list[int]
    finish_reason: str
    first_logprobs: dict[int, float]


def completion_of(output: Any) -> Completion:
    """Read ``output.outputs[0]`` (a vLLM ``CompletionOutput``); an aborted or empty output is an error."""
    outputs = list(getattr(output, "outputs", None) or [])
    if not outputs:
        raise ModelError("vLLM returned no completion for a request")
    first = outputs[0]
    reason = getattr(first, "finish_reason", None)
    if reason not in ("stop", "length"):
        raise ModelError(f"vLLM did not finish a request (finish reason {reason!r})")
    steps = getattr(first, "logprobs", None) or []
    first_logprobs: dict[int, float] = {}
    if steps:
        for token, value in dict(steps[0]).items():
            logprob = float(getattr(value, "logprob", value))
            if not math.isnan(logprob):
                first_logprobs[int(token)] = logprob
    return Completion([int(t) for t in first.token_ids], str(reason), first_logprobs)


# -- the engine ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VLLMBindings:
    """The three vLLM callables the engine uses (``LLM``, ``SamplingParams``, ``LoRARequest``); tests pass fakes."""

    make_llm: Callable[..., Any]
    sampling_params: Callable[..., Any]
    lora_request: Callable[..., Any]

    @classmethod
    def from_vllm(cls) -> VLLMBindings:
        try:
            import vllm  # noqa: PLC0415 - vLLM: the optional GPU extra
            from vllm.lora.request import LoRARequest  # noqa: PLC0415 - vLLM: the optional GPU extra
        except ImportError as e:
            raise ModelError(f"the vLLM backend needs vLLM, which is not installed here: {INSTALL_HINT}") from e
        return cls(make_llm=vllm.LLM, sampling_params=vllm.SamplingParams, lora_request=LoRARequest)


class VLLMEngine(BatchingEngine):
    """The ``Engine`` interface over a ``vllm.LLM``: generations, scorings and (whole-text) streams.

    Args:
        llm: a started ``vllm.LLM`` (or an object with its ``generate``).
        processor: radlvlm's processor for the model (tokenizer, image preprocessing).
        bindings: vLLM's ``SamplingParams`` and ``LoRARequest`` (see ``VLLMBindings``).
        model_id (str): reported with every result.
        adapter_dir (Path | None): a peft LoRA adapter served through vLLM's multi-LoRA on every request.
        max_batch_size, max_wait_ms, max_queue: the dynamic batching of the service (see ``BatchingEngine``).
        generation (GenerationSettings): decode settings of a request that names none (greedy, 256 new tokens).
        float_pixels (bool, default True): hand vLLM float images (the export's image processor is radlvlm's);
            False for an HF image processor that takes 8-bit RGB.
    """

    def __init__(
        self,
        llm: Any,
        processor: RadProcessor,
        *,
        bindings: VLLMBindings,
        model_id: str,
        adapter_dir: Path | None = None,
        max_batch_size: int = 8,
        max_wait_ms: float = 25.0,
        max_queue: int = 64,
        generation: GenerationSettings | None = None,
        float_pixels: bool = True,
    ) -> None:
        generation = generation or GenerationSettings()
        if generation.strategy == "beam":
            raise ModelError(
                "beam search is not served by the vLLM backend; use greedy or sampling, or the torch backend"
            )
        super().__init__(
            processor=processor,
            model_id=model_id,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            generation=generation,
            thread_name="radlvlm-vllm-engine",
        )
        self.llm = llm
        self.float_pixels = float_pixels
        self.bindings = bindings
        self.lora = bindings.lora_request(adapter_dir.name, 1, str(adapter_dir)) if adapter_dir is not None else None
        self._generate_lock = threading.Lock()  # the worker and run_all never drive the LLM at once
        self._start()

    def run_all(self, requests: Sequence[Request]) -> list[Result]:
        """Run an offline batch (a validation study) on vLLM's batch engine, in this thread: one ``generate``
        per group of requests decoded alike (all drafts at once, all scorings at once). Streams are not
        offered here; results come back in the order of ``requests``."""
        pending: list[Pending] = []
        for request in requests:
            if isinstance(request, GenerateRequest) and request.stream:
                raise InputError("an offline batch takes generations and scorings, not streams")
            validate_request(request, self.processor)
            pending.append(Pending(self.prepare_image(request), Future(), time.perf_counter()))
        self._run_batch(pending)
        return [item.future.result() for item in pending]

    def prepare_image(self, request: Request) -> Request:
        """Unchanged: vLLM prepares the image itself, with the export's image processor (see ``vllm_image``)."""
        return request

    # -- groups -----------------------------------------------------------------------------------

    def _completions(self, prompts: list[dict[str, Any]], sampling: dict[str, Any]) -> list[Completion]:
        params = self.bindings.sampling_params(**sampling)
        with self._generate_lock:
            outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora)
        if len(outputs) != len(prompts):
            raise ModelError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        return [completion_of(output) for output in outputs]

    def _prompts(self, items: list[Pending]) -> list[dict[str, Any]]:
        return [
            prompt_input(item.request.prompt_ids, item.request.image, float_pixels=self.float_pixels) for item in items
        ]

    def _generate(self, items: list[Pending], settings: GenerationSettings) -> list[Generation]:
        completions = self._completions(self._prompts(items), generation_sampling(settings))
        return [decode_generation(c.token_ids, self.processor, settings) for c in completions]

    def _stream(self, item: Pending, settings: GenerationSettings, start: float) -> None:
        """vLLM's offline engine returns whole completions: the stream carries the text in one piece."""
        (generation,) = self._generate([item], settings)
        timings = self._timings(item, start, 1)
        stream = GenerationStream([generation.text] if generation.text else [])
        stream.finish(Generated(generation.text, generation.new_tokens, generation.finish_reason, timings))
        item.future.set_result(stream)

    def _score(self, items: list[Pending]) -> list[dict[int, float]]:
        """One restricted one-token ``generate`` per set of candidates (a model's checks share one set)."""
        by_candidates: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            by_candidates[item.request.candidates].append(index)  # type: ignore[union-attr]
        scores: dict[int, dict[int, float]] = {}
        for candidates, indices in by_candidates.items():
            prompts = self._prompts([items[i] for i in indices])
            for index, completion in zip(indices, self._completions(prompts, score_sampling(candidates)), strict=True):
                scores[index] = {c: completion.first_logprobs.get(c, -math.inf) for c in candidates}
        return [scores[i] for i in range(len(items))]

    def _release(self) -> None:
        self.llm = None


def check_vllm_can_start(
    model_dir: str | Path, adapter_dir: str | Path | None = None, gpu: tuple[tuple[int, int] | None, str] | None = None
) -> VLLMModelSpec:
    """The refusals that need neither vLLM nor GPU work: the model, the adapter and the GPU (None detects it)."""
    spec = inspect_model_dir(model_dir, adapter_dir)
    capability, gpu_name = gpu if gpu is not None else detect_gpu()
    check_gpu(capability, gpu_name)
    return spec


def load_vllm_engine(
    model_dir: str | Path,
    *,
    adapter_dir: str | Path | None = None,
    options: VLLMOptions | None = None,
    model_id: str | None = None,
    max_batch_size: int = 8,
    max_wait_ms: float = 25.0,
    max_queue: int = 64,
    generation: GenerationSettings | None = None,
    bindings: VLLMBindings | None = None,
    gpu: tuple[tuple[int, int] | None, str] | None = None,
) -> tuple[VLLMEngine, VLLMModelSpec]:
    """Check the model, the adapter and the GPU, then start vLLM on them (refusals come before any GPU work).

    ``gpu`` is (compute capability, name) of the GPU to check; None detects it. ``bindings`` default to vLLM's.
    """
    spec = check_vllm_can_start(model_dir, adapter_dir, gpu)
    options = options or VLLMOptions()
    processor = processor_for(spec.model_dir)
    bindings = bindings or VLLMBindings.from_vllm()
    kwargs = engine_kwargs(spec, options)
    try:
        llm = bindings.make_llm(**kwargs)
    except (ValueError, RuntimeError, OSError, NotImplementedError) as e:
        raise ModelError(
            f"{spec.model_dir}: vLLM could not load the model ({type(e).__name__}: {_first_line(e)})"
        ) from e
    engine = VLLMEngine(
        llm,
        processor,
        bindings=bindings,
        model_id=model_id or spec.model_dir.name,
        adapter_dir=spec.adapter_dir,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        generation=generation,
        float_pixels=spec.radlvlm_images,
    )
    return engine, spec


def detect_gpu() -> tuple[tuple[int, int] | None, str]:
    """(compute capability, name) of the first CUDA GPU, or (None, "this machine") without one."""
    if not torch.cuda.is_available():
        return None, "this machine"
    major, minor = torch.cuda.get_device_capability(0)
    return (int(major), int(minor)), torch.cuda.get_device_name(0)


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__
