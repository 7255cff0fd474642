"""MLLM-CL (domain and ability continual learning): the real data loader, the synthetic streams, the official scorers.

Importing this package registers the benchmarks ``mllm-cl`` (:mod:`.loader`), ``mllm-dcl-synth`` and
``mllm-acl-synth`` (:mod:`.synth`, drawn by :mod:`.draw`) and the ``mllmcl_*`` scorers
(:mod:`.scorers`). See docs/mllm-cl.md.
"""

from mmcl.benchmarks.mllm_cl import loader, scorers, synth  # noqa: F401  (each registers itself)
