"""Conversion from the published LLaVA-1.5 and LLaVA-Rad layouts, checked against forwards of those layouts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from testsupport import REPORT_CORPUS as CORPUS
from testsupport import draft_prompt_for
from tinymodels import tiny_text_config, tiny_vision_config
from transformers import CLIPVisionModel, LlamaForCausalLM, LlavaForConditionalGeneration

from radlvlm.errors import ModelError
from radlvlm.model import MoLEConfig, inject_mole, train_tokenizer
from radlvlm.model.convert import convert_llava15, convert_llava_rad, export_hf_llava
from radlvlm.model.pretrained import load_pretrained

VOCAB = 300
TRUNK_WIDTH = 192  # timm's vit_tiny width (3 heads of 64), the smallest family the converter maps
TOWER_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"timm_model_name": "vit_tiny_patch14_dinov2", "timm_model_pretrained": False, "image_size": 28},
    "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract", "context_length": 256},
}


def _llava_config(llama: LlamaForCausalLM, mm_hidden: int, **extra: object) -> dict[str, object]:
    values = llama.config.to_dict()
    values.update(
        model_type="llava_llama",
        architectures=["LlavaLlamaForCausalLM"],
        mm_hidden_size=mm_hidden,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        image_aspect_ratio="pad",
    )
    values.update(extra)
    return values


def _projector(mm_hidden: int, hidden: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "model.mm_projector.0.weight": torch.randn(hidden, mm_hidden, generator=generator) * 0.2,
        "model.mm_projector.0.bias": torch.randn(hidden, generator=generator) * 0.2,
        "model.mm_projector.2.weight": torch.randn(hidden, hidden, generator=generator) * 0.2,
        "model.mm_projector.2.bias": torch.randn(hidden, generator=generator) * 0.2,
    }


def _project(features: torch.Tensor, projector: dict[str, torch.Tensor]) -> torch.Tensor:
    hidden = F.gelu(features @ projector["model.mm_projector.0.weight"].T + projector["model.mm_projector.0.bias"])
    return hidden @ projector["model.mm_projector.2.weight"].T + projector["model.mm_projector.2.bias"]


def _llava_forward(lm: torch.nn.Module, embed: torch.nn.Module, before, image_features, after) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """LLaVA's forward: the image features replace the single <image> placeholder inside the embeddings."""
    inputs_embeds = torch.cat([embed(before), image_features, embed(after)], dim=1)
    return lm(inputs_embeds=inputs_embeds).logits


def _ours(model, image_token_id: int, before, after, n_image: int, pixels) -> torch.Tensor:  # type: ignore[no-untyped-def]
    ids = torch.cat([before, torch.full((1, n_image), image_token_id), after], dim=1)
    return model(input_ids=ids, pixel_values=pixels).logits


@pytest.fixture
def base_tokenizer():  # type: ignore[no-untyped-def]
    return train_tokenizer(CORPUS * 10, vocab_size=VOCAB, min_frequency=1, image_token=False)


def test_llava15_original_layout(tmp_path: Path, base_tokenizer) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    llama = LlamaForCausalLM(tiny_text_config("llama", vocab_size=len(base_tokenizer))).eval()
    tower = CLIPVisionModel(tiny_vision_config("clip")).eval()
    model_dir, tower_dir = tmp_path / "llava-v1.5", tmp_path / "clip-vit"
    model_dir.mkdir()
    tower.save_pretrained(tower_dir)
    projector = _projector(32, 64)
    weights = {k: v.contiguous() for k, v in llama.state_dict().items()} | projector
    save_file(weights, str(model_dir / "model.safetensors"))
    (model_dir / "config.json").write_text(json.dumps(_llava_config(llama, 32)))
    base_tokenizer.save_pretrained(model_dir)

    out = convert_llava15(model_dir, tower_dir, tmp_path / "ours")
    model, processor = load_pretrained(out)
    assert processor.image_token_id == len(base_tokenizer)  # <image> appended to the vocabulary
    assert processor.profile.name == "llava-1.5" and processor.profile.tokenization == "chunked"
    assert processor.image_config.resize_mode == "pad" and processor.image_config.pad_fill == "mean"
    # Written in today's layout: the family is in the config too, and the processor is transformers'.
    assert json.loads((out / "config.json").read_text())["prompt_profile"] == "llava-1.5"
    assert json.loads((out / "processor_config.json").read_text())["processor_class"] == "RadProcessor"
    assert not (out / "radlvlm_processor.json").exists()

    pixels = torch.randn(1, 3, 28, 28)
    before, after = torch.tensor([[1, 10, 11]]), torch.tensor([[12, 13, 14]])
    with torch.no_grad():
        hidden = tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        reference = _llava_forward(llama, llama.model.embed_tokens, before, _project(hidden, projector), after)
        converted = _ours(model, processor.image_token_id, before, after, hidden.shape[1], pixels)
    assert converted.shape[1] == reference.shape[1]
    assert torch.allclose(converted[..., : llama.config.vocab_size], reference, atol=1e-5)


