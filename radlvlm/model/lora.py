"""Plain LoRA through peft on the same LM modules as MoLE: the baseline MoLE must beat."""

from __future__ import annotations

import re

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from radlvlm.errors import ModelError


def lm_target_pattern(target_modules: tuple[str, ...]) -> str:
    """A peft regex matching only the language model's projections (not the vision tower's)."""
    names = "|".join(re.escape(name) for name in target_modules)
    return rf".*language_model\..*\.({names})"


def apply_lora(
    model: nn.Module,
    *,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj"),
    modules_to_save: list[str] | None = None,
) -> PeftModel:
    """Wrap ``model`` with a peft LoRA adapter on the LM's ``target_modules``; base weights frozen."""
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lm_target_pattern(target_modules),
        modules_to_save=modules_to_save,
        bias="none",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise ModelError(f"peft LoRA could not be applied: {e}") from e
