"""The sparse LVLM: vision encoder + projector + causal LM (HF Llava), MoLE adapters, processor, conversions."""

from radlvlm.model.generation import Generation, GenerationBatch, GenerationSettings, generate
from radlvlm.model.modeling import (
    RadLlavaForConditionalGeneration,
    build_config,
    build_model,
    image_token_count,
    load_model,
    parameter_counts,
    save_model,
)
from radlvlm.model.mole import MoLEAdapter, MoLEConfig, inject_mole, load_mole_adapter, mole_adapter_of
from radlvlm.model.processor import RadProcessor
from radlvlm.model.tokenizer import train_tokenizer

__all__ = [
    "Generation",
    "GenerationBatch",
    "GenerationSettings",
    "MoLEAdapter",
    "MoLEConfig",
    "RadLlavaForConditionalGeneration",
    "RadProcessor",
    "build_config",
    "build_model",
    "generate",
    "image_token_count",
    "inject_mole",
    "load_model",
    "load_mole_adapter",
    "mole_adapter_of",
    "parameter_counts",
    "save_model",
    "train_tokenizer",
]
