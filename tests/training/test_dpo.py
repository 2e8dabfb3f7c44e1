"""Stage dpo on a tiny model: the margin grows, the reference is the stage-2 model, a killed run resumes exactly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image as PILImage
from servicesupport import build_tiny_model_dir
from testsupport import REPORT_CORPUS, shared_path
from transformers import TrainerCallback
from typer.testing import CliRunner

from radlvlm.errors import InputError
from radlvlm.model.modeling import load_model
from radlvlm.model.mole import MoLEConfig, inject_mole
from radlvlm.model.pretrained import load_pretrained
from radlvlm.training import dpo as dpo_module
from radlvlm.training.dpo import PreferenceDataset, dpo_loss, preference_logps, train_dpo
from radlvlm.training.preferences import ImageView, PreferencePair, PreferenceSet
from radlvlm.training.recipe import recipe_from_dict
from radlvlm.training.sources import TASKS, ImageRef, Item, Record, Source


@pytest.fixture(scope="module")
def stage2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny "stage-2" model: base directory + a MoLE adapter whose experts are not zero (they matter)."""
    root = tmp_path_factory.mktemp("stage2")
    base = build_tiny_model_dir(root / "base")
    model = load_model(base)
    adapter = inject_mole(model, MoLEConfig(num_experts=2, r=4, alpha=8))
    generator = torch.Generator().manual_seed(0)
    state = {
        name: torch.randn(tensor.shape, generator=generator) * 0.05 if name.endswith("lora_B") else tensor
        for name, tensor in adapter.state_dict().items()
    }
    adapter.load_state_dict(state, "default")
    adapter.save(root / "adapter")
    return base, root / "adapter"


def _image(path: Path, seed: int) -> Path:
    if not path.exists():
        PILImage.fromarray(np.random.default_rng(seed).integers(0, 255, (28, 28), dtype=np.uint8)).save(path)
    return path


def _pairs(root: Path, n: int = 8) -> list[PreferencePair]:
    pairs = []
    for i in range(n):
        chosen = f"FINDINGS: {REPORT_CORPUS[i % 6]}"
        rejected = f"{chosen} Discussed with Dr. Maren Okafor on 03/14/2021."
        image = ImageView(str(_image(root / f"p{i}.png", i)), f"test/p{i}.png")
        pairs.append(
            PreferencePair(
                f"s{i}:identifier", f"s{i}", f"p{i}", "train", "test", "identifier", chosen, rejected, image, "cough"
            )
        )
    return pairs


def _recipe(stage2: tuple[Path, Path], out: Path, **training: Any) -> Any:
    base, adapter = stage2
    return recipe_from_dict(
        {
            "name": "tiny-dpo",
            "stage": "dpo",
            "model": {"base": str(base), "adapter": "mole", "adapter_init": str(adapter), "train_projector": False},
            "data": {"sources": [{"type": "test"}], "preferences": {"dir": str(out / "prefs")}},
            "dpo": {"beta": 0.5},
            "training": {
                "output_dir": str(out),
                "max_steps": 6,
                "per_device_train_batch_size": 4,
                "learning_rate": 1e-2,
                "logging_steps": 1,
                "save_steps": 3,
                "use_cpu": True,
                "dataloader_num_workers": 0,
                "disable_tqdm": True,
                **training,
            },
        }
    )


def test_dpo_loss_is_trls_sigmoid_loss() -> None:
    chosen, rejected = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    ref_chosen, ref_rejected = torch.tensor([-3.5, -5.0]), torch.tensor([-3.5, -2.5])
    losses, rc, rr = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1)
    logits = 0.1 * ((chosen - ref_chosen) - (rejected - ref_rejected))
    assert torch.allclose(losses, -torch.nn.functional.logsigmoid(logits))
    assert torch.allclose(rc, 0.1 * (chosen - ref_chosen)) and torch.allclose(rr, 0.1 * (rejected - ref_rejected))


def test_tiny_dpo_run_increases_the_margin(stage2: tuple[Path, Path], tmp_path: Path) -> None:
    pairs = _pairs(tmp_path)
    reference_model, processor = load_pretrained(stage2[0], adapter=stage2[1])
    reference = preference_logps(reference_model, processor, PreferenceDataset(pairs))
    # Before training the policy is the reference: every margin is 0 by construction, and the raw gap is this.
    gap_before = np.mean([reference[p.pair_id][0] - reference[p.pair_id][1] for p in pairs])

    summary = train_dpo(_recipe(stage2, tmp_path / "run"), preferences=PreferenceSet({"train": pairs}, {}))
    trained, _ = load_pretrained(summary["base"], adapter=summary["adapter"])
    after = preference_logps(trained, processor, PreferenceDataset(pairs))
    margins = [(after[k][0] - reference[k][0]) - (after[k][1] - reference[k][1]) for k in reference]
    assert np.mean(margins) > 1.0 and np.mean(np.array(margins) > 0) == 1.0, margins
    assert np.mean([after[k][0] - after[k][1] for k in after]) > gap_before + 1.0

    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "rewards/margins" in line]
    assert len(steps) == 6 and {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen"} <= set(
        steps[0]
    )
    # Step 1 is scored before any update: rewards 0 means the reference is the stage-2 model *with* its adapter.
    assert abs(steps[0]["rewards/chosen"]) < 1e-3 and abs(steps[0]["rewards/rejected"]) < 1e-3
    assert steps[-1]["rewards/margins"] > steps[0]["rewards/margins"] + 0.1
    # Only the adapter trained: the base directory (projector included) is the stage-2 base.
    before, now = load_model(stage2[0]).state_dict(), load_model(summary["base"]).state_dict()
    assert all(torch.equal(before[k], now[k]) for k in before)
    assert summary["pairs_by_kind"] == {"train": {"identifier": 8}}


