"""``train.compile``: the training forward through ``torch.compile`` (off by default).

One compiled wrapper per model for the whole run (kept in a weak map, not on the model, so that it
is neither a submodule nor saved), so that stages after the first reuse its graphs; shapes that
vary (sequence lengths, the last batch) are compiled dynamically after the first change
(``dynamic=None``, torch's default). Evaluation (``generate``) stays eager.

Off by default, although on this project's 2-core CPU it pays for a default ``lora-ft`` run (a
1.3x faster step saves about 250 s of its 3,040 steps; compiling takes 15-90 s): a compiled step
is not bit-identical to an eager one, it was measured for ``lora-ft`` only (methods that add
adapters every stage or hook modules may recompile), and every short run would pay the
compilation. docs/speed.md has the figures of ``mmcl bench``'s compile part.
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
