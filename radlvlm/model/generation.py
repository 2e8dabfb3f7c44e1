"""Batched report generation through HF ``generate`` (KV cache): greedy, beam search or sampling.

Deterministic for a given seed; stop strings end a row early; ``max_new_tokens`` caps every row.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import GenerationConfig, LlavaForConditionalGeneration

from radlvlm.errors import InputError
from radlvlm.model.processor import ImageInput, RadProcessor

Strategy = Literal["greedy", "beam", "sample"]


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode.

    Args:
        strategy ("greedy" | "beam" | "sample", default "greedy"): decoding strategy.
        max_new_tokens (int, default 256): hard cap on generated tokens per row.
        num_beams (int, default 4): beams for "beam".
        temperature (float, default 0.7) and top_p (float, default 0.9): for "sample".
        repetition_penalty (float, default 1.0): 1.0 disables it.
        no_repeat_ngram_size (int, default 0): no n-gram of this many tokens is generated twice; 0 disables it.
        seed (int, default 0): seeds sampling so a request is reproducible.
        stop_strings (tuple[str, ...], default ()): generation of a row stops when one of these appears; the
            text is cut before it.
    """

    strategy: Strategy = "greedy"
    max_new_tokens: int = 256
    num_beams: int = 4
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int = 0
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "beam", "sample"):
            raise InputError(f"strategy must be greedy, beam or sample, got {self.strategy!r}")
        if self.no_repeat_ngram_size < 0:
            raise InputError(f"no_repeat_ngram_size must be 0 (off) or positive, got {self.no_repeat_ngram_size}")
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.strategy == "beam" and self.num_beams < 2:
            raise InputError(f"beam search needs num_beams >= 2, got {self.num_beams}")
        if self.strategy == "sample" and (self.temperature <= 0 or not 0 < self.top_p <= 1):
            raise InputError("sampling needs temperature > 0 and 0 < top_p <= 1")

    def to_generation_config(self, processor: RadProcessor) -> GenerationConfig:
        tokenizer = processor.tokenizer
        values: dict[str, object] = {
            "max_new_tokens": self.max_new_tokens,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "repetition_penalty": self.repetition_penalty,
            "use_cache": True,
            # <image> is an input placeholder, never an answer: a converted LLaVA model has no such row in its
            # vocabulary (LLaVA marks images with id -200), so its added row must not be generated either.
            "suppress_tokens": [processor.image_token_id],
        }
        if self.no_repeat_ngram_size:
            values["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.stop_strings:
            values["stop_strings"] = list(self.stop_strings)
        if self.strategy == "greedy":
            values.update(do_sample=False, num_beams=1)
        elif self.strategy == "beam":
            values.update(do_sample=False, num_beams=self.num_beams, early_stopping=True)
        else:
            values.update(do_sample=True, num_beams=1, temperature=self.temperature, top_p=self.top_p)
        return GenerationConfig(**values)


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    finish_reason: Literal["stop", "length"]


@dataclass(frozen=True)
class GenerationBatch:
    generations: list[Generation]
    seconds: float


@torch.inference_mode()
def generate(
    model: LlavaForConditionalGeneration,
    processor: RadProcessor,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    images: Sequence[ImageInput | None] | None = None,
    settings: GenerationSettings | None = None,
    streamer: Any | None = None,
) -> GenerationBatch:
    """Generate one continuation per prompt (formatted prompts, e.g. from ``processor.chat_prompt``, or their
    token ids from ``processor.prompt_ids``).

    ``streamer`` (a transformers streamer, batch of one prompt) receives the text as it is generated.
    """
    settings = settings or GenerationSettings()
    batch = processor(list(prompts), images)
    device = next(model.parameters()).device
    inputs = {key: value.to(device) for key, value in batch.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    if streamer is not None and len(prompts) != 1:
        raise InputError("streaming generates one prompt at a time")
    output = model.generate(
        **inputs,
        generation_config=settings.to_generation_config(processor),
        tokenizer=processor.tokenizer,
        streamer=streamer,
    )
    seconds = time.perf_counter() - start
    prompt_width = inputs["input_ids"].shape[1]
    generations = [decode_generation(row.tolist(), processor, settings) for row in output[:, prompt_width:]]
    return GenerationBatch(generations=generations, seconds=seconds)


def decode_generation(tokens: Sequence[int], processor: RadProcessor, settings: GenerationSettings) -> Generation:
    """One row's generated token ids → its text, length and finish reason (shared by every backend).

    The first EOS (or pad: a finished row of a batch is padded) ends the row; the text is cut before the
    first stop string.
    """
    eos, pad = processor.tokenizer.eos_token_id, processor.tokenizer.pad_token_id
    tokens = list(tokens)
    length = next((i for i, token in enumerate(tokens) if token in (eos, pad)), len(tokens))
    text = processor.decode(tokens[:length])
    stopped = length < len(tokens)
    for stop in settings.stop_strings:
        cut = text.find(stop)
        if cut >= 0:
            text, stopped = text[:cut].rstrip(), True
    finish: Literal["stop", "length"] = "stop" if stopped or length < settings.max_new_tokens else "length"
    return Generation(text=text, new_tokens=length, finish_reason=finish)
