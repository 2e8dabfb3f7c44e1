"""Training stages on a tiny model: losses fall, a killed run resumes to the same result, outputs load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from testsupport import REPORT_CORPUS
from tinymodels import tiny_text_config, tiny_vision_config
from transformers import TrainerCallback

from radlvlm.errors import InputError
from radlvlm.model import RadProcessor, build_config, build_model, load_pretrained, train_tokenizer
from radlvlm.model.pretrained import save_pretrained
from radlvlm.training.recipe import load_recipe, recipe_from_dict
from radlvlm.training.trainer import ExampleCollator, train


@dataclass(frozen=True)
class Ex:
    instruction: str
    response: str
    image: torch.Tensor | None
    task: str = "draft"


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[Ex]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Ex:
        return self.items[index]


def _examples(n: int = 8) -> ListDataset:
    generator = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        bright = i % 2 == 0
        image = torch.rand(28, 28, generator=generator) * 0.2 + (0.7 if bright else 0.1)
        response = "FINDINGS: The lungs are clear." if bright else "FINDINGS: Small left pleural effusion."
        items.append(Ex("Write the findings.", response, image))
    items.append(Ex("Is there an error? yes or no.", "no", None, "check_simple"))
    return ListDataset(items)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = train_tokenizer(REPORT_CORPUS * 10, vocab_size=300, min_frequency=1)
    config = build_config(
        tiny_vision_config("dinov2"), tiny_text_config("llama", vocab_size=len(tokenizer)), image_token_id=3
    )
    return save_pretrained(
        build_model(config, seed=0), RadProcessor.for_model(tokenizer, config), tmp_path_factory.mktemp("base") / "tiny"
    )


def _recipe(base: Path, out: Path, *, stage: str = "instruct", adapter: str = "mole", steps: int = 12, **training):  # type: ignore[no-untyped-def]
    return recipe_from_dict(
        {
            "name": "tiny",
            "stage": stage,
            "model": {"base": str(base), "adapter": adapter, "num_experts": 3, "r": 4, "alpha": 8},
            "data": {"sources": [{"type": "test"}], "mixture": {"draft": 1.0}},
            "training": {
                "output_dir": str(out),
                "max_steps": steps,
                "per_device_train_batch_size": 4,
                "learning_rate": 5e-3,
                "logging_steps": 1,
                "save_steps": 6,
                "use_cpu": True,
                "dataloader_num_workers": 0,
                "disable_tqdm": True,
                **training,
            },
        }
    )


def test_collator_learns_only_from_the_answer(base_dir: Path) -> None:
    processor = RadProcessor.from_pretrained(base_dir)
    batch = ExampleCollator(processor)(list(_examples(2)))
    labels, ids = batch["labels"], batch["input_ids"]
    for row in range(2):
        learned = ids[row][labels[row] != -100]
        text = processor.tokenizer.decode(learned)
        assert text.strip().startswith("FINDINGS:") and text.endswith(processor.tokenizer.eos_token)
        assert not (labels[row] == processor.image_token_id).any()


def test_mole_stage_trains_loss_falls_and_outputs_load(base_dir: Path, tmp_path: Path) -> None:
    summary = train(_recipe(base_dir, tmp_path / "run", steps=24, learning_rate=3e-2), _examples())
    losses = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    import json

    values = [json.loads(line)["loss"] for line in losses]
    first, last = sum(values[:4]) / 4, sum(values[-4:]) / 4
    assert last < first * 0.9, values
    assert summary["global_step"] == 24 and summary["adapter"].endswith("adapter")
    model, _ = load_pretrained(summary["base"], adapter=summary["adapter"])
    assert getattr(model, "_mole_adapter", None) is not None


def test_a_killed_run_resumes_to_the_same_weights(base_dir: Path, tmp_path: Path) -> None:
    straight = train(_recipe(base_dir, tmp_path / "straight"), _examples())

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == 6:
                raise KeyboardInterrupt  # the process dies right after its first checkpoint

    recipe = _recipe(base_dir, tmp_path / "killed")
    from radlvlm.training import trainer as trainer_module

    original = trainer_module.JsonlMetrics
    trainer_module.JsonlMetrics = lambda path: Kill()  # type: ignore[assignment,misc]
    try:
        with pytest.raises(KeyboardInterrupt):
            train(recipe, _examples())
    finally:
        trainer_module.JsonlMetrics = original  # type: ignore[misc]
    assert (tmp_path / "killed" / "checkpoint-6").is_dir()
    resumed = train(_recipe(base_dir, tmp_path / "killed"), _examples())
    assert resumed["resumed_from"].endswith("checkpoint-6") and resumed["global_step"] == 12
    a = load_pretrained(straight["base"], adapter=straight["adapter"])[0].state_dict()
    b = load_pretrained(resumed["base"], adapter=resumed["adapter"])[0].state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_lora_baseline_and_align_stage(base_dir: Path, tmp_path: Path) -> None:
    lora = train(_recipe(base_dir, tmp_path / "lora", adapter="lora", steps=6), _examples())
    model, _ = load_pretrained(lora["base"], adapter=lora["adapter"])
    assert type(model).__name__ == "PeftModel"

    align = train(_recipe(base_dir, tmp_path / "align", stage="align", adapter="none", steps=6), _examples())
    before = load_pretrained(base_dir)[0].state_dict()
    after = load_pretrained(align["base"])[0].state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("multi_modal_projector" in k for k in changed)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, r"unknown top-level key\(s\) \['colour'\]"),
        ({"stage": "align"}, "trains the projector only"),
        ({"model": {"base": "x", "adapter": "mole", "experts": 2}}, r"model: unknown key\(s\) \['experts'\]"),
        ({"training": {"max_steps": 1}}, "output_dir is required"),
        ({"data": {"sources": []}}, "data.sources is empty"),
        ({"data": {"sources": [{"type": "x"}], "mixture": {"draft": 0}}}, "not all zero"),
        ({"training": {"output_dir": "o", "learning_rate": "fast"}}, "training"),
    ],
)
def test_bad_recipes_are_refused_before_training(change: dict, message: str) -> None:  # type: ignore[type-arg]
    values = {
        "name": "r",
        "stage": "instruct",
        "model": {"base": "x"},
        "data": {"sources": [{"type": "iu_xray"}]},
        "training": {"output_dir": "o"},
    }
    values.update(change)
    with pytest.raises(InputError, match=message):
        recipe_from_dict(values)


def test_recipe_files(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: x\nstage: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML at line"):
        load_recipe(tmp_path / "bad.yaml")
    with pytest.raises(InputError, match="no such recipe file"):
        load_recipe(tmp_path / "absent.yaml")


def test_shipped_llava_rad_recipes_validate() -> None:
    from testsupport import REPO

    for name in ("llava-rad-7b-stage1.yaml", "llava-rad-7b-stage2.yaml"):
        recipe = load_recipe(REPO / "recipes" / name, check_hardware=False)  # bf16 recipes for GPUs
        assert recipe.training.bf16 and recipe.training.lr_scheduler_type == "cosine"
    stage2 = load_recipe(REPO / "recipes" / "llava-rad-7b-stage2.yaml", check_hardware=False)
    assert (stage2.model.adapter, stage2.model.r, stage2.model.alpha) == ("lora", 64, 128)
    assert stage2.training.learning_rate == 1e-4 and stage2.training.num_train_epochs == 3
