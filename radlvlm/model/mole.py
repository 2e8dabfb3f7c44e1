"""Mixture of LoRA Experts (after LLaVA-MoLE): top-1 routed LoRA experts on the LM's MLP projections.

In every decoder layer a router (a linear map of the MLP's input hidden state) picks one of ``num_experts``
LoRA experts per token; the same choice applies to all of that MLP's target projections (gate/up/down),
and the expert's output is scaled by the router's probability for it, which is how the router learns.
Tokens are dispatched to their expert (sorted and split), so the cost per token is one rank-r LoRA whatever
``num_experts`` is. A Switch-Transformer load-balancing loss keeps experts in use. Base weights are frozen.
A decoding step (few tokens, no grad) has no dispatch plan, host sync or balance loss: each token gathers its
expert's A and B, and a gated MLP runs as one function with gate/up experts stacked.

peft has no sparse mixture of LoRA experts (its X-LoRA runs every adapter on every token and masks), so the
layer is written here, shaped as peft's LoRA tuner is: each adapted MLP is replaced by a module of its own
(:class:`MoLEMLP`, whose ``base_mlp`` is the MLP with its projections wrapped as ``base_layer`` +
``lora_A``/``lora_B`` dictionaries by adapter name), adapters are named, one is active
(``add_adapter``/``set_adapter``/``delete_adapter``/``load_adapter``/``save_pretrained``/``unload``/
``merge_and_unload``), A is Kaiming-initialised and B zero so a fresh adapter changes nothing, scaling alpha / r.
Routing is computed inside each MLP's forward and lives for that call only: nothing is carried between calls
on a module, and the training loss's balance term is collected by the caller
(:meth:`MoLEAdapter.collect_balance_loss`). An adapter saves alone: a config JSON plus adapter-only
safetensors, never the base weights."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from radlvlm.errors import ModelError

ADAPTER_CONFIG = "mole_config.json"
ADAPTER_WEIGHTS = "mole_adapter.safetensors"
DEFAULT_ADAPTER = "default"


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


@dataclass(frozen=True)
class Routing:
    """One MLP's routing of one forward pass: made in :meth:`MoLEMLP.forward`, used by its projections, dropped.

    ``index``/``gate``: each token's expert and the router's probability for it. For a pass that groups tokens by
    expert (a prefill or training) the dispatch plan too: ``order`` (token positions sorted by expert), ``inverse``
    (where each token sits in that order), ``counts`` (tokens per expert), ``offsets`` (where each expert's tokens
    end, int32) and ``sorted_gate`` (``gate`` in that order). A decoding step has no plan: each token gathers its
    expert.
    """

    index: torch.Tensor
    gate: torch.Tensor
    order: torch.Tensor | None = None
    inverse: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    sorted_gate: torch.Tensor | None = None


class MoLERouter(nn.Module):
    """Top-1 router of one MLP for one adapter: a linear map of the MLP's input to expert probabilities."""

    def __init__(self, hidden_size: int, num_experts: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.num_experts = num_experts

    def probabilities(self, flat: torch.Tensor) -> torch.Tensor:
        """Each token's probability for each expert (float32)."""
        logits = nn.functional.linear(flat, _as_dtype(self.weight, flat.dtype))
        return _as_dtype(logits, torch.float32).softmax(dim=-1)

    def forward(
        self, flat: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> tuple[Routing, torch.Tensor | None]:
        """Route ``flat`` (tokens, hidden): the routing, and the Switch balance loss when grad is on, over the
        tokens ``token_mask`` keeps (padding routes too, but a balance measured on it would be meaningless)."""
        if _decoding(flat):
            # No dispatch plan (its bincount is a host sync every step) and no balance loss: each projection
            # gathers its tokens' own experts, constant compute, no loop.
            gate, index = self.probabilities(flat).max(dim=-1)
            return Routing(index, gate), None
        probs = self.probabilities(flat)
        gate, index = probs.max(dim=-1)
        order = torch.argsort(index, stable=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        # scatter_add, not bincount: bincount reads the largest index back to the host on a GPU.
        counts = index.new_zeros(self.num_experts).scatter_add_(0, index, torch.ones_like(index))
        routing = Routing(index, gate, order, inverse, counts, counts.cumsum(0).to(torch.int32), gate[order])
        balance = None
        if torch.is_grad_enabled():  # training: a prompt's prefill at inference has no use for it
            # Switch Transformer balance loss: num_experts * sum_i (token fraction_i * mean probability_i);
            # equals 1 when routing is uniform and grows as tokens crowd onto few experts.
            weights = torch.ones_like(gate) if token_mask is None else token_mask.reshape(-1).to(gate.dtype)
            kept = weights.sum().clamp(min=1.0)
            fraction = gate.new_zeros(self.num_experts).scatter_add_(0, index, weights) / kept
            mean_probability = (probs * weights.unsqueeze(-1)).sum(dim=0) / kept
            balance = self.num_experts * torch.sum(fraction * mean_probability)
        return routing, balance


def _decoding(flat: torch.Tensor) -> bool:
    return not torch.is_grad_enabled() and flat.shape[0] <= GATHER_TOKENS


# The routing of the MLP call in progress, for the projections an MLP's own forward calls (MLPs without the fused
# path). Set by MoLEMLP.forward for the length of its call and reset after it: nothing outlives the call, and
# another thread's call has its own.
_CURRENT_ROUTING: ContextVar[Routing | None] = ContextVar("radlvlm_mole_routing", default=None)
# The collector of the forward passes inside ``MoLEAdapter.collect_balance_loss`` (None: nothing is collected).
_BALANCE_LOSSES: ContextVar[BalanceLoss | None] = ContextVar("radlvlm_mole_balance", default=None)


class MoLELinear(nn.Module):
    """A frozen ``base_layer`` plus, per named adapter, ``num_experts`` LoRA experts (peft's LoRA layer, made
    sparse): each token uses the expert its MLP's router chose for the active adapter."""

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.active_adapter = DEFAULT_ADAPTER
        self._plain_base = type(base_layer) is nn.Linear

    def add_adapter(self, name: str, config: MoLEConfig) -> None:
        n, r, weight = config.num_experts, config.r, self.base_layer.weight
        a = torch.empty(n, r, self.in_features, device=weight.device)
        for expert in range(n):
            nn.init.kaiming_uniform_(a[expert], a=math.sqrt(5))
        self.lora_A[name] = nn.Parameter(a)
        self.lora_B[name] = nn.Parameter(torch.zeros(n, self.out_features, r, device=weight.device))
        self.lora_dropout[name] = (nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()).train(
            self.training
        )
        self.scaling[name] = config.scaling

    def delete_adapter(self, name: str) -> None:
        for container in (self.lora_A, self.lora_B, self.lora_dropout):
            del container[name]
        del self.scaling[name]

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:  # some HF code paths read .weight of an MLP projection
        return self.base_layer.weight

    @property
    def expert_A(self) -> torch.Tensor:
        return self.lora_A[self.active_adapter]

    @property
    def expert_B(self) -> torch.Tensor:
        return self.lora_B[self.active_adapter]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Called by an MLP's own forward (the MLPs without a fused path), inside its ``MoLEMLP``'s call."""
        routing = _CURRENT_ROUTING.get()
        flat = x.reshape(-1, x.shape[-1])
        if routing is None or routing.index.numel() != flat.shape[0]:
            raise ModelError(
                f"a MoLE projection got {flat.shape[0]} tokens outside its MLP's routing "
                f"({0 if routing is None else routing.index.numel()} routed): call the MLP, which routes them"
            )
        if routing.order is None:  # a decoding step: gather each token's expert
            return self.gathered(flat, routing.index, self.token_scale(routing.gate, flat)).view(*x.shape[:-1], -1)
        out = self.base_layer(x)
        if flat.shape[0] == 0:
            return out
        update = self.grouped_update(flat.index_select(0, routing.order), routing)
        return out + update.index_select(0, routing.inverse).to(out.dtype).view(*out.shape)  # type: ignore[arg-type]

    def grouped_update(self, grouped: torch.Tensor, routing: Routing) -> torch.Tensor:
        """The experts' updates for tokens already grouped by expert (``routing.order``), each token through
        its own expert only and scaled by its router probability."""
        tokens = self.lora_dropout[self.active_adapter](grouped)
        a, b = _as_dtype(self.expert_A, tokens.dtype), _as_dtype(self.expert_B, tokens.dtype)
        if _grouped_mm_serves(tokens, rank=a.shape[1], out_features=b.shape[1]):
            # One grouped product per factor over the jagged expert groups: no Python loop, no host sync.
            down = nn.functional.grouped_mm(tokens, a.transpose(1, 2), offs=routing.offsets)
            update = nn.functional.grouped_mm(down, b.transpose(1, 2), offs=routing.offsets)
        else:  # the products one expert at a time (needs the group sizes on the host)
            pieces = [
                (group @ a[expert].t()) @ b[expert].t()
                for expert, group in enumerate(tokens.split(routing.counts.tolist()))  # type: ignore[union-attr]
            ]
            update = torch.cat(pieces)
        scale = routing.sorted_gate.to(tokens.dtype) * self.scaling[self.active_adapter]  # type: ignore[union-attr]
        return update * scale.unsqueeze(-1)

    def token_scale(self, gate: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """Each token's update scale (router probability x alpha / r), shaped for :meth:`gathered`."""
        return _as_dtype(gate * self.scaling[self.active_adapter], flat.dtype).view(-1, 1, 1)

    def base_output(self, flat: torch.Tensor) -> torch.Tensor:
        if self._plain_base:  # at decoding sizes the module call costs about as much as the product it wraps
            return nn.functional.linear(flat, self.base_layer.weight, self.base_layer.bias)
        return self.base_layer(flat)

    def gathered(self, flat: torch.Tensor, index: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Base output plus each token's own expert, by gathering that expert's A and B (batched
        matrix-vector products): the compute of one LoRA per token whatever the number of experts, without
        grouping tokens by expert (a host sync) or a Python loop. Used for the few tokens of a decoding step."""
        down = torch.bmm(_as_dtype(self.expert_A, flat.dtype).index_select(0, index), flat.unsqueeze(-1)) * scale
        return self.base_output(flat) + self.expand(down, index)

    def expand(self, down: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The experts' B applied to already scaled rank-r activations ``(tokens, r, 1)``."""
        return torch.bmm(_as_dtype(self.expert_B, down.dtype).index_select(0, index), down).squeeze(-1)

    def merged_weight(self, name: str) -> torch.Tensor:
        """The base weight with a one-expert adapter folded in (its router's probability is always 1)."""
        a, b = self.lora_A[name], self.lora_B[name]
        if a.shape[0] != 1:
            raise ModelError(
                f"a MoLE adapter of {a.shape[0]} experts cannot be merged into the base weights: each token uses "
                "a different expert. Keep the adapter (it loads on top of the base directory) or serve it with "
                "the torch backend."
            )
        delta = (b[0].float() @ a[0].float()) * self.scaling[name]
        return (self.base_layer.weight.float() + delta).to(self.base_layer.weight.dtype)


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


# Hugging Face MLPs whose forward is exactly ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``; with all three
# projections adapted, MoLEMLP runs them as one function instead of four module calls.
GATED_MLP_CLASSES = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})
GATED_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


class UsageLog:
    """Tokens per expert, per task label and MLP, counted while ``task`` is set (``MoLEAdapter.routing_statistics``).

    Shared by the MLPs of one adapter; statistics accumulate by design (they are not routing: no forward reads
    them), and the engine's worker thread, where the model runs, sees the label the caller set.
    """

    def __init__(self) -> None:
        self.task: str | None = None
        self.counts: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)

    def add(self, layer: str, routing: Routing, num_experts: int, token_mask: torch.Tensor | None = None) -> None:
        """Count ``routing``'s tokens (those ``token_mask`` keeps) on their own device: no host sync per step."""
        index = routing.index.detach()
        weights = torch.ones_like(index) if token_mask is None else token_mask.reshape(-1).to(index.dtype)
        counts = index.new_zeros(num_experts).scatter_add_(0, index, weights)
        table = self.counts[self.task or "unlabelled"]
        table[layer] = table[layer] + counts if layer in table else counts

    def tables(self) -> dict[str, dict[str, list[int]]]:
        return {task: {layer: c.tolist() for layer, c in table.items()} for task, table in self.counts.items()}


class MoLEMLP(nn.Module):
    """An LM's MLP with routed LoRA experts on its projections (the module that replaces the MLP, as peft's tuners
    replace the layers they adapt): ``base_mlp`` (the MLP itself, its target projections wrapped by
    :class:`MoLELinear`) and one :class:`MoLERouter` per named adapter.

    Its forward routes the MLP's input for the active adapter, then runs the MLP with each token through its
    expert: a gated MLP with all three projections adapted as one function (tokens grouped by expert once for
    the whole MLP; at a decoding step, each token's expert gathered, gate_proj's and up_proj's experts stacked),
    any other MLP through its own forward, whose projections read the routing of this call.
    """

    def __init__(self, mlp: nn.Module, targets: tuple[str, ...], name: str, usage: UsageLog) -> None:
        super().__init__()
        self.base_mlp = mlp
        self.router = nn.ModuleDict()
        self.targets = targets
        self.layer_name = name
        self.active_adapter = DEFAULT_ADAPTER
        self.fused = type(mlp).__name__ in GATED_MLP_CLASSES and set(targets) == set(GATED_PROJECTIONS)
        for proj in targets:
            setattr(mlp, proj, MoLELinear(getattr(mlp, proj)))
        object.__setattr__(self, "_usage", usage)  # shared with the adapter, not a submodule
        self._decode_weights: tuple[tuple[Any, ...], _DecodeWeights] | None = None
        self.train(mlp.training)  # the wrappers take the mode of the model they join (eval: no dropout)

    def projection(self, name: str) -> MoLELinear:
        layer = getattr(self.base_mlp, name)
        assert isinstance(layer, MoLELinear)
        return layer

    def add_adapter(self, name: str, config: MoLEConfig) -> None:
        first = self.projection(self.targets[0])
        router = MoLERouter(first.in_features, config.num_experts).to(first.weight.device)
        self.router[name] = router.train(self.training)
        for proj in self.targets:
            self.projection(proj).add_adapter(name, config)

    def delete_adapter(self, name: str) -> None:
        del self.router[name]
        for proj in self.targets:
            self.projection(proj).delete_adapter(name)

    def set_adapter(self, name: str) -> None:
        self.active_adapter = name
        for proj in self.targets:
            self.projection(proj).active_adapter = name

    def unwrap(self) -> nn.Module:
        """The MLP with its original projections back."""
        for proj in self.targets:
            setattr(self.base_mlp, proj, self.projection(proj).base_layer)
        return self.base_mlp

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        router: MoLERouter = self.router[self.active_adapter]  # type: ignore[assignment]
        flat = hidden.reshape(-1, hidden.shape[-1])
        collector = _BALANCE_LOSSES.get()
        token_mask = collector.mask_for(flat.shape[0]) if collector is not None else None
        routing, balance = router(flat, token_mask)
        if balance is not None and collector is not None:
            collector.terms.append(balance)
        usage: UsageLog = self._usage  # type: ignore[assignment]
        # In training, the pass inside collect_balance_loss is counted, not its recomputation by activation
        # checkpointing during backward (which would count every token twice, padding included).
        if usage.task is not None and (collector is not None or not self.training):
            usage.add(self.layer_name, routing, router.num_experts, token_mask)
        if self.fused and not args and not kwargs and flat.shape[0]:
            out = self.decode(flat, routing) if routing.order is None else self.grouped(flat, routing)
            return out.view(*hidden.shape[:-1], -1)
        token = _CURRENT_ROUTING.set(routing)
        try:
            return self.base_mlp(hidden, *args, **kwargs)
        finally:
            _CURRENT_ROUTING.reset(token)

    def grouped(self, flat: torch.Tensor, routing: Routing) -> torch.Tensor:
        """The whole MLP on tokens grouped by expert: one gather in and one out, where wrapping each projection
        would regroup its input and ungroup its output (six copies); the base products do not mind the order."""
        gate_proj, up_proj, down_proj = (self.projection(p) for p in GATED_PROJECTIONS)
        tokens = flat.index_select(0, routing.order)  # type: ignore[arg-type]
        act_fn = self.base_mlp.act_fn
        gated = act_fn(gate_proj.base_output(tokens) + gate_proj.grouped_update(tokens, routing))
        hidden = gated * (up_proj.base_output(tokens) + up_proj.grouped_update(tokens, routing))
        out = down_proj.base_output(hidden) + down_proj.grouped_update(hidden, routing)
        return out.index_select(0, routing.inverse)  # type: ignore[arg-type]

    def decode(self, flat: torch.Tensor, routing: Routing) -> torch.Tensor:
        gate_proj, up_proj, down_proj = (self.projection(p) for p in GATED_PROJECTIONS)
        gate, index = routing.gate, routing.index
        act_fn = self.base_mlp.act_fn
        rank = gate_proj.expert_A.shape[1]
        if flat.shape[0] == 1 and flat.device.type == "cpu":
            # One token (a batch-1 step): its expert serves the whole step, so its own A and B (views) replace
            # the gathers, the shape of a plain LoRA; on the CPU, reading the index is no device sync.
            expert, step_scale = int(index), float(gate) * gate_proj.scaling[self.active_adapter]
            a_gate_up, b_gate, b_up, a_down, b_down = self._weights(flat.dtype).per_expert[expert]
            down_one = nn.functional.linear(flat, a_gate_up)
            gated = act_fn(torch.addmm(gate_proj.base_output(flat), down_one[:, :rank], b_gate, alpha=step_scale))
            hidden = gated * torch.addmm(up_proj.base_output(flat), down_one[:, rank:], b_up, alpha=step_scale)
            down_hidden = nn.functional.linear(hidden, a_down)
            return torch.addmm(down_proj.base_output(hidden), down_hidden, b_down, alpha=step_scale)
        scale = gate_proj.token_scale(gate, flat)
        down = torch.bmm(self._weights(flat.dtype).gate_up_A.index_select(0, index), flat.unsqueeze(-1)) * scale
        gated = act_fn(gate_proj.base_output(flat) + gate_proj.expand(down[:, :rank], index))
        hidden = gated * (up_proj.base_output(flat) + up_proj.expand(down[:, rank:], index))
        return down_proj.gathered(hidden, index, scale)

    def _weights(self, dtype: torch.dtype) -> _DecodeWeights:
        """The active adapter's experts arranged for decoding in ``dtype``: a cache of the weights (not of any
        routing), rebuilt when the adapter or a weight changes (an optimiser step or a load bumps the version; an
        assignment to ``.data`` changes the storage). In the adapter's own dtype the entries are views."""
        gate_proj, up_proj, down_proj = (self.projection(p) for p in GATED_PROJECTIONS)
        params = (
            gate_proj.expert_A,
            up_proj.expert_A,
            gate_proj.expert_B,
            up_proj.expert_B,
            down_proj.expert_A,
            down_proj.expert_B,
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


class BalanceLoss:
    """The Switch balance losses of the forward passes run inside ``MoLEAdapter.collect_balance_loss``, measured
    over the tokens ``token_mask`` keeps (the batch's attention mask: padding is routed but not balanced)."""

    def __init__(self, weight: float, token_mask: torch.Tensor | None = None) -> None:
        self.weight = weight
        self.token_mask = token_mask
        self.terms: list[torch.Tensor] = []

    def mask_for(self, tokens: int) -> torch.Tensor | None:
        """The mask when it covers this pass's tokens (a pass over the batch), else None."""
        mask = self.token_mask
        return mask if mask is not None and mask.numel() == tokens else None

    def value(self) -> torch.Tensor:
        """Mean over the MLPs (and passes) collected, unweighted."""
        if not self.terms:
            raise ModelError(
                "no MoLE balance loss was computed: it is training's (a forward pass with grad, inside "
                "collect_balance_loss)"
            )
        return torch.stack(self.terms).mean()

    def auxiliary_loss(self) -> torch.Tensor:
        """The balance loss times the adapter's ``balance_loss_weight``: add this to the task loss."""
        return self.weight * self.value()


class MoLEAdapter:
    """The MoLE adapters attached to a model, by name (as peft's ``PeftModel`` holds its LoRA adapters): one is
    active at a time; each saves alone, loads on top of its base, and is removed without a trace.

    Attributes:
        model: the model carrying the experts.
        configs: each adapter's settings, by name.
        active_adapter: the name of the adapter tokens are routed through.
    """

    def __init__(self, model: nn.Module, mlps: dict[str, MoLEMLP], usage: UsageLog) -> None:
        self.model = model
        self.mlps = mlps
        self.configs: dict[str, MoLEConfig] = {}
        self.active_adapter = DEFAULT_ADAPTER
        self.usage = usage

    # -- named adapters ------------------------------------------------------------------------------

    @property
    def config(self) -> MoLEConfig:
        """The active adapter's settings."""
        return self.configs[self.active_adapter]

    @property
    def adapters(self) -> list[str]:
        return list(self.configs)

    def add_adapter(self, name: str, config: MoLEConfig) -> None:
        """A fresh adapter (its experts' B at zero, so it changes nothing until trained); not made active."""
        if name in self.configs:
            raise ModelError(f"this model already has a MoLE adapter named {name!r}")
        fingerprint = language_model_fingerprint(self.model)
        if config.base_fingerprint and config.base_fingerprint != fingerprint:
            raise ModelError(
                f"MoLE adapter was made for base {config.base_fingerprint}, but this model's LM is {fingerprint}"
            )
        if set(config.target_modules) != set(next(iter(self.mlps.values())).targets):
            raise ModelError(
                f"adapter {name!r} targets {list(config.target_modules)}, but this model's MoLE layers wrap "
                f"{list(next(iter(self.mlps.values())).targets)}"
            )
        config.base_fingerprint = fingerprint
        for mlp in self.mlps.values():
            mlp.add_adapter(name, config)
        self.configs[name] = config

    def set_adapter(self, name: str) -> None:
        """Route tokens through adapter ``name`` from now on."""
        if name not in self.configs:
            raise ModelError(f"no MoLE adapter named {name!r}; this model has {', '.join(self.configs)}")
        for mlp in self.mlps.values():
            mlp.set_adapter(name)
        self.active_adapter = name

    def delete_adapter(self, name: str) -> None:
        if name not in self.configs:
            raise ModelError(f"no MoLE adapter named {name!r}")
        if len(self.configs) == 1:
            raise ModelError("the last MoLE adapter is removed with unload(), which gives the base model back")
        for mlp in self.mlps.values():
            mlp.delete_adapter(name)
        del self.configs[name]
        if self.active_adapter == name:
            self.set_adapter(next(iter(self.configs)))

    # -- weights -----------------------------------------------------------------------------------------

    @property
    def routers(self) -> dict[str, MoLERouter]:
        """The active adapter's router of each MLP, by the MLP's path."""
        return {name: mlp.router[self.active_adapter] for name, mlp in self.mlps.items()}  # type: ignore[misc]

    def parameters(self, adapter_name: str | None = None) -> Iterator[nn.Parameter]:
        """The weights of adapter ``adapter_name`` (the active one when None)."""
        name = adapter_name or self.active_adapter
        for mlp in self.mlps.values():
            yield mlp.router[name].weight  # type: ignore[misc]
            for proj in mlp.targets:
                yield mlp.projection(proj).lora_A[name]
                yield mlp.projection(proj).lora_B[name]

    def state_dict(self, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
        """Adapter weights only, keyed as the adapter files have them since 0.1 (``<mlp>.router.weight``,
        ``<mlp>.<proj>.lora_A``, ``<mlp>.<proj>.lora_B``: the MLP's path in the base model, no adapter name)."""
        name = adapter_name or self.active_adapter
        state = {}
        for path, mlp in self.mlps.items():
            state[f"{path}.router.weight"] = mlp.router[name].weight.detach().contiguous()  # type: ignore[misc]
            for proj in mlp.targets:
                layer = mlp.projection(proj)
                state[f"{path}.{proj}.lora_A"] = layer.lora_A[name].detach().contiguous()
                state[f"{path}.{proj}.lora_B"] = layer.lora_B[name].detach().contiguous()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor], adapter_name: str, *, where: str = "state") -> None:
        """Copy ``state`` (keyed as :meth:`state_dict` writes) into adapter ``adapter_name``, refusing a misfit."""
        expected = self.state_dict(adapter_name)
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            raise ModelError(
                f"{where}: adapter weights do not fit this model: {len(missing)} missing, {len(unexpected)} "
                f"unexpected, {len(wrong)} of the wrong shape (e.g. {(missing + unexpected + wrong)[:3]})"
            )
        with torch.no_grad():
            for parameter, key in zip(self.parameters(adapter_name), expected, strict=True):
                parameter.copy_(state[key])

    # -- training ------------------------------------------------------------------------------------

    @contextmanager
    def collect_balance_loss(self, token_mask: torch.Tensor | None = None) -> Iterator[BalanceLoss]:
        """The balance losses of the forward passes run inside the block (this thread), for the training loss::

            with adapter.collect_balance_loss(batch["attention_mask"]) as balance:
                loss = model(**batch).loss
            loss = loss + balance.auxiliary_loss()

        ``token_mask`` (the batch's attention mask) keeps padding out of the balance and the routing statistics.
        A pass recomputed by activation checkpointing during ``backward`` runs outside the block and adds nothing.
        """
        collected = BalanceLoss(self.config.balance_loss_weight, token_mask)
        token = _BALANCE_LOSSES.set(collected)
        try:
            yield collected
        finally:
            _BALANCE_LOSSES.reset(token)

    @contextmanager
    def routing_statistics(self, task: str = "unlabelled") -> Iterator[None]:
        """Count tokens per expert under the label ``task`` while the block runs (in any thread)."""
        self.usage.task = task
        try:
            yield
        finally:
            self.usage.task = None

    def statistics(self) -> dict[str, dict[str, list[int]]]:
        """Tokens per expert: ``{task: {layer: [count per expert]}}``."""
        return self.usage.tables()

    # -- files and unloading -------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, adapter_name: str | None = None) -> Path:
        """Write ``mole_config.json`` and ``mole_adapter.safetensors`` of one adapter (its weights only)."""
        name = adapter_name or self.active_adapter
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / ADAPTER_CONFIG).write_text(json.dumps(self.configs[name].to_dict(), indent=2) + "\n")
        metadata = {"format": "pt", "adapter": "mole"}
        save_file(self.state_dict(name), str(directory / ADAPTER_WEIGHTS), metadata=metadata)
        return directory

    save = save_pretrained

    def load_adapter(self, directory: str | Path, adapter_name: str) -> None:
        """Add the adapter saved in ``directory`` under ``adapter_name`` (not made active)."""
        config, state = read_adapter(directory)
        self.add_adapter(adapter_name, config)
        try:
            self.load_state_dict(state, adapter_name, where=str(Path(directory) / ADAPTER_WEIGHTS))
        except ModelError:
            self.delete_adapter(adapter_name)
            raise

    def unload(self) -> nn.Module:
        """Take every adapter off: the model is the plain base model again (and is returned)."""
        for path, mlp in self.mlps.items():
            parent, _, child = path.rpartition(".")
            setattr(self.model.get_submodule(parent), child, mlp.unwrap())
        self.mlps.clear()
        self.configs.clear()
        self.model._mole_adapter = None  # type: ignore[assignment]
        return self.model

    def remove(self) -> None:
        self.unload()

    def merge_and_unload(self) -> nn.Module:
        """Fold the active adapter into the base weights and take the experts off. Only a one-expert adapter can
        be merged (its router always picks that expert with probability 1); more experts are refused, before
        anything changes."""
        merged = [
            (mlp.projection(proj).base_layer, mlp.projection(proj).merged_weight(self.active_adapter))
            for mlp in self.mlps.values()
            for proj in mlp.targets
        ]
        model = self.unload()
        with torch.no_grad():
            for base, weight in merged:
                base.weight.copy_(weight)
        return model


