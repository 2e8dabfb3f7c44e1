"""The embedded model with the finding classifier as its vision tower: the classifier's features reach the language
model as a few visual tokens (LLaVA's projector), its labels as the prompt's findings line.

    radlvlm embedded tower --model MODEL --classifier CLASSIFIER --to OUT [--pool 3]

The result is ``OUT/base`` (the language model and its tokenizer as they were, the classifier as the tower, a new
projector from the tower's pooled feature map, the processor preparing images as the classifier does) and
``OUT/adapter`` (the MoLE experts as they were: they sit on the language model's MLPs, which did not change). The
projector starts untrained: the writer stage (``radlvlm embedded writer``) trains it with the experts.

Why replace the tower rather than add one: a ViT trained from scratch on ~2,000 radiographs learns nothing useful
(``shared/MODEL_NOTES.md``), so the old tower's tokens only cost prefill time; the classifier's are what this data
can teach.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from radlvlm.errors import InputError
from radlvlm.model.findings import FindingTowerConfig, load_finding_classifier
from radlvlm.model.modeling import build_config, build_model
from radlvlm.model.pretrained import load_pretrained, save_pretrained
from radlvlm.model.processor import RadProcessor

__all__ = ["with_finding_tower"]

# 3 x 3 cells of the pooled feature map: upper, middle and lower zones of each side and the middle, which is as fine
# as anything the classifier was trained to tell apart (it has no side or zone labels).
DEFAULT_POOL = 3


def with_finding_tower(model: Path, classifier: Path, out: Path, *, pool: int = DEFAULT_POOL) -> dict[str, Any]:
    """Write ``out/base`` and ``out/adapter``: ``model`` with ``classifier`` (a saved
    :class:`~radlvlm.model.findings.FindingClassifier`, or a model's base whose tower is one) as its tower, pooled
    to ``pool`` x ``pool`` tokens."""
    base, adapter = model / "base", model / "adapter"
    if not (base / "config.json").is_file() or not adapter.is_dir():
        raise InputError(f"{model}: expected a radlvlm model with base/ and adapter/")
    if not (classifier / "config.json").is_file():
        raise InputError(f"{classifier}: not a saved finding classifier or model (no config.json)")
    old, processor = load_pretrained(base)
    reader = load_finding_classifier(classifier)  # a classifier of its own, or another model's tower
    tower = FindingTowerConfig.from_values(reader.config.to_dict())
    config = build_config(
        tower,
        old.config.text_config,
        image_token_id=old.config.image_token_id,
        vision_feature_layer=-1,
        visual_token_pool=pool,
        pad_token_id=getattr(old.config, "pad_token_id", None),
        prompt_profile=getattr(old.config, "prompt_profile", None),
    )
    new = build_model(config, seed=0)
    new.model.language_model.load_state_dict(old.model.language_model.state_dict())
    new.lm_head.load_state_dict(old.lm_head.state_dict())
    new.model.vision_tower.load_state_dict(reader.state_dict())
    # Stored as the base was (the embedded model ships float16 weights; it is loaded in float32 to run on a CPU).
    stored = json.loads((base / "config.json").read_text()).get("dtype") or "float32"
    new.to(getattr(torch, str(stored), torch.float32))
    new_processor = RadProcessor.for_model(
        processor.tokenizer, config, tower.transform_config(), profile=processor.prompt_profile
    )
    out.mkdir(parents=True, exist_ok=True)
    save_pretrained(new, new_processor, out / "base")
    if (out / "adapter").exists():
        shutil.rmtree(out / "adapter")
    shutil.copytree(adapter, out / "adapter")
    summary = {
        "tower": tower.classifier_id,
        "tower_image_size": tower.image_size,
        "image_tokens": config.image_seq_length,
        "token_width": tower.hidden_size,
        "from_model": str(model),
        "classifier": str(classifier),
        "parameters": {
            "tower": sum(p.numel() for p in new.model.vision_tower.parameters()),
            "projector": sum(p.numel() for p in new.model.multi_modal_projector.parameters()),
            "replaced_tower": sum(p.numel() for p in old.model.vision_tower.parameters()),
        },
    }
    (out / "tower.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
