"""The MoE-LoRA layer (CoIN's MoE-LoRA): several LoRA experts in one linear layer, mixed by a learned gate.

peft 0.21 has no MoE-LoRA tuner (CoIN ships a forked peft with ``coinmoelora.py``), so the layer is
written here by hand: :func:`wrap_linears` replaces every target ``nn.Linear`` in place by
:class:`MoELoRALinear`::

    y = base(x) + sum_e g_e(x) * B_e A_e dropout(x) * alpha / r_e

with ``E`` experts of rank ``r_e`` each and ``g = softmax(W_g x)`` (no bias) either per token
(``gate="token"``, CoIN's router; causal, so generation with a KV cache computes exactly what a
full forward does) or per sample (``gate="sample"``: ``softmax(W_g mean(x))`` with the mean over the
sample's *prompt* tokens). A layer cannot see the attention mask, so for the sample gate a
:class:`GateContext` shared by the layers of one model records ``attention_mask`` (and, in
training, ``labels``: positions with a label are answer tokens and are left out, so that the gate
never sees the answer) through forward hooks on the model (:meth:`GateContext.attach`). Layers
whose input is not the language-model sequence average over all their positions. During
generation with a KV cache the gate computed on the prompt (prefill) is kept for the generated
tokens.

A is initialised like peft's LoRA (Kaiming-uniform), B to zero: the wrapped model equals the base
model. Expert and gate weights are kept in float32 (as peft does for bf16 models). The method that
trains it is ``moelora`` (:mod:`mmcl.methods.moelora`, docs/methods.md).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmcl.models.chat import IGNORE_INDEX

GateMode = Literal["token", "sample"]


class GateContext:
    """What the layers of one model share: the token mask of the current top-level forward."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None  # (batch, seq) bool: the tokens a sample gate averages over

    def attach(self, model: nn.Module) -> list[Any]:
        """Record each top-level forward's prompt mask on ``model`` (forward hooks); returns the handles."""
        return [
            model.register_forward_pre_hook(self.record_mask, with_kwargs=True),
            model.register_forward_hook(self.clear_mask, always_call=True),
        ]

    def record_mask(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.mask = None if ids is None else torch.ones_like(ids, dtype=torch.bool)
            return
        mask = mask.bool()
        labels = kwargs.get("labels")
        if labels is not None and labels.shape == mask.shape:
            mask = mask & (labels == IGNORE_INDEX)  # the prompt only: the gate never sees the answer
        self.mask = mask

    def clear_mask(self, *a: Any, **k: Any) -> None:
        self.mask = None


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


def matches(name: str, targets: Any) -> bool:
    """peft's target rule: a regex must match the whole module name; a list matches name suffixes."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def target_linears(model: nn.Module, targets: Any) -> list[str]:
    """Names of the modules of ``model`` that ``targets`` (peft's rule) selects; each must be an ``nn.Linear``.

    Raises ValueError when none matches or a match is not a linear layer.
    """
    names = [n for n, _ in model.named_modules() if n and matches(n, targets)]
    if not names:
        raise ValueError(f"no module of the model matches the LoRA targets {targets!r}")
    bad = [n for n in names if not isinstance(model.get_submodule(n), nn.Linear)]
    if bad:
        raise ValueError(
            f"LoRA targets must be nn.Linear layers; {bad[0]!r} is {type(model.get_submodule(bad[0])).__name__}"
        )
    return names


def wrap_linears(
    model: nn.Module,
    names: list[str],
    n_experts: int,
    rank_per_expert: int,
    alpha: float,
    dropout: float = 0.0,
    gate: GateMode = "token",
    context: GateContext | None = None,
) -> dict[str, MoELoRALinear]:
    """Replace each named ``nn.Linear`` of ``model`` in place by a :class:`MoELoRALinear` around it."""
    layers: dict[str, MoELoRALinear] = {}
    for n in names:
        parent_name, _, child = n.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = MoELoRALinear(getattr(parent, child), n_experts, rank_per_expert, alpha, dropout, gate, context)
        setattr(parent, child, layer)
        layers[n] = layer
    return layers
