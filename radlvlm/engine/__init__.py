"""Inference backends behind one interface: the torch backend here; vLLM (GPU) plugs in beside it."""

from radlvlm.engine.base import (
    CheckFinding,
    CheckRequest,
    CheckResult,
    DraftRequest,
    DraftResult,
    Engine,
    EngineClosed,
    EngineOverloaded,
    Timings,
)

__all__ = [
    "CheckFinding",
    "CheckRequest",
    "CheckResult",
    "DraftRequest",
    "DraftResult",
    "Engine",
    "EngineClosed",
    "EngineOverloaded",
    "Timings",
]
