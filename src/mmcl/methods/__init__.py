"""Continual-learning methods, found by name in ``METHODS``.

Importing this package registers the built-in methods.
"""

from mmcl.methods.base import METHODS, Method, RunContext

# Built-in methods register themselves on import.
from mmcl.methods import ewc, joint, lora_ft, lwf, mage, moelora, mr_lora, olora, quad, replay, unifier, unifier_quad, zero_shot  # noqa: E402,F401  isort: skip

__all__ = ["METHODS", "Method", "RunContext", "build_method"]


def build_method(ctx: RunContext) -> Method:
    """Instantiate the configured method with its validated options."""
    cls = METHODS.get(ctx.config.method.name)
    return cls(ctx, cls.parse_options(ctx.config.method.options()))
