"""``radlvlm train RECIPE``: validate the recipe and the data (printing what is kept and dropped), then train.

Everything is checked before the first step: an unknown recipe key, an impossible stage/adapter combination,
a missing file, a source that keeps nothing, a task with nothing to draw from — each a one-line error and
exit code 2. A run killed part-way resumes from its last checkpoint when started again.

A ``dpo`` recipe first builds its preference pairs (:mod:`radlvlm.training.preferences`) when its
``data.preferences.dir`` holds none yet; ``--preferences-only`` stops after that, ``--dry-run`` counts them
without sampling the model or writing anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from radlvlm.cli_support import run_guarded, stderr


def build_datasets(recipe: Any) -> tuple[Any, Any, Any]:
    """(train dataset, validation dataset or None, the train report) for ``recipe``'s data."""
    from radlvlm.training.data import TaskMixture, build_examples
    from radlvlm.training.sources import sources_from_config

    sources = sources_from_config(recipe.data.sources)
    mixture = TaskMixture.from_dict({**recipe.data.mixture, "max_examples": recipe.data.limit})
    train_set, report = build_examples(sources, mixture=mixture, split="train", seed=recipe.seed)
    validation = None
    if recipe.training.eval_strategy != "no":
        validation, _ = build_examples(sources, mixture=mixture, split=recipe.data.validation_split, seed=recipe.seed)
    return train_set, validation, report


def train_command(
    recipe: Annotated[Path, typer.Argument(help="The recipe (YAML).", exists=True, dir_okay=False)],
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in the output directory.")] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate recipe and data, print counts, train nothing.")
    ] = False,
    preferences_only: Annotated[
        bool,
        typer.Option("--preferences-only", help="dpo recipes: build and write the preference pairs, train nothing."),
    ] = False,
) -> None:
    """Run one training stage (align, instruct or dpo) from a recipe."""
    from radlvlm.training.recipe import load_recipe
    from radlvlm.training.trainer import is_main_process, train

    loaded = run_guarded(lambda: load_recipe(recipe))
    if loaded.stage == "dpo":
        _dpo(loaded, resume=resume, dry_run=dry_run, preferences_only=preferences_only)
        return
    if preferences_only:
        stderr.print("error: --preferences-only applies to dpo recipes", highlight=False)
        raise typer.Exit(2)
    train_set, validation, report = run_guarded(lambda: build_datasets(loaded))
    stderr.print(report.to_table(), highlight=False)
    if dry_run:
        typer.echo(
            json.dumps(
                {
                    "recipe": loaded.name,
                    "stage": loaded.stage,
                    "train_examples": len(train_set),
                    "validation_examples": len(validation) if validation is not None else 0,
                    "tasks": report.task_counts(),
                },
                indent=2,
            )
        )
        return
    summary = run_guarded(lambda: train(loaded, train_set, validation, resume=resume))
    if is_main_process():  # under torchrun / accelerate launch, rank 0 answers for the run
        typer.echo(json.dumps(summary, indent=2, default=str))


def _dpo(recipe: Any, *, resume: bool, dry_run: bool, preferences_only: bool) -> None:
    from radlvlm.training.dpo import dry_run_dpo, prepare_preferences, train_dpo

    if dry_run:
        typer.echo(json.dumps(run_guarded(lambda: dry_run_dpo(recipe)), indent=2))
        return
    preferences = run_guarded(lambda: prepare_preferences(recipe))
    if preferences_only:
        typer.echo(json.dumps(preferences.counts["splits"], indent=2))
        return
    summary = run_guarded(lambda: train_dpo(recipe, resume=resume, preferences=preferences))
    typer.echo(json.dumps(summary, indent=2, default=str))
