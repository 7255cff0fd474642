"""The optimisation primitive every training loop of mmcl is built on: :func:`fit`.

A loop is a **batch source** (an iterator of batches), a **loss function** (batch -> scalar loss)
and an :class:`Updates` (the optimizer, its learning-rate :class:`Schedule`, gradient clipping and
where the gradients are zeroed). :func:`fit` runs it for a number of updates, in this order::

    for each update:  schedule.before_update(i)        # a per-step lr (PerStepLR) is set here
                      batch = next(batches)
                      loss = loss_fn(batch)            # under accelerator.autocast() with an accelerator
                      [zero_grad]                      # zero_grad="before_backward"
                      backward(loss); after_backward()
                      clip_grad_norm_(params, max_grad_norm); after_clip(total_norm)
                      optimizer.step(); schedule.after_update()   # a torch LR scheduler is stepped here
                      [zero_grad]                      # zero_grad="after_step" (default)
                      on_step(updates_done, loss)

With an ``Accelerator`` (the continual loop, :func:`mmcl.train.loop.train_on`) a step runs inside
``accelerator.accumulate(model)``: ``grad_accum`` batches make one update, backward and clipping go
through the accelerator, and only a synchronising batch clips, steps the schedule and counts as
an update. Without one (the pre-training recipes in :mod:`mmcl.pretrain`) every batch is one update.

The optimizer is built from an :class:`Optim` (Adam or AdamW and its keyword arguments) over the
parameters in the order given; schedules: :class:`Constant`, :class:`PerStepLR` (a function of the
update index, set before the update), :class:`TorchScheduler` (a ``torch.optim.lr_scheduler``
built on the optimizer and stepped after every update: :func:`warmup_schedule` for the
transformers schedules of ``train.scheduler``, :func:`one_cycle`). See docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.optim import Optimizer
from transformers import get_scheduler

ZeroGrad = Literal["after_step", "before_backward"]


@dataclass(frozen=True)
class Optim:
    """Which optimizer to build: ``name`` (``"adam"`` or ``"adamw"``), ``lr`` and further keyword arguments."""

    name: Literal["adam", "adamw"]
    lr: float
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self, params: Iterable[torch.nn.Parameter]) -> Optimizer:
        # looked up at call time (tests replace torch.optim.AdamW to watch the optimizer's life)
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr, **self.kwargs)
        if self.name == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, **self.kwargs)
        raise ValueError(f"unknown optimizer {self.name!r}; optimizers: adam, adamw")


class Schedule:
    """A learning-rate schedule: attached to the optimizer once, then told about every update."""

    def attach(self, optimizer: Optimizer) -> None:
        """Called once, right after the optimizer is built."""

    def before_update(self, optimizer: Optimizer, index: int) -> None:
        """Called before update ``index`` (0-based) reads its batch."""

    def after_update(self) -> None:
        """Called after every optimizer step that was not skipped."""


class Constant(Schedule):
    """The optimizer's own learning rate, unchanged."""


@dataclass
class PerStepLR(Schedule):
    """``lr(index)`` is written into every parameter group before update ``index``."""

    lr: Callable[[int], float]

    def before_update(self, optimizer: Optimizer, index: int) -> None:
        value = self.lr(index)
        for group in optimizer.param_groups:
            group["lr"] = value


@dataclass
class TorchScheduler(Schedule):
    """A ``torch.optim.lr_scheduler`` built on the optimizer by ``build`` and stepped after every update."""

    build: Callable[[Optimizer], Any]
    scheduler: Any = None

    def attach(self, optimizer: Optimizer) -> None:
        self.scheduler = self.build(optimizer)

    def after_update(self) -> None:
        self.scheduler.step()


def warmup_schedule(name: str, warmup_steps: int, total_steps: int) -> TorchScheduler:
    """transformers' ``get_scheduler(name, ...)`` (``linear``, ``cosine``, ``constant_with_warmup`` ...)."""
    return TorchScheduler(lambda opt: get_scheduler(name, opt, num_warmup_steps=warmup_steps,
                                                    num_training_steps=total_steps))


def one_cycle(max_lr: float, total_steps: int, pct_start: float) -> TorchScheduler:
    """``torch.optim.lr_scheduler.OneCycleLR`` (the vision warm-ups)."""
    return TorchScheduler(lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start))


