"""Adapters: what methods add to a model, in PEFT's manner (config beside layer beside model).

- :mod:`mmcl.adapters.lora`: the run's peft ``LoraConfig`` (``model.lora_*``) and the refusal of
  ``model.train_projector`` for methods that keep several adapters active;
- :mod:`mmcl.adapters.pool`: several named peft LoRA adapters on one model (which are active,
  which train, their weights);
- :mod:`mmcl.adapters.moelora`: the MoE-LoRA layer (gated LoRA experts in a linear layer);
- :mod:`mmcl.adapters.vision_branches`: UNIFIER's scenario branches inside every vision block.

Methods (``mmcl.methods``) hold the continual-learning logic and use these; see docs/methods.md.
"""
