"""Inference backends behind one interface: the torch backend here; vLLM (GPU) plugs in beside it.

Names are imported on first use (PEP 562): a light submodule (``vllm_options``) is read without torch.
"""

from __future__ import annotations

from radlvlm.lazy import lazy_attributes

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


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
