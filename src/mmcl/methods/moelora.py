"""``moelora``: CoIN's MoE-LoRA: several LoRA experts per target linear layer, mixed by a learned gate.

One set of experts and gates is trained on task after task, like ``lora-ft``: nothing protects
old tasks (it is the MoE baseline of CoIN, not a continual-learning method of its own).

peft 0.21 has no MoE-LoRA tuner (CoIN ships a forked peft with ``coinmoelora.py``), so the layer is
written here by hand: every target ``nn.Linear`` (the same targets as ``lora-ft``: ``model.lora_targets``
or the family's regex, plus the vision encoder with ``model.lora_vision``) is replaced in place by
:class:`MoELoRALinear`::

    y = base(x) + sum_e g_e(x) * B_e A_e dropout(x) * alpha / r_e

with ``E = experts`` experts of rank ``r_e = rank / experts`` each (so the total rank, and the number
of LoRA parameters, equal ``lora-ft``'s at the same ``rank``), ``alpha = model.lora_alpha`` and
``g = softmax(W_g x)`` (no bias) either

* per token (``gate: token``, CoIN's router): causal, so generation with a KV cache computes exactly
  what a full forward does; or
* per sample (``gate: sample``): ``softmax(W_g mean(x))`` with the mean over the sample's *prompt*
  tokens. A layer cannot see the attention mask, so a forward pre-hook on the model records
  ``attention_mask`` (and, in training, ``labels``: positions with a label are answer tokens and are
  left out, so that the gate never sees the answer and training and generation gate on the same
  tokens). Layers whose input is not the language-model sequence (e.g. the vision encoder with
  ``lora_vision``) average over all their positions. During generation with a KV cache the gate
  computed on the prompt (prefill) is kept for the generated tokens.

A is initialised like peft's LoRA (Kaiming-uniform), B to zero: the wrapped model equals the base
model at setup. Expert and gate weights are kept in float32 (as peft does for bf16 models). The base
weights are frozen; experts and gates train (and the projector, with ``model.train_projector``).

The HF model object is kept (``generate`` works unchanged); setup attaches a ``disable_adapter()``
context manager to it, so the runner's zero-shot row switches the experts off explicitly (the
update is zero at setup anyway, so the row is the base model either way).

Distributed: DDP and ZeRO-1/2 (parameters replicated; only grads/optimizer states are sharded).
ZeRO-3 and FSDP are not claimed: they shard parameters, and this hand-written layer (expert tensors
reshaped in the forward, the gate cache) has not been run under parameter sharding.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mmcl.methods.base import METHODS, Method, MethodOptions, RunContext, copy_tensors_into, count_trainable
from mmcl.methods.lora_ft import lora_config
from mmcl.train.encode import IGNORE_INDEX

GateMode = Literal["token", "sample"]


class MoELoRAOptions(MethodOptions):
    """Number of experts, total rank, and gate granularity."""

    experts: int = Field(4, ge=1, description="LoRA experts per target linear layer")
    rank: int | None = Field(
        None, ge=1, description="total rank over all experts (None = model.lora_rank); each expert gets rank/experts"
    )
    gate: GateMode = Field("token", description="'token': a gate per token; 'sample': one per sample (prompt mean)")


class GateContext:
    """What the layers of one model share: the token mask of the current top-level forward."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None  # (batch, seq) bool: the tokens a sample gate averages over


class MoELoRALinear(nn.Module):
    """``base(x)`` plus a gated mixture of LoRA experts (see the module docstring)."""

    def __init__(
        self,
        base: nn.Linear,
        n_experts: int,
        rank_per_expert: int,
        alpha: float,
        dropout: float = 0.0,
        gate: GateMode = "token",
        context: GateContext | None = None,
    ) -> None:
        super().__init__()
        if gate not in ("token", "sample"):
            raise ValueError(f"gate must be 'token' or 'sample', got {gate!r}")
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.n_experts, self.rank = n_experts, rank_per_expert
        self.scaling = alpha / rank_per_expert
        self.gate_mode: GateMode = gate
        dev = base.weight.device
        self.experts_A = nn.Parameter(torch.empty(n_experts, rank_per_expert, self.in_features, device=dev))
        self.experts_B = nn.Parameter(torch.zeros(n_experts, self.out_features, rank_per_expert, device=dev))
        for e in range(n_experts):  # peft's LoRA init for A (B = 0: no change to the output at start)
            nn.init.kaiming_uniform_(self.experts_A.data[e], a=math.sqrt(5))
        self.gate = nn.Linear(self.in_features, n_experts, bias=False, device=dev, dtype=torch.float32)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.context = context
        self.disabled = False
        self._cached_gate: torch.Tensor | None = None  # the prompt's sample gate, kept while decoding

    def extra_repr(self) -> str:
        return f"experts={self.n_experts}, rank_per_expert={self.rank}, gate={self.gate_mode}"

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Gate probabilities, broadcastable against ``x[..., None]``: (..., E) per token, (B, 1, E) per sample."""
        x = x.to(self.gate.weight.dtype)
        if self.gate_mode == "token" or x.dim() < 3:
            return torch.softmax(self.gate(x), dim=-1)
        mask = self.context.mask if self.context is not None else None
        decoding = (
            x.shape[1] == 1
            and not self.training
            and mask is not None
            and mask.shape[0] == x.shape[0]
            and mask.shape[1] > 1
            and self._cached_gate is not None
            and self._cached_gate.shape[0] == x.shape[0]
        )
        if decoding:  # one new token of a KV-cached generation: keep the prompt's gate
            return self._cached_gate
        if mask is not None and tuple(mask.shape) == tuple(x.shape[:2]):
            m = mask.to(x.dtype).unsqueeze(-1)
            pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        else:
            pooled = x.mean(1)
        g = torch.softmax(self.gate(pooled), dim=-1).unsqueeze(1)
        if not self.training:
            self._cached_gate = g.detach()
        return g

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disabled:
            return result
        E, r = self.n_experts, self.rank
        xf = x.to(self.experts_A.dtype)
        g = self.gate_weights(xf)
        h = F.linear(self.dropout(xf), self.experts_A.reshape(E * r, self.in_features))  # (..., E*r)
        h = (h.unflatten(-1, (E, r)) * g.unsqueeze(-1)).flatten(-2)
        b = self.experts_B.permute(1, 0, 2).reshape(self.out_features, E * r)  # [B_1 | ... | B_E]
        return result + (F.linear(h, b) * self.scaling).to(result.dtype)


def _matches(name: str, targets: Any) -> bool:
    """peft's target rule: a regex must match the whole module name; a list matches name suffixes."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


