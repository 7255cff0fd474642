"""``o-lora``: Orthogonal Subspace Learning (O-LoRA; Wang et al., 2023, "Orthogonal Subspace
Learning for Language Model Continual Learning").

One new peft LoRA adapter per task (``task_0``, ``task_1``, ...; every adapter gets the run's
LoRA config, the same as ``lora-ft``). Earlier adapters are frozen but stay *active*: the forward
pass (training and evaluation) sums every adapter's update, as O-LoRA does after merging the old
``loranew`` weights into ``lora``. Only the current task's adapter trains, with::

    loss = task loss
         + lambda_orth * sum_{old adapters i} sum_{LoRA layers} orth(A_i A_t^T)
         + lambda_l2   * sum_{LoRA layers} (||A_t||_F + ||B_t||_F)

where ``A`` is the ``r x in_features`` down-projection. ``orth`` is chosen by ``orth_loss``:

* ``"abs"`` (default): the sum of the absolute entries of ``A_i A_t^T``. This is what the
  authors' code does (``torch.abs(torch.mm(lora_A, loranew_A.T)).sum()`` in O-LoRA's
  ``uie_trainer_lora.py``); the default ``lambda_orth = 0.5`` is the ``lamda_1`` of their scripts.
* ``"squared"``: the sum of squared entries, i.e. ``||A_i A_t^T||_F^2`` (Eq. 2 of the paper).

The L2 term follows the authors' code too: the (unsquared) Frobenius norm of every tensor of the
new adapter (its A and B), summed (``torch.norm(param, p=2)`` over ``loranew_*``); off by default
(``lamda_2 = 0`` in their scripts).

Only plain DDP is supported: the orthogonality term needs every old A in full on every rank.
``model.train_projector`` is refused: peft's ``modules_to_save`` lets one adapter be active at a
time, and O-LoRA keeps every task's adapter active.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from peft import get_peft_model
from peft.tuners.lora import LoraLayer
from pydantic import Field

from mmcl.adapters.lora import refuse_train_projector
from mmcl.adapters.pool import activate, adapter_weights, lora_layers
from mmcl.data.sample import Task
from mmcl.methods.base import METHODS, Method, MethodOptions, RunContext


class OLoraOptions(MethodOptions):
    """Weights of O-LoRA's two regularisers (see the module docstring)."""

    lambda_orth: float = Field(0.5, ge=0.0, description="weight of the orthogonality term (O-LoRA's lamda_1)")
    lambda_l2: float = Field(0.0, ge=0.0, description="weight of the L2 term on the new adapter (lamda_2)")
    orth_loss: Literal["abs", "squared"] = Field(
        "abs", description="'abs': sum |A_i A_t^T| (the authors' code); 'squared': ||A_i A_t^T||_F^2 (the paper)"
    )


def adapter_name(stage: int) -> str:
    return f"task_{stage}"


