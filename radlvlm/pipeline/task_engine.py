"""The engine as the use cases see it: a task's request in (a draft, a check), the task's result out.

The engine knows no task (:mod:`radlvlm.engine`); each task knows how to ask the model and read its answer
(:mod:`radlvlm.tasks`). Here they are paired: a request goes to its task for the engine's request, the engine
runs it with everyone else's, and the task reads what comes back. A check the task cannot do is answered at
once, never queued.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from radlvlm.engine.base import Engine, Generated, GenerationStream
from radlvlm.errors import EngineError, InputError
from radlvlm.tasks.calibration import CheckCalibrations
from radlvlm.tasks.checking import (
    CheckRequest,
    CheckResult,
    ComplexCheckTask,
    SimpleCheckTask,
    unanswerable_check,
)
from radlvlm.tasks.drafting import DraftRequest, DraftResult, DraftStream, DraftTask, StreamDraftRequest
from radlvlm.tasks.errorcheck import ErrorCheckTask

if TYPE_CHECKING:
    from radlvlm.model.processor import RadProcessor

__all__ = ["TaskEngine", "TaskRequest", "TaskResult"]

TaskRequest = DraftRequest | CheckRequest
TaskResult = DraftResult | CheckResult | DraftStream
T = TypeVar("T")
U = TypeVar("U")


def _then(inner: Future[T], read: Callable[[T], U]) -> Future[U]:
    """A future of ``read(inner's result)``; an error on either side is the new future's error."""
    outer: Future[U] = Future()

    def done(future: Future[T]) -> None:
        try:
            outer.set_result(read(future.result()))
        except BaseException as e:
            outer.set_exception(e)

    inner.add_done_callback(done)
    return outer


class TaskEngine:
    """Drafts and checks on an engine, each through its task.

    Args:
        engine: a started engine (torch or vLLM).
        calibrations: the model's SIMPLE-check calibration (verdicts at 0.5 of the yes/no probability without).
    """

    def __init__(self, engine: Engine, calibrations: CheckCalibrations | None = None) -> None:
        self.engine = engine
        self.model_id = engine.model_id
        self.drafts = DraftTask(engine.processor, engine.generation)
        self.checks = {
            ErrorCheckTask.SIMPLE: SimpleCheckTask(engine.processor, calibrations),
            ErrorCheckTask.COMPLEX: ComplexCheckTask(engine.processor),
        }

    @property
    def processor(self) -> RadProcessor:
        return self.engine.processor

    def vision_tower(self) -> Any:
        """The served model's image encoder when the backend runs it in this process (torch); None otherwise."""
        tower = getattr(self.engine, "vision_tower", None)
        return tower() if callable(tower) else None

    def submit(self, request: TaskRequest) -> Future[Any]:
        """Queue ``request``; its future resolves to the task's result (a ``DraftStream`` for a streamed draft)."""
        with self.engine.at_the_door():  # a batch forming now waits while the task builds the prompt
            return self._submit(request)

    def _submit(self, request: TaskRequest) -> Future[Any]:
        if isinstance(request, DraftRequest):
            answered = self.engine.submit(self.drafts.engine_request(request))
            if isinstance(request, StreamDraftRequest):
                return _then(
                    answered, lambda stream: self.drafts.stream(_expect(stream, GenerationStream), self.model_id)
                )
            return _then(answered, lambda generated: self.drafts.result(_expect(generated, Generated), self.model_id))
        task = self._check_task(request)
        asked = task.ask(request)
        if isinstance(asked, str):
            future: Future[Any] = Future()
            future.set_result(unanswerable_check(request, asked, self.model_id))
            return future
        return _then(self.engine.submit(asked), lambda r: task.result(request, r, self.model_id))

    def run(self, request: TaskRequest, timeout: float | None = None) -> Any:
        """Submit and wait for the result."""
        return self.submit(request).result(timeout=timeout)

    def run_all(self, requests: Sequence[TaskRequest]) -> list[DraftResult | CheckResult]:
        """Run an offline batch (a validation study) through the engine's own batch path; results in order."""
        results: dict[int, DraftResult | CheckResult] = {}
        asked: list[tuple[int, Any]] = []
        for index, request in enumerate(requests):
            if isinstance(request, StreamDraftRequest):
                raise InputError("an offline batch takes drafts and checks, not streams")
            if isinstance(request, DraftRequest):
                asked.append((index, self.drafts.engine_request(request)))
                continue
            check = self._check_task(request).ask(request)
            if isinstance(check, str):
                results[index] = unanswerable_check(request, check, self.model_id)
            else:
                asked.append((index, check))
        answers = self.engine.run_all([engine_request for _, engine_request in asked])
        for (index, _), answer in zip(asked, answers, strict=True):
            request = requests[index]
            if isinstance(request, DraftRequest):
                results[index] = self.drafts.result(_expect(answer, Generated), self.model_id)
            else:
                results[index] = self._check_task(request).result(request, answer, self.model_id)  # type: ignore[arg-type]
        return [results[i] for i in range(len(requests))]

    def _check_task(self, request: TaskRequest) -> SimpleCheckTask | ComplexCheckTask:
        if not isinstance(request, CheckRequest):
            raise InputError(f"unknown request type {type(request).__name__}")
        if not isinstance(request.mode, ErrorCheckTask):
            raise InputError(f"unknown check mode {request.mode!r}")
        return self.checks[request.mode]

    def warmup(self) -> None:
        self.engine.warmup()

    def stats(self) -> dict[str, Any]:
        return self.engine.stats()

    def close(self) -> None:
        self.engine.close()


def _expect(answer: Any, kind: type[T]) -> T:
    if not isinstance(answer, kind):
        raise EngineError(f"the engine answered with a {type(answer).__name__} where a {kind.__name__} was due")
    return answer