class Updates:
    """The optimizer side of a loop: builds the optimizer over ``params`` (in their order) and attaches
    ``schedule``; :meth:`apply` turns one loss into one update.

    ``max_grad_norm``: clip the gradient norm of ``params`` to it (None or 0: no clipping).
    ``zero_grad``: zero the gradients after the step (``"after_step"``) or before the backward pass
    (``"before_backward"``, which also clears what an earlier stage left on the parameters).
    ``accelerator``: backward and clipping through it (``accelerator.prepare`` the optimizer yourself:
    ``model, updates.optimizer, loader = accelerator.prepare(model, updates.optimizer, loader)``).
    """

    def __init__(self, params: list[torch.nn.Parameter], optim: Optim, schedule: Schedule | None = None,
                 max_grad_norm: float | None = None, zero_grad: ZeroGrad = "after_step",
                 accelerator: Any = None) -> None:
        if zero_grad not in ("after_step", "before_backward"):
            raise ValueError(f"zero_grad must be 'after_step' or 'before_backward', got {zero_grad!r}")
        self.params = params
        self.optimizer = optim.build(params)
        self.schedule = schedule if schedule is not None else Constant()
        self.schedule.attach(self.optimizer)
        self.max_grad_norm = max_grad_norm
        self.zero_grad = zero_grad
        self.accelerator = accelerator

    def apply(self, loss: torch.Tensor, after_backward: Callable[[], None] | None = None,
              after_clip: Callable[[torch.Tensor], None] | None = None) -> None:
        """backward, ``after_backward()``, clip (``after_clip(total_norm)``), step, schedule, zero_grad."""
        acc, optimizer = self.accelerator, self.optimizer
        if self.zero_grad == "before_backward":
            optimizer.zero_grad(set_to_none=True)
        if acc is None:
            loss.backward()
        else:
            acc.backward(loss)
        if after_backward is not None:
            after_backward()
        synced = acc is None or acc.sync_gradients
        if synced and self.max_grad_norm:
            clip = torch.nn.utils.clip_grad_norm_ if acc is None else acc.clip_grad_norm_
            norm = clip(self.params, self.max_grad_norm)
            if after_clip is not None:
                after_clip(norm)
        optimizer.step()
        if synced and not getattr(optimizer, "step_was_skipped", False):
            self.schedule.after_update()
        if self.zero_grad == "after_step":
            optimizer.zero_grad(set_to_none=True)


def epochs(loader: Iterable[Any]) -> Iterator[Any]:
    """The batches of ``loader``, epoch after epoch (a new ``iter(loader)`` only when one is needed)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the loader yields no batch")


def fit(
    updates: Updates,
    batches: Iterable[Any],
    loss_fn: Callable[[Any], torch.Tensor],
    steps: int,
    *,
    model: torch.nn.Module | None = None,
    after_backward: Callable[[], None] | None = None,
    after_clip: Callable[[torch.Tensor], None] | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor | None:
    """Run ``steps`` updates of ``loss_fn`` over ``batches``; returns the last loss (None when ``steps`` is 0).

    A batch is read only when an update needs it, so a batch source that draws from a generator
    draws exactly what the updates use. ``model``: the (prepared) model for
    ``accelerator.accumulate`` when ``updates`` has an accelerator. ``on_step(done, loss)`` is called
    after every update with the number of updates done (1-based) and that update's (last) loss.
    """
    acc = updates.accelerator
    if acc is not None and model is None:
        raise ValueError("fit with an accelerator needs the prepared model (accelerator.accumulate)")
    it = iter(batches)
    done, loss = 0, None
    while done < steps:
        updates.schedule.before_update(updates.optimizer, done)
        batch = next(it)
        if acc is None:
            loss = loss_fn(batch)
            updates.apply(loss, after_backward, after_clip)
            synced = True
        else:
            with acc.accumulate(model):
                with acc.autocast():  # a no-op without mixed precision (CPU)
                    loss = loss_fn(batch)
                updates.apply(loss, after_backward, after_clip)
            synced = acc.sync_gradients
        if synced:
            done += 1
            if on_step is not None:
                on_step(done, loss)
    return loss
