"""MSVQA (UNIFIER, multi-scenario VQA): the real data loader, the synthetic stand-in, the protocol.

Importing this package registers the benchmarks ``msvqa`` (:mod:`.loader`) and ``msvqa-synth``
(:mod:`.synth`) and the protocol ``msvqa`` (:mod:`.protocol`: per-scenario VQA score and F1).
See docs/data.md and docs/unifier-quad.md.
"""

from mmcl.benchmarks.msvqa import loader, protocol, synth  # noqa: F401  (each registers itself)
