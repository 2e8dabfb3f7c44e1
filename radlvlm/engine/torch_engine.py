"""The torch backend: runs any radlvlm model (dense, LoRA or MoLE) on CPU or one GPU, batching dynamically.

The queue and worker are ``BatchingEngine``'s (a bounded queue, batches up to ``max_batch_size`` or
``max_wait_ms``); this backend runs each group through HF ``generate``. SIMPLE error checks take one forward
pass: the log-odds of "yes" over "no" for the first answer token, turned into a verdict and P(error) by the
model's calibration when it has one (:func:`radlvlm.engine.base.simple_check_result`).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from transformers import TextIteratorStreamer

from radlvlm.engine.base import (
    COMPLEX_ANSWER_TOKENS,
    CheckFinding,
    CheckRequest,
    CheckResult,
    DraftRequest,
    DraftStream,
    Result,
    draft_result,
    simple_answer_tokens,
    simple_check_result,
)
from radlvlm.engine.batching import BatchingEngine, Pending
from radlvlm.model.generation import GenerationSettings, generate
from radlvlm.model.processor import RadProcessor
from radlvlm.tasks.calibration import CheckCalibrations
from radlvlm.tasks.drafting import find_repetition
from radlvlm.tasks.errorcheck import AnswerParseError, ErrorCheckTask, parse_complex_answer

logger = logging.getLogger(__name__)

# Decode settings of the second try for a draft that looped (greedy decoders of small models do).
RETRY_REPETITION_PENALTY = 1.3
RETRY_NO_REPEAT_NGRAM = 4


class TorchEngine(BatchingEngine):
    """Dynamic-batching engine over a loaded model and its processor.

    Args:
        model: a radlvlm model (optionally with a MoLE or LoRA adapter), already on its device.
        processor: the model's processor.
        model_id (str): reported with every result.
        max_batch_size (int, default 8): most requests run together.
        max_wait_ms (float, default 25.0): the longest a batch waits for requests already being prepared.
        max_queue (int, default 64): queued requests beyond this are rejected with ``EngineOverloaded``.
        generation (GenerationSettings): drafting decode settings (greedy, 256 new tokens by default).
        calibrations (CheckCalibrations | None): the model's SIMPLE-check calibration (verdicts at 0.5 without).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: RadProcessor,
        *,
        model_id: str,
        max_batch_size: int = 8,
        max_wait_ms: float = 25.0,
        max_queue: int = 64,
        generation: GenerationSettings | None = None,
        calibrations: CheckCalibrations | None = None,
    ) -> None:
        generation = generation or GenerationSettings()
        self.calibrations = calibrations
        super().__init__(
            model_id=model_id,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            default_max_new_tokens=generation.max_new_tokens,
            thread_name="radlvlm-torch-engine",
        )
        self.model = model.eval()
        self.processor = processor
        self.generation = generation
        self._yes_no = simple_answer_tokens(processor.tokenizer)
        self.stream_timeout_s = 300.0
        self._start()

    def warmup(self) -> None:
        size = self.processor.image_config.size
        blank = torch.zeros(size, size)
        self.run(DraftRequest(image=blank, max_new_tokens=2))
        self.run(CheckRequest(report="FINDINGS: The lungs are clear."))

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

    def _drafts(self, items: list[Pending], max_new_tokens: int, start: float) -> list[Result]:
        requests: list[DraftRequest] = [item.request for item in items]  # type: ignore[misc]
        prompts = [self.processor.draft_prompt(r.indication, r.findings) for r in requests]
        settings = self._draft_settings(max_new_tokens)
        generations = generate(self.model, self.processor, prompts, [r.image for r in requests], settings).generations
        looped = [i for i, g in enumerate(generations) if find_repetition(g.text) is not None]
        if looped:
            # Once more with repetition controls; a row that still loops is withheld by draft_result.
            retry = replace(
                settings,
                repetition_penalty=max(settings.repetition_penalty, RETRY_REPETITION_PENALTY),
                no_repeat_ngram_size=RETRY_NO_REPEAT_NGRAM,
            )
            again = generate(
                self.model, self.processor, [prompts[i] for i in looped], [requests[i].image for i in looped], retry
            ).generations
            for i, generation in zip(looped, again, strict=True):
                generations[i] = generation
            logger.info("draft repetition loop: %d of %d row(s) regenerated", len(looped), len(generations))
        return [
            draft_result(generation, self.model_id, self._timings(item, start, len(items)))
            for item, generation in zip(items, generations, strict=True)
        ]

    def _stream(self, item: Pending, max_new_tokens: int, start: float) -> None:
        """Run one streaming draft here, in the worker, so the model is never used by two threads at once."""
        request: DraftRequest = item.request  # type: ignore[assignment]
        streamer = TextIteratorStreamer(
            self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=self.stream_timeout_s
        )
        stream = DraftStream(streamer)
        item.future.set_result(stream)
        prompt = self.processor.draft_prompt(request.indication, request.findings)
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
        stream.finish(draft_result(batch.generations[0], self.model_id, self._timings(item, start, 1)))

    def _check_prompts(self, requests: list[CheckRequest]) -> list[str]:
        return [self.processor.check_prompt(r.mode, r.report, image=r.image is not None) for r in requests]

    @torch.inference_mode()
    def _simple_checks(self, items: list[Pending], start: float) -> list[Result]:
        requests: list[CheckRequest] = [item.request for item in items]  # type: ignore[misc]
        if self._yes_no is None:  # the tokenizer cannot tell yes from no by one token: decode instead
            return self._generated_simple_checks(items, start)
        batch = self.processor(self._check_prompts(requests), [r.image for r in requests])
        shared, yes, no = list(self._yes_no.shared), self._yes_no.yes, self._yes_no.no
        if shared:  # e.g. a byte-level BPE that spells both answers after a lone space token
            rows = batch["input_ids"].shape[0]
            batch["input_ids"] = torch.cat([batch["input_ids"], torch.tensor([shared] * rows)], dim=1)
            batch["attention_mask"] = torch.cat(
                [batch["attention_mask"], torch.ones(rows, len(shared), dtype=torch.long)], dim=1
            )
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in batch.items()}
        if "pixel_values" in inputs:  # a half-precision model on a GPU takes half-precision pixels
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        logits = self.model(**inputs).logits[:, -1, :].float()  # left padding: the last column is each prompt's end
        log_odds = (logits[:, yes] - logits[:, no]).tolist()
        return [
            simple_check_result(
                request, value, self.calibrations, self.model_id, self._timings(item, start, len(items))
            )
            for item, request, value in zip(items, requests, log_odds, strict=True)
        ]

    def _generated_simple_checks(self, items: list[Pending], start: float) -> list[Result]:
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

    def _complex_checks(self, items: list[Pending], start: float) -> list[Result]:
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
