"""The torch backend: runs any radlvlm model (dense, LoRA or MoLE) on CPU or one GPU, batching dynamically.

The queue and worker are ``BatchingEngine``'s (a bounded queue, batches up to ``max_batch_size`` or
``max_wait_ms``); this backend runs each group of generations through HF ``generate`` and each group of
scorings through one forward pass (the next-token log-probabilities at the end of each prompt).
"""

from __future__ import annotations

import logging

import torch
from transformers import TextIteratorStreamer

from radlvlm.engine.base import Generated, GenerateRequest, GenerationStream, ScoreRequest
from radlvlm.engine.batching import BatchingEngine, Pending
from radlvlm.model.generation import Generation, GenerationSettings, generate
from radlvlm.model.processor import RadProcessor

logger = logging.getLogger(__name__)


class TorchEngine(BatchingEngine):
    """Dynamic-batching engine over a loaded model and its processor.

    Args:
        model: a radlvlm model (optionally with a MoLE or LoRA adapter), already on its device.
        processor: the model's processor.
        model_id (str): reported with every result.
        max_batch_size (int, default 8): most requests run together.
        max_wait_ms (float, default 25.0): the longest a batch waits for requests already being prepared.
        max_queue (int, default 64): queued requests beyond this are rejected with ``EngineOverloaded``.
        generation (GenerationSettings): decode settings of a request that names none (greedy, 256 new tokens).
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
    ) -> None:
        super().__init__(
            processor=processor,
            model_id=model_id,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            generation=generation,
            thread_name="radlvlm-torch-engine",
        )
        self.model = model.eval()
        self.stream_timeout_s = 300.0
        self._start()

    def vision_tower(self) -> torch.nn.Module | None:
        """The served model's image encoder (LLaVA's ``vision_tower``), whatever adapter wraps the model."""
        for module in self.model.modules():
            tower = getattr(module, "vision_tower", None)
            if isinstance(tower, torch.nn.Module):
                return tower
        return None

    def _generate(self, items: list[Pending], settings: GenerationSettings) -> list[Generation]:
        requests: list[GenerateRequest] = [item.request for item in items]  # type: ignore[misc]
        prompts = [list(r.prompt_ids) for r in requests]
        return generate(self.model, self.processor, prompts, [r.image for r in requests], settings).generations

    def _stream(self, item: Pending, settings: GenerationSettings, start: float) -> None:
        """Run one streaming generation here, in the worker, so the model is never used by two threads at once."""
        request: GenerateRequest = item.request  # type: ignore[assignment]
        streamer = TextIteratorStreamer(
            self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=self.stream_timeout_s
        )
        stream = GenerationStream(streamer)
        item.future.set_result(stream)
        try:
            batch = generate(
                self.model, self.processor, [list(request.prompt_ids)], [request.image], settings, streamer=streamer
            )
        except Exception:
            streamer.end()  # the reader must not wait forever
            stream.finish(None)
            raise
        generation = batch.generations[0]
        timings = self._timings(item, start, 1)
        stream.finish(Generated(generation.text, generation.new_tokens, generation.finish_reason, timings))

    @torch.inference_mode()
    def _score(self, items: list[Pending]) -> list[dict[int, float]]:
        requests: list[ScoreRequest] = [item.request for item in items]  # type: ignore[misc]
        batch = self.processor([list(r.prompt_ids) for r in requests], [r.image for r in requests])
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in batch.items()}
        if "pixel_values" in inputs:  # a half-precision model on a GPU takes half-precision pixels
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        # Left padding: the last column is each prompt's end.
        logprobs = torch.log_softmax(self.model(**inputs).logits[:, -1, :].float(), dim=-1)
        return [
            {int(token): float(logprobs[row, int(token)]) for token in request.candidates}
            for row, request in enumerate(requests)
        ]
