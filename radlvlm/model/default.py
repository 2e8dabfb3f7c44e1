"""The embedded default model: a small MoLE model trained on public data, shipped inside the package.

``radlvlm serve``, ``radlvlm draft`` and ``radlvlm check`` use it when no ``--model`` is given. It is for
demonstration and pipeline testing, not for clinical use: its model card (``MODEL_CARD.md`` next to the
weights, also printed by ``radlvlm model-card``) says what it was trained on and what it can and cannot do.
A hospital points ``--model``/``RADLVLM_MODEL_DIR`` at its own model or a converted LLaVA-Rad instead.

Layout of ``weights/default/`` (written by ``radlvlm embedded ship``): ``base/`` (a
radlvlm model directory, float16), ``adapter/`` (the MoLE adapter, float16), ``MODEL_CARD.md`` and
``model.json`` (id, recipe, metrics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radlvlm.errors import ModelError

DEFAULT_MODEL_ROOT = Path(__file__).resolve().parent / "weights" / "default"
MODEL_CARD = "MODEL_CARD.md"
MODEL_INFO = "model.json"


@dataclass(frozen=True)
class ModelChoice:
    """Which model directory (and adapter) to load, and the id results carry."""

    base: Path
    adapter: Path | None
    model_id: str
    embedded: bool


def is_release(root: Path) -> bool:
    """Whether ``root`` is a model release in the embedded model's layout (``base/``, ``model.json``)."""
    return (root / "base" / "config.json").is_file() and (root / MODEL_INFO).is_file()


def _release(root: Path, *, embedded: bool) -> ModelChoice:
    info: dict[str, Any] = json.loads((root / MODEL_INFO).read_text())
    adapter = root / "adapter"
    return ModelChoice(root / "base", adapter if adapter.is_dir() else None, str(info["id"]), embedded)


def embedded_model(root: Path = DEFAULT_MODEL_ROOT) -> ModelChoice:
    """The shipped model; a clear error when this installation carries no weights."""
    if not is_release(root):
        raise ModelError(
            f"the embedded default model is not installed ({root} has no weights): pass --model DIR "
            "(or set RADLVLM_MODEL_DIR) to a radlvlm model directory"
        )
    return _release(root, embedded=True)


def choose_model(model: Path | None, adapter: Path | None) -> ModelChoice:
    """``model``/``adapter`` as given, or the embedded model when no model is given (an adapter alone is refused:
    it would silently land on a base it may not have been trained for). A ``model`` folder in the embedded
    model's layout (a release: ``base/``, ``adapter/``, ``findings/``, ``model.json``, as ``radlvlm embedded
    install`` writes it) is loaded as that release, under its own id."""
    if model is None:
        if adapter is not None:
            raise ModelError("--adapter needs --model: an adapter belongs to the base model it was trained on")
        return embedded_model()
    if adapter is None and not (Path(model) / "config.json").is_file() and is_release(Path(model)):
        return _release(Path(model), embedded=False)
    model_id = Path(model).name + (f"+{Path(adapter).name}" if adapter else "")
    return ModelChoice(Path(model), Path(adapter) if adapter else None, model_id, False)


FINDINGS_DIR = "findings"
# The finding classifier as a vision tower (radlvlm.model.finding_config.FindingTowerConfig), named here so that
# finding one in a directory reads JSON only.
FINDING_TOWER_MODEL_TYPE = "radlvlm_finding_tower"


def tower_config_of(directory: Path) -> dict[str, Any] | None:
    """The finding tower's config (a dict) of the vision-language model saved in ``directory``; None when the
    directory holds no such model (another tower, a classifier of its own, or no model at all)."""
    try:
        values = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    vision = values.get("vision_config") if isinstance(values, dict) else None
    if isinstance(vision, dict) and vision.get("model_type") == FINDING_TOWER_MODEL_TYPE:
        return vision
    return None


def classifier_beside(choice: ModelChoice) -> Path | None:
    """The finding classifier that travels with a model: a ``findings/`` folder in the model directory or next to
    it (beside ``base/`` and ``adapter/``), or the model's own vision tower when that is the classifier (then the
    base directory holds it); None when the model has none."""
    for folder in (choice.base / FINDINGS_DIR, choice.base.parent / FINDINGS_DIR):
        if (folder / "config.json").is_file():
            return folder
    return choice.base if tower_config_of(choice.base) is not None else None


def model_card(root: Path = DEFAULT_MODEL_ROOT) -> str:
    card = root / MODEL_CARD
    if not card.is_file():
        raise ModelError(f"the embedded default model is not installed ({root} has no {MODEL_CARD})")
    return card.read_text(encoding="utf-8")
