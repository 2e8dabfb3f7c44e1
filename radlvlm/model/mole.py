"""Mixture of LoRA Experts (after LLaVA-MoLE): top-1 routed LoRA experts on the LM's MLP projections.

In every decoder layer a router (a linear map of the MLP's input hidden state) picks one of ``num_experts``
LoRA experts per token; the same choice applies to all of that MLP's target projections (gate/up/down),
and the expert's output is scaled by the router's probability for it, which is how the router learns.
Tokens are dispatched to their expert (sorted and split), so the cost per token is one rank-r LoRA whatever
``num_experts`` is. A Switch-Transformer load-balancing loss keeps experts in use. Base weights are frozen.
A decoding step (few tokens, no grad) has no dispatch plan, host sync or balance loss: each token gathers its
expert's A and B, and a gated MLP runs as one function with gate/up experts stacked (``_RoutedMLP``).

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
        self.counts: torch.Tensor | None = None  # tokens per expert
        self.offsets: torch.Tensor | None = None  # where each expert's tokens end in that order (int32)
        self.sorted_gate: torch.Tensor | None = None  # router probability of the chosen expert, in that order
        self.balance_loss: torch.Tensor | None = None
        self.usage: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(num_experts, dtype=torch.long))
        self.task = "unlabelled"
        self.track = False

    def probabilities(self, flat: torch.Tensor) -> torch.Tensor:
        """Each token's probability for each expert (float32)."""
        logits = nn.functional.linear(flat, _as_dtype(self.weight, flat.dtype))
        return _as_dtype(logits, torch.float32).softmax(dim=-1)

    def choose(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's expert and the router's probability for it; counted when statistics are on."""
        gate, index = self.probabilities(flat).max(dim=-1)
        if self.track:
            self.usage[self.task] += torch.bincount(index.detach().cpu(), minlength=self.num_experts)
        return gate, index

    def clear_plan(self) -> None:
        self.order = self.inverse = self.sorted_gate = self.balance_loss = self.counts = self.offsets = None

    def route(self, hidden: torch.Tensor) -> None:
        """Choose experts for ``hidden`` and, for a pass with many tokens or with grad, plan the dispatch."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        self.clear_plan()
        if _decoding(flat):
            # No dispatch plan (its bincount is a host sync every step) and no balance loss; each projection
            # gathers its tokens' own experts (MoLELinear.gathered), constant compute, no loop.
            self.gate, self.expert_index = self.choose(flat)
            return
        probs = self.probabilities(flat)
        gate, index = probs.max(dim=-1)
        self.expert_index, self.gate = index, gate
        self.order = torch.argsort(index, stable=True)
        self.inverse = torch.empty_like(self.order)
        self.inverse[self.order] = torch.arange(self.order.numel(), device=self.order.device)
        # scatter_add, not bincount: bincount reads the largest index back to the host on a GPU.
        counts = index.new_zeros(self.num_experts).scatter_add_(0, index, torch.ones_like(index))
        self.counts, self.offsets = counts, counts.cumsum(0).to(torch.int32)
        self.sorted_gate = gate.index_select(0, self.order)
        if torch.is_grad_enabled():  # training: a prompt's prefill at inference has no use for it
            # Switch Transformer balance loss: num_experts * sum_i (token fraction_i * mean probability_i);
            # equals 1 when routing is uniform and grows as tokens crowd onto few experts.
            fraction = counts.float() / max(index.numel(), 1)
            self.balance_loss = self.num_experts * torch.sum(fraction * probs.mean(dim=0))
        if self.track:
            self.usage[self.task] += counts.detach().cpu()


def _decoding(flat: torch.Tensor) -> bool:
    return not torch.is_grad_enabled() and flat.shape[0] <= GATHER_TOKENS


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
        self._plain_base = type(base_layer) is nn.Linear
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
        router: MoLERouter = self._router  # type: ignore[assignment]
        flat = x.reshape(-1, x.shape[-1])
        if router.order is None and router.expert_index is not None and router.expert_index.numel() == flat.shape[0]:
            # A decoding step of an MLP without a fused path (_RoutedMLP.decode): gather each token's expert.
            return self.gathered(flat, router.expert_index, self.token_scale(router.gate, flat)).view(*x.shape[:-1], -1)
        order, inverse = router.order, router.inverse
        if order is None or inverse is None or order.numel() != flat.shape[0]:
            raise ModelError(
                f"MoLE routing covers {0 if order is None else order.numel()} tokens but the layer got "
                f"{flat.shape[0]}: the router did not run on this MLP's input"
            )
        out = self.base_layer(x)
        if flat.shape[0] == 0:
            return out
        update = self.grouped_update(flat.index_select(0, order), router)
        return out + update.index_select(0, inverse).to(out.dtype).view(*out.shape)

    def grouped_update(self, grouped: torch.Tensor, router: MoLERouter) -> torch.Tensor:
        """The experts' updates for tokens already grouped by expert (``router.order``), each token through
        its own expert only and scaled by its router probability."""
        tokens = self.dropout(grouped)
        a, b = _as_dtype(self.lora_A, tokens.dtype), _as_dtype(self.lora_B, tokens.dtype)
        if _grouped_mm_serves(tokens, rank=a.shape[1], out_features=b.shape[1]):
            # One grouped product per factor over the jagged expert groups: no Python loop, no host sync.
            down = nn.functional.grouped_mm(tokens, a.transpose(1, 2), offs=router.offsets)
            update = nn.functional.grouped_mm(down, b.transpose(1, 2), offs=router.offsets)
        else:  # the products one expert at a time (needs the group sizes on the host)
            pieces = [
                (group @ a[expert].t()) @ b[expert].t()
                for expert, group in enumerate(tokens.split(router.counts.tolist()))  # type: ignore[union-attr]
            ]
            update = torch.cat(pieces)
        return update * (router.sorted_gate.to(tokens.dtype) * self.scaling).unsqueeze(-1)  # type: ignore[union-attr]

    def token_scale(self, gate: torch.Tensor | None, flat: torch.Tensor) -> torch.Tensor:
        """Each token's update scale (router probability x alpha / r), shaped for :meth:`gathered`."""
        return _as_dtype(gate * self.scaling, flat.dtype).view(-1, 1, 1)  # type: ignore[operator]

    def base_output(self, flat: torch.Tensor) -> torch.Tensor:
        if self._plain_base:  # at decoding sizes the module call costs about as much as the product it wraps
            return nn.functional.linear(flat, self.base_layer.weight, self.base_layer.bias)
        return self.base_layer(flat)

    def gathered(self, flat: torch.Tensor, index: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Base output plus each token's own expert, by gathering that expert's A and B (batched
        matrix-vector products): the compute of one LoRA per token whatever the number of experts, without
        grouping tokens by expert (a host sync) or a Python loop. Used for the few tokens of a decoding step."""
        down = torch.bmm(_as_dtype(self.lora_A, flat.dtype).index_select(0, index), flat.unsqueeze(-1)) * scale
        return self.base_output(flat) + self.expand(down, index)

    def expand(self, down: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The experts' B applied to already scaled rank-r activations ``(tokens, r, 1)``."""
        return torch.bmm(_as_dtype(self.lora_B, down.dtype).index_select(0, index), down).squeeze(-1)


def _grouped_mm_serves(tokens: torch.Tensor, rank: int, out_features: int) -> bool:
    # torch's grouped_mm runs (with autograd) on the CPU in float32/16/bf16 when every row of its operands starts
    # on a 16-byte boundary (in, out and r in bytes); on CUDA it wants bf16 on recent GPUs with rules we have not
    # verified on a GPU, so CUDA, and the shapes it refuses, keep the per-expert loop.
    return (
        hasattr(nn.functional, "grouped_mm")
        and tokens.device.type == "cpu"
        and tokens.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and tokens.is_contiguous()
        and all(size * tokens.element_size() % 16 == 0 for size in (tokens.shape[-1], rank, out_features))
    )


def _as_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # A comparison instead of a no-op .to(): at one token per step the dispatcher call is measurable.
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


# Hugging Face MLPs whose forward is exactly ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``; a decoding step
# through them runs as one function (_RoutedMLP.decode) instead of four module calls and a hook.
GATED_MLP_CLASSES = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})


