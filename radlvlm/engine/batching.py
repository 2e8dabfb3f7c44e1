"""Dynamic batching shared by the backends: a bounded queue, one worker thread, requests grouped by kind.

Requests wait in a bounded queue; the worker takes the first, then whatever else is queued, and waits (at most
``max_wait_ms``) only for requests already at the door (their images being prepared in their own threads), so a
lone request starts at once and a burst of concurrent clients forms one batch. It hands the batch to the backend
in groups (generations with the same decode settings together, scorings together, each stream alone), and runs
a generation the request's retry test refuses once more with the retry's settings. A full queue rejects at once
(``EngineOverloaded``, which the service turns into 503 + Retry-After) rather than letting callers hang. A
failed group fails its own requests, never the worker.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from radlvlm.engine.base import (
    Engine,
    EngineClosed,
    EngineOverloaded,
    EngineStats,
    Generated,
    GenerateRequest,
    Request,
    Result,
    Retry,
    Scored,
    ScoreRequest,
    Timings,
)
from radlvlm.errors import EngineError, InputError
from radlvlm.model.generation import Generation, GenerationSettings
from radlvlm.model.processor import RadProcessor

logger = logging.getLogger(__name__)


@dataclass
class Pending:
    """A queued request, the future its caller waits on, and when it was queued (``time.perf_counter``)."""

    request: Request
    future: Future[Result]
    enqueued: float


# How often the worker looks again while a request is being prepared at the door (it also wakes when one is queued).
ARRIVAL_POLL_S = 0.001


class BatchingEngine(Engine):
    """The queue and worker of a dynamic-batching backend; subclasses run the groups.

    Args:
        processor (RadProcessor): the served model's processor (prompt length, image preprocessing).
        model_id (str): reported with every result.
        max_batch_size (int, default 8): most requests run together.
        max_wait_ms (float, default 25.0): the longest the first request of a batch waits for requests already
            being prepared (never for requests not yet submitted).
        max_queue (int, default 64): queued requests beyond this are rejected with ``EngineOverloaded``.
        generation (GenerationSettings): decode settings of a request that names none.
        thread_name (str): the worker thread's name (shows in stack dumps).
    """

    def __init__(
        self,
        *,
        processor: RadProcessor,
        model_id: str,
        max_batch_size: int = 8,
        max_wait_ms: float = 25.0,
        max_queue: int = 64,
        generation: GenerationSettings | None = None,
        thread_name: str = "radlvlm-engine",
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise InputError("max_batch_size and max_queue must be >= 1 and max_wait_ms >= 0")
        self.processor = processor
        self.model_id = model_id
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.generation = generation or GenerationSettings()
        self._queue: queue.Queue[Pending | None] = queue.Queue(maxsize=max_queue)
        self._stats = EngineStats()
        self._lock = threading.Lock()
        self._arriving = 0  # requests inside submit(): validated or being prepared, not yet queued
        self._closed = False
        self._worker = threading.Thread(target=self._serve, name=thread_name, daemon=True)

    def _start(self) -> None:
        """Start the worker; subclasses call this last in ``__init__``, once the model is ready."""
        self._worker.start()

    # -- Engine interface -------------------------------------------------------------------------

    def submit(self, request: Request) -> Future[Result]:
        if self._closed:
            raise EngineClosed("the engine is shut down")
        validate_request(request, self.processor)
        with self.at_the_door():
            return self._enqueue(request)

    @contextlib.contextmanager
    def at_the_door(self) -> Iterator[None]:
        with self._lock:
            self._arriving += 1
        try:
            yield
        finally:
            with self._lock:
                self._arriving -= 1

    def _enqueue(self, request: Request) -> Future[Result]:
        future: Future[Result] = Future()
        request = self.prepare_image(request)
        try:
            self._queue.put_nowait(Pending(request, future, time.perf_counter()))
        except queue.Full:
            with self._lock:
                self._stats.rejected += 1
            raise EngineOverloaded(
                f"engine queue is full ({self._queue.maxsize} requests waiting)", retry_after_s=1.0
            ) from None
        return future

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._worker.is_alive():
            self._worker.join(timeout=60)
        self._release()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"queue_depth": self._queue.qsize(), **self._stats.as_dict()}

    def prepare_image(self, request: Request) -> Request:
        """The request with its image already turned into the model's input, in the submitting thread: the
        resize and normalisation run beside other requests, not in the model's batch loop."""
        if request.image is None:
            return request
        return dataclasses.replace(request, image=self.processor.pixel_values([request.image])[0])

    def run_all(self, requests: Sequence[Request]) -> list[Result]:
        """Run an offline batch (a validation study) and return the results in order.

        Requests go through the queue a queue's worth at a time, so the batching is the service's; backends
        with a batch engine of their own override this.
        """
        results: list[Result] = []
        window = self._queue.maxsize
        for begin in range(0, len(requests), window):
            futures = [self.submit(request) for request in requests[begin : begin + window]]
            results.extend(future.result() for future in futures)
        return results

    # -- what a backend provides ------------------------------------------------------------------

    @abc.abstractmethod
    def _generate(self, items: list[Pending], settings: GenerationSettings) -> list[Generation]:
        """Continuations of ``items`` (all decoded with ``settings``), in order."""

    @abc.abstractmethod
    def _stream(self, item: Pending, settings: GenerationSettings, start: float) -> None:
        """Set ``item``'s future to a ``GenerationStream`` and generate into it."""

    @abc.abstractmethod
    def _score(self, items: list[Pending]) -> list[dict[int, float]]:
        """Each item's candidates' next-token log-probabilities, in order."""

    def _release(self) -> None:
        """Free the model once the worker has stopped (nothing to do by default)."""

    # -- worker -----------------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._drain()
                return
            batch = [first]
            stop = False
            # Company is whatever is queued, and the requests already at the door (inside submit, their
            # images being prepared): those are waited for, max_wait at most. Nothing else is: a lone request
            # on an idle engine starts at once, and concurrent clients still form one batch even when
            # preparing their images spreads their arrivals over more than max_wait's worth of guessing.
            deadline = time.perf_counter() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0 or not self._arriving:
                        break
                    try:
                        item = self._queue.get(timeout=min(remaining, ARRIVAL_POLL_S))
                    except queue.Empty:
                        continue  # still preparing, or it was refused at the door: look again
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._run_batch(batch)
            if stop:
                self._drain()
                return

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item.future.set_exception(EngineClosed("the engine shut down before this request ran"))

    def _run_batch(self, batch: list[Pending], *, rerun: bool = False) -> None:
        groups: dict[tuple[Any, ...], list[Pending]] = defaultdict(list)
        for item in batch:
            request = item.request
            if isinstance(request, ScoreRequest):
                groups[("score",)].append(item)
            elif request.stream:
                groups[("stream", id(item))].append(item)
            else:  # one decode per group: the same settings and the same retry
                groups[("generate", request.settings or self.generation, request.retry)].append(item)
        if not rerun:  # a request run again on its own after its batch failed is still one request
            with self._lock:
                self._stats.requests += len(batch)
                self._stats.batches += 1
                self._stats.batch_sizes[len(batch)] = self._stats.batch_sizes.get(len(batch), 0) + 1
        for key, items in groups.items():
            start = time.perf_counter()
            try:
                results: list[Result]
                if key[0] == "stream":
                    request = items[0].request
                    assert isinstance(request, GenerateRequest)
                    self._stream(items[0], request.settings or self.generation, start)
                    continue
                if key[0] == "score":
                    scores = self._score(items)
                    results = [
                        Scored(score, self._timings(item, start, len(items)))
                        for item, score in zip(items, scores, strict=True)
                    ]
                else:
                    results = self._generated(items, key[1], key[2], start)
            except Exception as e:  # a failed batch fails its requests, never the worker
                # Type only: a traceback or message could quote request content.
                logger.error("engine batch of %d %s request(s) failed: %s", len(items), key[0], type(e).__name__)
                if len(items) > 1:
                    # One request's problem must not fail its neighbours: each runs again on its own, so only
                    # the request that fails alone is answered with the failure.
                    for item in items:
                        self._run_batch([item], rerun=True)
                    continue
                with self._lock:
                    self._stats.failed += len(items)
                failure = e if isinstance(e, InputError) else engine_failure(e)
                for item in items:
                    if not item.future.done():  # a stream's future already holds its (ended) stream
                        item.future.set_exception(failure)
                continue
            for item, result in zip(items, results, strict=True):
                item.future.set_result(result)

    def _generated(
        self, items: list[Pending], settings: GenerationSettings, retry: Retry | None, start: float
    ) -> list[Result]:
        """Generate ``items``; those the retry test refuses once more with the retry's settings (together), and
        marked ``rejected`` when they still fail it."""
        generations = self._generate(items, settings)
        rejected = [False] * len(items)
        if retry is not None:
            refused = [i for i, g in enumerate(generations) if retry.rejects(g.text)]
            if refused:
                again = self._generate([items[i] for i in refused], retry.settings)
                for i, generation in zip(refused, again, strict=True):
                    generations[i] = generation
                    rejected[i] = retry.rejects(generation.text)
                logger.info("%d of %d generation(s) refused by their task and run again", len(refused), len(items))
        return [
            Generated(g.text, g.new_tokens, g.finish_reason, self._timings(item, start, len(items)), rejected[i])
            for i, (item, g) in enumerate(zip(items, generations, strict=True))
        ]

    @staticmethod
    def _timings(item: Pending, start: float, batch_size: int) -> Timings:
        end = time.perf_counter()
        return Timings(
            queued_ms=(start - item.enqueued) * 1000,
            compute_ms=(end - start) * 1000,
            total_ms=(end - item.enqueued) * 1000,
            batch_size=batch_size,
        )