def test_a_killed_dpo_run_resumes_to_the_same_weights(
    stage2: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs = PreferenceSet({"train": _pairs(tmp_path)}, {})
    small = {"per_device_train_batch_size": 2}
    straight = train_dpo(_recipe(stage2, tmp_path / "straight", **small), preferences=pairs)

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == 3:
                raise KeyboardInterrupt  # the process dies right after its first checkpoint

    with pytest.raises(KeyboardInterrupt):
        train_dpo(_recipe(stage2, tmp_path / "killed", **small), preferences=pairs, callbacks=[Kill()])
    assert (tmp_path / "killed" / "checkpoint-3").is_dir()

    def no_second_pass(*args: object, **kwargs: object) -> None:
        raise AssertionError("the reference log-probabilities of the first run must be reused")

    monkeypatch.setattr(dpo_module, "preference_logps", no_second_pass)
    resumed = train_dpo(_recipe(stage2, tmp_path / "killed", **small), preferences=pairs)
    assert resumed["resumed_from"].endswith("checkpoint-3") and resumed["global_step"] == 6
    a = load_pretrained(straight["base"], adapter=straight["adapter"])[0].state_dict()
    b = load_pretrained(resumed["base"], adapter=resumed["adapter"])[0].state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"adapter_init": None}}, "set model.adapter_init"),
        ({"model": {"adapter": "none"}}, "set model.adapter to 'mole' or 'lora'"),
        ({"model": {"adapter": "lora"}}, "no adapter_config.json"),
        ({"data": {"preferences": None}}, "needs data.preferences.dir"),
        ({"data": {"sources": [], "preferences": {"dir": "absent"}}}, "data.sources is empty"),
        ({"data": {"sources": [{"type": "x"}], "preferences": {"dir": "p", "beams": 1}}}, r"unknown key\(s\)"),
        ({"dpo": {"beta": 0}}, "dpo.beta: Input should be greater than 0"),
        ({"dpo": {"label_smoothing": 0.5}}, "label_smoothing"),
        ({"dpo": {"temperature": 1}}, r"dpo: unknown key\(s\) \['temperature'\]"),
        ({"stage": "instruct"}, "the 'dpo' section belongs to stage 'dpo'"),
        ({"stage": "instruct", "dpo": None}, "data.preferences belongs to stage 'dpo'"),
        (
            {
                "training": {"output_dir": "o", "eval_strategy": "steps"},
                "data": {"sources": [{"type": "x"}], "preferences": {"dir": "p", "splits": ["train"]}},
            },
            "evaluation needs",
        ),
    ],
)
def test_bad_dpo_recipes_are_refused(stage2: tuple[Path, Path], change: dict, message: str) -> None:  # type: ignore[type-arg]
    base, adapter = stage2
    values: dict[str, Any] = {
        "name": "r",
        "stage": "dpo",
        "model": {"base": str(base), "adapter": "mole", "adapter_init": str(adapter)},
        "data": {"sources": [{"type": "x"}], "preferences": {"dir": "p"}},
        "dpo": {"beta": 0.1},
        "training": {"output_dir": "o"},
    }
    for key, value in change.items():
        if value is None:
            values.pop(key)
        elif isinstance(value, dict) and key in ("model", "data"):
            values[key] = {**values[key], **value}
            values[key] = {k: v for k, v in values[key].items() if v is not None}
        else:
            values[key] = value
    with pytest.raises(InputError, match=message):
        recipe_from_dict(values)


