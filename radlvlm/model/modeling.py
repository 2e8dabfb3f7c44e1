"""The LLaVA-Rad-style vision-language model: HF Llava with any HF vision encoder and causal LM.

A dense radlvlm model *is* a ``LlavaForConditionalGeneration`` (same config, same state-dict keys), so
``LlavaForConditionalGeneration.from_pretrained`` and vLLM load what we save as it is. The one addition is
optional visual-token pooling (``config.visual_token_pool = k``): the encoder's patch grid is average-pooled
to k x k before the projector, for a faster prefill (LLaVA-Mini / MQT line of work). It adds no weights;
a pooled model needs this class to run, and ``export_hf_llava`` refuses it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PretrainedConfig,
)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from radlvlm.errors import ModelError
from radlvlm.model import findings as _findings  # noqa: F401 - registers the finding tower with AutoModel
from radlvlm.model.configuration import (
    PooledRadLlavaConfig,
    RadLlavaConfig,
    has_cls_token,
    image_token_count,
    load_config,
    make_config,
    patch_grid_side,
)

__all__ = [
    "PoolingProjector",
    "RadLlavaForConditionalGeneration",
    "build_config",
    "build_model",
    "check_loading_info",
    "has_cls_token",
    "image_token_count",
    "load_model",
    "parameter_counts",
    "patch_grid_side",
    "save_model",
]

logger = logging.getLogger(__name__)


class PoolingProjector(LlavaMultiModalProjector):
    """LLaVA-1.5's 2-layer GELU projector preceded by average pooling of the patch grid to ``pool`` x ``pool``.

    Parameter names are the projector's own (``linear_1``, ``linear_2``), so weights move freely between a
    pooled and an unpooled model.
    """

    def __init__(self, config: LlavaConfig, pool: int) -> None:
        super().__init__(config)
        self.pool = pool

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = image_features.shape
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ModelError(f"visual-token pooling needs a square patch grid, got {tokens} tokens")
        grid = image_features.transpose(1, 2).reshape(batch, width, side, side)
        pooled = F.adaptive_avg_pool2d(grid, self.pool).flatten(2).transpose(1, 2)
        return super().forward(pooled)


class RadLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """``LlavaForConditionalGeneration`` plus optional visual-token pooling (see the module docstring)."""

    config_class = RadLlavaConfig

    def __init__(self, config: LlavaConfig) -> None:
        super().__init__(config)
        pool = getattr(config, "visual_token_pool", None)
        if pool:
            self.model.multi_modal_projector = PoolingProjector(config, int(pool))
            self.post_init()

    @property
    def num_image_tokens(self) -> int:
        return image_token_count(self.config)


def build_config(
    vision_config: PretrainedConfig | dict[str, Any],
    text_config: PretrainedConfig | dict[str, Any],
    *,
    image_token_id: int,
    vision_feature_layer: int = -2,
    vision_feature_select_strategy: str | None = None,
    visual_token_pool: int | None = None,
    pad_token_id: int | None = None,
    prompt_profile: str | None = None,
) -> RadLlavaConfig:
    """A checked Llava config from any supported encoder and LM config (:mod:`radlvlm.model.configuration`).

    Args:
        vision_config: an HF vision config (CLIP/SigLIP vision, DINOv2, ViT) or its dict (with ``model_type``).
        text_config: an HF causal-LM config (Llama, Mistral, Qwen2, Phi, Gemma) or its dict.
        image_token_id (int): the id of ``<image>`` in the tokenizer; must be inside the LM's vocabulary.
        vision_feature_layer (int, default -2): encoder hidden state fed to the projector (LLaVA: second last).
        vision_feature_select_strategy ("default" | "full" | None): "default" drops the CLS token, "full" keeps
            every token; None picks "default" for encoders with a CLS token and "full" for SigLIP (none).
        visual_token_pool (int | None, default None): pool the patch grid to this side length before projecting.
        prompt_profile (str | None): the model family's prompt profile, stored with the config.
    """
    vision = _as_config(vision_config)
    text = _as_config(text_config)
    if vision_feature_select_strategy is None:
        vision_feature_select_strategy = "default" if has_cls_token(vision) else "full"
    config = make_config(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        visual_token_pool=visual_token_pool,
        prompt_profile=prompt_profile,
    )
    config.image_seq_length = image_token_count(config)
    if pad_token_id is not None:
        config.pad_token_id = pad_token_id
        config.text_config.pad_token_id = pad_token_id
    return config


def build_model(config: LlavaConfig, *, seed: int | None = None) -> RadLlavaForConditionalGeneration:
    """A randomly initialised model (tests, benchmarks, the start of training from scratch)."""
    if seed is not None:
        torch.manual_seed(seed)
    model = RadLlavaForConditionalGeneration(config)
    model.eval()
    return model


def save_model(model: LlavaForConditionalGeneration, directory: str | Path) -> Path:
    """``save_pretrained`` as safetensors; the config keeps the plain Llava architecture name when unpooled."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pooled = bool(getattr(model.config, "visual_token_pool", None))
    # Training turns the KV cache off (gradient checkpointing); whoever generates from the saved model, through
    # radlvlm or with plain HF generate, must get it on: without it decoding is 2-3x slower.
    if model.generation_config is not None:
        model.generation_config.use_cache = True
    model.save_pretrained(directory, safe_serialization=True)
    # save_pretrained records the Python class; an unpooled model is plain Llava to every other loader.
    model.config.architectures = ["RadLlavaForConditionalGeneration" if pooled else "LlavaForConditionalGeneration"]
    model.config.save_pretrained(directory)
    return directory


