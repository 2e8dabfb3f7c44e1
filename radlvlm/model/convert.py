"""Checkpoint conversion: the layouts hospitals have → a radlvlm model directory → HF Llava for vLLM.

In:
- **LLaVA-1.5** as published (``LlavaLlamaForCausalLM``: config keys ``mm_projector_type``,
  ``mm_hidden_size``, ``mm_vision_select_layer``, ``mm_vision_select_feature``, ``image_aspect_ratio``;
  weights ``model.*``/``lm_head`` of a Llama plus ``model.mm_projector.{0,2}``), with its CLIP vision tower
  from a separate local HF directory.
- **LLaVA-Rad** as published: a peft LoRA adapter (r=64, alpha=128 on q/k/v/o/gate/up/down) over a
  Vicuna-7B-v1.5 base, the projector in ``non_lora_trainables.bin``, and the BiomedCLIP-CXR 518 px vision
  tower as an open_clip checkpoint whose ``visual.trunk`` is a timm DINOv2-style ViT-B/14. The trunk's
  state dict is read with torch alone and mapped onto transformers' ``Dinov2Model`` (timm cannot be
  imported with the CPU torch); LLaVA-Rad reads hidden state -2 of the blocks with the CLS token dropped,
  which is Llava's ``vision_feature_layer=-2`` / ``"default"`` on ``Dinov2Model`` (1369 tokens at 518 px).
  The LoRA is merged into the LM with peft.

Out: ``export_hf_llava`` writes a plain HF Llava directory (LoRA merged) with an HF ``LlavaProcessor`` around
radlvlm's image processor, which ``LlavaForConditionalGeneration.from_pretrained`` and vLLM load as they are once
radlvlm is imported (vLLM imports it through its plugin entry point), and which the torch backend loads too. A MoLE
adapter cannot be merged (each token uses its own expert) and visual-token pooling is not part of HF Llava: both are
refused.

Key maps are data (tables of renames), so every tensor is accounted for: a source key that no rule maps,
or a target weight that nothing fills, stops the conversion with their names.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoTokenizer,
    CLIPVisionConfig,
    Dinov2Config,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaProcessor,
    PreTrainedTokenizerBase,
)

from radlvlm.errors import ModelError
from radlvlm.imaging import ImageTransformConfig
from radlvlm.model.modeling import RadLlavaForConditionalGeneration, build_config, build_model, save_model
from radlvlm.model.pretrained import save_pretrained
from radlvlm.model.processor import RadProcessor
from radlvlm.model.tokenizer import IMAGE, VICUNA_CHAT_TEMPLATE

logger = logging.getLogger(__name__)

# OpenAI CLIP normalisation: used by CLIP ViT-L/14-336 and, as open_clip's default, by BiomedCLIP-CXR.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# LLaVA-1.5 / LLaVA-Rad LM keys (a Llama under ``model.``) → HF Llava keys.
LLAVA_LM_RULES: list[tuple[str, str]] = [
    (r"^model\.mm_projector\.0\.(weight|bias)$", r"model.multi_modal_projector.linear_1.\1"),
    (r"^model\.mm_projector\.2\.(weight|bias)$", r"model.multi_modal_projector.linear_2.\1"),
    (r"^model\.(embed_tokens|layers|norm)\.(.+)$", r"model.language_model.\1.\2"),
    (r"^lm_head\.weight$", r"lm_head.weight"),
]

# timm ViT (open_clip ``visual.trunk``) keys → transformers Dinov2Model keys (qkv is split separately).
TIMM_DINOV2_RULES: list[tuple[str, str]] = [
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^pos_embed$", "embeddings.position_embeddings"),
    (r"^patch_embed\.proj\.(weight|bias)$", r"embeddings.patch_embeddings.projection.\1"),
    (r"^blocks\.(\d+)\.norm1\.(weight|bias)$", r"encoder.layer.\1.norm1.\2"),
    (r"^blocks\.(\d+)\.norm2\.(weight|bias)$", r"encoder.layer.\1.norm2.\2"),
    (r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$", r"encoder.layer.\1.attention.o_proj.\2"),
    (r"^blocks\.(\d+)\.ls1\.gamma$", r"encoder.layer.\1.layer_scale1.lambda1"),
    (r"^blocks\.(\d+)\.ls2\.gamma$", r"encoder.layer.\1.layer_scale2.lambda1"),
    (r"^blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$", r"encoder.layer.\1.mlp.fc1.\2"),
    (r"^blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$", r"encoder.layer.\1.mlp.fc2.\2"),
    (r"^norm\.(weight|bias)$", r"layernorm.\1"),
]
_QKV = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")


def rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]], *, what: str) -> dict[str, torch.Tensor]:
    """Apply the first matching rule to every key; an unmatched key is an error naming it."""
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, tensor in state.items():
        for pattern, replacement in rules:
            if re.match(pattern, key):
                out[re.sub(pattern, replacement, key)] = tensor
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise ModelError(f"{what}: {len(unmapped)} tensor(s) have no mapping, e.g. {unmapped[:3]}")
    return out


# timm ViT families → (width, attention heads): what the open_clip config's ``timm_model_name`` tells about a
# trunk that its weights do not (a 768-wide trunk could have 12 heads of 64 or 8 of 96).
TIMM_VIT_FAMILIES: dict[str, tuple[int, int]] = {
    "vit_tiny": (192, 3),
    "vit_small": (384, 6),
    "vit_base": (768, 12),
    "vit_large": (1024, 16),
    "vit_giant": (1536, 24),
}


def open_clip_vision_config(path: Path) -> dict[str, Any]:
    """The ``vision_cfg`` of an open_clip model config (LLaVA-Rad ships ``biomedclipcxr_518.json``)."""
    config = _read_json(path)
    vision = config.get("vision_cfg")
    if not isinstance(vision, dict) or not isinstance(vision.get("timm_model_name"), str):
        raise ModelError(f"{path}: not an open_clip model config with a timm vision trunk (vision_cfg.timm_model_name)")
    return vision


def timm_heads(vision_cfg: dict[str, Any], width: int) -> int:
    """The trunk's attention heads, from its timm model name; refused for a family radlvlm does not map or a
    name whose width is not the trunk's."""
    name = str(vision_cfg["timm_model_name"])
    family = next((f for f in TIMM_VIT_FAMILIES if name.startswith(f + "_")), None)
    if family is None:
        known = ", ".join(TIMM_VIT_FAMILIES)
        raise ModelError(f"vision trunk {name!r} is not a timm ViT family radlvlm maps ({known})")
    expected, heads = TIMM_VIT_FAMILIES[family]
    if expected != width:
        raise ModelError(f"the config names {name!r} ({expected} wide) but the checkpoint's trunk is {width} wide")
    return heads


