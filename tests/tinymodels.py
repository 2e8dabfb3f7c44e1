"""Tiny configurations of every supported encoder and LM, built in code, for tests (no downloads): they live
with the tests, not in the package, because nothing a user runs builds a model this small."""

from __future__ import annotations

from transformers import (
    CLIPVisionConfig,
    Dinov2Config,
    LlamaConfig,
    MistralConfig,
    PhiConfig,
    PretrainedConfig,
    Qwen2Config,
    SiglipVisionConfig,
    ViTConfig,
)

from radlvlm.errors import ModelError


def tiny_vision_config(kind: str = "dinov2", *, image_size: int = 28, patch_size: int = 14) -> PretrainedConfig:
    """A 2-layer, 32-wide vision encoder of ``kind`` (dinov2, clip, siglip, vit)."""
    common = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": image_size,
        "patch_size": patch_size,
    }
    if kind == "dinov2":
        return Dinov2Config(**common)
    if kind == "clip":
        return CLIPVisionConfig(**common, projection_dim=32)
    if kind == "siglip":
        return SiglipVisionConfig(**common)
    if kind == "vit":
        return ViTConfig(**common)
    raise ModelError(f"unknown tiny vision encoder {kind!r}")


def tiny_text_config(kind: str = "llama", *, vocab_size: int = 128, hidden_size: int = 64) -> PretrainedConfig:
    """A 2-layer causal LM of ``kind`` (llama, mistral, qwen2, phi) with a small vocabulary."""
    common = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
    }
    if kind == "llama":
        return LlamaConfig(**common, num_key_value_heads=2)
    if kind == "mistral":
        return MistralConfig(**common, num_key_value_heads=2, sliding_window=None)
    if kind == "qwen2":
        return Qwen2Config(**common, num_key_value_heads=2)
    if kind == "phi":
        return PhiConfig(**common, num_key_value_heads=4)
    raise ModelError(f"unknown tiny language model {kind!r}")
