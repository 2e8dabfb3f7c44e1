"""The processor: images and prompts → one model batch (the model never sees text or PIL images).

It owns the image preprocessing that matches the encoder (``ImageTransformConfig``), the tokenizer and its
chat template, and the expansion of each ``<image>`` into the number of visual tokens the model uses.
Batches are left-padded so that generation continues every row from its last prompt token.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage
from transformers import AutoTokenizer, BatchFeature, LlavaConfig, PreTrainedTokenizerBase

from radlvlm.errors import InputError, ModelError
from radlvlm.imaging import Image, ImageTransformConfig, ToModelInput
from radlvlm.model.modeling import image_token_count
from radlvlm.model.profile import get_profile
from radlvlm.model.tokenizer import IMAGE, VICUNA_CHAT_TEMPLATE

PROCESSOR_FILE = "radlvlm_processor.json"
ImageInput = Image | torch.Tensor | PILImage.Image


class RadProcessor:
    """Tokenizer + image transform + ``<image>`` expansion.

    Args:
        tokenizer: any HF tokenizer that has ``image_token`` in its vocabulary.
        image_config: preprocessing matching the vision encoder (size, crop/pad, mean/std).
        num_image_tokens (int): positions one image occupies (``image_token_count(model.config)``).
        image_token (str, default "<image>"): the placeholder in prompts.
        max_length (int | None): the LM's context; longer prompts are refused, not truncated.
        profile (str | None): the model family's prompt profile (:mod:`radlvlm.model.profile`; radlvlm's own
            when None): template, drafting request, what it writes, whether it checks, how it tokenises.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_config: ImageTransformConfig,
        num_image_tokens: int,
        *,
        image_token: str = IMAGE,
        max_length: int | None = None,
        profile: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.profile = get_profile(profile)
        self.image_config = image_config
        self.num_image_tokens = num_image_tokens
        self.image_token = image_token
        self.max_length = max_length
        image_id = tokenizer.convert_tokens_to_ids(image_token)
        if image_id is None or image_id == tokenizer.unk_token_id:
            raise ModelError(f"the tokenizer has no {image_token!r} token")
        self.image_token_id = int(image_id)
        if tokenizer.pad_token_id is None:
            raise ModelError("the tokenizer needs a pad token for batching")
        self.transform = ToModelInput(image_config)

    @classmethod
    def for_model(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        config: LlavaConfig,
        image_config: ImageTransformConfig | None = None,
        *,
        profile: str | None = None,
    ) -> RadProcessor:
        """A processor consistent with ``config`` (image size, token count, context length)."""
        image_config = image_config or ImageTransformConfig(size=int(config.vision_config.image_size))
        if image_config.size != int(config.vision_config.image_size):
            raise ModelError(
                f"image size {image_config.size} does not match the encoder's {config.vision_config.image_size}"
            )
        processor = cls(
            tokenizer,
            image_config,
            image_token_count(config),
            max_length=int(getattr(config.text_config, "max_position_embeddings", 0) or 0) or None,
            profile=profile,
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
        tensors = []
        for index, image in enumerate(images):
            if isinstance(image, PILImage.Image):
                pixels = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)
                tensors.append(self.transform(pixels))
            elif isinstance(image, Image):
                tensors.append(self.transform(image))
            elif isinstance(image, torch.Tensor):
                expected = (self.image_config.channels, self.image_config.size, self.image_config.size)
                if image.ndim == 3 and tuple(image.shape) == expected:
                    tensors.append(image.float())  # already preprocessed
                elif image.ndim == 2 or (image.ndim == 3 and image.shape[0] == 1):
                    tensors.append(self.transform(image))
                else:
                    raise InputError(
                        f"image {index}: tensor of shape {tuple(image.shape)} is neither pixels (rows, columns) "
                        f"nor preprocessed {expected}"
                    )
            else:
                raise InputError(f"image {index}: unsupported type {type(image).__name__}")
        return torch.stack(tensors)

    def __call__(
        self,
        texts: str | Sequence[str] | Sequence[Sequence[int]],
        images: Sequence[ImageInput | None] | None = None,
        *,
        padding_side: str = "left",
    ) -> BatchFeature:
        """Tokenise ``texts`` (already formatted, e.g. by ``chat_prompt``; or their ``prompt_ids``) with one image
        per ``<image>``.

        ``images[i]`` belongs to ``texts[i]`` (None for a text-only row).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
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

    def decode(self, token_ids: torch.Tensor | Sequence[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        settings = {
            "image_config": asdict(self.image_config),
            "num_image_tokens": self.num_image_tokens,
            "image_token": self.image_token,
            "max_length": self.max_length,
            "prompt_profile": self.profile.name,
        }
        (directory / PROCESSOR_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> RadProcessor:
        directory = Path(directory)
        path = directory / PROCESSOR_FILE
        if not path.is_file():
            raise ModelError(f"{directory}: no {PROCESSOR_FILE}; not a radlvlm processor directory")
        settings = json.loads(path.read_text())
        image_values = settings["image_config"]
        image_values["mean"], image_values["std"] = tuple(image_values["mean"]), tuple(image_values["std"])
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelError(f"{directory}: tokenizer cannot be loaded ({type(e).__name__})") from e
        return cls(
            tokenizer,
            ImageTransformConfig(**image_values),
            int(settings["num_image_tokens"]),
            image_token=settings.get("image_token", IMAGE),
            max_length=settings.get("max_length"),
            profile=settings.get("prompt_profile"),
        )
