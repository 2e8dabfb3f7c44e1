"""Prompt profiles: how a model family was trained to be asked, so a converted model is asked the same way.

A model drafts as well as it can only when it sees the prompt, the token ids and the pixels it was trained on.
A profile is stored with the model (``prompt_profile`` in its config and processor config), chosen by
``radlvlm convert``, and read by the processor, the engines, the drafting task and the checks:

- ``radlvlm``: radlvlm's own models: its chat template, "findings and impression", error checks.
- ``llava-rad``: LLaVA-Rad (microsoft/LLaVA-Rad, conversation template ``v1``): the Vicuna system prompt, then
  ``USER: <image>\\nProvide a description of the findings in the radiology image[ given the following indication:
  {reason}] ASSISTANT:``; it writes findings only (the impression is left empty); its text around ``<image>`` is
  tokenised chunk by chunk, as its ``tokenizer_image_token`` does; it was never trained for error checks.
- ``llava-1.5``: LLaVA-1.5 (``vicuna_v1``): the same template and tokenisation, a general description request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from radlvlm.errors import ModelError

__all__ = ["DEFAULT_PROFILE", "PROFILES", "PromptProfile", "get_profile"]

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class PromptProfile:
    """How a family's models are asked.

    Attributes:
        name: the profile's name, as stored with the model.
        template: ``chat_template`` (the tokenizer's own, radlvlm's models) or ``vicuna_v1`` (LLaVA's conversation
            template "v1": ``{system} USER: {message} ASSISTANT:``).
        system: the system prompt (``vicuna_v1``), or None.
        draft_instruction: the drafting request without an indication.
        draft_instruction_with_indication: the request with one (``{indication}`` is filled in), or None when the
            family puts the indication on a line of its own (radlvlm's drafting task does).
        writes: ``findings_and_impression``, or ``findings`` for a family trained on findings only.
        error_checks: whether the family was trained to check reports for errors.
        tokenization: ``whole`` (the prompt at once) or ``chunked`` (the text around ``<image>`` piece by piece,
            each piece as the tokenizer encodes a string alone, without a second BOS).
    """

    name: str
    template: Literal["chat_template", "vicuna_v1"]
    system: str | None
    draft_instruction: str
    draft_instruction_with_indication: str | None
    writes: Literal["findings_and_impression", "findings"]
    error_checks: bool
    tokenization: Literal["whole", "chunked"]

    def draft_request(self, indication: str | None) -> str | None:
        """The family's own drafting request, or None when radlvlm's drafting task writes it."""
        if self.name == "radlvlm":
            return None
        if indication and indication.strip() and self.draft_instruction_with_indication:
            return self.draft_instruction_with_indication.format(indication=indication.strip())
        return self.draft_instruction


PROFILES: dict[str, PromptProfile] = {
    "radlvlm": PromptProfile(
        name="radlvlm",
        template="chat_template",
        system=None,
        draft_instruction="",  # radlvlm.tasks.drafting.draft_prompt
        draft_instruction_with_indication=None,
        writes="findings_and_impression",
        error_checks=True,
        tokenization="whole",
    ),
    "llava-rad": PromptProfile(
        name="llava-rad",
        template="vicuna_v1",
        system=VICUNA_V1_SYSTEM,
        draft_instruction="Provide a description of the findings in the radiology image.",
        draft_instruction_with_indication=(
            "Provide a description of the findings in the radiology image given the following indication: {indication}"
        ),
        writes="findings",
        error_checks=False,
        tokenization="chunked",
    ),
    "llava-1.5": PromptProfile(
        name="llava-1.5",
        template="vicuna_v1",
        system=VICUNA_V1_SYSTEM,
        draft_instruction="Describe the findings in this chest X-ray.",
        draft_instruction_with_indication="Describe the findings in this chest X-ray. The indication is: {indication}",
        writes="findings",
        error_checks=False,
        tokenization="chunked",
    ),
}
DEFAULT_PROFILE = "radlvlm"


def get_profile(name: str | None) -> PromptProfile:
    """The profile named ``name`` (radlvlm's own when None: models saved before profiles existed)."""
    try:
        return PROFILES[name or DEFAULT_PROFILE]
    except KeyError:
        raise ModelError(f"unknown prompt profile {name!r}; known: {', '.join(PROFILES)}") from None
