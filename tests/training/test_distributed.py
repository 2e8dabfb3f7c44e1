"""Training on more than one process, for real: ``torchrun --nproc_per_node 2`` (gloo, CPU) on a tiny model.

What a run that moves to a cluster meets first: experts that one rank's batch did not route to (DDP must still
reduce their gradients), activation checkpointing (which turns off DDP's search for unused parameters), a loss
that must not grow with the number of ranks, outputs written once, statistics over every rank, and a run
stopped part-way that continues on the same ranks. Each test compares against a single-process run with the
same global batch and seed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from servicesupport import build_tiny_model_dir
from testsupport import REPORT_CORPUS

# Adapter weights after 4 SGD steps of two ranks x batch 2 against one process x batch 4: the same global batches
# and the same loss (a mean over the global batch's tokens) give the same update, up to the order of float sums
# (the balance term is left out of these updates: see _recipe). Plain SGD, so that a loss scaled by the number of
# ranks would show in the weights (Adam would hide it). Measured against how far training moved.
RELATIVE_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny base model and an IU-format manifest of 40 short reports (check tasks only: no images needed)."""
    root = tmp_path_factory.mktemp("distributed")
    base = build_tiny_model_dir(root / "base")
    manifests = root / "iu"
    manifests.mkdir()
    impressions = ("No acute disease.", "Small left pleural effusion.", "Cardiomegaly.", "Right lower lobe opacity.")
    rows = [
        {
            "uid": f"study-{i}",
            "split": "train",
            "findings": REPORT_CORPUS[i % len(REPORT_CORPUS)][:160],
            "impression": impressions[i % len(impressions)],
        }
        for i in range(40)
    ]
    (manifests / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return base, manifests


def _recipe(
    directory: Path,
    tiny: tuple[Path, Path],
    *,
    batch: int,
    adapter: str = "mole",
    steps: int = 4,
    balance_loss_weight: float = 0.0,
    **training: Any,
) -> Path:
    base, manifests = tiny
    recipe = {
        "name": f"ddp-{adapter}",
        "stage": "instruct",
        "seed": 0,
        "model": {
            "base": str(base),
            "adapter": adapter,
            "num_experts": 4,
            "r": 4,
            "alpha": 8,
            "dropout": 0.0,
            # The balance term is a mean per rank's batch under DDP (as Switch and Megatron compute it), not over
            # the global batch, so it is reported but left out of the update where one process is the reference.
            "balance_loss_weight": balance_loss_weight,
        },
        "data": {
            "sources": [{"type": "iu_xray", "root": str(manifests)}],
            "mixture": {"draft": 0.0, "check_simple": 1.0, "check_complex": 1.0},
            "limit": 32,
        },
        "training": {
            "output_dir": str(directory / "run"),
            "max_steps": steps,
            "per_device_train_batch_size": batch,
            "learning_rate": 0.5,
            "optim": "sgd",
            "lr_scheduler_type": "constant",  # a run stopped and resumed takes the same steps as one that was not
            "logging_steps": 1,
            "save_steps": 2,
            "use_cpu": True,
            "disable_tqdm": True,
            "dataloader_num_workers": 0,
            **training,
        },
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train(recipe: Path, processes: int) -> subprocess.CompletedProcess[str]:
    """``radlvlm train RECIPE``, under ``torchrun`` for more than one process (what the README tells users)."""
    if processes == 1:
        command = [sys.executable, "-m", "radlvlm", "train", str(recipe)]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            "-m",
            "radlvlm",
            "train",
            str(recipe),
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _adapter_weights(summary: dict[str, Any]) -> dict[str, torch.Tensor]:
    adapter = Path(summary["adapter"])
    files = list(adapter.glob("*.safetensors"))
    assert len(files) == 1, files
    return load_file(str(files[0]))


def _difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _agrees(
    trained: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], start: dict[str, torch.Tensor]
) -> bool:
    moved = _difference(reference, start)
    assert moved > 0  # training changed the adapter
    return _difference(trained, reference) <= RELATIVE_TOLERANCE * moved


@pytest.mark.parametrize(
    ("adapter", "checkpointing"), [("mole", True), ("lora", False)], ids=["mole-checkpointing", "lora"]
)
def test_two_ranks_train_as_one_process_with_the_same_global_batch(
    tmp_path: Path, tiny: tuple[Path, Path], adapter: str, checkpointing: bool
) -> None:
    extra = {"gradient_checkpointing": checkpointing}
    two = _train(_recipe(tmp_path / "two", tiny, batch=2, adapter=adapter, **extra), 2)
    one = _train(_recipe(tmp_path / "one", tiny, batch=4, adapter=adapter, **extra), 1)

    summary, single = json.loads(two.stdout), json.loads(one.stdout)  # one answer: rank 1 prints nothing
    assert summary["world_size"] == 2 and single["world_size"] == 1
    assert summary["global_step"] == single["global_step"] == 4
    # Every rank ended with the same weights (DDP reduced every expert's gradient, routed there or not).
    assert len(set(summary["trainable_checksums_by_rank"])) == 1
    untrained = _adapter_weights(
        json.loads(_train(_recipe(tmp_path / "zero", tiny, batch=4, adapter=adapter, steps=0, **extra), 1).stdout)
    )
    assert _agrees(_adapter_weights(summary), _adapter_weights(single), untrained)
    # The loss is the global batch's, not multiplied by the number of ranks.
    assert summary["train_loss"] == pytest.approx(single["train_loss"], rel=1e-3)
    if adapter == "mole":
        # Tokens per expert over both ranks (padding left out), as one process counts them.
        assert summary["expert_usage"]["train"] == single["expert_usage"]["train"]
        assert summary["balance_loss"] == pytest.approx(single["balance_loss"], abs=0.05)


def test_a_two_rank_run_stopped_part_way_resumes_to_the_same_weights(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    whole = json.loads(_train(_recipe(tmp_path / "whole", tiny, batch=2), 2).stdout)
    stopped = _recipe(tmp_path / "stopped", tiny, batch=2, steps=2)
    first = json.loads(_train(stopped, 2).stdout)
    assert first["global_step"] == 2 and (tmp_path / "stopped" / "run" / "checkpoint-2").is_dir()
    resumed_recipe = _recipe(tmp_path / "stopped", tiny, batch=2, steps=4)
    resumed = json.loads(_train(resumed_recipe, 2).stdout)
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["global_step"] == 4
    assert _difference(_adapter_weights(resumed), _adapter_weights(whole)) < 1e-6  # the same ranks, the same steps


# -- accelerate launch: the command the README gives, and the shipped configs --------------------------------

SCALE = Path(__file__).resolve().parents[2] / "recipes" / "scale"


def _accelerate(config: Path, recipe: Path) -> subprocess.CompletedProcess[str]:
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)),
        *("--main_process_port", str(_free_port()), "-m", "radlvlm", "train", str(recipe)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_accelerate_launch_with_the_shipped_cpu_config_trains_as_torchrun_does(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    launched = json.loads(_accelerate(SCALE / "cpu-2proc.yaml", _recipe(tmp_path / "accelerate", tiny, batch=2)).stdout)
    torchrun = json.loads(_train(_recipe(tmp_path / "torchrun", tiny, batch=2), 2).stdout)
    assert launched["world_size"] == 2 and len(set(launched["trainable_checksums_by_rank"])) == 1
    assert _difference(_adapter_weights(launched), _adapter_weights(torchrun)) < 1e-6


def test_fsdp_from_the_shipped_config_trains_and_resumes_on_cpu(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    """The shipped 8-GPU FSDP config, on 2 CPU processes: only what gloo cannot do is changed (module-state sync and
    RAM-efficient loading, which FSDP refuses on CPU: "FSDP parameter initialization with `sync_module_states=True`
    is not supported on cpu"). Its sharded checkpoints resume to the weights of an uninterrupted run, and FSDP
    trains to DDP's weights."""
    config = yaml.safe_load((SCALE / "fsdp-8gpu.yaml").read_text())
    config.update(num_processes=2, use_cpu=True, mixed_precision="no")
    config["fsdp_config"].update(fsdp_sync_module_states=False, fsdp_cpu_ram_efficient_loading=False)
    cpu_config = tmp_path / "fsdp-cpu.yaml"
    cpu_config.write_text(yaml.safe_dump(config))
    assert config["fsdp_config"]["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"

    whole = json.loads(_accelerate(cpu_config, _recipe(tmp_path / "whole", tiny, batch=2)).stdout)
    _accelerate(cpu_config, _recipe(tmp_path / "stopped", tiny, batch=2, steps=2))
    resumed = json.loads(_accelerate(cpu_config, _recipe(tmp_path / "stopped", tiny, batch=2, steps=4)).stdout)
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["global_step"] == 4
    assert _difference(_adapter_weights(resumed), _adapter_weights(whole)) < 1e-6
    ddp = json.loads(_train(_recipe(tmp_path / "ddp", tiny, batch=2), 2).stdout)
    assert _difference(_adapter_weights(whole), _adapter_weights(ddp)) < 1e-6


@pytest.mark.parametrize("name", ["cpu-2proc.yaml", "fsdp-8gpu.yaml", "deepspeed-zero2-8gpu.yaml"])
def test_the_shipped_accelerate_configs_are_ones_accelerate_reads_whole(name: str) -> None:
    """accelerate refuses unknown top-level keys itself; the nested FSDP and DeepSpeed sections it passes on
    unchecked, so each of their keys must be one of accelerate launch's own options."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    path = SCALE / name
    config = load_config_from_file(str(path))  # unknown top-level keys: ValueError
    options = {action.dest for action in launch_command_parser()._actions}
    raw = yaml.safe_load(path.read_text())
    for section in ("fsdp_config", "deepspeed_config"):
        unknown = sorted(set(raw.get(section) or {}) - options)
        assert not unknown, f"{name}: {section} has keys accelerate launch does not know: {unknown}"
    if "deepspeed_config_file" in (raw.get("deepspeed_config") or {}):
        assert (path.parents[2] / raw["deepspeed_config"]["deepspeed_config_file"]).is_file()
    assert config.num_processes >= 2


def test_the_shipped_deepspeed_json_is_filled_by_transformers(tmp_path: Path) -> None:
    """DeepSpeed's "auto" values are transformers' to fill from the recipe's training arguments."""
    pytest.importorskip(
        "deepspeed",
        reason="DeepSpeed is not installed: PyPI has it as a source package only, built against the installed torch "
        "(pip install --no-build-isolation deepspeed)",
    )
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    ds = HfTrainerDeepSpeedConfig(str(SCALE / "deepspeed-zero2.json"))
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2, use_cpu=True
    )
    ds.trainer_config_process(args)
    assert ds.get_value("train_micro_batch_size_per_gpu") == 4 and ds.get_value("gradient_accumulation_steps") == 2
    assert ds.get_value("zero_optimization.stage") == 2 and not ds.is_auto("gradient_clipping")
