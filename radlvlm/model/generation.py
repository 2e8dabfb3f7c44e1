"""Batched report generation through HF ``generate`` (KV cache): greedy, beam search or sampling.

Deterministic for a given seed; stop strings end a row early; ``max_new_tokens`` caps every row.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import LlavaForConditionalGeneration

from radlvlm.errors import InputError
from radlvlm.model.decoding import GenerationSettings, Strategy
from radlvlm.model.processor import ImageInput, RadProcessor

__all__ = ["Generation", "GenerationBatch", "GenerationSettings", "Strategy", "decode_generation", "generate"]


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