class _RoutedMLP:
    """Stands in for an MLP's ``forward`` while it carries experts: routes its input, then either runs the
    MLP's own forward (whose projections read the routing) or, for a decoding step of a gated MLP, the same
    arithmetic with the experts folded in: the per-token scale computed once, and gate_proj's and up_proj's
    experts (which read the same input) applied as one stacked product."""

    def __init__(self, mlp: nn.Module, router: MoLERouter, layers: dict[str, MoLELinear]) -> None:
        self.own_forward = type(mlp).forward.__get__(mlp)
        self.router = router
        self.gated = type(mlp).__name__ in GATED_MLP_CLASSES and set(layers) == {"gate_proj", "up_proj", "down_proj"}
        self.mlp, self.layers = mlp, layers
        self._decode_weights: tuple[tuple[Any, ...], _DecodeWeights] | None = None

    def __call__(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.gated and not args and not kwargs and hidden.numel():
            flat = hidden.reshape(-1, hidden.shape[-1])
            if _decoding(flat):
                return self.decode(flat).view(*hidden.shape[:-1], -1)
            self.router.route(flat)
            return self.grouped(flat).view(*hidden.shape[:-1], -1)
        self.router.route(hidden)
        return self.own_forward(hidden, *args, **kwargs)

    def grouped(self, flat: torch.Tensor) -> torch.Tensor:
        """The whole MLP on tokens grouped by expert: one gather in and one out, where wrapping each projection
        would regroup its input and ungroup its output (six copies); the base products do not mind the order."""
        router = self.router
        gate_proj, up_proj, down_proj = self.layers["gate_proj"], self.layers["up_proj"], self.layers["down_proj"]
        tokens = flat.index_select(0, router.order)  # type: ignore[arg-type]
        gated = self.mlp.act_fn(gate_proj.base_output(tokens) + gate_proj.grouped_update(tokens, router))
        hidden = gated * (up_proj.base_output(tokens) + up_proj.grouped_update(tokens, router))
        out = down_proj.base_output(hidden) + down_proj.grouped_update(hidden, router)
        return out.index_select(0, router.inverse)  # type: ignore[arg-type]

    def decode(self, flat: torch.Tensor) -> torch.Tensor:
        router = self.router
        gate_proj, up_proj, down_proj = self.layers["gate_proj"], self.layers["up_proj"], self.layers["down_proj"]
        router.clear_plan()
        router.gate, router.expert_index = gate, index = router.choose(flat)
        rank = gate_proj.lora_A.shape[1]
        if flat.shape[0] == 1 and flat.device.type == "cpu":
            # One token (a batch-1 step): its expert serves the whole step, so its own A and B (views) replace
            # the gathers, the shape of a plain LoRA; on the CPU, reading the index is no device sync.
            expert, step_scale = int(index), float(gate) * gate_proj.scaling
            a_gate_up, b_gate, b_up, a_down, b_down = self._weights(flat.dtype).per_expert[expert]
            down_one = nn.functional.linear(flat, a_gate_up)
            gated = self.mlp.act_fn(
                torch.addmm(gate_proj.base_output(flat), down_one[:, :rank], b_gate, alpha=step_scale)
            )
            hidden = gated * torch.addmm(up_proj.base_output(flat), down_one[:, rank:], b_up, alpha=step_scale)
            down_hidden = nn.functional.linear(hidden, a_down)
            return torch.addmm(down_proj.base_output(hidden), down_hidden, b_down, alpha=step_scale)
        scale = gate_proj.token_scale(gate, flat)
        down = torch.bmm(self._weights(flat.dtype).gate_up_A.index_select(0, index), flat.unsqueeze(-1)) * scale
        gated = self.mlp.act_fn(gate_proj.base_output(flat) + gate_proj.expand(down[:, :rank], index))
        hidden = gated * (up_proj.base_output(flat) + up_proj.expand(down[:, rank:], index))
        return down_proj.gathered(hidden, index, scale)

    def _weights(self, dtype: torch.dtype) -> _DecodeWeights:
        """The experts arranged for decoding in ``dtype``, rebuilt when any changes (an optimiser step or a load
        bumps the version; an assignment to ``.data`` changes the storage). In the adapter's own dtype the
        per-expert entries are views of the parameters."""
        gate_proj, up_proj, down_proj = self.layers["gate_proj"], self.layers["up_proj"], self.layers["down_proj"]
        params = (
            gate_proj.lora_A,
            up_proj.lora_A,
            gate_proj.lora_B,
            up_proj.lora_B,
            down_proj.lora_A,
            down_proj.lora_B,
        )
        key = (dtype, *(p._version for p in params), *(p.data_ptr() for p in params))
        if self._decode_weights is None or self._decode_weights[0] != key:
            a_gate, a_up, b_gate, b_up, a_down, b_down = (_as_dtype(p.detach(), dtype) for p in params)
            gate_up_A = torch.cat([a_gate, a_up], dim=1)
            # Python-indexed per expert (a list lookup, not a tensor select per step), B transposed for addmm.
            per_expert = [
                (gate_up_A[e], b_gate[e].t(), b_up[e].t(), a_down[e], b_down[e].t()) for e in range(len(gate_up_A))
            ]
            self._decode_weights = key, _DecodeWeights(gate_up_A, per_expert)
        return self._decode_weights[1]


@dataclass(frozen=True)
class _DecodeWeights:
    gate_up_A: torch.Tensor  # (experts, 2r, in): gate_proj's and up_proj's A stacked (they read the same input)
    per_expert: list[tuple[torch.Tensor, ...]]  # (A gate|up, B gate^T, B up^T, A down, B down^T) of each expert


@dataclass
class _Injected:
    mlp: nn.Module
    router: MoLERouter
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
            del item.mlp.forward  # the class's forward again
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
        layers = {}
        for proj, base in projections.items():
            wrapped = MoLELinear(base, router, config).to(base.weight.device)  # type: ignore[union-attr]
            setattr(module, proj, wrapped)
            layers[proj] = wrapped
        # An instance attribute shadows the class's forward (as accelerate's hooks do); remove() deletes it.
        module.forward = _RoutedMLP(module, router, layers)
        injected[prefix + name] = _Injected(module, router, layers)
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