def engine_failure(error: Exception) -> EngineError:
    """What a request that failed alone, not for its input, is answered with: radlvlm's fault, with no detail
    (a message could quote request content; the log names the type), the original kept as the cause."""
    failure = EngineError("the model failed while answering this request")
    failure.__cause__ = error
    return failure


def validate_request(request: Request, processor: RadProcessor) -> None:
    """Refuse what no backend can run: an unknown request type, an empty prompt, an image placeholder without
    its image (or the reverse), nothing to score, or a prompt that leaves no room in the model's context."""
    if not isinstance(request, GenerateRequest | ScoreRequest):
        raise InputError(f"unknown request type {type(request).__name__}")
    if not request.prompt_ids:
        raise InputError("the prompt is empty")
    if isinstance(request, ScoreRequest) and not request.candidates:
        raise InputError("a scoring request needs at least one candidate token")
    placeholders = sum(1 for token in request.prompt_ids if token == processor.image_token_id)
    wanted = 0 if request.image is None else 1
    if placeholders != wanted:
        raise InputError(f"the prompt has {placeholders} {processor.image_token} placeholder(s) for {wanted} image(s)")
    if processor.max_length is not None:
        length = len(request.prompt_ids) + wanted * (processor.num_image_tokens - 1)
        if length + 1 > processor.max_length:
            raise InputError(
                f"the prompt is {length} tokens (with {wanted * processor.num_image_tokens} image tokens), "
                f"leaving no room in the model's context of {processor.max_length}"
            )
