"""Training recipes: a YAML file → validated pydantic models, checked before any training starts.

A recipe names the stage (``align``: projector only; ``instruct``: MoLE or LoRA experts + projector; ``dpo``:
preference alignment of a stage-2 adapter, see :mod:`radlvlm.training.dpo`), the model to start from, the data
(sources and task mixture, or preference pairs), and the training arguments — transformers'
``TrainingArguments``, so ``accelerate launch`` / ``torchrun`` with a DeepSpeed or FSDP config scale the same
recipe to many GPUs without code of ours. Unknown keys (pydantic's ``extra="forbid"``), values of the wrong type
or range, and impossible combinations are refused in one line naming them (an ``InputError``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from transformers import TrainingArguments

from radlvlm.errors import InputError
from radlvlm.model.mole import ADAPTER_CONFIG
from radlvlm.training.preferences import PreferenceSettings

Stage = Literal["align", "instruct", "dpo"]
AdapterKind = Literal["mole", "lora", "none"]


class _Spec(BaseModel):
    """A recipe section: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Spec):
    """Where training starts and what it may change.

    Args:
        base (str): a radlvlm model directory (weights, config, tokenizer, processor config).
        adapter ("mole" | "lora" | "none", default "mole"): the sparse experts of stage 2, or plain peft LoRA.
        num_experts, r, alpha, dropout, balance_loss_weight: MoLE / LoRA settings (``num_experts`` is MoLE's).
        target_modules (list[str]): LM MLP projections to adapt.
        train_projector (bool, default True): the projector is trained in both stages (LLaVA-Rad does).
        adapter_init (str | None): an adapter directory to continue from (e.g. DPO on top of stage 2).
    """

    base: str = ""
    adapter: AdapterKind = "mole"
    num_experts: int = Field(default=4, ge=1)
    r: int = Field(default=8, ge=1)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    balance_loss_weight: float = Field(default=0.01, ge=0)
    target_modules: list[str] = Field(default_factory=lambda: ["gate_proj", "up_proj", "down_proj"])
    train_projector: bool = True
    adapter_init: str | None = None


class DataSpec(_Spec):
    """Sources and the task mixture (see ``radlvlm.training.data``).

    Args:
        sources (list[dict]): each ``{type: iu_xray | covid | nih_cxr14 | hospital | pseudo_pairs, ...options}``.
        mixture (dict): weights of ``draft``, ``check_simple``, ``check_complex``, the ``error_fraction`` and
            ``check_variants`` (rows per study for the train split's check tasks; see ``TaskMixture``).
        validation_split (str, default "validation"): the split evaluated during training.
        limit (int | None): keep at most this many examples per split (quick runs).
        preferences (dict | None): stage ``dpo`` only: ``dir`` (where the preference pairs are, or are built from
            ``sources`` when absent) and the builder's settings (``radlvlm.training.preferences.PreferenceSettings``).
    """

    sources: list[dict[str, Any]] = Field(default_factory=list)
    # Weights, and the mixture's settings as written (check_variants an int, with_indication a bool).
    mixture: dict[str, bool | int | float] = Field(
        default_factory=lambda: {"draft": 1.0, "check_simple": 0.0, "check_complex": 0.0}
    )
    validation_split: str = "validation"
    limit: int | None = Field(default=None, ge=1)
    preferences: dict[str, Any] | None = None


class DPOSpec(_Spec):
    """Direct Preference Optimization settings (stage ``dpo``), named as in trl's ``DPOConfig``.

    Args:
        beta (float, default 0.1): strength of the KL tie to the reference (the stage-2 model).
        label_smoothing (float, default 0.0): conservative DPO: the share of pairs assumed mislabelled, in [0, 0.5).
        rpo_alpha (float, default 0.0): weight of the chosen answers' NLL added to the loss (RPO); keeps the
            likelihood of good reports from falling while the margin grows.
        precompute_batch_size (int | None): batch size of the one pass computing the reference log-probabilities
            (default: ``per_device_eval_batch_size``).
    """

    beta: float = Field(default=0.1, gt=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5)
    rpo_alpha: float = Field(default=0.0, ge=0)
    precompute_batch_size: int | None = Field(default=None, ge=1)


