"""``ewc``: elastic weight consolidation (Kirkpatrick et al., 2017) on the LoRA parameters.

One LoRA adapter is trained through the stream as in ``lora-ft``; after each task the
method estimates how much the task's loss depends on each trainable parameter (a diagonal
Fisher ``F``) and keeps the weights it ended the task with (the anchor ``θ*``). Every
later training step adds ``(lam / 2) * Σ_i F_i (θ_i − θ*_i)²`` to the loss. Only the
trainable parameters (the LoRA matrices, plus the projector when ``model.train_projector``)
are regularised; the frozen base model cannot move anyway.

The Fisher is the *empirical* Fisher of mini-batches: the mean over ``fisher_batches``
batches (``fisher_batch_size`` of the task's training samples each, drawn with a generator
seeded from the run seed and the stage) of the squared gradient of the batch's mean task
loss. Squaring a batch-mean gradient is cheaper than per-sample gradients but gives
smaller values (roughly by the batch size where sample gradients disagree), one reason
why the default ``lam`` (1e4) is large. Gradients are taken with dropout off (the model
in ``eval()`` for the estimate, every module's train/eval state restored afterwards) and
with ``torch.autograd.grad``, so ``.grad`` of the parameters is left empty (it is also
reset to None) and nothing leaks into the next optimizer step.

``mode``:

* ``online`` (Schwarz et al., 2018): one Fisher, ``F = gamma * F_old + F_new``, and one
  anchor, the latest weights. Memory stays constant with the number of tasks.
* ``separate`` (the original EWC): one (Fisher, anchor) pair per finished task; the
  penalties are summed. Memory grows by two copies of the trainable parameters per task.

Fisher and anchors live on the parameters' device, in float32, keyed by parameter name.

Distributed: ``ddp`` and ``zero1`` only. The penalty and the Fisher need every trainable
parameter and its full gradient on every process: ZeRO-2 partitions gradients, ZeRO-3
and FSDP partition (and FSDP flattens) the parameters themselves. Under DDP every process
draws the same Fisher samples and so holds the same Fisher.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import torch
from pydantic import Field

from mmcl.data.sample import Task
from mmcl.methods.base import METHODS, MethodOptions
from mmcl.methods.lora_ft import LoraFT

TensorDict = dict[str, torch.Tensor]


class EWCOptions(MethodOptions):
    """Options of ``ewc``."""

    lam: float = Field(
        10000.0,
        ge=0.0,
        description=(
            "λ, the weight of the penalty (default 1e4; 0 is plain lora-ft). Mini-batch empirical "
            "Fishers of LoRA weights are tiny (shipped tiny-llava, configs/quick.yaml: mean ~1e-5 per "
            "entry after a task), so λ must be large for the penalty to act. Measured once (seed 0, "
            "first two quick tasks): task-0 loss rose 0.17 with λ=0, 0.14 with 1e4 (new-task loss "
            "unchanged), 0.09 with 1e6 (new-task loss 2.73 instead of 2.30). Tune it per model."
        ),
    )
    fisher_batches: int = Field(
        8,
        ge=1,
        description="Batches used to estimate the Fisher after a task; fewer if the task is "
        "smaller (default 8).",
    )
    fisher_batch_size: int = Field(8, ge=1, description="Samples per Fisher batch (default 8).")
    mode: Literal["online", "separate"] = Field(
        "online",
        description="online: one Fisher gamma*F_old + F_new and the latest anchor; separate: one "
        "(Fisher, anchor) pair per task, penalties summed (default online).",
    )
    gamma: float = Field(
        1.0, ge=0.0, le=1.0, description="Decay of the old Fisher in online mode, in [0, 1] (default 1.0)."
    )


@METHODS.register("ewc")
class EWC(LoraFT):
    """One LoRA adapter with a quadratic penalty anchoring parameters that earlier tasks need."""

    name = "ewc"
    Options = EWCOptions
    supports = frozenset({"ddp", "zero1"})
    options: EWCOptions

    def setup(self, model: torch.nn.Module) -> torch.nn.Module:
        model = super().setup(model)
        self.fishers: list[TensorDict] = []  # online: at most one entry
        self.anchors: list[TensorDict] = []
        self._refresh_params()
        return model

    def _refresh_params(self) -> None:
        self._params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    # ------------------------------------------------------------------ hooks
    def before_task(self, stage: int, task: Task) -> None:
        self._refresh_params()

    def extra_loss(self, batch: dict[str, torch.Tensor], outputs: Any, stage: int) -> torch.Tensor | None:
        if stage == 0 or not self.fishers:
            return None
        return self.penalty()

    def penalty(self) -> torch.Tensor:
        """``(lam / 2) * Σ_k Σ_i F_k,i (θ_i − θ*_k,i)²`` over the stored (Fisher, anchor) pairs."""
        total: torch.Tensor | None = None
        for fisher, anchor in zip(self.fishers, self.anchors, strict=True):
            for name, f in fisher.items():
                p = self._params[name]
                term = (f * (p.float() - anchor[name]).pow(2)).sum()
                total = term if total is None else total + term
        if total is None:
            return torch.zeros((), device=self._device())
        return 0.5 * self.options.lam * total

    def after_task(self, stage: int, task: Task) -> None:
        self._refresh_params()
        new = self.estimate_fisher(stage, task)
        anchor = {n: p.detach().float().clone() for n, p in self._params.items()}
        if self.options.mode == "online":
            if self.fishers:
                g = self.options.gamma
                new = {n: g * self.fishers[0][n] + f for n, f in new.items()}
            self.fishers, self.anchors = [new], [anchor]
        else:
            self.fishers.append(new)
            self.anchors.append(anchor)

    def _device(self) -> torch.device:
        return next(iter(self._params.values())).device

    def estimate_fisher(self, stage: int, task: Task) -> TensorDict:
        """Mean over batches of the squared gradient of the batch loss, per trainable parameter."""
        o = self.options
        rng = random.Random(f"mmcl-ewc:{self.ctx.seed}:{stage}")
        n = min(len(task.train), o.fisher_batches * o.fisher_batch_size)
        samples = rng.sample(list(task.train), n)
        encoded = self.ctx.encode(samples, with_answer=True)
        names = list(self._params)
        params = [self._params[k] for k in names]
        fisher = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in self._params.items()}
        device = self._device()
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()  # no dropout while estimating
        n_batches = 0
        try:
            with torch.enable_grad():
                for start in range(0, len(encoded), o.fisher_batch_size):
                    batch = self.ctx.collate(encoded[start : start + o.fisher_batch_size])
                    batch = {k: v.to(device) for k, v in batch.items()}
                    loss = self.ctx.forward(self.model, batch).loss
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                    for k, g in zip(names, grads, strict=True):
                        if g is not None:
                            fisher[k] += g.detach().float().pow(2)
                    n_batches += 1
        finally:
            for m, training in modes.items():
                m.training = training
            for p in params:
                p.grad = None
        return {k: f / max(1, n_batches) for k, f in fisher.items()}

    # ------------------------------------------------------------------ bookkeeping
    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.options.mode,
            "fishers": [{k: v.detach().cpu() for k, v in f.items()} for f in self.fishers],
            "anchors": [{k: v.detach().cpu() for k, v in a.items()} for a in self.anchors],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("mode", self.options.mode) != self.options.mode:
            raise ValueError(
                f"ewc state was saved in mode {state['mode']!r}, this run uses {self.options.mode!r}"
            )
        self._refresh_params()

        def to_params(d: TensorDict) -> TensorDict:
            missing = set(self._params) - set(d)
            if missing:
                raise ValueError(f"ewc state has no entry for trainable parameter(s) {sorted(missing)[:3]}")
            return {k: v.to(self._params[k].device, torch.float32) for k, v in d.items()}

        self.fishers = [to_params(f) for f in state.get("fishers", [])]
        self.anchors = [to_params(a) for a in state.get("anchors", [])]

    def cost(self) -> dict[str, Any]:
        def nbytes(ds: list[TensorDict]) -> int:
            return sum(v.numel() * v.element_size() for d in ds for v in d.values())

        return {
            "params_added_per_task": 0,
            "held_bytes": {"fisher": nbytes(self.fishers), "anchors": nbytes(self.anchors)},
        }
