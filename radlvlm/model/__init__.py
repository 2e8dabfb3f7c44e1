"""The sparse LVLM: vision encoder + projector + causal LM (HF Llava), MoLE adapters, processor, conversions.

Names are imported on first use (PEP 562), so ``radlvlm --help`` does not pay for importing transformers.
"""

from __future__ import annotations

from radlvlm.lazy import lazy_attributes

_EXPORTS = {
    "Generation": "radlvlm.model.generation",
    "GenerationBatch": "radlvlm.model.generation",
    "GenerationSettings": "radlvlm.model.generation",
    "generate": "radlvlm.model.generation",
    "RadLlavaForConditionalGeneration": "radlvlm.model.modeling",
    "build_config": "radlvlm.model.modeling",
    "build_model": "radlvlm.model.modeling",
    "image_token_count": "radlvlm.model.modeling",
    "load_model": "radlvlm.model.modeling",
    "parameter_counts": "radlvlm.model.modeling",
    "save_model": "radlvlm.model.modeling",
    "MoLEAdapter": "radlvlm.model.mole",
    "MoLEConfig": "radlvlm.model.mole",
    "inject_mole": "radlvlm.model.mole",
    "load_mole_adapter": "radlvlm.model.mole",
    "mole_adapter_of": "radlvlm.model.mole",
    "RadProcessor": "radlvlm.model.processor",
    "load_pretrained": "radlvlm.model.pretrained",
    "save_pretrained": "radlvlm.model.pretrained",
    "train_tokenizer": "radlvlm.model.tokenizer",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