def load_model(
    directory: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    allow_missing: bool = False,
    allow_unexpected: bool = False,
) -> RadLlavaForConditionalGeneration:
    """Load a model saved by ``save_model`` (or any HF Llava directory) from local files only.

    Missing or unexpected weights are refused, naming them, unless explicitly allowed: a silently partial
    load would produce a model that runs and reports nonsense.
    """
    directory = Path(directory)
    config = load_config(directory)
    if not any(directory.glob("*.safetensors")) and not any(directory.glob("*.bin")):
        raise ModelError(f"{directory}: no weight files (*.safetensors or *.bin)")
    try:
        model, info = RadLlavaForConditionalGeneration.from_pretrained(
            directory,
            config=config,
            local_files_only=True,
            dtype=dtype,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported (and refused) below, naming the tensors
        )
    except (OSError, RuntimeError, ValueError) as e:
        raise ModelError(f"{directory}: weights do not match the config ({type(e).__name__}: {_first_line(e)})") from e
    check_loading_info(info, directory, allow_missing=allow_missing, allow_unexpected=allow_unexpected)
    model.eval()
    return model


def check_loading_info(
    info: dict[str, Any], where: str | Path, *, allow_missing: bool = False, allow_unexpected: bool = False
) -> None:
    """Raise on missing, unexpected or shape-mismatched weights, naming the first few."""
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} weight(s) with the wrong shape, e.g. {_preview(mismatched)}")
    if missing and not allow_missing:
        problems.append(f"{len(missing)} missing weight(s), e.g. {_preview(missing)}")
    if unexpected and not allow_unexpected:
        problems.append(f"{len(unexpected)} unexpected weight(s), e.g. {_preview(unexpected)}")
    if problems:
        raise ModelError(f"{where}: refusing a partial load: " + "; ".join(problems))
    if missing or unexpected:
        logger.warning(
            "%s: loaded with %d missing and %d unexpected weights (allowed)", where, len(missing), len(unexpected)
        )


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def _as_config(config: PretrainedConfig | dict[str, Any]) -> PretrainedConfig:
    if isinstance(config, PretrainedConfig):
        return config
    values = dict(config)
    model_type = values.pop("model_type", None)
    if model_type is None:
        raise ModelError("a config given as a dict needs its 'model_type'")
    return AutoConfig.for_model(model_type, **values)


def _preview(keys: list[Any], n: int = 3) -> str:
    shown = ", ".join(str(k) for k in keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


class PooledRadLlavaForConditionalGeneration(RadLlavaForConditionalGeneration):
    """What ``AutoModelForImageTextToText`` builds for a pooled model's directory (transformers pairs one config
    class with one model class; the model is the same)."""

    config_class = PooledRadLlavaConfig


AutoModelForImageTextToText.register(PooledRadLlavaConfig, PooledRadLlavaForConditionalGeneration, exist_ok=True)