def timm_vit_to_dinov2(
    trunk: dict[str, torch.Tensor], *, heads: int | None = None
) -> tuple[Dinov2Config, dict[str, torch.Tensor]]:
    """A timm DINOv2-style ViT state dict → (Dinov2Config, Dinov2Model state dict).

    ``heads`` comes from the tower's config (:func:`timm_heads`); without it 64-wide heads are assumed, which
    is what every timm ViT family has. A pre-norm (``norm_pre``, applied by LLaVA-Rad when present) that is not
    the identity is refused: ``Dinov2Model`` has no place for it.
    """
    if any(key.startswith("reg_token") for key in trunk):
        raise ModelError("vision trunk has register tokens, which Dinov2Model does not support")
    required = ("cls_token", "pos_embed", "patch_embed.proj.weight")
    absent = [key for key in required if key not in trunk]
    if absent:
        raise ModelError(f"vision trunk is not a timm ViT state dict: missing {absent}")
    hidden = int(trunk["pos_embed"].shape[-1])
    patch = int(trunk["patch_embed.proj.weight"].shape[-1])
    grid = math.isqrt(int(trunk["pos_embed"].shape[1]) - 1)
    depth = 1 + max(int(m.group(1)) for key in trunk if (m := re.match(r"^blocks\.(\d+)\.", key)))
    if "norm_pre.weight" in trunk:
        weight, bias = trunk["norm_pre.weight"].float(), trunk.get("norm_pre.bias", torch.zeros(1)).float()
        if not (torch.allclose(weight, torch.ones_like(weight)) and torch.allclose(bias, torch.zeros_like(bias))):
            raise ModelError(
                "vision trunk applies a learned pre-norm (norm_pre) before its blocks, which Dinov2Model cannot; "
                "converting without it would change every feature"
            )
    if heads is not None and hidden % heads:
        raise ModelError(f"vision trunk width {hidden} is not divisible by {heads} heads")
    mlp = int(trunk["blocks.0.mlp.fc1.weight"].shape[0])
    if mlp % hidden:
        raise ModelError(f"vision trunk MLP width {mlp} is not a multiple of its width {hidden}")
    config = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=heads or max(hidden // 64, 1),
        mlp_ratio=mlp // hidden,
        image_size=grid * patch,
        patch_size=patch,
        layer_norm_eps=1e-6,
        qkv_bias="blocks.0.attn.qkv.bias" in trunk,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
    )
    split: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, tensor in trunk.items():
        match = _QKV.match(key)
        if match:
            layer, kind = match.groups()
            for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0), strict=True):
                split[f"encoder.layer.{layer}.attention.{name}.{kind}"] = part.contiguous()
        elif key not in ("norm_pre.weight", "norm_pre.bias") and not key.startswith("head."):
            rest[key] = tensor
    mapped = {**rename(rest, TIMM_DINOV2_RULES, what="vision trunk"), **split}
    mapped["embeddings.mask_token"] = torch.zeros(1, hidden)  # DINOv2 masking is unused at inference
    return config, mapped


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A .safetensors, .bin or .pt file, or every shard of them in a directory; weights only, no pickled code."""
    if path.is_dir():
        # Model weights only: adapters, optimizer states and training args live in other *.bin files.
        files = sorted(path.glob("model*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    else:
        files = [path]
    if not files:
        raise ModelError(f"{path}: no weight files")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise ModelError(f"{file}: no such weight file")
        if file.suffix == ".safetensors":
            state.update(load_file(str(file)))
            continue
        try:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several kinds for a corrupt or non-weights pickle
            raise ModelError(f"{file}: cannot be read as a weights file ({type(e).__name__})") from e
        if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
            loaded = loaded["state_dict"]
        if not isinstance(loaded, dict):
            raise ModelError(f"{file}: not a state dict")
        state.update(loaded)
    return state


def open_clip_trunk(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``visual.trunk`` part of an open_clip checkpoint (``module.`` prefixes from DDP removed)."""
    prefix = "visual.trunk."
    trunk = {}
    for key, tensor in state.items():
        key = key.removeprefix("module.")
        if key.startswith(prefix):
            trunk[key[len(prefix) :]] = tensor
    if not trunk:
        raise ModelError("open_clip checkpoint has no 'visual.trunk.*' tensors (is it a timm-trunk CLIP model?)")
    return trunk