@METHODS.register("moelora")
class MoELoRA(Method):
    """MoE-LoRA (CoIN): gated LoRA experts in every target layer, fine-tuned through the whole stream."""

    name = "moelora"
    Options = MoELoRAOptions
    supports = frozenset({"ddp", "zero1", "zero2"})

    def __init__(self, ctx: RunContext, options: MethodOptions) -> None:
        super().__init__(ctx, options)
        o = self.opts
        self.total_rank = o.rank if o.rank is not None else ctx.config.model.lora_rank
        if self.total_rank % o.experts:
            src = "method.rank" if o.rank is not None else "model.lora_rank"
            raise ValueError(
                f"method 'moelora': the total rank ({src}={self.total_rank}) must be divisible by "
                f"method.experts={o.experts} (each expert gets rank/experts); "
                f"e.g. set method.rank={o.experts * max(1, self.total_rank // o.experts)}"
            )
        self.rank_per_expert = self.total_rank // o.experts
        self.context = GateContext()
        self.layers: dict[str, MoELoRALinear] = {}
        self._hooks: list[Any] = []

    @property
    def opts(self) -> MoELoRAOptions:
        assert isinstance(self.options, MoELoRAOptions)
        return self.options

    # --- lifecycle -------------------------------------------------------
    def setup(self, model: torch.nn.Module) -> torch.nn.Module:
        torch.manual_seed(self.ctx.seed)
        lcfg = lora_config(self)  # the same targets (and dropout, alpha) as lora-ft
        targets = lcfg.target_modules
        names = [n for n, m in model.named_modules() if n and _matches(n, targets)]
        if not names:
            raise ValueError(f"method 'moelora': no module of the model matches the LoRA targets {targets!r}")
        bad = [n for n in names if not isinstance(model.get_submodule(n), nn.Linear)]
        if bad:
            raise ValueError(
                f"method 'moelora': LoRA targets must be nn.Linear layers; {bad[0]!r} is "
                f"{type(model.get_submodule(bad[0])).__name__}"
            )
        for p in model.parameters():
            p.requires_grad_(False)
        o = self.opts
        for n in names:
            parent, child = _get_parent(model, n)
            layer = MoELoRALinear(
                getattr(parent, child), o.experts, self.rank_per_expert, lcfg.lora_alpha,
                lcfg.lora_dropout, o.gate, self.context,
            )
            setattr(parent, child, layer)
            self.layers[n] = layer
        if self.ctx.config.model.train_projector:
            for p in model.get_submodule(self.ctx.bundle.family.projector).parameters():
                p.requires_grad_(True)
        if o.gate == "sample":
            self._hooks.append(model.register_forward_pre_hook(self._record_mask, with_kwargs=True))
            self._hooks.append(model.register_forward_hook(self._clear_mask, always_call=True))
        model.disable_adapter = self.disable_adapter  # the runner's zero-shot context (see docstring)
        self.model = model
        return model

    def _record_mask(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.context.mask = None if ids is None else torch.ones_like(ids, dtype=torch.bool)
            return
        mask = mask.bool()
        labels = kwargs.get("labels")
        if labels is not None and labels.shape == mask.shape:
            mask = mask & (labels == IGNORE_INDEX)  # the prompt only: the gate never sees the answer
        self.context.mask = mask

    def _clear_mask(self, *a: Any, **k: Any) -> None:
        self.context.mask = None

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the wrapped model as the base model (every expert update switched off)."""
        before = {n: layer.disabled for n, layer in self.layers.items()}
        try:
            for layer in self.layers.values():
                layer.disabled = True
            yield
        finally:
            for n, layer in self.layers.items():
                layer.disabled = before[n]

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # --- bookkeeping -----------------------------------------------------
    def _trained_tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for n, layer in self.layers.items():
            out[f"{n}.experts_A"] = layer.experts_A
            out[f"{n}.experts_B"] = layer.experts_B
            out[f"{n}.gate.weight"] = layer.gate.weight
        if self.ctx.config.model.train_projector:
            proj = self.ctx.bundle.family.projector
            for pn, p in self.model.get_submodule(proj).named_parameters():
                out[f"{proj}.{pn}"] = p
        return out

    def state_dict(self) -> dict[str, Any]:
        """The experts', gates' (and a trained projector's) weights, on the CPU."""
        return {"weights": {k: v.detach().cpu().clone() for k, v in self._trained_tensors().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        copy_tensors_into(self._trained_tensors(), state["weights"], "moelora")

    def cost(self) -> dict[str, Any]:
        return {"params_added_per_task": 0, "trainable_params": count_trainable(self.model), "held_bytes": {}}