def test_shipped_dpo_recipes_validate_in_their_working_folder(
    stage2: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from testsupport import REPO

    from radlvlm.training.recipe import load_recipe

    # The layout the embedded model's training leaves in its working folder, and a hospital's stage-2 output.
    shutil.copytree(stage2[1], tmp_path / "stage2" / "run" / "adapter")
    (tmp_path / "runs" / "llava-rad-7b-stage2" / "adapter").mkdir(parents=True)
    (tmp_path / "runs" / "llava-rad-7b-stage2" / "adapter" / "adapter_config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    embedded = load_recipe(REPO / "recipes" / "dpo-embedded.yaml")
    assert embedded.stage == "dpo" and embedded.model.adapter_init == "stage2/run/adapter"
    assert embedded.model.train_projector is False and embedded.data.preferences["dir"] == "dpo/preferences"
    hospital = load_recipe(REPO / "recipes" / "dpo-hospital.yaml", check_hardware=False)  # bf16: a GPU recipe
    assert hospital.stage == "dpo" and hospital.model.adapter == "lora" and hospital.training.bf16


class EvalSource(Source):
    """Drafting and error-check records with tiny PNGs in the validation split (and two for train)."""

    name = "eval"

    def __init__(self, root: Path) -> None:
        self.root = root

    def records(self) -> Iterator[Item]:
        for split, count in (("train", 2), ("validation", 4)):
            for i in range(count):
                image = _image(self.root / f"{split}{i}.png", i)
                yield Record(
                    f"e-{split}-{i}",
                    f"ep-{split}-{i}",
                    split,
                    self.name,
                    findings=REPORT_CORPUS[i],
                    impression="No acute disease.",
                    image=ImageRef(str(image), f"eval/{split}{i}.png"),
                    tasks=frozenset(TASKS),
                )


def test_before_after_evaluation_gives_every_figure(stage2: tuple[Path, Path], tmp_path: Path) -> None:
    from radlvlm.training.dpo_eval import evaluate_alignment, markdown_table

    base, adapter = str(stage2[0]), str(stage2[1])
    result = evaluate_alignment(
        _recipe(stage2, tmp_path / "run"),
        tmp_path / "eval",
        models={"before": (base, adapter), "after": (base, adapter)},
        n_boot=20,
        max_new_tokens=6,
        progress=False,
        sources=[EvalSource(tmp_path)],
    )
    assert result["n"]["in_scope"] == 4 and result["n"]["errorcheck"] >= 1 and result["n"]["out_of_scope"] >= 1
    for metric in (
        "false_findings_per_report",
        "omitted_findings_per_report",
        "unsupported_comparison_rate",
        "identifier_in_output_rate",
        "abstention_accuracy_out_of_scope",
        "chexpert14_micro_f1",
        "errorcheck_simple_accuracy",
    ):
        entry = result["metrics"]["after"][metric]
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], metric
        assert result["difference"][metric]["difference"] == 0  # the same model twice
    assert result["chexpert14_f1_drop_within_1_point"] is True
    rows = (tmp_path / "eval" / "predictions_after.jsonl").read_text().splitlines()
    assert len(rows) == 4 and set(json.loads(rows[0])) == {"id", "prediction", "model"}
    assert "chexpert14_micro_f1" in markdown_table(result)


def test_train_command_builds_preferences_then_trains_on_public_data(stage2: tuple[Path, Path], tmp_path: Path) -> None:
    from radlvlm.cli import app

    data = shared_path()
    base, adapter = stage2
    recipe = {
        "name": "tiny-dpo-public",
        "stage": "dpo",
        "model": {"base": str(base), "adapter": "mole", "adapter_init": str(adapter), "train_projector": False},
        "data": {
            "sources": [
                {"type": "nih_cxr14", "manifest": str(data / "nih_cxr14" / "manifest.jsonl"), "limit": 20},
                {"type": "iu_xray", "root": str(data / "iu_xray"), "limit": 40},
                {"type": "pseudo_pairs", "images": "nih_cxr14", "reports": "iu_xray", "k": 1},
            ],
            "preferences": {
                "dir": str(tmp_path / "prefs"),
                "max_studies": 3,
                "out_of_scope_per_image": 1,
                "model_samples": {"max_studies": 2, "batch_size": 2, "max_new_tokens": 8},
            },
        },
        "training": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-3,
            "logging_steps": 1,
            "save_steps": 2,
            "use_cpu": True,
            "disable_tqdm": True,
        },
    }
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(recipe))
    runner = CliRunner()
    dry = runner.invoke(app, ["train", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    counted = json.loads(dry.stdout)
    assert not counted["built"] and counted["splits"]["train"]["by_kind"]["identifier"] == 3
    assert not (tmp_path / "prefs").exists()  # a dry run writes nothing
    built = runner.invoke(app, ["train", str(path), "--preferences-only"])
    assert built.exit_code == 0, built.output
    assert (tmp_path / "prefs" / "train.jsonl").is_file() and (tmp_path / "prefs" / "counts.json").is_file()
    trained = runner.invoke(app, ["train", str(path)])
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["global_step"] == 2 and Path(summary["adapter"]).is_dir()
    # Other settings for the same folder are refused instead of mixing two sets of pairs.
    recipe["seed"] = 1
    path.write_text(yaml.safe_dump(recipe))
    refused = runner.invoke(app, ["train", str(path)])
    assert refused.exit_code == 2 and "built with other settings" in refused.stderr
