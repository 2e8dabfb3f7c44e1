"""Dynamic batching shared by the backends: a bounded queue, one worker thread, requests grouped by kind.

Requests wait in a bounded queue; the worker takes the first, then whatever else is queued, and waits (at most
``max_wait_ms``) only for requests already at the door (their images being prepared in their own threads), so a
lone request starts at once and a burst of concurrent clients forms one batch. It hands drafts and checks of the
batch to the backend in groups (drafts with the same token budget together, each check mode together, each
stream alone). A full queue rejects at once (``EngineOverloaded``, which the service turns into 503 +
Retry-After) rather than letting callers hang. A failed group fails its own requests, never the worker.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from radlvlm.engine.base import (
    COMPLEX_ANSWER_TOKENS,
    CheckRequest,
    DraftRequest,
    Engine,
    EngineClosed,
    EngineOverloaded,
    EngineStats,
    Request,
    Result,
    StreamDraftRequest,
    Timings,
    unanswerable_check,
)
from radlvlm.errors import EngineError, InputError
from radlvlm.tasks.errorcheck import ErrorCheckTask

logger = logging.getLogger(__name__)
# A draft whose prompt leaves fewer tokens than this in the context is refused: it could not say anything.
MIN_DRAFT_TOKENS = 16


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
        model_id (str): reported with every result.
        max_batch_size (int, default 8): most requests run together.
        max_wait_ms (float, default 25.0): the longest the first request of a batch waits for requests already
            being prepared (never for requests not yet submitted).
        max_queue (int, default 64): queued requests beyond this are rejected with ``EngineOverloaded``.
        default_max_new_tokens (int, default 256): a draft's token budget when its request names none.
        thread_name (str): the worker thread's name (shows in stack dumps).
    """

    def __init__(
        self,
        *,
        model_id: str,
        max_batch_size: int = 8,
        max_wait_ms: float = 25.0,
        max_queue: int = 64,
        default_max_new_tokens: int = 256,
        thread_name: str = "radlvlm-engine",
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise InputError("max_batch_size and max_queue must be >= 1 and max_wait_ms >= 0")
        self.model_id = model_id
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.default_max_new_tokens = default_max_new_tokens
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
        validate_request(request)
        with self._lock:
            self._arriving += 1
        try:
            return self._enqueue(request)
        finally:
            with self._lock:
                self._arriving -= 1

    def _enqueue(self, request: Request) -> Future[Result]:
        future: Future[Result] = Future()
        request = self.prepare_image(request)
        if isinstance(request, CheckRequest) and (problem := self.check_problem(request)) is not None:
            future.set_result(unanswerable_check(request, problem, self.model_id))
            return future
        if isinstance(request, DraftRequest) and (problem := self.draft_problem(request)) is not None:
            raise InputError(problem)
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

    def check_problem(self, request: CheckRequest) -> str | None:
        """Why this check cannot be done (see :func:`radlvlm.tasks.report_input.check_input_problem`, plus a
        prompt longer than the model's context), or None. Answered at once, so a bad report never joins, and
        never fails, a batch of other clients' requests."""
        from radlvlm.model.processor import NOT_TRAINED_FOR_CHECKS
        from radlvlm.tasks.report_input import check_input_problem

        processor = getattr(self, "processor", None)
        if processor is not None and not processor.profile.error_checks:
            return NOT_TRAINED_FOR_CHECKS  # a converted LLaVA-Rad, say: it would only guess
        problem = check_input_problem(request.report, with_image=request.image is not None)
        if problem is None and processor is not None and processor.max_length is not None:
            prompt = processor.check_prompt(request.mode, request.report, image=request.image is not None)
            tokens = len(processor.prompt_ids(prompt))
            tokens += (processor.num_image_tokens - 1) if request.image is not None else 0
            answer = COMPLEX_ANSWER_TOKENS if request.mode is ErrorCheckTask.COMPLEX else 1
            if tokens + answer > processor.max_length:
                problem = (
                    f"the report is too long for the model: {tokens} tokens with the prompt, "
                    f"context {processor.max_length}"
                )
        return problem

    def prepare_image(self, request: Request) -> Request:
        """The request with its image already turned into the model's input, in the submitting thread: the
        resize and normalisation run beside other requests, not in the model's batch loop."""
        processor = getattr(self, "processor", None)
        image = getattr(request, "image", None)
        if processor is None or image is None:
            return request
        return dataclasses.replace(request, image=processor.pixel_values([image])[0])

    def draft_problem(self, request: DraftRequest) -> str | None:
        """Why this draft cannot be run (its prompt, with the indication and the image, leaves the model no room
        to write in its context), or None. Refused at submit, so a long indication never joins, and never
        fails, a batch of other clients' drafts."""
        processor = getattr(self, "processor", None)
        if processor is None or processor.max_length is None or not request.indication:
            return None
        tokens = len(processor.prompt_ids(processor.draft_prompt(request.indication, request.findings)))
        tokens += processor.num_image_tokens - 1
        if tokens + MIN_DRAFT_TOKENS > processor.max_length:
            return (
                f"the indication is too long for the model: {tokens} tokens with the prompt and the image, "
                f"context {processor.max_length}"
            )
        return None

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
    def _drafts(self, items: list[Pending], max_new_tokens: int, start: float) -> list[Result]:
        """Drafts of ``items`` (all with this token budget), in order."""

    @abc.abstractmethod
    def _stream(self, item: Pending, max_new_tokens: int, start: float) -> None:
        """Set ``item``'s future to a ``DraftStream`` and generate into it."""

    @abc.abstractmethod
    def _simple_checks(self, items: list[Pending], start: float) -> list[Result]:
        """SIMPLE check results of ``items``, in order."""

    @abc.abstractmethod
    def _complex_checks(self, items: list[Pending], start: float) -> list[Result]:
        """COMPLEX check results of ``items``, in order."""

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
        groups: dict[tuple[str, int], list[Pending]] = defaultdict(list)
        for item in batch:
            request = item.request
            if isinstance(request, StreamDraftRequest):
                groups[(f"stream-{id(item)}", request.max_new_tokens or self.default_max_new_tokens)].append(item)
            elif isinstance(request, DraftRequest):
                groups[("draft", request.max_new_tokens or self.default_max_new_tokens)].append(item)
            else:
                groups[(f"check-{request.mode.value}", 0)].append(item)
        if not rerun:  # a request run again on its own after its batch failed is still one request
            with self._lock:
                self._stats.requests += len(batch)
                self._stats.batches += 1
                self._stats.batch_sizes[len(batch)] = self._stats.batch_sizes.get(len(batch), 0) + 1
        for (kind, max_new_tokens), items in groups.items():
            start = time.perf_counter()
            try:
                if kind.startswith("stream-"):
                    self._stream(items[0], max_new_tokens, start)
                    continue
                if kind == "draft":
                    results = self._drafts(items, max_new_tokens, start)
                elif kind == "check-simple":
                    results = self._simple_checks(items, start)
                else:
                    results = self._complex_checks(items, start)
            except Exception as e:  # a failed batch fails its requests, never the worker
                # Type only: a traceback or message could quote request content.
                logger.error("engine batch of %d %s request(s) failed: %s", len(items), kind, type(e).__name__)
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


def validate_request(request: Request) -> None:
    """Refuse what no backend can run (an empty report, an unknown mode or request type, a zero token budget)."""
    if isinstance(request, CheckRequest):
        if not request.report or not request.report.strip():
            raise InputError("the report to check is empty")
        if not isinstance(request.mode, ErrorCheckTask):
            raise InputError(f"unknown check mode {request.mode!r}")
    elif not isinstance(request, DraftRequest):
        raise InputError(f"unknown request type {type(request).__name__}")
    elif request.max_new_tokens is not None and request.max_new_tokens < 1:
        raise InputError("max_new_tokens must be at least 1")
