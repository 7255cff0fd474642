"""The run's LoRA configuration (``model.lora_*``) for peft, shared by every LoRA-based method.

See docs/config.md (``model``) and docs/methods.md.
"""

from __future__ import annotations

from peft import LoraConfig

from mmcl.config import ModelConfig
from mmcl.models.families import Family


def lora_config(model: ModelConfig, family: Family) -> LoraConfig:
    """The run's LoRA config for the model family (targets: the LM's linear layers by default)."""
    targets = model.lora_targets or family.lora_targets
    if model.lora_vision:
        if not isinstance(targets, str):
            raise ValueError("model.lora_vision needs model.lora_targets to be a regex (or unset)")
        targets = f"(?:{targets})|(?:{family.vision_lora_targets})"
    return LoraConfig(
        r=model.lora_rank,
        lora_alpha=model.lora_alpha,
        lora_dropout=model.lora_dropout,
        target_modules=targets,
        # the full path: peft matches by suffix, and Janus' "aligner" would also catch "generation_aligner"
        modules_to_save=[family.projector] if model.train_projector else None,
        task_type=None,
    )


def refuse_train_projector(model: ModelConfig, method: str, reason: str) -> None:
    """Raise ValueError when ``model.train_projector`` is on for ``method``, which cannot train it (``reason``)."""
    if model.train_projector:
        raise ValueError(f"method {method!r} does not support model.train_projector=true: {reason}")
