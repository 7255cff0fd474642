"""``zero-shot``: the untrained base model (the lower bound and the FWT reference)."""

from __future__ import annotations

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
