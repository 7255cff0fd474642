"""``train.compile``: the training forward through ``torch.compile`` (off by default).

One compiled wrapper per model for the whole run (kept in a weak map, not on the model, so that it
is neither a submodule nor saved), so that stages after the first reuse its graphs; shapes that
vary (sequence lengths, the last batch) are compiled dynamically after the first change
(``dynamic=None``, torch's default). Evaluation (``generate``) stays eager.

Why off by default: on this project's 2-core CPU the compiled step is about 1.25x faster, but the
first compilation takes about 70 s, and a default run (1,040 optimizer steps of the tiny model)
saves about as much as that; docs/speed.md has the figures of ``mmcl bench``'s compile part. On a
GPU with a large model the balance differs: measure before turning it on.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

_COMPILED: weakref.WeakKeyDictionary[torch.nn.Module, Any] = weakref.WeakKeyDictionary()


def compiled(model: torch.nn.Module) -> Any:
    """``torch.compile(model)``, built once per model."""
    fn = _COMPILED.get(model)
    if fn is None:
        fn = _COMPILED[model] = torch.compile(model, dynamic=None)
    return fn
