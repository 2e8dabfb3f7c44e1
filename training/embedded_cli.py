"""``radlvlm embedded ...``: the embedded default model's recipe, step by step, from the one typer CLI.

``build`` runs the resumable recipe (tokenizer → LM → vision encoder → stages 1 and 2 → calibration →
evaluation), ``evaluate`` validates any model on the public sets next to the baselines, ``calibrate`` fits a
model's SIMPLE-check calibration on validation data, ``dpo-eval`` gives a DPO recipe's before/after figures,
and ``ship`` installs the better of stage 2 and DPO into the package. ``scripts/train-embedded.sh`` runs them in
order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from radlvlm.cli_support import fail, run_guarded

embedded_app = typer.Typer(help="Train, evaluate, calibrate and ship the embedded default model.", no_args_is_help=True)

DataOption = Annotated[Path, typer.Option(help="Folder with iu_xray/, nih_cxr14/, covid_chestxray/.")]
Split = Annotated[str, typer.Option(help="validation or test.")]


@embedded_app.command("build")
def build_command(
    data: DataOption,
    work: Annotated[Path, typer.Option(help="Working folder (checkpoints, step summaries); a rerun resumes.")],
    scale: Annotated[str, typer.Option(help="Model and schedule size (see radlvlm.training.embedded.SCALES).")] = (
        "default"
    ),
    seed: int = 0,
    compare_lora: Annotated[bool, typer.Option(help="Also train a plain-LoRA stage 2 (the baseline).")] = False,
    until: Annotated[str | None, typer.Option(help="Stop after this step.")] = None,
    lm_from: Annotated[
        Path | None, typer.Option(help="Take the tokenizer and LM from this model directory (steps 1-2).")
    ] = None,
) -> None:
    """Train the embedded default model from public data (resumable step by step)."""
    from radlvlm.training.embedded import SCALES, STEPS, build_embedded

    if scale not in SCALES:
        raise fail(f"--scale must be one of {', '.join(sorted(SCALES))}")
    if until is not None and until not in STEPS:
        raise fail(f"--until must be one of {', '.join(STEPS)}")
    summary = run_guarded(
        lambda: build_embedded(
            data, work, scale_name=scale, seed=seed, compare_lora=compare_lora, lm_from=lm_from, until=until
        )
    )
    typer.echo(json.dumps({k: v for k, v in summary.items() if k in ("stage1", "stage2")}, indent=2, default=str))


@embedded_app.command("evaluate")
def evaluate_command(
    data: DataOption,
    model: Annotated[Path, typer.Option(help="A radlvlm model directory.")],
    out: Annotated[Path, typer.Option(help="Folder for predictions and metrics.")],
    adapter: Annotated[Path | None, typer.Option(help="A MoLE or LoRA adapter directory.")] = None,
    split: Split = "validation",
    n_boot: int = 1000,
    seed: int = 0,
    name: Annotated[str | None, typer.Option(help="Model name in the outputs (default: the directory names).")] = None,
) -> None:
    """Validate a model on the public sets next to the baselines."""
    from radlvlm.training.embedded_eval import evaluate

    if split not in ("validation", "test"):
        raise fail("--split must be validation or test")
    summary = run_guarded(
        lambda: evaluate(data, model, out, adapter=adapter, split=split, n_boot=n_boot, seed=seed, name=name)
    )
    typer.echo(json.dumps(summary["sets"], indent=2, default=str))


@embedded_app.command("calibrate")
def calibrate_command(
    data: DataOption,
    model: Annotated[Path, typer.Option(help="The radlvlm model directory (base).")],
    adapter: Annotated[Path | None, typer.Option(help="Its adapter (the calibration is written there).")] = None,
    seed: int = 0,
) -> None:
    """Fit a model's SIMPLE-check calibration on validation data (never on test data)."""
    from radlvlm.training.calibrate import calibrate_checks

    typer.echo(json.dumps(run_guarded(lambda: calibrate_checks(data, model, adapter, seed=seed)), indent=2))


@embedded_app.command("dpo-eval")
def dpo_eval_command(
    recipe: Annotated[Path, typer.Argument(help="The dpo recipe: its stage-2 model is 'before', its output 'after'.")],
    out: Annotated[Path, typer.Option(help="Folder for metrics.json and predictions.")],
    split: Annotated[str | None, typer.Option(help="Default: the recipe's validation split.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many studies (quick runs).")] = None,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    model: Annotated[
        list[str] | None,
        typer.Option(help="NAME=BASE[:ADAPTER]: score this model instead of the recipe's two (repeatable)."),
    ] = None,
) -> None:
    """Before/after DPO figures with bootstrap CIs."""
    from radlvlm.training.dpo_eval import evaluate_alignment, markdown_table
    from radlvlm.training.recipe import load_recipe

    models = None
    if model:
        models = {}
        for entry in model:
            name, sep, paths = entry.partition("=")
            if not sep or not name or not paths:
                raise fail(f"--model {entry!r}: expected NAME=BASE[:ADAPTER]")
            base, _, adapter = paths.partition(":")
            models[name] = (base, adapter or None)
    loaded = run_guarded(lambda: load_recipe(recipe, check_hardware=False))
    result = run_guarded(
        lambda: evaluate_alignment(
            loaded,
            out,
            models=models,
            split=split,
            limit=limit,
            n_boot=n_boot,
            seed=seed,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
        )
    )
    typer.echo(markdown_table(result))


