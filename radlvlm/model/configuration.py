"""radlvlm's model config: a ``LlavaConfig`` that checks itself, so a config read from disk is as valid as one built.

Two classes, because one model family has two faces:

- ``RadLlavaConfig`` keeps ``model_type = "llava"``. An unpooled radlvlm model *is* an HF Llava, and its
  ``config.json`` must say so: transformers' ``AutoModelForImageTextToText``, its checkpoint-key conversions (which
  are looked up by ``model_type``) and vLLM all load it as a plain Llava. It is not registered with ``AutoConfig``
  (``llava`` is transformers' own name); radlvlm's loader (:func:`load_config`) reads every Llava directory through
  it, so the checks run on every load.
- ``PooledRadLlavaConfig`` (``model_type = "radlvlm_llava"``) is what a model with visual-token pooling saves: no
  plain Llava can run it, so its ``config.json`` must not claim to be one. It is registered with ``AutoConfig`` and
  ``AutoModelForImageTextToText`` (:mod:`radlvlm.model.auto`), so ``from_pretrained`` on the directory builds
  :class:`~radlvlm.model.modeling.RadLlavaForConditionalGeneration` once radlvlm is imported.

What is checked (``ModelError`` naming the field): the vision tower and the LM are kinds radlvlm runs; the image
token is inside the LM's vocabulary; the feature-selection strategy fits the tower (SigLIP has no CLS token to
drop); the pooling side fits the patch grid and drops the CLS token; the prompt profile is a known one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, LlavaConfig, PretrainedConfig

from radlvlm.errors import ModelError
from radlvlm.model.finding_config import FindingTowerConfig
from radlvlm.model.profile import PROFILES

# The finding classifier (a CNN) is a tower too: the embedded model reads a radiograph with it.
SUPPORTED_VISION = ("clip_vision_model", "siglip_vision_model", "dinov2", "vit", FindingTowerConfig.model_type)
# Towers whose output is patch tokens only: nothing to drop before the projector.
_NO_CLS_TOKEN = ("siglip_vision_model", FindingTowerConfig.model_type)
SUPPORTED_TEXT = ("llama", "mistral", "qwen2", "phi", "phi3", "gemma", "gemma2")
LLAVA_MODEL_TYPES = ("llava", "radlvlm_llava")
CONFIG_FILE = "config.json"


class RadLlavaConfig(LlavaConfig):
    """``LlavaConfig`` plus radlvlm's two fields, checked whenever a config is made (see the module docstring).

    transformers makes every config subclass a dataclass; the checks run in ``__post_init__``, after
    ``LlavaConfig``'s own, so they run for a config built in code and for one read from disk alike.

    Attributes:
        visual_token_pool (int | None): average-pool the encoder's patch grid to this side before the projector
            (a model with it is a :class:`PooledRadLlavaConfig`: use :func:`make_config`).
        prompt_profile (str | None): how the model family is asked (:mod:`radlvlm.model.profile`); None when the
            config predates it (the processor's own setting then decides).
    """

    visual_token_pool: int | None = None
    prompt_profile: str | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        validate(self)


class PooledRadLlavaConfig(RadLlavaConfig):
    """A radlvlm model with visual-token pooling: its own ``model_type``, since plain Llava cannot run it."""

    model_type = "radlvlm_llava"


def make_config(**values: Any) -> RadLlavaConfig:
    """The config class that fits ``values``: pooled or plain Llava."""
    cls = PooledRadLlavaConfig if values.get("visual_token_pool") else RadLlavaConfig
    try:
        return cls(**values)
    except ModelError:
        raise
    except (TypeError, ValueError, StrictDataclassError) as e:  # transformers' own field checks
        raise ModelError(f"invalid model config: {_first_line(e)}") from e


def has_cls_token(vision_config: PretrainedConfig) -> bool:
    """SigLIP and the finding tower emit patch tokens only; CLIP, DINOv2 and ViT put a CLS token first."""
    return vision_config.model_type not in _NO_CLS_TOKEN


def patch_grid_side(config: LlavaConfig) -> int:
    vision = config.vision_config
    return int(vision.image_size) // int(vision.patch_size)


def image_token_count(config: LlavaConfig) -> int:
    """How many positions one image occupies in the LM's sequence."""
    pool = getattr(config, "visual_token_pool", None)
    if pool:
        return int(pool) ** 2
    tokens = patch_grid_side(config) ** 2
    if config.vision_feature_select_strategy == "full" and has_cls_token(config.vision_config):
        tokens += 1
    return tokens


def validate(config: LlavaConfig) -> None:
    """Refuse a Llava config radlvlm cannot run, naming the field."""
    vision, text = config.vision_config, config.text_config
    if vision.model_type not in SUPPORTED_VISION:
        raise ModelError(f"vision encoder {vision.model_type!r} is not supported; use one of {SUPPORTED_VISION}")
    if text.model_type not in SUPPORTED_TEXT:
        raise ModelError(f"language model {text.model_type!r} is not supported; use one of {SUPPORTED_TEXT}")
    if not 0 <= int(config.image_token_id) < int(text.vocab_size):
        raise ModelError(f"image_token_id {config.image_token_id} is outside the LM vocabulary of {text.vocab_size}")
    strategy = config.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise ModelError(f"vision_feature_select_strategy must be 'default' or 'full', got {strategy!r}")
    if strategy == "default" and not has_cls_token(vision):
        raise ModelError(f"{vision.model_type} has no CLS token to drop: use vision_feature_select_strategy='full'")
    side = patch_grid_side(config)
    if side < 1:
        raise ModelError(f"image_size {vision.image_size} is smaller than one patch of {vision.patch_size}")
    pool = getattr(config, "visual_token_pool", None)
    if pool is not None:
        if not 1 <= pool <= side:
            raise ModelError(f"visual_token_pool must be between 1 and the patch grid side {side}, got {pool}")
        if strategy == "full" and has_cls_token(vision):
            raise ModelError("visual_token_pool pools the patch grid and cannot keep the CLS token ('full')")
        if not isinstance(config, PooledRadLlavaConfig):
            raise ModelError("a pooled model's config must be a PooledRadLlavaConfig (use make_config)")
    profile = getattr(config, "prompt_profile", None)
    if profile is not None and profile not in PROFILES:
        raise ModelError(f"unknown prompt profile {profile!r}; known: {', '.join(PROFILES)}")


def read_json_object(path: Path) -> dict[str, Any]:
    """A model directory's JSON file (config, processor, adapter settings) as a dict, or a ModelError naming it."""
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot be read as JSON ({type(e).__name__}: {e})") from e
    if not isinstance(values, dict):
        raise ModelError(f"{path}: not a JSON object")
    return values


def load_config(directory: str | Path) -> RadLlavaConfig:
    """Read and check ``config.json`` of a radlvlm model, an HF Llava export, or a converted LLaVA-Rad/LLaVA-1.5."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ModelError(f"{directory}: no {CONFIG_FILE}; not a saved model directory")
    values = read_json_object(path)
    model_type = values.get("model_type")
    if model_type not in LLAVA_MODEL_TYPES:
        raise ModelError(f"{directory}: model_type is {model_type!r}, expected 'llava' (use `radlvlm convert`)")
    # Models saved before pooled configs had their own type said "llava" with a pool; they load as pooled.
    cls = PooledRadLlavaConfig if values.get("visual_token_pool") else RadLlavaConfig
    values = {k: v for k, v in values.items() if k not in ("model_type", "transformers_version")}
    try:
        return cls.from_dict(values)
    except ModelError as e:
        raise ModelError(f"{directory}: {e}") from e
    except (TypeError, ValueError, KeyError, StrictDataclassError) as e:
        raise ModelError(f"{directory}: {CONFIG_FILE} is not a valid Llava config ({_first_line(e)})") from e


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] if lines else type(error).__name__


# A pooled model's directory names its own type; AutoConfig must know it (exist_ok: a module reload is harmless).
AutoConfig.register(PooledRadLlavaConfig.model_type, PooledRadLlavaConfig, exist_ok=True)