class Recipe(_Spec):
    """A whole recipe; its sections validate themselves, and the combinations are checked here."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str
    stage: Stage
    model: ModelSpec
    data: DataSpec
    training: TrainingArguments
    seed: int = 0
    dpo: DPOSpec = Field(default_factory=DPOSpec)

    @model_validator(mode="after")
    def _combinations(self) -> Recipe:
        try:
            self.validate_combinations()
        except InputError as e:
            raise ValueError(str(e)) from None  # pydantic reports a ValueError; recipe_from_dict re-raises it
        return self

    def validate_combinations(self) -> None:
        """What no single section can check: the stage against the adapter, the data and the arguments."""
        if not self.model.base:
            raise InputError("model.base is required: the radlvlm model directory training starts from")
        if self.stage == "align" and self.model.adapter != "none":
            raise InputError("stage 'align' trains the projector only: set model.adapter to 'none'")
        if self.stage == "align" and not self.model.train_projector:
            raise InputError("stage 'align' with train_projector false would train nothing")
        if self.stage == "instruct" and self.model.adapter == "none" and not self.model.train_projector:
            raise InputError("stage 'instruct' needs an adapter (mole or lora) or train_projector true")
        if self.model.adapter == "mole" and self.model.num_experts < 2:
            raise InputError("a MoLE adapter needs num_experts >= 2 (use adapter: lora for one expert)")
        if self.stage == "dpo":
            self._validate_dpo()
        elif self.data.preferences is not None:
            raise InputError("data.preferences belongs to stage 'dpo'")
        if not self.data.sources and not (self.stage == "dpo" and self._preferences_built()):
            raise InputError("data.sources is empty: name at least one data source")
        for index, source in enumerate(self.data.sources):
            if not isinstance(source, dict) or "type" not in source:
                raise InputError(f"data.sources[{index}] needs a 'type'")
        settings = {"error_fraction", "check_variants", "with_indication"}  # TaskMixture fields that are no weight
        weights = {k: v for k, v in self.data.mixture.items() if k not in settings}
        unknown = set(weights) - {"draft", "check_simple", "check_complex", "check_image"}
        if unknown:
            raise InputError(f"unknown task(s) in data.mixture: {sorted(unknown)}")
        if any(v < 0 for v in weights.values()) or sum(weights.values()) <= 0:
            raise InputError("data.mixture weights must be non-negative and not all zero")
        # TrainingArguments does not check types; a string learning rate would fail mid-run.
        numbers = {
            "learning_rate": self.training.learning_rate,
            "num_train_epochs": self.training.num_train_epochs,
            "weight_decay": self.training.weight_decay,
            "warmup_steps": self.training.warmup_steps,
        }
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InputError(f"training.{name} must be a non-negative number, got {value!r}")
        if self.training.learning_rate <= 0:
            raise InputError("training.learning_rate must be positive")
        if self.stage == "align" and any(
            weights.get(t, 0) > 0 for t in ("check_simple", "check_complex", "check_image")
        ):
            raise InputError("stage 'align' learns image → report only: set the check weights to 0")

    def _preferences_built(self) -> bool:
        directory = (self.data.preferences or {}).get("dir")
        return bool(directory) and (Path(str(directory)) / "train.jsonl").is_file()

    def _validate_dpo(self) -> None:
        spec = self.model
        if spec.adapter not in ("mole", "lora"):
            raise InputError("stage 'dpo' trains the stage-2 adapter: set model.adapter to 'mole' or 'lora'")
        if not spec.adapter_init:
            raise InputError(
                "stage 'dpo' starts from the stage-2 model: set model.adapter_init to its adapter directory "
                "(and model.base to its base directory); that model is also the frozen DPO reference"
            )
        wanted = ADAPTER_CONFIG if spec.adapter == "mole" else "adapter_config.json"
        if not (Path(spec.adapter_init) / wanted).is_file():
            raise InputError(f"model.adapter_init {spec.adapter_init}: no {wanted} (not a {spec.adapter} adapter)")
        preferences = self.data.preferences
        if not isinstance(preferences, dict) or not preferences.get("dir"):
            raise InputError("stage 'dpo' needs data.preferences.dir: where the preference pairs are (or are built)")
        settings = PreferenceSettings.from_dict(preferences)
        if "train" not in settings.splits:
            raise InputError("data.preferences.splits must include 'train'")
        if self.training.eval_strategy != "no" and self.data.validation_split not in settings.splits:
            raise InputError(f"evaluation needs data.preferences.splits to include {self.data.validation_split!r}")


_TOP_LEVEL = {"name", "stage", "model", "data", "training", "seed", "dpo"}


def _build(kind: type, values: dict[str, Any] | None, where: str) -> Any:
    """A recipe section from its mapping: a pydantic section validates itself; TrainingArguments (a dataclass)
    has its keys checked here."""
    values = dict(values or {})
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        try:
            return kind.model_validate(values)
        except ValidationError as e:
            raise InputError(_one_line(e, where)) from None
    known = {f.name for f in dataclasses.fields(kind) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}")
    try:
        return kind(**values)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: {e}") from e


def _one_line(error: ValidationError, where: str) -> str:
    """pydantic's errors as one line naming each field (never the values given)."""
    problems = error.errors()
    unknown = sorted(str(p["loc"][-1]) for p in problems if p["type"] == "extra_forbidden")
    if unknown:
        return f"{where}: unknown key(s) {unknown}"
    parts = []
    for problem in problems:
        field = ".".join(str(part) for part in problem["loc"])
        message = str(problem["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}.{field}: {message}" if field else message)
    return "; ".join(parts)


_HARDWARE_FLAGS = ("bf16", "fp16", "tf32", "bf16_full_eval", "fp16_full_eval")


def recipe_from_dict(values: dict[str, Any], *, base_dir: Path | None = None, check_hardware: bool = True) -> Recipe:
    """Build and validate a recipe; relative paths (model, adapter, preferences, output) resolve against ``base_dir``.

    ``check_hardware=False`` validates a GPU recipe on a machine without the GPU (TrainingArguments refuses
    bf16/tf32 where the hardware lacks them); the flags are kept on the result as written.
    """
    if not isinstance(values, dict):
        raise InputError("a recipe is a mapping of name, stage, model, data, training")
    unknown = sorted(set(values) - _TOP_LEVEL)
    if unknown:
        raise InputError(f"recipe: unknown top-level key(s) {unknown}")
    for required in ("name", "stage", "model", "data", "training"):
        if required not in values:
            raise InputError(f"recipe: missing '{required}'")
    training_values = dict(values["training"] or {})
    if "output_dir" not in training_values:
        raise InputError("training.output_dir is required")
    training_values.setdefault("report_to", "none")  # TensorBoard / W&B only when asked
    training_values.setdefault("save_strategy", "steps")
    training_values.setdefault("remove_unused_columns", False)  # examples are objects, not columns
    training_values.setdefault("seed", int(values.get("seed", 0)))
    model = _build(ModelSpec, values["model"], "model")
    data = _build(DataSpec, values["data"], "data")
    if "dpo" in values and values["stage"] != "dpo":
        raise InputError("the 'dpo' section belongs to stage 'dpo'")
    dpo = _build(DPOSpec, values.get("dpo"), "dpo")
    if data.preferences is not None and not isinstance(data.preferences, dict):
        raise InputError("data.preferences must be a mapping with a 'dir'")
    if base_dir is not None:
        model.base = _resolve(model.base, base_dir)
        if model.adapter_init:
            model.adapter_init = _resolve(model.adapter_init, base_dir)
        if data.preferences and data.preferences.get("dir"):
            data.preferences["dir"] = _resolve(str(data.preferences["dir"]), base_dir)
        training_values["output_dir"] = _resolve(str(training_values["output_dir"]), base_dir)
    deferred = {} if check_hardware else {k: training_values.pop(k) for k in _HARDWARE_FLAGS if k in training_values}
    training = _build(TrainingArguments, training_values, "training")
    for key, value in deferred.items():
        setattr(training, key, value)
    if values["stage"] not in ("align", "instruct", "dpo"):
        raise InputError(f"stage must be 'align', 'instruct' or 'dpo', got {values['stage']!r}")
    try:
        return Recipe(
            name=str(values["name"]),
            stage=values["stage"],
            model=model,
            data=data,
            training=training,
            seed=int(values.get("seed", 0)),
            dpo=dpo,
        )
    except ValidationError as e:
        raise InputError(_one_line(e, "recipe").removeprefix("recipe: ")) from None


def load_recipe(path: str | Path, *, check_hardware: bool = True) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such recipe file")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}: not valid YAML{where}") from e
    # Paths in a recipe are relative to the working directory, as on the command line.
    return recipe_from_dict(values, check_hardware=check_hardware)


def _resolve(value: str, base_dir: Path) -> str:
    candidate = Path(value).expanduser()
    return str(candidate if candidate.is_absolute() else (base_dir / candidate))
