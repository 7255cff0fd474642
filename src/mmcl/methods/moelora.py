"""``moelora``: CoIN's MoE-LoRA: several LoRA experts per target linear layer, mixed by a learned gate.

One set of experts and gates is trained on task after task, like ``lora-ft``: nothing protects
old tasks (it is the MoE baseline of CoIN, not a continual-learning method of its own).

peft 0.21 has no MoE-LoRA tuner (CoIN ships a forked peft with ``coinmoelora.py``), so the layer is
written by hand (:class:`mmcl.adapters.moelora.MoELoRALinear`): every target ``nn.Linear`` (the same
targets as ``lora-ft``: ``model.lora_targets`` or the family's regex, plus the vision encoder with
``model.lora_vision``) is replaced in place by it::

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
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from pydantic import Field

from mmcl.adapters.moelora import GateContext, GateMode, MoELoRALinear, target_linears, wrap_linears
from mmcl.methods.base import METHODS, Method, MethodOptions, RunContext, copy_tensors_into, count_trainable


class MoELoRAOptions(MethodOptions):
    """Number of experts, total rank, and gate granularity."""

    experts: int = Field(4, ge=1, description="LoRA experts per target linear layer")
    rank: int | None = Field(
        None, ge=1, description="total rank over all experts (None = model.lora_rank); each expert gets rank/experts"
    )
    gate: GateMode = Field("token", description="'token': a gate per token; 'sample': one per sample (prompt mean)")


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
        lcfg = self.ctx.lora_config()  # the same targets (and dropout, alpha) as lora-ft
        try:
            names = target_linears(model, lcfg.target_modules)
        except ValueError as e:
            raise ValueError(f"method 'moelora': {e}") from None
        for p in model.parameters():
            p.requires_grad_(False)
        o = self.opts
        self.layers = wrap_linears(
            model, names, o.experts, self.rank_per_expert, lcfg.lora_alpha, lcfg.lora_dropout, o.gate, self.context
        )
        if self.ctx.config.model.train_projector:
            for p in model.get_submodule(self.ctx.bundle.family.projector).parameters():
                p.requires_grad_(True)
        if o.gate == "sample":
            self._hooks += self.context.attach(model)
        model.disable_adapter = self.disable_adapter  # the runner's zero-shot context (see docstring)
        self.model = model
        return model

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
