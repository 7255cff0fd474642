"""What the training loop calls on a method, typed at the loop's own layer (no import of ``mmcl.methods``).

:class:`TrainingHooks` is the part of :class:`mmcl.methods.base.Method` that
:func:`mmcl.train.loop.train_on` uses; any object with these members can be trained (pre-training
uses a plain full fine-tune). :class:`GradClip` is what the loop publishes to the hooks during a
pass: the factor its gradient clipping is about to apply (``RunContext.clip_scale()`` reads it).
See docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch


class TrainingHooks(Protocol):
    """The hooks :func:`mmcl.train.loop.train_on` calls (see :class:`mmcl.methods.base.Method`)."""

    model: torch.nn.Module  # trained in place; the loop sets it back to the unwrapped module at the end

    @property
    def name(self) -> str: ...

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]: ...

    def extra_loss(self, batch: dict[str, torch.Tensor], outputs: Any, stage: int) -> torch.Tensor | None: ...

    def after_backward(self, stage: int) -> None: ...


class GradClip:
    """The factor the loop's ``clip_grad_norm_(params, max_grad_norm)`` is about to apply.

    ``train_on`` points it at its trainable parameters and ``train.max_grad_norm`` for the length
    of a pass (:meth:`watch`, :meth:`release`); :meth:`scale`, called from ``after_backward``
    (after the backward pass, before clipping), computes ``min(1, max_grad_norm / (||g||_2 + 1e-6))``
    over the gradients there are, in float64 from float32 norms. It costs nothing unless called.
    Outside a pass, or without clipping, the factor is 1.
    """

    def __init__(self) -> None:
        self._params: Sequence[torch.nn.Parameter] = ()
        self._max_norm: float | None = None

    def watch(self, params: Sequence[torch.nn.Parameter], max_norm: float | None) -> None:
        self._params, self._max_norm = params, max_norm

    def release(self) -> None:
        self._params, self._max_norm = (), None

    def scale(self) -> float:
        if not self._max_norm:
            return 1.0
        grads = [p.grad.detach() for p in self._params if p.requires_grad and p.grad is not None]
        if not grads:
            return 1.0
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))
        return min(1.0, self._max_norm / (norm + 1e-6))
