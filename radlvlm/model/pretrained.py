"""A radlvlm model directory: HF Llava weights + config, and the processor (``processor_config.json``, tokenizer).

``load_pretrained`` returns the model and its processor; an optional MoLE adapter directory or peft LoRA
adapter directory is attached on top of the base (adapters are never merged into saved base weights).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel

from radlvlm.errors import ModelError
from radlvlm.model.modeling import RadLlavaForConditionalGeneration, load_model, save_model
from radlvlm.model.mole import ADAPTER_CONFIG, load_mole_adapter
from radlvlm.model.processor import RadProcessor


def save_pretrained(model: RadLlavaForConditionalGeneration, processor: RadProcessor, directory: str | Path) -> Path:
    directory = Path(directory)
    if getattr(model, "_mole_adapter", None) is not None:
        raise ModelError("save the MoLE adapter with adapter.save() and the base before injecting it")
    stated = getattr(model.config, "prompt_profile", None)
    if stated is not None and stated != processor.prompt_profile:
        raise ModelError(
            f"the processor's prompt profile {processor.prompt_profile!r} differs from the model's {stated!r}"
        )
    model.config.prompt_profile = processor.prompt_profile
    save_model(model, directory)
    processor.save_pretrained(directory)
    return directory


def load_pretrained(
    directory: str | Path, *, adapter: str | Path | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.nn.Module, RadProcessor]:
    """Model (with ``adapter`` attached when given) and processor from local directories only."""
    model = load_model(directory, dtype=dtype)
    processor = RadProcessor.from_pretrained(directory)
    if processor.image_token_id != model.config.image_token_id:
        raise ModelError(
            f"{directory}: tokenizer's image token id {processor.image_token_id} differs from the model's "
            f"{model.config.image_token_id}"
        )
    stated = getattr(model.config, "prompt_profile", None)
    if stated is not None and stated != processor.prompt_profile:
        raise ModelError(
            f"{directory}: the processor's prompt profile {processor.prompt_profile!r} differs from the model "
            f"config's {stated!r}"
        )
    if adapter is None:
        return model, processor
    adapter = Path(adapter)
    if (adapter / ADAPTER_CONFIG).is_file():
        load_mole_adapter(model, adapter)
        model.eval()
        return model, processor
    if (adapter / "adapter_config.json").is_file():
        try:
            peft_model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
        except (ValueError, RuntimeError, KeyError) as e:
            raise ModelError(f"{adapter}: LoRA adapter does not fit this base model ({type(e).__name__}: {e})") from e
        peft_model.eval()
        return peft_model, processor
    raise ModelError(f"{adapter}: neither a MoLE adapter ({ADAPTER_CONFIG}) nor a peft LoRA adapter")
