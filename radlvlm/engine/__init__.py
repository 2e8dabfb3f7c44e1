"""Inference backends behind one interface: the torch backend here; vLLM (GPU) plugs in beside it.

Names are imported on first use (PEP 562): a light submodule (``vllm_options``) is read without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    name: "radlvlm.engine.base"
    for name in (
        "CheckFinding",
        "CheckRequest",
        "CheckResult",
        "DraftRequest",
        "DraftResult",
        "Engine",
        "EngineClosed",
        "EngineOverloaded",
        "Timings",
    )
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'radlvlm.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
