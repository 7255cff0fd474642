"""``zero-shot``: the untrained base model (the lower bound and the FWT reference)."""

from __future__ import annotations

import torch

from mmcl.methods.base import METHODS, Method, MethodOptions


class ZeroShotOptions(MethodOptions):
    """No options."""


@METHODS.register("zero-shot")
class ZeroShot(Method):
    """No training at all; the stream is evaluated once."""

    name = "zero-shot"
    Options = ZeroShotOptions
    schedule = "none"
    supports = frozenset({"ddp", "fsdp", "zero1", "zero2", "zero3"})

    def setup(self, model: torch.nn.Module) -> torch.nn.Module:
        """Freeze every weight: nothing is trained, so the cost reports 0 trainable parameters."""
        model.requires_grad_(False)
        return super().setup(model)