def language_model_fingerprint(model: nn.Module) -> dict[str, Any]:
    config = getattr(model.config, "text_config", model.config)
    return {
        key: getattr(config, key, None)
        for key in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
    }


def inject_mole(
    model: nn.Module, config: MoLEConfig, *, adapter_name: str = DEFAULT_ADAPTER, freeze_base: bool = True
) -> MoLEAdapter:
    """Replace every decoder-layer MLP of the LM by a :class:`MoLEMLP` carrying adapter ``adapter_name``."""
    if getattr(model, "_mole_adapter", None) is not None:
        raise ModelError("this model already carries MoLE adapters; add one with adapter.add_adapter(name, config)")
    language_model = _language_model(model)
    fingerprint = language_model_fingerprint(model)
    if config.base_fingerprint and config.base_fingerprint != fingerprint:
        raise ModelError(
            f"MoLE adapter was made for base {config.base_fingerprint}, but this model's LM is {fingerprint}"
        )
    if freeze_base:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    prefix = _prefix_of(model, language_model)
    usage = UsageLog()
    mlps: dict[str, MoLEMLP] = {}
    for name, module in list(language_model.named_modules()):
        if name.split(".")[-1] != config.mlp_module:
            continue
        projections = {proj: getattr(module, proj, None) for proj in config.target_modules}
        if not any(isinstance(p, nn.Linear) for p in projections.values()):
            continue
        missing = [proj for proj, p in projections.items() if not isinstance(p, nn.Linear)]
        if missing:
            raise ModelError(f"{prefix}{name}: target module(s) {missing} are not Linear layers of this MLP")
        wrapper = MoLEMLP(module, config.target_modules, prefix + name, usage)
        parent, _, child = name.rpartition(".")
        setattr(language_model.get_submodule(parent), child, wrapper)
        mlps[prefix + name] = wrapper
    if not mlps:
        raise ModelError(f"no '{config.mlp_module}' module with {list(config.target_modules)} found in the LM")
    adapter = MoLEAdapter(model, mlps, usage)
    adapter.add_adapter(adapter_name, config)
    adapter.set_adapter(adapter_name)
    for parameter in adapter.parameters():
        parameter.requires_grad_(True)
    model._mole_adapter = adapter  # type: ignore[assignment]
    return adapter


