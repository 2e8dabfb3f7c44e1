"""The engine interface: generation and scoring over prompt token ids, pixels and decode settings, batched.

An engine knows no task. What a draft or an error check asks, how it is decoded and what its answer means
is :mod:`radlvlm.tasks`'s (one object per task); the pipeline pairs a task with the engine. The torch backend
(CPU/GPU, MoLE-capable) and the vLLM backend (GPU) implement this interface, as vLLM's own engine sees prompts
and sampling parameters and leaves what a request means to the layers above it.
"""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from radlvlm.errors import RadlvlmError
from radlvlm.imaging import Image
from radlvlm.model.decoding import GenerationSettings

if TYPE_CHECKING:
    from radlvlm.model.processor import RadProcessor

EngineImage = Image | torch.Tensor


class EngineOverloaded(RadlvlmError):
    """The request queue is full; retry after ``retry_after_s`` seconds (the service answers 503)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineClosed(RadlvlmError):
    """The engine was shut down before the request ran."""


@dataclass(frozen=True)
class Retry:
    """A second try for a generation whose text ``rejects`` refuses (a test the task gives: a draft caught in a
    repetition loop, say), decoded with ``settings``; what still fails it comes back marked ``rejected``."""

    rejects: Callable[[str], bool]
    settings: GenerationSettings


@dataclass(frozen=True, eq=False)
class GenerateRequest:
    """Generate a continuation of ``prompt_ids``.

    Args:
        prompt_ids: the formatted prompt's token ids as the model's family tokenises them
            (:meth:`radlvlm.model.processor.RadProcessor.prompt_ids`), one image placeholder where the image goes.
        image: the image (or None for a text-only prompt).
        settings: how to decode (None: the engine's default settings).
        retry: a second try for a continuation the task refuses.
        stream: deliver the text as it is generated (the future resolves to a :class:`GenerationStream`).
    """

    prompt_ids: tuple[int, ...]
    image: EngineImage | None = None
    settings: GenerationSettings | None = None
    retry: Retry | None = None
    stream: bool = False


@dataclass(frozen=True, eq=False)
class ScoreRequest:
    """The log-probabilities of ``candidates`` as the token that follows ``prompt_ids`` (with ``image``)."""

    prompt_ids: tuple[int, ...]
    candidates: tuple[int, ...]
    image: EngineImage | None = None


@dataclass(frozen=True)
class Timings:
    queued_ms: float
    compute_ms: float
    total_ms: float
    batch_size: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "queued_ms": round(self.queued_ms, 2),
            "compute_ms": round(self.compute_ms, 2),
            "total_ms": round(self.total_ms, 2),
            "batch_size": self.batch_size,
        }


@dataclass(frozen=True)
class Generated:
    """A continuation: its text (cut at the first stop string), how many tokens it took, why it ended, and
    whether the request's retry test still refuses it."""

    text: str
    new_tokens: int
    finish_reason: Literal["stop", "length"]
    timings: Timings
    rejected: bool = False


@dataclass(frozen=True)
class Scored:
    """The next-token log-probability of each candidate (``-inf`` where the model left it none)."""

    logprobs: dict[int, float]
    timings: Timings


@dataclass
class EngineStats:
    requests: int = 0
    batches: int = 0
    rejected: int = 0
    failed: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "rejected": self.rejected,
            "failed": self.failed,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
        }


class GenerationStream:
    """Text pieces of a streaming generation, in order; iteration ends when generation does."""

    def __init__(self, pieces: Any) -> None:
        self._pieces = pieces  # a transformers TextIteratorStreamer, or the whole text as one piece
        self._result: Generated | None = None
        self._finished = threading.Event()

    def __iter__(self) -> Any:
        return iter(self._pieces)

    def finish(self, result: Generated | None) -> None:
        """Called by the engine when generation ends (``None`` when it failed)."""
        self._result = result
        self._finished.set()

    def result(self, timeout: float | None = None) -> Generated | None:
        """The whole continuation once generation has ended; None if it failed or did not end in ``timeout``."""
        self._finished.wait(timeout)
        return self._result


Request = GenerateRequest | ScoreRequest
Result = Generated | Scored | GenerationStream


class Engine(abc.ABC):
    """A backend that generates and scores, batched.

    Attributes:
        model_id: reported with every answer.
        processor: the served model's tokenizer, prompt format and image preprocessing (what a task builds its
            prompt ids with).
        generation: the decode settings of a request that names none.
    """

    model_id: str
    processor: RadProcessor
    generation: GenerationSettings

    @abc.abstractmethod
    def submit(self, request: Request) -> Future[Result]:
        """Queue ``request``; raises ``EngineOverloaded`` at once when the queue is full."""

    def at_the_door(self) -> AbstractContextManager[None]:
        """While a caller builds a request it is about to submit (a task tokenising its prompt): a batch that is
        forming waits for it, as for a request already inside ``submit`` (nothing to wait for by default)."""
        return contextlib.nullcontext()

    def run(self, request: Request, timeout: float | None = None) -> Result:
        """Submit and wait for the result."""
        return self.submit(request).result(timeout=timeout)

    def run_all(self, requests: Sequence[Request]) -> list[Result]:
        """Run an offline batch (a validation study) and return the results in order."""
        return [future.result() for future in [self.submit(request) for request in requests]]

    def warmup(self) -> None:
        """Run one generation and one scoring end to end so the first real request does not pay for lazy
        initialisation (a blank image and a minimal prompt: nothing task-specific)."""
        size = self.processor.image_config.size
        with_image = tuple(self.processor.prompt_ids(self.processor.chat_prompt("Describe the image.")))
        text_only = tuple(self.processor.prompt_ids(self.processor.chat_prompt("Answer.", image=False)))
        first = self.processor.tokenizer.eos_token_id or 0
        self.run(GenerateRequest(with_image, torch.zeros(size, size), GenerationSettings(max_new_tokens=2)))
        self.run(ScoreRequest(text_only, (int(first),)))

    @abc.abstractmethod
    def close(self) -> None:
        """Stop accepting requests, finish what is queued, release the model."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counters for /metrics."""
