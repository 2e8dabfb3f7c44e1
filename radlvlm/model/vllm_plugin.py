"""vLLM's hook into radlvlm: a ``vllm.general_plugins`` entry point (``pyproject.toml``).

vLLM loads general plugins in every process it starts (the engine core profiles memory with dummy images in its
own process), and a radlvlm export names radlvlm's image processor, which transformers finds only once radlvlm's
classes are registered with its Auto classes. That registration happens when the modules below are imported,
which loading this entry point does; ``register`` itself has nothing left to do.
"""

from __future__ import annotations

from radlvlm.model.modeling import PooledRadLlavaForConditionalGeneration
from radlvlm.model.processor import RadProcessor

__all__ = ["PooledRadLlavaForConditionalGeneration", "RadProcessor", "register"]


def register() -> None:
    """What vLLM calls after loading the entry point (the classes were registered when it was loaded)."""