@embedded_app.command("ship")
def ship_command(
    work: Annotated[Path, typer.Option(help="The recipe's working folder.")],
    to: Annotated[Path, typer.Option(help="Where the package keeps the default model.")],
    results: Annotated[
        Path | None, typer.Option(help="benchmarks/results with errorcheck.json / drafts.json of this model.")
    ] = None,
) -> None:
    """Install the better of stage 2 and DPO into the package (weights, calibration, model card)."""
    from radlvlm.training.ship import ship

    typer.echo(json.dumps(run_guarded(lambda: ship(work, to, results=results)), indent=2))


@embedded_app.command("findings")
def findings_command(
    data: DataOption,
    work: Annotated[Path, typer.Option(help="Working folder (fold checkpoints); a rerun resumes.")],
    folds: Annotated[int, typer.Option(help="Patient-grouped folds over train (one model each).")] = 3,
    steps: Annotated[int, typer.Option(help="Optimiser steps per fold.")] = 1000,
    image_size: Annotated[int, typer.Option(help="Input side in pixels (a multiple of 32: the tower's stride).")] = 288,
    covid: Annotated[bool, typer.Option(help="Train on the COVID-19 collection's train split too.")] = True,
    seed: int = 0,
) -> None:
    """Train the finding classifier (folds, out-of-fold calibration, ensemble into WORK/classifier)."""
    from radlvlm.training.findings import FindingRecipe, train_finding_classifier

    recipe = run_guarded(lambda: FindingRecipe(folds=folds, steps=steps, image_size=image_size, covid=covid, seed=seed))
    summary = run_guarded(lambda: train_finding_classifier(data, work, recipe))
    typer.echo(json.dumps({"validated": summary["validated"], "seconds": summary["seconds"]}, indent=2))


@embedded_app.command("tower")
def tower_command(
    model: Annotated[Path, typer.Option(help="The model whose tower is replaced: a folder with base/ and adapter/.")],
    classifier: Annotated[Path, typer.Option(help="A saved finding classifier (its folder, with config.json).")],
    to: Annotated[Path, typer.Option(help="Where the model with the classifier as its tower is written.")],
    pool: Annotated[int, typer.Option(help="Visual tokens per side: the feature map is pooled to pool x pool.")] = 3,
) -> None:
    """Make the finding classifier the model's vision tower (its features become visual tokens; the projector is
    new, for the writer stage to train)."""
    from radlvlm.training.finding_tower import with_finding_tower

    summary = run_guarded(lambda: with_finding_tower(model, classifier, to, pool=pool))
    typer.echo(json.dumps(summary, indent=2))


@embedded_app.command("writer")
def writer_command(
    data: DataOption,
    classifier: Annotated[Path, typer.Option(help="The finding classifier's working folder (with oof.pt).")],
    model: Annotated[Path, typer.Option(help="The model to continue: a folder with base/ and adapter/.")],
    work: Annotated[Path, typer.Option(help="Working folder (checkpoints); a rerun resumes.")],
    steps: int = 1500,
    seed: int = 0,
) -> None:
    """Train the findings-driven report writer (and keep its text check) on IU train reports and train images."""
    from radlvlm.training.writer import train_writer

    info = run_guarded(lambda: train_writer(data, classifier, model, work, steps=steps, seed=seed))
    typer.echo(json.dumps({k: info.get(k) for k in ("global_step", "train_loss", "seconds")}, indent=2))


@embedded_app.command("image-check")
def image_check_command(
    data: DataOption,
    classifier: Annotated[Path, typer.Option(help="The finding classifier's working folder (with oof.pt).")],
    model: Annotated[
        Path | None, typer.Option(help="The model whose text check is fused (its folder); none: image-only.")
    ] = None,
    seed: int = 0,
) -> None:
    """Fit the image check's fusion out of fold over train radiographs and reports."""
    from radlvlm.training.image_check_fit import fit_image_check

    summary = run_guarded(lambda: fit_image_check(data, classifier, model=model, seed=seed))
    typer.echo(json.dumps(summary, indent=2))


@embedded_app.command("install")
def install_command(
    writer: Annotated[Path, typer.Option(help="The writer's working folder (done.json, run/).")],
    classifier: Annotated[Path, typer.Option(help="The finding classifier's working folder.")],
    to: Annotated[Path, typer.Option(help="The model folder to replace (it keeps its model card).")],
    model_id: Annotated[str, typer.Option(help="The installed model's id.")] = "radlvlm-embedded-cxr-0.4",
    results: Annotated[
        Path | None, typer.Option(help="A folder with drafts.json / image_check.json measured on this model.")
    ] = None,
) -> None:
    """Install the writer and its finding classifier (float16) as the model at TO, with its model card."""
    from radlvlm.training.writer import install_embedded

    out = run_guarded(lambda: install_embedded(writer, classifier, to, model_id=model_id, results=results))
    typer.echo(json.dumps(out, indent=2))
