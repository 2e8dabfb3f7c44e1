"""The processor: images and prompts → one model batch (the model never sees text or PIL images).

A transformers ``ProcessorMixin`` (tokenizer + :class:`~radlvlm.model.image_processing.RadImageProcessor` + the
prompt profile), so ``AutoProcessor.from_pretrained(directory)`` works once radlvlm is imported, and trl or any HF
tool that takes a processor takes ours. It owns the image preprocessing that matches the encoder, the tokenizer
and its chat template, the family's prompt format, and the expansion of each ``<image>`` into the number of
visual tokens the model uses. Batches are left-padded so that generation continues every row from its last
prompt token.

Saved as transformers saves a processor (``processor_config.json``, the tokenizer's files). Three older layouts
still load (:meth:`RadProcessor.from_pretrained`): radlvlm's own ``radlvlm_processor.json`` (models saved before
0.6 and converted LLaVA-Rad / LLaVA-1.5 directories of that time), and an HF ``LlavaProcessor`` directory (an
export, or a llava-hf checkpoint), whose image processor is mapped onto radlvlm's transforms.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor, AutoTokenizer, BatchFeature, LlavaConfig, PreTrainedTokenizerBase
from transformers.processing_utils import ProcessorMixin

from radlvlm.errors import InputError, ModelError
from radlvlm.imaging import ImageTransformConfig
from radlvlm.model.configuration import PooledRadLlavaConfig, image_token_count, load_config, read_json_object
from radlvlm.model.image_processing import RadImageInput, RadImageProcessor
from radlvlm.model.profile import PromptProfile, get_profile
from radlvlm.model.tokenizer import IMAGE, VICUNA_CHAT_TEMPLATE

__all__ = ["LEGACY_PROCESSOR_FILE", "PROCESSOR_CONFIG", "ImageInput", "RadProcessor"]

PROCESSOR_CONFIG = "processor_config.json"
LEGACY_PROCESSOR_FILE = "radlvlm_processor.json"
ImageInput = RadImageInput


class RadProcessor(ProcessorMixin):
    """Tokenizer + image processor + prompt profile + ``<image>`` expansion.

    Args:
        image_processor (RadImageProcessor): preprocessing matching the vision encoder (size, pad/crop, mean/std).
        tokenizer: any HF tokenizer that has ``image_token`` in its vocabulary and a pad token.
        num_image_tokens (int): positions one image occupies (``image_token_count(model.config)``).
        image_token (str, default "<image>"): the placeholder in prompts.
        max_length (int | None): the LM's context; longer prompts are refused, not truncated.
        prompt_profile (str | None): the model family's prompt profile (:mod:`radlvlm.model.profile`; radlvlm's
            own when None): template, drafting request, what it writes, whether it checks, how it tokenises.
    """

    def __init__(
        self,
        image_processor: RadImageProcessor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        num_image_tokens: int | None = None,
        image_token: str = IMAGE,
        max_length: int | None = None,
        prompt_profile: str | None = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(image_processor, RadImageProcessor):
            raise ModelError(f"RadProcessor needs a RadImageProcessor, got {type(image_processor).__name__}")
        if tokenizer is None:
            raise ModelError("RadProcessor needs a tokenizer")
        if not isinstance(num_image_tokens, int) or num_image_tokens < 1:
            raise ModelError(f"num_image_tokens must be a positive number, got {num_image_tokens!r}")
        profile = get_profile(prompt_profile)
        image_id = tokenizer.convert_tokens_to_ids(image_token)
        if image_id is None or image_id == tokenizer.unk_token_id:
            raise ModelError(f"the tokenizer has no {image_token!r} token")
        if tokenizer.pad_token_id is None:
            raise ModelError("the tokenizer needs a pad token for batching")
        self.num_image_tokens = num_image_tokens
        self.image_token = image_token
        self.image_token_id = int(image_id)
        self.max_length = max_length
        self.prompt_profile = profile.name
        # The tokenizer keeps the chat template (it is saved with it); the processor does not hold a second copy.
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @property
    def profile(self) -> PromptProfile:
        return get_profile(self.prompt_profile)

    @property
    def image_config(self) -> ImageTransformConfig:
        return self.image_processor.transform_config

    @classmethod
    def for_model(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        config: LlavaConfig,
        image_config: ImageTransformConfig | None = None,
        *,
        profile: str | None = None,
    ) -> RadProcessor:
        """A processor consistent with ``config`` (image size, token count, context length, profile)."""
        image_config = image_config or ImageTransformConfig(size=int(config.vision_config.image_size))
        if image_config.size != int(config.vision_config.image_size):
            raise ModelError(
                f"image size {image_config.size} does not match the encoder's {config.vision_config.image_size}"
            )
        stated = getattr(config, "prompt_profile", None)
        if profile is not None and stated is not None and profile != stated:
            raise ModelError(f"prompt profile {profile!r} differs from the model config's {stated!r}")
        processor = cls(
            RadImageProcessor.from_transform_config(image_config),
            tokenizer,
            num_image_tokens=image_token_count(config),
            max_length=_context_length(config),
            prompt_profile=profile or stated,
        )
        if processor.image_token_id != config.image_token_id:
            raise ModelError(
                f"tokenizer's {IMAGE} id {processor.image_token_id} differs from the model's {config.image_token_id}"
            )
        return processor

    def chat_prompt(self, instruction: str, *, image: bool = True, system: str | None = None) -> str:
        """The generation prompt for one user turn, ``<image>`` first when the study has an image, in the
        profile's template (the tokenizer's chat template, or LLaVA's conversation "v1")."""
        content = f"{self.image_token}\n{instruction}" if image else instruction
        if self.profile.template == "vicuna_v1":
            # LLaVA's SeparatorStyle.TWO with sep " ": "{system} USER: {message} ASSISTANT:" (no BOS in the text;
            # the tokenizer adds it to the first piece).
            return f"{system or self.profile.system} USER: {content} ASSISTANT:"
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        template = self.tokenizer.chat_template or VICUNA_CHAT_TEMPLATE
        return self.tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )

    def prompt_ids(self, text: str) -> list[int]:
        """The token ids of a formatted prompt, as the model's family tokenised them in training.

        ``whole``: the text at once (the chat template holds the BOS). ``chunked``: the text around ``<image>``
        piece by piece, each encoded as a string of its own (so the sentencepiece word boundary "▁" that begins
        each piece is kept, as LLaVA's ``tokenizer_image_token`` keeps it), the BOS only on the first piece.
        """
        if self.profile.tokenization == "whole":
            return [int(t) for t in self.tokenizer(text, add_special_tokens=False)["input_ids"]]
        bos = self.tokenizer.bos_token_id
        ids: list[int] = []
        for index, piece in enumerate(text.split(self.image_token)):
            if index:
                ids.append(self.image_token_id)
            encoded = [int(t) for t in self.tokenizer(piece, add_special_tokens=True)["input_ids"]]
            if encoded and encoded[0] == bos:
                encoded = encoded[1:]
            if index == 0 and bos is not None:
                encoded.insert(0, int(bos))  # LLaVA's slow Llama tokenizer always began with BOS
            ids.extend(encoded)
        return ids

    def pixel_values(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """(n, channels, size, size) model input for ``images`` (see ``RadImageProcessor.preprocess``)."""
        return self.image_processor(list(images))["pixel_values"]

    def __call__(  # type: ignore[override]
        self,
        text: str | Sequence[str] | Sequence[Sequence[int]] | None = None,
        images: ImageInput | Sequence[ImageInput | None] | None = None,
        *,
        padding_side: str = "left",
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Tokenise ``text`` (prompts already formatted, e.g. by ``chat_prompt``; or their ``prompt_ids``) with one
        image per ``<image>``.

        ``images[i]`` belongs to ``text[i]`` (None for a text-only row). Keyword arguments HF callers add
        (``padding``, ``truncation``) are accepted; radlvlm pads to the longest row and never truncates.
        """
        if return_tensors not in (None, "pt"):
            raise InputError(f"RadProcessor returns torch tensors, not {return_tensors!r}")
        if text is None:
            raise InputError("no prompts given")
        texts = [text] if isinstance(text, str) else list(text)
        if images is not None and not isinstance(images, (list, tuple)):
            images = [images]
        if images is not None and any(isinstance(item, (list, tuple)) for item in images):
            # HF's nested form (one list of images per prompt, as trl sends it); radlvlm prompts take one image.
            images = [_one_image(item, row) for row, item in enumerate(images)]
        if not texts:
            raise InputError("no prompts given")
        images = list(images) if images is not None else [None] * len(texts)
        if len(images) != len(texts):
            raise InputError(f"{len(texts)} prompts but {len(images)} images")
        rows: list[list[int]] = []
        batch_images: list[ImageInput] = []
        for row, (text, image) in enumerate(zip(texts, images, strict=True)):
            ids = self.prompt_ids(text) if isinstance(text, str) else [int(t) for t in text]
            placeholders = sum(1 for token in ids if token == self.image_token_id)
            wanted = 0 if image is None else 1
            if placeholders != wanted:
                raise InputError(
                    f"prompt {row}: {placeholders} {self.image_token} placeholder(s) for {wanted} image(s)"
                )
            expanded: list[int] = []
            for token in ids:
                expanded.extend([token] * self.num_image_tokens if token == self.image_token_id else [token])
            if self.max_length is not None and len(expanded) > self.max_length:
                raise InputError(
                    f"prompt {row} is {len(expanded)} tokens (with {wanted * self.num_image_tokens} image tokens), "
                    f"longer than the model's context of {self.max_length}"
                )
            rows.append(expanded)
            if image is not None:
                batch_images.append(image)
        width = max(len(row) for row in rows)
        pad = int(self.tokenizer.pad_token_id)  # type: ignore[arg-type]
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
            input_ids[i, span] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, span] = 1
        data: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if batch_images:
            data["pixel_values"] = self.pixel_values(batch_images)
        return BatchFeature(data=data)

    def decode(self, token_ids: torch.Tensor | Sequence[int], **kwargs: Any) -> str:  # type: ignore[override]
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> RadProcessor:  # type: ignore[override]
        """Load from a local directory: radlvlm's processor, an HF ``LlavaProcessor`` directory, or the pre-0.6
        ``radlvlm_processor.json`` layout (local files only; a refusal names what is missing)."""
        directory = Path(pretrained_model_name_or_path)
        config_path = directory / PROCESSOR_CONFIG
        if config_path.is_file():
            values = read_json_object(config_path)
            kind = values.get("processor_class")
            if kind == cls.__name__:
                try:
                    return super().from_pretrained(directory, local_files_only=True, **kwargs)
                except (OSError, ValueError, TypeError, KeyError) as e:
                    raise ModelError(f"{directory}: the processor cannot be loaded ({type(e).__name__}: {e})") from e
            if kind == "LlavaProcessor":
                return _from_llava_processor(cls, directory, values)
            raise ModelError(f"{directory}: {PROCESSOR_CONFIG} holds a {kind!r}, not a radlvlm or Llava processor")
        if (directory / LEGACY_PROCESSOR_FILE).is_file():
            return _from_legacy(cls, directory)
        raise ModelError(
            f"{directory}: no {PROCESSOR_CONFIG} (nor the older {LEGACY_PROCESSOR_FILE}); not a processor directory"
        )


def _one_image(item: Any, row: int) -> Any:
    if not isinstance(item, (list, tuple)):
        return item
    if len(item) > 1:
        raise InputError(f"prompt {row}: {len(item)} images; a radlvlm prompt takes one image (a frontal radiograph)")
    return item[0] if item else None


def _context_length(config: LlavaConfig) -> int | None:
    return int(getattr(config.text_config, "max_position_embeddings", 0) or 0) or None


def _tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelError(f"{directory}: tokenizer cannot be loaded ({type(e).__name__})") from e


def _from_legacy(cls: type[RadProcessor], directory: Path) -> RadProcessor:
    """The pre-0.6 layout: ``radlvlm_processor.json`` beside the tokenizer's files."""
    settings = read_json_object(directory / LEGACY_PROCESSOR_FILE)
    try:
        values = dict(settings["image_config"])
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        image_config = ImageTransformConfig(**values)
        num_image_tokens = int(settings["num_image_tokens"])
    except (KeyError, TypeError, ValueError, InputError) as e:
        raise ModelError(f"{directory}: {LEGACY_PROCESSOR_FILE} is not a radlvlm processor ({e})") from e
    return cls(
        RadImageProcessor.from_transform_config(image_config),
        _tokenizer(directory),
        num_image_tokens=num_image_tokens,
        image_token=settings.get("image_token", IMAGE),
        max_length=settings.get("max_length"),
        prompt_profile=settings.get("prompt_profile"),
    )


def _from_llava_processor(cls: type[RadProcessor], directory: Path, values: dict[str, Any]) -> RadProcessor:
    """An HF ``LlavaProcessor`` directory: a radlvlm export (its image processor is ours) or a llava-hf checkpoint
    (CLIP's: shortest side to the crop size, then a centre crop), with the model's config beside it."""
    image = values.get("image_processor")
    if not isinstance(image, dict):
        preprocessor = directory / "preprocessor_config.json"
        image = read_json_object(preprocessor) if preprocessor.is_file() else {}
    if image.get("image_processor_type") == RadImageProcessor.__name__:
        image_processor = RadImageProcessor(**image)
    else:
        crop = image.get("crop_size") or {}
        size = int(crop.get("height") or (image.get("size") or {}).get("shortest_edge") or 0)
        if size < 1:
            raise ModelError(f"{directory}: the HF image processor names no crop size")
        image_processor = RadImageProcessor(
            size=size,
            resize_mode="crop",
            image_mean=tuple(image.get("image_mean") or (0.5,)),
            image_std=tuple(image.get("image_std") or (0.5,)),
            interpolation="bicubic",
        )
    tokenizer = _tokenizer(directory)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    config = load_config(directory)
    return cls(
        image_processor,
        tokenizer,
        num_image_tokens=image_token_count(config),
        image_token=values.get("image_token", IMAGE),
        max_length=_context_length(config),
        prompt_profile=getattr(config, "prompt_profile", None),
    )


# ``AutoProcessor`` finds the class by the ``processor_class`` saved with it.
AutoProcessor.register(PooledRadLlavaConfig, RadProcessor, exist_ok=True)