def _timm_trunk(depth: int = 2, width: int = 64, patch: int = 14, grid: int = 2) -> dict[str, torch.Tensor]:
    """Random tensors in the layout of a timm DINOv2-style ViT (open_clip ``visual.trunk``)."""
    g = torch.Generator().manual_seed(2)

    def rnd(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    trunk = {
        "cls_token": rnd(1, 1, width),
        "pos_embed": rnd(1, 1 + grid * grid, width),
        "patch_embed.proj.weight": rnd(width, 3, patch, patch, scale=0.02),
        "patch_embed.proj.bias": rnd(width),
        "norm.weight": 1 + rnd(width),
        "norm.bias": rnd(width),
    }
    for i in range(depth):
        trunk |= {
            f"blocks.{i}.norm1.weight": 1 + rnd(width),
            f"blocks.{i}.norm1.bias": rnd(width),
            f"blocks.{i}.attn.qkv.weight": rnd(3 * width, width),
            f"blocks.{i}.attn.qkv.bias": rnd(3 * width),
            f"blocks.{i}.attn.proj.weight": rnd(width, width),
            f"blocks.{i}.attn.proj.bias": rnd(width),
            f"blocks.{i}.ls1.gamma": 0.5 + rnd(width),
            f"blocks.{i}.norm2.weight": 1 + rnd(width),
            f"blocks.{i}.norm2.bias": rnd(width),
            f"blocks.{i}.mlp.fc1.weight": rnd(4 * width, width),
            f"blocks.{i}.mlp.fc1.bias": rnd(4 * width),
            f"blocks.{i}.mlp.fc2.weight": rnd(width, 4 * width),
            f"blocks.{i}.mlp.fc2.bias": rnd(width),
            f"blocks.{i}.ls2.gamma": 0.5 + rnd(width),
        }
    return trunk


def _timm_hidden_states(trunk: dict[str, torch.Tensor], pixels: torch.Tensor) -> list[torch.Tensor]:
    """LLaVA-Rad's VisionTower forward over a timm ViT: patch_embed, _pos_embed, blocks (no final norm)."""
    width = trunk["pos_embed"].shape[-1]
    heads = max(width // 64, 1)
    patch = trunk["patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(pixels, trunk["patch_embed.proj.weight"], trunk["patch_embed.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([trunk["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + trunk["pos_embed"]
    states = [x]
    depth = 1 + max(int(k.split(".")[1]) for k in trunk if k.startswith("blocks."))
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (width,), trunk[p + "norm1.weight"], trunk[p + "norm1.bias"], eps=1e-6)
        qkv = (h @ trunk[p + "attn.qkv.weight"].T + trunk[p + "attn.qkv.bias"]).reshape(
            x.shape[0], x.shape[1], 3, heads, width // heads
        )
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attention = ((q @ k.transpose(-2, -1)) / math.sqrt(width // heads)).softmax(-1) @ v
        attention = attention.transpose(1, 2).reshape(x.shape)
        x = x + trunk[p + "ls1.gamma"] * (attention @ trunk[p + "attn.proj.weight"].T + trunk[p + "attn.proj.bias"])
        h = F.layer_norm(x, (width,), trunk[p + "norm2.weight"], trunk[p + "norm2.bias"], eps=1e-6)
        mlp = F.gelu(h @ trunk[p + "mlp.fc1.weight"].T + trunk[p + "mlp.fc1.bias"])
        x = x + trunk[p + "ls2.gamma"] * (mlp @ trunk[p + "mlp.fc2.weight"].T + trunk[p + "mlp.fc2.bias"])
        states.append(x)
    return states


@pytest.fixture
def llava_rad_checkpoint(tmp_path: Path, base_tokenizer):  # type: ignore[no-untyped-def]
    """A tiny checkpoint in LLaVA-Rad's published layout: Vicuna-like base, LoRA adapter, projector, open_clip tower."""
    torch.manual_seed(0)
    base_dir, model_dir = tmp_path / "vicuna", tmp_path / "llava-rad"
    base = LlamaForCausalLM(tiny_text_config("llama", vocab_size=len(base_tokenizer))).eval()
    base.save_pretrained(base_dir)
    base_tokenizer.save_pretrained(base_dir)
    # As LLaVA-Rad's own training code saves it: LoRA r 64 / alpha 128 on all seven projections, as a .bin
    # (peft 0.4 wrote adapter_model.bin, keys without the adapter name), the projector in non_lora_trainables.bin.
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora_config = LoraConfig(r=64, lora_alpha=128, target_modules=targets, init_lora_weights=False)
    adapted = get_peft_model(LlamaForCausalLM.from_pretrained(base_dir), lora_config)
    adapted.save_pretrained(model_dir, safe_serialization=False)
    assert (model_dir / "adapter_model.bin").is_file()
    projector = _projector(TRUNK_WIDTH, 64)
    torch.save({f"base_model.model.{k}": v for k, v in projector.items()}, model_dir / "non_lora_trainables.bin")
    # LLaVA-Rad trains with image_aspect_ratio "square" (resize and centre-crop), not "pad".
    config = _llava_config(base, TRUNK_WIDTH, mm_vision_tower="biomedclip_cxr_518", image_aspect_ratio="square")
    (model_dir / "config.json").write_text(json.dumps(config))
    trunk = _timm_trunk(width=TRUNK_WIDTH)
    open_clip_state = {f"module.visual.trunk.{k}": v for k, v in trunk.items()}
    open_clip_state |= {
        "module.visual.head.proj.weight": torch.randn(32, TRUNK_WIDTH),
        "module.logit_scale": torch.ones(()),
    }
    torch.save({"state_dict": open_clip_state}, tmp_path / "biomedclipcxr_518_checkpoint.pt")
    # The open_clip config that travels with the tower (LLaVA-Rad's is biomedclipcxr_518.json): the trunk's family.
    (tmp_path / "biomedclipcxr_518.json").write_text(json.dumps(TOWER_CONFIG))
    return model_dir, base_dir, tmp_path / "biomedclipcxr_518_checkpoint.pt", trunk, projector


def test_llava_rad_layout(tmp_path: Path, llava_rad_checkpoint) -> None:  # type: ignore[no-untyped-def]
    model_dir, base_dir, vision_checkpoint, trunk, projector = llava_rad_checkpoint
    out = convert_llava_rad(model_dir, base_dir, vision_checkpoint, tmp_path / "ours")
    model, processor = load_pretrained(out)
    assert model.config.vision_config.model_type == "dinov2"
    # Asked as LLaVA-Rad was trained: its v1 prompt, chunked token ids, findings only, no error checks.
    assert processor.profile.name == "llava-rad" and not processor.profile.error_checks
    assert draft_prompt_for(processor, None).endswith(
        "USER: <image>\nProvide a description of the findings in the radiology image. ASSISTANT:"
    )
    assert model.config.image_seq_length == 4  # 28 px / 14 px patches = 2 x 2 (1369 at 518 px)

    reference_lm = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), model_dir).eval()
    pixels = torch.randn(1, 3, 28, 28)
    before, after = torch.tensor([[1, 20, 21, 22]]), torch.tensor([[23, 24]])
    with torch.no_grad():
        features = _timm_hidden_states(trunk, pixels)[-2][:, 1:]
        embed = reference_lm.get_input_embeddings()
        reference = _llava_forward(reference_lm, embed, before, _project(features, projector), after)
        converted = _ours(model, processor.image_token_id, before, after, features.shape[1], pixels)
    assert torch.allclose(converted[..., :VOCAB], reference[..., :VOCAB], atol=1e-4)


def test_llava_rad_reads_its_tower_from_the_config_and_refuses_what_it_cannot_map(
    tmp_path: Path, llava_rad_checkpoint
) -> None:  # type: ignore[no-untyped-def]
    model_dir, base_dir, vision_checkpoint, trunk, _ = llava_rad_checkpoint
    config_path = vision_checkpoint.parent / "biomedclipcxr_518.json"
    config_path.unlink()
    with pytest.raises(ModelError, match="open_clip config"):
        convert_llava_rad(model_dir, base_dir, vision_checkpoint, tmp_path / "a")
    wrong = {**TOWER_CONFIG, "vision_cfg": {**TOWER_CONFIG["vision_cfg"], "timm_model_name": "vit_base_patch14_dinov2"}}
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    with pytest.raises(ModelError, match="768 wide"):
        convert_llava_rad(model_dir, base_dir, vision_checkpoint, tmp_path / "b", vision_config=tmp_path / "wrong.json")
    other = {**TOWER_CONFIG, "vision_cfg": {"timm_model_name": "convnext_base"}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ModelError, match="not a timm ViT family"):
        convert_llava_rad(model_dir, base_dir, vision_checkpoint, tmp_path / "c", vision_config=tmp_path / "other.json")
    (tmp_path / "right.json").write_text(json.dumps(TOWER_CONFIG))
    width = TRUNK_WIDTH
    learned = {**trunk, "norm_pre.weight": 1 + 0.1 * torch.randn(width), "norm_pre.bias": torch.zeros(width)}
    torch.save({f"visual.trunk.{k}": v for k, v in learned.items()}, tmp_path / "prenorm.pt")
    with pytest.raises(ModelError, match="pre-norm"):
        convert_llava_rad(
            model_dir, base_dir, tmp_path / "prenorm.pt", tmp_path / "d", vision_config=tmp_path / "right.json"
        )
    identity = {**trunk, "norm_pre.weight": torch.ones(width), "norm_pre.bias": torch.zeros(width)}
    torch.save({f"visual.trunk.{k}": v for k, v in identity.items()}, tmp_path / "identity.pt")
    out = convert_llava_rad(
        model_dir, base_dir, tmp_path / "identity.pt", tmp_path / "e", vision_config=tmp_path / "right.json"
    )
    model, _ = load_pretrained(out)
    assert model.config.vision_config.num_attention_heads == 3  # from vit_tiny, not guessed from the width


def test_llava_rad_keeps_a_float16_base_in_float16(tmp_path: Path, llava_rad_checkpoint) -> None:  # type: ignore[no-untyped-def]
    from safetensors import safe_open

    model_dir, base_dir, vision_checkpoint, _, _ = llava_rad_checkpoint
    half = tmp_path / "vicuna-fp16"
    LlamaForCausalLM.from_pretrained(base_dir).half().save_pretrained(half)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (base_dir / name).exists():
            (half / name).write_bytes((base_dir / name).read_bytes())
    out = convert_llava_rad(model_dir, half, vision_checkpoint, tmp_path / "ours")
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        dtypes = {weights.get_slice(key).get_dtype() for key in weights.keys()}  # noqa: SIM118 - safe_open is not a dict
    assert dtypes == {"F16"}


def test_llava_rad_refuses_a_base_that_does_not_match(tmp_path: Path, llava_rad_checkpoint) -> None:  # type: ignore[no-untyped-def]
    model_dir, _, vision_checkpoint, _, _ = llava_rad_checkpoint
    other = tmp_path / "other-base"
    LlamaForCausalLM(tiny_text_config("llama", vocab_size=VOCAB, hidden_size=32)).save_pretrained(other)
    train_tokenizer(CORPUS, vocab_size=VOCAB, min_frequency=1, image_token=False).save_pretrained(other)
    with pytest.raises(ModelError, match="does not fit the base"):
        convert_llava_rad(model_dir, other, vision_checkpoint, tmp_path / "ours")


def test_missing_source_tensor_is_named(tmp_path: Path, llava_rad_checkpoint) -> None:  # type: ignore[no-untyped-def]
    model_dir, base_dir, _, trunk, _ = llava_rad_checkpoint
    damaged = {f"visual.trunk.{k}": v for k, v in trunk.items() if k != "blocks.1.mlp.fc2.weight"}
    torch.save(damaged, tmp_path / "damaged.pt")
    with pytest.raises(ModelError, match=r"encoder\.layer\.1\.mlp\.fc2\.weight"):
        convert_llava_rad(model_dir, base_dir, tmp_path / "damaged.pt", tmp_path / "ours")


def test_export_to_hf_llava_loads_with_transformers_and_matches(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    model, processor = tiny
    out = export_hf_llava(model, processor, tmp_path / "hf")
    reloaded = LlavaForConditionalGeneration.from_pretrained(out).eval()
    ids = torch.tensor([[1, 3, 3, 3, 3, 7, 8]])
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(
            reloaded(input_ids=ids, pixel_values=pixels).logits,
            model(input_ids=ids, pixel_values=pixels).logits,
            atol=1e-6,
        )
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    from transformers import AutoProcessor

    hf_processor = AutoProcessor.from_pretrained(out)
    assert type(hf_processor).__name__ == "LlavaProcessor"
    assert hf_processor.patch_size == 14 and hf_processor.image_token == "<image>"
    assert hf_processor.image_processor.crop_size["height"] == 28


def test_export_merges_peft_lora_and_refuses_mole(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    from radlvlm.model.lora import apply_lora

    model, processor = tiny
    lora = apply_lora(model, r=2, alpha=4)
    for name, parameter in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    ids, pixels = torch.tensor([[1, 3, 3, 3, 3, 9]]), torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        expected = lora(input_ids=ids, pixel_values=pixels).logits
    out = export_hf_llava(lora, processor, tmp_path / "merged")
    with torch.no_grad():
        merged = LlavaForConditionalGeneration.from_pretrained(out)(input_ids=ids, pixel_values=pixels).logits
    assert torch.allclose(merged, expected, atol=1e-5)

    fresh, _ = tiny
    inject_mole(fresh, MoLEConfig(num_experts=2, r=2))
    with pytest.raises(ModelError, match="cannot be merged"):
        export_hf_llava(fresh, processor, tmp_path / "mole")