def read_adapter(directory: str | Path) -> tuple[MoLEConfig, dict[str, torch.Tensor]]:
    """The config and weights of the adapter saved in ``directory``."""
    directory = Path(directory)
    config_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise ModelError(f"{directory}: not a MoLE adapter (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    try:
        config = MoLEConfig.from_dict(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise ModelError(f"{config_path}: unreadable MoLE config ({type(e).__name__})") from e
    return config, load_file(str(weights_path))


def load_mole_adapter(
    model: nn.Module, directory: str | Path, *, adapter_name: str = DEFAULT_ADAPTER, freeze_base: bool = True
) -> MoLEAdapter:
    """Attach the adapter saved in ``directory`` to ``model`` (its base) as ``adapter_name``, active; a model that
    already carries MoLE adapters gets it beside them. Refuses a base it was not made for."""
    existing = mole_adapter_of(model)
    if existing is not None:
        existing.load_adapter(directory, adapter_name)
        existing.set_adapter(adapter_name)
        return existing
    config, state = read_adapter(directory)
    adapter = inject_mole(model, config, adapter_name=adapter_name, freeze_base=freeze_base)
    try:
        adapter.load_state_dict(state, adapter_name, where=str(Path(directory) / ADAPTER_WEIGHTS))
    except ModelError:
        adapter.unload()
        raise
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
