"""How to decode: the settings a generation runs with, apart from the generation code, so that the engine's and
the tasks' request types (and the service that imports them before it listens) do not load transformers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from radlvlm.errors import InputError

if TYPE_CHECKING:
    from transformers import GenerationConfig

    from radlvlm.model.processor import RadProcessor

__all__ = ["GenerationSettings", "Strategy"]

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
        from transformers import GenerationConfig  # noqa: PLC0415 - transformers: only where a model decodes

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
