"""Mixture of LoRA Experts (after LLaVA-MoLE): top-1 routed LoRA experts on the LM's MLP projections.

In every decoder layer a router (a linear map of the MLP's input hidden state) picks one of ``num_experts``
LoRA experts per token; the same choice applies to all of that MLP's target projections (gate/up/down),
and the expert's output is scaled by the router's probability for it, which is how the router learns.
Tokens are dispatched to their expert (sorted and split), so the cost per token is one rank-r LoRA whatever
``num_experts`` is. A Switch-Transformer load-balancing loss keeps experts in use. Base weights are frozen.

peft has no sparse mixture of LoRA experts (its X-LoRA runs every adapter on every token and masks), so the
layer is written here; it follows peft's LoRA conventions (``base_layer`` wrapped, A Kaiming-initialised,
B zero so a fresh adapter changes nothing, scaling alpha / r) and saves the same way: a config JSON plus
adapter-only safetensors, never the base weights.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from radlvlm.errors import ModelError

ADAPTER_CONFIG = "mole_config.json"
ADAPTER_WEIGHTS = "mole_adapter.safetensors"


@dataclass
class MoLEConfig:
    """Settings of a MoLE adapter.

    Args:
        num_experts (int, default 4): LoRA experts per MLP; one is chosen per token.
        r (int, default 8): LoRA rank of each expert.
        alpha (float, default 16.0): LoRA scaling numerator; the update is scaled by ``alpha / r``.
        dropout (float, default 0.0): dropout on the expert input during training.
        target_modules (tuple[str, ...], default gate/up/down_proj): projection names inside each MLP to adapt.
        mlp_module (str, default "mlp"): name of the MLP submodule of a decoder layer; its input drives routing.
        balance_loss_weight (float, default 0.01): weight of the load-balancing loss added to the training loss.
        base_fingerprint (dict): filled on injection; the LM shape the adapter was made for, checked on load.
    """

    num_experts: int = 4
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
    mlp_module: str = "mlp"
    balance_loss_weight: float = 0.01
    base_fingerprint: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        if self.num_experts < 1:
            raise ModelError(f"num_experts must be at least 1, got {self.num_experts}")
        if self.r < 1:
            raise ModelError(f"r must be at least 1, got {self.r}")
        if self.alpha <= 0:
            raise ModelError(f"alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ModelError("target_modules is empty: name at least one MLP projection")
        if self.balance_loss_weight < 0:
            raise ModelError(f"balance_loss_weight must be >= 0, got {self.balance_loss_weight}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["target_modules"] = list(self.target_modules)
        return {"adapter_type": "mole", **values}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MoLEConfig:
        values = dict(values)
        if values.pop("adapter_type", "mole") != "mole":
            raise ModelError("not a MoLE adapter config (adapter_type is not 'mole')")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelError(f"unknown MoLE config key(s): {', '.join(unknown)}")
        return cls(**values)


# Up to this many tokens in a forward pass (a decoding step: one per sequence) without grad, each token's
# expert is gathered; above it (a prompt's prefill, training) tokens are grouped by expert once per pass.
GATHER_TOKENS = 64


class MoLERouter(nn.Module):
    """Top-1 router of one MLP. Holds the current routing decision for the projections of that MLP."""

    def __init__(self, hidden_size: int, num_experts: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.num_experts = num_experts
        self.expert_index: torch.Tensor | None = None
        self.gate: torch.Tensor | None = None
        # Dispatch plan shared by every projection of this MLP (computed once per forward):
        self.order: torch.Tensor | None = None  # token positions sorted by expert
        self.inverse: torch.Tensor | None = None  # where each token sits in that order
        self.counts: list[int] = []  # tokens per expert
        self.sorted_gate: torch.Tensor | None = None  # router probability of the chosen expert, in that order
        self.balance_loss: torch.Tensor | None = None
        self.usage: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(num_experts, dtype=torch.long))
        self.task = "unlabelled"
        self.track = False

    def route(self, hidden: torch.Tensor) -> None:
        flat = hidden.reshape(-1, hidden.shape[-1])
        logits = nn.functional.linear(flat, self.weight.to(flat.dtype)).float()
        probs = logits.softmax(dim=-1)
        gate, index = probs.max(dim=-1)
        self.expert_index, self.gate = index, gate
        if not torch.is_grad_enabled() and index.numel() <= GATHER_TOKENS:
            # Decoding: no dispatch plan (its bincount is a host sync every step) and no balance loss; each
            # projection gathers its tokens' own experts (MoLELinear._gathered), constant compute, no loop.
            self.order = self.inverse = self.sorted_gate = self.balance_loss = None
            self.counts = []
            if self.track:
                self.usage[self.task] += torch.bincount(index.detach().cpu(), minlength=self.num_experts)
            return
        self.order = torch.argsort(index, stable=True)
        self.inverse = torch.empty_like(self.order)
        self.inverse[self.order] = torch.arange(self.order.numel(), device=self.order.device)
        self.counts = torch.bincount(index, minlength=self.num_experts).tolist()
        self.sorted_gate = gate.index_select(0, self.order)
        # Switch Transformer balance loss: num_experts * sum_i (token fraction_i * mean probability_i);
        # equals 1 when routing is uniform and grows as tokens crowd onto few experts.
        fraction = torch.bincount(index, minlength=self.num_experts).float() / max(index.numel(), 1)
        self.balance_loss = self.num_experts * torch.sum(fraction * probs.mean(dim=0))
        if self.track:
            self.usage[self.task] += torch.bincount(index.detach().cpu(), minlength=self.num_experts)

    def forward_pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.route(args[0])


class MoLELinear(nn.Module):
    """A frozen ``base_layer`` plus ``num_experts`` LoRA experts; each token uses the expert its router chose."""

    def __init__(self, base_layer: nn.Linear, router: MoLERouter, config: MoLEConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        # A plain attribute, not a submodule: the router is owned (and saved) by the MLP it routes.
        object.__setattr__(self, "_router", router)
        n, r = config.num_experts, config.r
        self.lora_A = nn.Parameter(torch.empty(n, r, base_layer.in_features))
        self.lora_B = nn.Parameter(torch.zeros(n, base_layer.out_features, r))
        for expert in range(n):
            nn.init.kaiming_uniform_(self.lora_A.data[expert], a=math.sqrt(5))
        self.scaling = config.scaling
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:  # some HF code paths read .weight of an MLP projection
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        router: MoLERouter = self._router  # type: ignore[assignment]
        flat = x.reshape(-1, x.shape[-1])
        if router.order is None and router.expert_index is not None and router.expert_index.numel() == flat.shape[0]:
            return out + self._gathered(flat, router).to(out.dtype).view(*out.shape)
        order, inverse, gate = router.order, router.inverse, router.sorted_gate
        if order is None or inverse is None or gate is None or order.numel() != flat.shape[0]:
            raise ModelError(
                f"MoLE routing covers {0 if order is None else order.numel()} tokens but the layer got "
                f"{flat.shape[0]}: the router hook did not run on this MLP's input"
            )
        if flat.shape[0] == 0:
            return out
        # Dispatch: tokens grouped by expert (one gather), each expert runs on its own tokens only.
        grouped = self.dropout(flat.index_select(0, order)).split(router.counts)
        pieces = []
        for expert, tokens in enumerate(grouped):
            if tokens.shape[0]:
                a = self.lora_A[expert].to(tokens.dtype)
                b = self.lora_B[expert].to(tokens.dtype)
                pieces.append((tokens @ a.t()) @ b.t())
        update = torch.cat(pieces) * (gate.to(flat.dtype) * self.scaling).unsqueeze(-1)
        return out + update.index_select(0, inverse).to(out.dtype).view(*out.shape)

    def _gathered(self, flat: torch.Tensor, router: MoLERouter) -> torch.Tensor:
        """Each token through its own expert by gathering that expert's A and B (batched matrix-vector
        products): the compute of one LoRA per token, whatever the number of experts, without grouping tokens
        by expert (a host sync) or a Python loop. Used for the few tokens of a decoding step."""
        index = router.expert_index
        down = torch.bmm(self.lora_A.index_select(0, index).to(flat.dtype), flat.unsqueeze(-1))  # (T, r, 1)
        down = down * (router.gate.to(flat.dtype) * self.scaling).view(-1, 1, 1)  # type: ignore[union-attr]
        return torch.bmm(self.lora_B.index_select(0, index).to(flat.dtype), down).squeeze(-1)  # (T, out)


@dataclass
class _Injected:
    mlp: nn.Module
    router: MoLERouter
    handle: torch.utils.hooks.RemovableHandle
    layers: dict[str, MoLELinear]


class MoLEAdapter:
    """The MoLE adapter attached to a model: its routers, expert layers, losses, statistics and files."""

    def __init__(self, model: nn.Module, config: MoLEConfig, injected: dict[str, _Injected]) -> None:
        self.model = model
        self.config = config
        self._injected = injected

    @property
    def routers(self) -> dict[str, MoLERouter]:
        return {name: item.router for name, item in self._injected.items()}

    def parameters(self) -> Iterator[nn.Parameter]:
        for item in self._injected.values():
            yield item.router.weight
            for layer in item.layers.values():
                yield layer.lora_A
                yield layer.lora_B

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter weights only, keyed by module path (``<mlp>.router.weight``, ``<mlp>.<proj>.lora_A`` …)."""
        state = {}
        for name, item in self._injected.items():
            state[f"{name}.router.weight"] = item.router.weight.detach().contiguous()
            for proj, layer in item.layers.items():
                state[f"{name}.{proj}.lora_A"] = layer.lora_A.detach().contiguous()
                state[f"{name}.{proj}.lora_B"] = layer.lora_B.detach().contiguous()
        return state

    def balance_loss(self) -> torch.Tensor:
        """Mean Switch balance loss over layers from the last forward pass (unweighted)."""
        losses = [item.router.balance_loss for item in self._injected.values() if item.router.balance_loss is not None]
        if not losses:
            raise ModelError("no MoLE balance loss yet: run a forward pass first")
        return torch.stack(losses).mean()

    def auxiliary_loss(self) -> torch.Tensor:
        """The balance loss times ``config.balance_loss_weight``: add this to the task loss."""
        return self.config.balance_loss_weight * self.balance_loss()

    @contextmanager
    def routing_statistics(self, task: str = "unlabelled") -> Iterator[None]:
        """Count tokens per expert under the label ``task`` while the block runs."""
        for item in self._injected.values():
            item.router.track, item.router.task = True, task
        try:
            yield
        finally:
            for item in self._injected.values():
                item.router.track = False

    def statistics(self) -> dict[str, dict[str, list[int]]]:
        """Tokens per expert: ``{task: {layer: [count per expert]}}``."""
        out: dict[str, dict[str, list[int]]] = defaultdict(dict)
        for name, item in self._injected.items():
            for task, counts in item.router.usage.items():
                out[task][name] = counts.tolist()
        return dict(out)

    def save(self, directory: str | Path) -> Path:
        """Write ``mole_config.json`` and ``mole_adapter.safetensors`` (adapter weights only)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / ADAPTER_CONFIG).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        save_file(self.state_dict(), str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt", "adapter": "mole"})
        return directory

    def remove(self) -> None:
        """Unwrap every projection and drop the routers: the model is the plain base model again."""
        for item in self._injected.values():
            item.handle.remove()
            for proj, layer in item.layers.items():
                setattr(item.mlp, proj, layer.base_layer)
            del item.mlp.router
        self._injected.clear()
        self.model._mole_adapter = None  # type: ignore[assignment]

    def merge(self) -> None:
        raise ModelError(
            "a MoLE adapter cannot be merged into the base weights: each token uses a different expert. "
            "Keep the adapter (it loads on top of the base directory) or serve with the torch backend."
        )


def language_model_fingerprint(model: nn.Module) -> dict[str, Any]:
    config = getattr(model.config, "text_config", model.config)
    return {
        key: getattr(config, key, None)
        for key in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
    }


def inject_mole(model: nn.Module, config: MoLEConfig, *, freeze_base: bool = True) -> MoLEAdapter:
    """Wrap the target projections of every decoder-layer MLP of the LM with routed LoRA experts."""
    if getattr(model, "_mole_adapter", None) is not None:
        raise ModelError("this model already carries a MoLE adapter; call adapter.remove() first")
    language_model = _language_model(model)
    fingerprint = language_model_fingerprint(model)
    if config.base_fingerprint and config.base_fingerprint != fingerprint:
        raise ModelError(
            f"MoLE adapter was made for base {config.base_fingerprint}, but this model's LM is {fingerprint}"
        )
    config.base_fingerprint = fingerprint
    if freeze_base:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    prefix = _prefix_of(model, language_model)
    injected: dict[str, _Injected] = {}
    for name, module in list(language_model.named_modules()):
        if name.split(".")[-1] != config.mlp_module:
            continue
        projections = {proj: getattr(module, proj, None) for proj in config.target_modules}
        if not any(isinstance(p, nn.Linear) for p in projections.values()):
            continue
        missing = [proj for proj, p in projections.items() if not isinstance(p, nn.Linear)]
        if missing:
            raise ModelError(f"{prefix}{name}: target module(s) {missing} are not Linear layers of this MLP")
        first = next(iter(projections.values()))
        router = MoLERouter(first.in_features, config.num_experts).to(first.weight.device)  # type: ignore[union-attr]
        module.router = router
        handle = module.register_forward_pre_hook(router.forward_pre_hook)
        layers = {}
        for proj, base in projections.items():
            wrapped = MoLELinear(base, router, config).to(base.weight.device)  # type: ignore[union-attr]
            setattr(module, proj, wrapped)
            layers[proj] = wrapped
        injected[prefix + name] = _Injected(module, router, handle, layers)
    if not injected:
        raise ModelError(f"no '{config.mlp_module}' module with {list(config.target_modules)} found in the LM")
    adapter = MoLEAdapter(model, config, injected)
    for parameter in adapter.parameters():
        parameter.requires_grad_(True)
    model._mole_adapter = adapter  # type: ignore[assignment]
    return adapter


def load_mole_adapter(model: nn.Module, directory: str | Path, *, freeze_base: bool = True) -> MoLEAdapter:
    """Attach the adapter saved in ``directory`` to ``model`` (its base); refuses a base it was not made for."""
    directory = Path(directory)
    config_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise ModelError(f"{directory}: not a MoLE adapter (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    try:
        config = MoLEConfig.from_dict(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise ModelError(f"{config_path}: unreadable MoLE config ({type(e).__name__})") from e
    adapter = inject_mole(model, config, freeze_base=freeze_base)
    state = load_file(str(weights_path))
    expected = adapter.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        adapter.remove()
        raise ModelError(
            f"{weights_path}: adapter weights do not fit this model: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} of the wrong shape (e.g. {(missing + unexpected + wrong)[:3]})"
        )
    with torch.no_grad():
        for name, item in adapter._injected.items():
            item.router.weight.copy_(state[f"{name}.router.weight"])
            for proj, layer in item.layers.items():
                layer.lora_A.copy_(state[f"{name}.{proj}.lora_A"])
                layer.lora_B.copy_(state[f"{name}.{proj}.lora_B"])
    return adapter


def mole_adapter_of(model: nn.Module) -> MoLEAdapter | None:
    return getattr(model, "_mole_adapter", None)


def _language_model(model: nn.Module) -> nn.Module:
    inner = getattr(model, "model", model)
    language_model = getattr(inner, "language_model", None)
    if language_model is None:
        raise ModelError("MoLE attaches to a Llava-style model with model.language_model")
    return language_model


def _prefix_of(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name + "." if name else ""
    return ""