@METHODS.register("o-lora")
class OLora(Method):
    """A LoRA adapter per task, each new one kept orthogonal (in its A rows) to the earlier ones."""

    name = "o-lora"
    Options = OLoraOptions
    supports = frozenset({"ddp"})

    def __init__(self, ctx: RunContext, options: MethodOptions) -> None:
        super().__init__(ctx, options)
        refuse_train_projector(ctx.config.model, self.name,
                               "peft's modules_to_save allows one active adapter, while O-LoRA keeps every task's "
                               "adapter active")
        self.adapters: list[str] = []
        self.current: str | None = None
        self._layers: list[tuple[str, LoraLayer]] = []

    @property
    def opts(self) -> OLoraOptions:
        assert isinstance(self.options, OLoraOptions)
        return self.options

    # --- lifecycle -------------------------------------------------------
    def setup(self, model: torch.nn.Module) -> torch.nn.Module:
        torch.manual_seed(self.ctx.seed)
        self.model = get_peft_model(model, self.ctx.lora_config(), adapter_name=adapter_name(0))
        self.adapters = [adapter_name(0)]
        self._layers = lora_layers(self.model)
        self._activate(adapter_name(0))
        return self.model

    def before_task(self, stage: int, task: Task) -> None:
        name = adapter_name(stage)
        if name not in self.adapters:
            # a fresh adapter (peft's init: A random, B = 0, so the model's output is unchanged)
            self.model.add_adapter(name, self.ctx.lora_config())
            self.adapters.append(name)
        self._activate(name)

    def _activate(self, current: str) -> None:
        """Every adapter active (summed in the forward); only ``current`` trainable."""
        activate(self.model, self.adapters, [current])
        self.current = current

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        # re-freeze first: leaving peft's disable_adapter() context (enable_adapter_layers) sets
        # requires_grad=True on every active adapter, the frozen old ones included
        if self.current is not None:
            self._activate(self.current)
        return list(self._adapter_params(self.current))

    def _adapter_params(self, name: str | None) -> Iterable[torch.nn.Parameter]:
        return adapter_weights(self._layers, [name] if name is not None else []).values()

    def extra_loss(self, batch: dict[str, torch.Tensor], outputs: Any, stage: int) -> torch.Tensor | None:
        cur = self.current
        old = [a for a in self.adapters if a != cur]
        o = self.opts
        terms: list[torch.Tensor] = []
        if o.lambda_orth > 0 and old:
            orth = []
            for _, layer in self._layers:
                if cur not in layer.lora_A:
                    continue
                a_t = layer.lora_A[cur].weight
                olds = [layer.lora_A[a].weight for a in old if a in layer.lora_A]
                if not olds:
                    continue
                prod = torch.cat(olds).to(a_t.dtype) @ a_t.T  # (n_old * r) x r
                orth.append(prod.abs().sum() if o.orth_loss == "abs" else prod.pow(2).sum())
            if orth:
                terms.append(o.lambda_orth * torch.stack(orth).sum())
        if o.lambda_l2 > 0:
            norms = [torch.linalg.vector_norm(p) for p in self._adapter_params(cur)]
            terms.append(o.lambda_l2 * torch.stack(norms).sum())
        if not terms:
            return None
        return torch.stack(terms).sum()

    # --- bookkeeping -----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Adapter names in creation order, the current one, and every adapter's LoRA weights (CPU)."""
        weights: dict[str, dict[str, torch.Tensor]] = {}
        for a in self.adapters:
            w = weights.setdefault(a, {})
            for n, layer in self._layers:
                if a in layer.lora_A:
                    w[f"{n}.lora_A"] = layer.lora_A[a].weight.detach().cpu().clone()
                    w[f"{n}.lora_B"] = layer.lora_B[a].weight.detach().cpu().clone()
        return {"adapters": list(self.adapters), "current": self.current, "weights": weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-create the saved adapters (after ``setup``) and copy their weights in."""
        names = list(state["adapters"])
        for a in names:
            if a not in self.adapters:
                self.model.add_adapter(a, self.ctx.lora_config())
                self.adapters.append(a)
        layers = dict(self._layers)
        for a, w in state["weights"].items():
            expected = {f"{n}.lora_{x}" for n, layer in self._layers if a in layer.lora_A for x in "AB"}
            if set(w) != expected:
                missing, unexpected = sorted(expected - set(w)), sorted(set(w) - expected)
                raise ValueError(f"o-lora state for adapter {a!r}: missing {missing[:3]}, unexpected {unexpected[:3]}")
            with torch.no_grad():
                for key, t in w.items():
                    mod_name, part = key.rsplit(".", 1)
                    target = getattr(layers[mod_name], part)[a].weight
                    target.copy_(t.to(target.device, target.dtype))
        self._activate(state.get("current") or names[-1])

    def _adapter_numel(self, name: str) -> int:
        return sum(p.numel() for p in self._adapter_params(name))

    def _adapter_bytes(self, name: str) -> int:
        return sum(p.numel() * p.element_size() for p in self._adapter_params(name))

    def cost(self) -> dict[str, Any]:
        frozen = [a for a in self.adapters if a != self.current]
        return {
            "params_added_per_task": self._adapter_numel(self.adapters[0]) if self.adapters else 0,
            "held_bytes": {"frozen_adapters": sum(self._adapter_bytes(a) for a in frozen)},
        }
