"""Inference backends behind one interface: generation and scoring over prompt token ids, pixels and decode
settings, batched; the torch backend here, vLLM (GPU) beside it. They know no task (see :mod:`radlvlm.tasks`).

Names are imported on first use (PEP 562), so importing the package costs nothing until a name is used.
"""

from __future__ import annotations

from radlvlm.lazy import lazy_attributes

_EXPORTS = {
    name: "radlvlm.engine.base"
    for name in (
        "Engine",
        "EngineClosed",
        "EngineOverloaded",
        "Generated",
        "GenerateRequest",
        "GenerationStream",
        "Retry",
        "Scored",
        "ScoreRequest",
        "Timings",
    )
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
