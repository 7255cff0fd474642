"""Pre-training recipes of the embedded base models (layer L6: above benchmarks, methods, train, eval).

- :mod:`mmcl.pretrain.llava`: ``mmcl pretrain`` (the tiny LLaVA caption base, preset ``tiny-llava``);
- :mod:`mmcl.pretrain.generalist`: ``mmcl pretrain --recipe generalist`` (``tiny-llava-generalist``),
  on the instruction data of :mod:`mmcl.pretrain.instruct` and the captions of :mod:`mmcl.pretrain.data`;
- :mod:`mmcl.pretrain.janus`: ``mmcl pretrain-janus`` (the dual-to-dual ``tiny-janus``), with the
  understanding-encoder warm-up :mod:`mmcl.pretrain.janus_vision`;
- :mod:`mmcl.pretrain.judge`: the image judge that scores generated images (``assets/image-judge``).

Every loop here is a loss function and a batch source run by the shared optimisation primitive
:func:`mmcl.train.steps.fit`, the one :func:`mmcl.train.loop.train_on` is built on. The models
themselves (builders, save/load, forward passes) live in :mod:`mmcl.models`. See
docs/generalist-base.md and docs/continual-next.md.
"""
