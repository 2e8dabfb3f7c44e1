"""The torch backend: runs any radlvlm model (dense, LoRA or MoLE) on CPU or one GPU, batching dynamically.

Requests wait in a bounded queue; one worker thread takes the first, then collects more until the batch is
full or ``max_wait_ms`` has passed, and runs drafts and checks of the batch together. A full queue rejects
at once (``EngineOverloaded``, which the service turns into 503 + Retry-After) rather than letting callers
hang. SIMPLE error checks take one forward pass: the answer is whichever of "yes"/"no" the model rates
higher for its first answer token, and that probability (renormalised over the two) is the confidence.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TextIteratorStreamer

from radlvlm.engine.base import (
    CheckFinding,
    CheckRequest,
    CheckResult,
    DraftRequest,
    DraftResult,
    DraftStream,
    Engine,
    EngineClosed,
    EngineOverloaded,
    EngineStats,
    Request,
    Result,
    StreamDraftRequest,
    Timings,
)
from radlvlm.errors import InputError
from radlvlm.model.generation import GenerationSettings, generate
from radlvlm.model.processor import RadProcessor
from radlvlm.tasks.drafting import draft_prompt, parse_draft
from radlvlm.tasks.errorcheck import AnswerParseError, ErrorCheckTask, errorcheck_prompt, parse_complex_answer

logger = logging.getLogger(__name__)

COMPLEX_ANSWER_TOKENS = 96


@dataclass
class _Pending:
    request: Request
    future: Future[Result]
    enqueued: float


class TorchEngine(Engine):
    """Dynamic-batching engine over a loaded model and its processor.

    Args:
        model: a radlvlm model (optionally with a MoLE or LoRA adapter), already on its device.
        processor: the model's processor.
        model_id (str): reported with every result.
        max_batch_size (int, default 8): most requests run together.
        max_wait_ms (float, default 5.0): how long the first request of a batch waits for company.
        max_queue (int, default 64): queued requests beyond this are rejected with ``EngineOverloaded``.
        generation (GenerationSettings): drafting decode settings (greedy, 256 new tokens by default).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: RadProcessor,
        *,
        model_id: str,
        max_batch_size: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 64,
        generation: GenerationSettings | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise InputError("max_batch_size and max_queue must be >= 1 and max_wait_ms >= 0")
        self.model = model.eval()
        self.processor = processor
        self.model_id = model_id
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.generation = generation or GenerationSettings()
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=max_queue)
        self._stats = EngineStats()
        self._lock = threading.Lock()
        self._closed = False
        self._yes_no = self._answer_token_ids()
        self.stream_timeout_s = 300.0
        self._worker = threading.Thread(target=self._serve, name="radlvlm-torch-engine", daemon=True)
        self._worker.start()

    # -- Engine interface -------------------------------------------------------------------------

    def submit(self, request: Request) -> Future[Result]:
        if self._closed:
            raise EngineClosed("the engine is shut down")
        _validate(request)
        future: Future[Result] = Future()
        try:
            self._queue.put_nowait(_Pending(request, future, time.perf_counter()))
        except queue.Full:
            with self._lock:
                self._stats.rejected += 1
            raise EngineOverloaded(
                f"engine queue is full ({self._queue.maxsize} requests waiting)", retry_after_s=1.0
            ) from None
        return future

    def warmup(self) -> None:
        size = self.processor.image_config.size
        blank = torch.zeros(size, size)
        self.run(DraftRequest(image=blank, max_new_tokens=2))
        self.run(CheckRequest(report="FINDINGS: The lungs are clear."))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout=60)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"queue_depth": self._queue.qsize(), **self._stats.as_dict()}

    # -- worker -----------------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._drain()
                return
            batch = [first]
            deadline = time.perf_counter() + self.max_wait_s
            stop = False
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
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

    def _run_batch(self, batch: list[_Pending]) -> None:
        groups: dict[tuple[str, int], list[_Pending]] = defaultdict(list)
        for item in batch:
            request = item.request
            if isinstance(request, StreamDraftRequest):
                groups[(f"stream-{id(item)}", request.max_new_tokens or self.generation.max_new_tokens)].append(item)
            elif isinstance(request, DraftRequest):
                groups[("draft", request.max_new_tokens or self.generation.max_new_tokens)].append(item)
            else:
                groups[(f"check-{request.mode.value}", 0)].append(item)
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
                with self._lock:
                    self._stats.failed += len(items)
                for item in items:
                    if not item.future.done():  # a stream's future already holds its (ended) stream
                        item.future.set_exception(e)
                continue
            for item, result in zip(items, results, strict=True):
                item.future.set_result(result)

    def _timings(self, item: _Pending, start: float, batch_size: int) -> Timings:
        end = time.perf_counter()
        return Timings(
            queued_ms=(start - item.enqueued) * 1000,
            compute_ms=(end - start) * 1000,
            total_ms=(end - item.enqueued) * 1000,
            batch_size=batch_size,
        )

    def _draft_settings(self, max_new_tokens: int) -> GenerationSettings:
        return GenerationSettings(
            strategy=self.generation.strategy,
            max_new_tokens=max_new_tokens,
            num_beams=self.generation.num_beams,
            temperature=self.generation.temperature,
            top_p=self.generation.top_p,
            repetition_penalty=self.generation.repetition_penalty,
            seed=self.generation.seed,
            stop_strings=self.generation.stop_strings,
        )

    def _draft_result(self, item: _Pending, generation: Any, start: float, batch_size: int) -> DraftResult:
        draft = parse_draft(generation.text)
        return DraftResult(
            findings=draft.findings,
            impression=draft.impression,
            text=generation.text,
            finish_reason=generation.finish_reason,
            new_tokens=generation.new_tokens,
            model_id=self.model_id,
            timings=self._timings(item, start, batch_size),
        )

    def _drafts(self, items: list[_Pending], max_new_tokens: int, start: float) -> list[Result]:
        requests: list[DraftRequest] = [item.request for item in items]  # type: ignore[misc]
        prompts = [self.processor.chat_prompt(draft_prompt(r.indication)) for r in requests]
        settings = self._draft_settings(max_new_tokens)
        batch = generate(self.model, self.processor, prompts, [r.image for r in requests], settings)
        return [
            self._draft_result(item, generation, start, len(items))
            for item, generation in zip(items, batch.generations, strict=True)
        ]

    def _stream(self, item: _Pending, max_new_tokens: int, start: float) -> None:
        """Run one streaming draft here, in the worker, so the model is never used by two threads at once."""
        request: DraftRequest = item.request  # type: ignore[assignment]
        streamer = TextIteratorStreamer(
            self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=self.stream_timeout_s
        )
        stream = DraftStream(streamer)
        item.future.set_result(stream)
        prompt = self.processor.chat_prompt(draft_prompt(request.indication))
        try:
            batch = generate(
                self.model,
                self.processor,
                [prompt],
                [request.image],
                self._draft_settings(max_new_tokens),
                streamer=streamer,
            )
        except Exception:
            streamer.end()  # the reader must not wait forever
            stream.finish(None)
            raise
        stream.finish(self._draft_result(item, batch.generations[0], start, 1))

    def _check_prompts(self, requests: list[CheckRequest]) -> list[str]:
        return [
            self.processor.chat_prompt(errorcheck_prompt(r.mode, r.report), image=r.image is not None) for r in requests
        ]

    @torch.inference_mode()
    def _simple_checks(self, items: list[_Pending], start: float) -> list[Result]:
        requests: list[CheckRequest] = [item.request for item in items]  # type: ignore[misc]
        if self._yes_no is None:  # the tokenizer cannot tell yes from no by one token: decode instead
            return self._generated_simple_checks(items, start)
        batch = self.processor(self._check_prompts(requests), [r.image for r in requests])
        shared, yes, no = self._yes_no
        if shared:  # e.g. a byte-level BPE that spells both answers after a lone space token
            rows = batch["input_ids"].shape[0]
            batch["input_ids"] = torch.cat([batch["input_ids"], torch.tensor([shared] * rows)], dim=1)
            batch["attention_mask"] = torch.cat(
                [batch["attention_mask"], torch.ones(rows, len(shared), dtype=torch.long)], dim=1
            )
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in batch.items()}
        logits = self.model(**inputs).logits[:, -1, :].float()  # left padding: the last column is each prompt's end
        pair = torch.stack([logits[:, yes], logits[:, no]], dim=-1).softmax(dim=-1)
        results: list[Result] = []
        for item, request, (p_yes, p_no) in zip(items, requests, pair.tolist(), strict=True):
            has_error = p_yes > p_no
            results.append(
                CheckResult(
                    has_error=has_error,
                    confidence=max(p_yes, p_no),
                    findings=[],
                    text_only=request.image is None,
                    mode=ErrorCheckTask.SIMPLE,
                    answer_valid=True,
                    raw_answer="yes" if has_error else "no",
                    model_id=self.model_id,
                    timings=self._timings(item, start, len(items)),
                )
            )
        return results

    def _generated_simple_checks(self, items: list[_Pending], start: float) -> list[Result]:
        from radlvlm.tasks.errorcheck import parse_simple_answer

        requests: list[CheckRequest] = [item.request for item in items]  # type: ignore[misc]
        images = [r.image for r in requests]
        batch = generate(
            self.model, self.processor, self._check_prompts(requests), images, GenerationSettings(max_new_tokens=4)
        )
        results: list[Result] = []
        for item, request, generation in zip(items, requests, batch.generations, strict=True):
            try:
                has_error: bool | None = parse_simple_answer(generation.text)
                valid = True
            except AnswerParseError:
                has_error, valid = None, False
            results.append(
                CheckResult(
                    has_error,
                    None,
                    [],
                    request.image is None,
                    ErrorCheckTask.SIMPLE,
                    valid,
                    generation.text,
                    self.model_id,
                    self._timings(item, start, len(items)),
                )
            )
        return results

    def _complex_checks(self, items: list[_Pending], start: float) -> list[Result]:
        requests: list[CheckRequest] = [item.request for item in items]  # type: ignore[misc]
        settings = GenerationSettings(max_new_tokens=COMPLEX_ANSWER_TOKENS)
        batch = generate(
            self.model, self.processor, self._check_prompts(requests), [r.image for r in requests], settings
        )
        results: list[Result] = []
        for item, request, generation in zip(items, requests, batch.generations, strict=True):
            try:
                answer = parse_complex_answer(generation.text)
            except AnswerParseError:
                answer = None
            findings = [CheckFinding(answer.category, answer.span)] if answer and answer.has_error else []
            results.append(
                CheckResult(
                    has_error=answer.has_error if answer else None,
                    confidence=None,
                    findings=findings,
                    text_only=request.image is None,
                    mode=ErrorCheckTask.COMPLEX,
                    answer_valid=answer is not None,
                    raw_answer=generation.text,
                    model_id=self.model_id,
                    timings=self._timings(item, start, len(items)),
                )
            )
        return results

    def _answer_token_ids(self) -> tuple[list[int], int, int] | None:
        """How " yes" and " no" continue "ASSISTANT:": their shared leading tokens and first differing ids."""
        tokenizer = self.processor.tokenizer
        yes = tokenizer(" yes", add_special_tokens=False)["input_ids"]
        no = tokenizer(" no", add_special_tokens=False)["input_ids"]
        shared = 0
        while shared < min(len(yes), len(no)) and yes[shared] == no[shared]:
            shared += 1
        if shared == min(len(yes), len(no)):  # one is a prefix of the other: no single token decides
            return None
        return [int(t) for t in yes[:shared]], int(yes[shared]), int(no[shared])


def _validate(request: Request) -> None:
    if isinstance(request, CheckRequest):
        if not request.report or not request.report.strip():
            raise InputError("the report to check is empty")
        if not isinstance(request.mode, ErrorCheckTask):
            raise InputError(f"unknown check mode {request.mode!r}")
    elif not isinstance(request, DraftRequest):
        raise InputError(f"unknown request type {type(request).__name__}")
    elif request.max_new_tokens is not None and request.max_new_tokens < 1:
        raise InputError("max_new_tokens must be at least 1")