def clip_vision_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision-tower tensors of a CLIP checkpoint, in transformers' CLIPVisionModel naming.

    Hub checkpoints (CLIPModel or older CLIPVisionModel) prefix them with ``vision_model.``; transformers 5
    saves a CLIPVisionModel without the prefix. Text tower and projection heads are not part of Llava.
    """
    prefixed = {k[len("vision_model.") :]: v for k, v in state.items() if k.startswith("vision_model.")}
    if prefixed:
        return prefixed
    dropped = ("text_model.", "visual_projection.", "text_projection.", "logit_scale")
    return {k: v for k, v in state.items() if not k.startswith(dropped)}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: invalid JSON at line {e.lineno}") from e


def _text_config(llava_config: dict[str, Any]) -> LlamaConfig:
    """The Llama config inside a ``llava_llama`` config (the mm_* keys are not Llama's)."""
    values = {k: v for k, v in llava_config.items() if not k.startswith("mm_") and k not in _LLAVA_ONLY_KEYS}
    values.pop("model_type", None)
    values.pop("architectures", None)
    return LlamaConfig(**values)


_LLAVA_ONLY_KEYS = {
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter",
    "use_mm_proj",
    "tokenizer_padding_side",
    "tokenizer_model_max_length",
    "transformers_version",
    "_name_or_path",
}


def _check_projector(llava_config: dict[str, Any]) -> None:
    kind = llava_config.get("mm_projector_type", "linear")
    if kind != "mlp2x_gelu":
        raise ModelError(f"projector type {kind!r} is not supported (LLaVA-1.5 and LLaVA-Rad use 'mlp2x_gelu')")
    if llava_config.get("mm_use_im_start_end"):
        raise ModelError("checkpoints trained with mm_use_im_start_end image delimiters are not supported")


def _select_strategy(llava_config: dict[str, Any]) -> str:
    feature = llava_config.get("mm_vision_select_feature", "patch")
    if feature not in ("patch", "cls_patch"):
        raise ModelError(f"mm_vision_select_feature {feature!r} is not supported")
    return "default" if feature == "patch" else "full"


def _image_config(llava_config: dict[str, Any], size: int) -> ImageTransformConfig:
    pad = llava_config.get("image_aspect_ratio", "square") == "pad"
    return ImageTransformConfig(
        size=size,
        resize_mode="pad" if pad else "crop",
        pad_fill="mean",
        channels=3,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        interpolation="bicubic",
        resampler="pil",  # the tower's own training preprocessing: 8-bit pixels, PIL bicubic, its crop or pad
    )


def _prepare_tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    if (directory / "tokenizer.model").is_file() and not (directory / "tokenizer.json").is_file():
        # A sentencepiece-only tokenizer (Vicuna v1.5): transformers needs both packages to read and convert it.

        absent = [name for name in ("sentencepiece", "google.protobuf") if importlib.util.find_spec(name) is None]
        if absent:
            names = ", ".join(name.replace("google.", "") for name in absent)
            raise ModelError(
                f"{directory}: its tokenizer is a sentencepiece model, which needs {names}: "
                "pip install 'radlvlm[llava-rad]'"
            )
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelError(f"{directory}: no usable tokenizer ({type(e).__name__})") from e
    if IMAGE not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # LLaVA pads with <unk>
    tokenizer.padding_side = "left"
    if not tokenizer.chat_template:
        tokenizer.chat_template = VICUNA_CHAT_TEMPLATE
    return tokenizer


def _assemble(
    *,
    vision_config: Any,
    text_config: LlamaConfig,
    llava_config: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    vision_state: dict[str, torch.Tensor],
    language_state: dict[str, torch.Tensor],
    out: Path,
    profile: str,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Build our model from mapped tensors, check every weight is filled, and save model + processor (with the
    family's prompt profile, so the converted model is asked as its family was trained)."""
    vocabulary = max(len(tokenizer), text_config.vocab_size)
    text_config.vocab_size = vocabulary
    config = build_config(
        vision_config,
        text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_layer=int(llava_config.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy=_select_strategy(llava_config),
        pad_token_id=tokenizer.pad_token_id,
        prompt_profile=profile,
    )
    model = build_model(config)
    state = dict(language_state)
    for name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if name in state:
            state[name] = _grow_rows(state[name], vocabulary)
    state.update({f"model.vision_tower.{k}": v for k, v in vision_state.items()})
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        raise ModelError(
            f"conversion does not account for every tensor: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(wrong)} wrong shape (e.g. {wrong[:3]})"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    model = model.to(dtype)  # merged in float32, saved in the precision the checkpoint was published in
    processor = RadProcessor.for_model(
        tokenizer, model.config, _image_config(llava_config, int(vision_config.image_size)), profile=profile
    )
    save_pretrained(model, processor, out)
    logger.info("converted model written to %s (%d tensors)", out, len(state))
    return out


def _grow_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """Add rows (new tokens such as <image>) initialised to the mean embedding, as HF's LLaVA conversion does."""
    if weight.shape[0] >= rows:
        return weight
    extra = weight.float().mean(dim=0, keepdim=True).expand(rows - weight.shape[0], -1).to(weight.dtype)
    return torch.cat([weight, extra])


def convert_llava15(model_dir: str | Path, vision_tower_dir: str | Path, out: str | Path) -> Path:
    """LLaVA-1.5 original layout + a local HF CLIP vision tower directory → a radlvlm model directory."""
    model_dir, vision_tower_dir, out = Path(model_dir), Path(vision_tower_dir), Path(out)
    llava_config = _read_json(model_dir / "config.json")
    if "mm_hidden_size" not in llava_config:
        raise ModelError(f"{model_dir}: config.json has no mm_hidden_size; not an original-layout LLaVA checkpoint")
    _check_projector(llava_config)
    state = read_state_dict(model_dir)
    state = {k: v for k, v in state.items() if not k.startswith("model.vision_tower.")}
    try:
        vision_config = AutoConfig.from_pretrained(vision_tower_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelError(f"{vision_tower_dir}: no vision tower config ({type(e).__name__})") from e
    vision_config = getattr(vision_config, "vision_config", vision_config)
    if not isinstance(vision_config, CLIPVisionConfig):
        raise ModelError(f"{vision_tower_dir}: LLaVA-1.5 expects a CLIP vision tower, got {vision_config.model_type}")
    if vision_config.hidden_size != llava_config["mm_hidden_size"]:
        raise ModelError(
            f"vision tower width {vision_config.hidden_size} differs from the checkpoint's mm_hidden_size "
            f"{llava_config['mm_hidden_size']}"
        )
    vision_state = clip_vision_tensors(read_state_dict(vision_tower_dir))
    return _assemble(
        vision_config=vision_config,
        text_config=_text_config(llava_config),
        llava_config=llava_config,
        tokenizer=_prepare_tokenizer(model_dir),
        vision_state=vision_state,
        language_state=rename(state, LLAVA_LM_RULES, what=str(model_dir)),
        out=out,
        profile="llava-1.5",
        dtype=_saved_dtype(llava_config),
    )


def _beside(checkpoint: Path) -> Path:
    """The open_clip config that travels with a tower checkpoint (one JSON with a ``vision_cfg`` beside it)."""
    found = []
    for candidate in sorted(checkpoint.parent.glob("*.json")):
        try:
            if "vision_cfg" in json.loads(candidate.read_text()):
                found.append(candidate)
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            continue
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise ModelError(
            f"{what} open_clip config (a JSON with vision_cfg) beside {checkpoint.name}: give it with "
            "--vision-config (LLaVA-Rad's is biomedclipcxr_518.json); the trunk's heads are read from it"
        )
    return found[0]


def _saved_dtype(config: dict[str, Any]) -> torch.dtype:
    """The precision a checkpoint was published in (Vicuna v1.5 and LLaVA-Rad: float16), to save it back in."""
    name = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(name, torch.float32)


def convert_llava_rad(
    model_dir: str | Path,
    base_dir: str | Path,
    vision_checkpoint: str | Path,
    out: str | Path,
    *,
    vision_config: str | Path | None = None,
) -> Path:
    """LLaVA-Rad (LoRA adapter + non_lora_trainables) over a Vicuna base, with its BiomedCLIP-CXR tower and that
    tower's open_clip config (``vision_config``; by default the one JSON with a ``vision_cfg`` beside it)."""
    model_dir, base_dir, vision_checkpoint, out = Path(model_dir), Path(base_dir), Path(vision_checkpoint), Path(out)
    llava_config = _read_json(model_dir / "config.json")
    vision_cfg = open_clip_vision_config(Path(vision_config) if vision_config else _beside(vision_checkpoint))
    _check_projector(llava_config)
    if not (model_dir / "adapter_config.json").is_file():
        raise ModelError(f"{model_dir}: no adapter_config.json; LLaVA-Rad ships its LM as a LoRA adapter")
    non_lora_path = model_dir / "non_lora_trainables.bin"
    non_lora = read_state_dict(non_lora_path)
    # Keys are saved from the peft-wrapped model: base_model.model.model.mm_projector.* → model.mm_projector.*
    projector = {}
    for key, tensor in non_lora.items():
        key = key.removeprefix("base_model.").removeprefix("model.")
        if key.startswith("model.mm_projector."):
            projector[key] = tensor
    if not projector:
        raise ModelError(f"{non_lora_path}: no mm_projector weights")
    try:
        base = LlamaForCausalLM.from_pretrained(base_dir, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ModelError(f"{base_dir}: base LM cannot be loaded ({type(e).__name__})") from e
    tokenizer = _prepare_tokenizer(base_dir)
    try:
        merged = PeftModel.from_pretrained(base, model_dir, is_trainable=False).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as e:
        raise ModelError(f"{model_dir}: LoRA adapter does not fit the base at {base_dir} ({e})") from e
    language_state = {**merged.state_dict(), **projector}
    trunk = open_clip_trunk(read_state_dict(vision_checkpoint))
    width = int(trunk["pos_embed"].shape[-1]) if "pos_embed" in trunk else 0
    vision_config, vision_state = timm_vit_to_dinov2(trunk, heads=timm_heads(vision_cfg, width))
    if vision_config.hidden_size != llava_config.get("mm_hidden_size", vision_config.hidden_size):
        raise ModelError(
            f"vision trunk width {vision_config.hidden_size} differs from mm_hidden_size "
            f"{llava_config['mm_hidden_size']}"
        )
    return _assemble(
        vision_config=vision_config,
        text_config=merged.config,
        llava_config=llava_config,
        tokenizer=tokenizer,
        vision_state=vision_state,
        language_state=rename(language_state, LLAVA_LM_RULES, what=str(model_dir)),
        out=out,
        profile="llava-rad",
        dtype=_saved_dtype(_read_json(base_dir / "config.json")),
    )


def export_hf_llava(model: torch.nn.Module, processor: RadProcessor, out: str | Path) -> Path:
    """Write a plain HF Llava directory (LoRA merged) with a LlavaProcessor, for vLLM and HF ``from_pretrained``."""
    out = Path(out)
    if getattr(model, "_mole_adapter", None) is not None:
        raise ModelError(
            "a MoLE adapter cannot be merged into dense weights (each token uses its own expert); export the "
            "base without it and serve the MoLE model with the torch backend"
        )
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    if not isinstance(model, RadLlavaForConditionalGeneration):
        raise ModelError(f"cannot export a {type(model).__name__}")
    if getattr(model.config, "visual_token_pool", None):
        raise ModelError("visual-token pooling is a radlvlm extension that HF Llava and vLLM do not run")
    model.config.prompt_profile = processor.prompt_profile
    save_model(model, out)
    # HF's Llava processor (what vLLM and HF users call) around radlvlm's image processor: the image is prepared
    # (pad or crop, MONAI or PIL resampling) exactly as the torch backend prepares it.
    hf_processor = LlavaProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        patch_size=int(model.config.vision_config.patch_size),
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        chat_template=processor.tokenizer.chat_template,
        image_token=processor.image_token,
        num_additional_image_tokens=1 if model.config.vision_feature_select_strategy == "default" else 0,
    )
    hf_processor.save_pretrained(out)
    return out
