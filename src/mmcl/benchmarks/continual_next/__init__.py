"""Continual-NExT (MAGE, dual-to-dual): the synthetic stream, its scorers, its metrics and report.

Importing this package registers the benchmark ``continual-next-synth`` (:mod:`.synth`), the
``cnext_*`` scorers (:mod:`.scorers` for text, :mod:`.image_scorers` for images) and the protocol
``cnext`` (:mod:`.protocol`: Avg.ACC, Forgetting, Avg.HAL / IUF / OTH, cross-modal transfer from
:mod:`.cross_modal`). The error classes of dual outputs are generic: :mod:`mmcl.eval.outputs`.
See docs/continual-next.md and docs/continual-next-metrics.md.
"""

from mmcl.benchmarks.continual_next import image_scorers, protocol, scorers, synth  # noqa: F401  (each registers itself)
