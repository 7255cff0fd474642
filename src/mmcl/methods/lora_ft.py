"""``lora-ft``: sequential fine-tuning of one LoRA adapter (peft) through the whole stream."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from mmcl.methods.base import METHODS, Method, MethodOptions


class LoraOptions(MethodOptions):
    """No options of its own: rank, alpha and targets come from ``model.lora_*``."""


def lora_config(method: Method) -> LoraConfig:
    """The run's LoRA config for the model family (targets: the LM's linear layers by default)."""
    m = method.ctx.config.model
    fam = method.ctx.bundle.family
    targets = m.lora_targets or fam.lora_targets
    if m.lora_vision:
        if not isinstance(targets, str):
            raise ValueError("model.lora_vision needs model.lora_targets to be a regex (or unset)")
        targets = f"(?:{targets})|(?:{fam.vision_lora_targets})"
    return LoraConfig(
        r=m.lora_rank,
        lora_alpha=m.lora_alpha,
        lora_dropout=m.lora_dropout,
        target_modules=targets,
        # the full path: peft matches by suffix, and Janus' "aligner" would also catch "generation_aligner"
        modules_to_save=[fam.projector] if m.train_projector else None,
        task_type=None,
    )


@METHODS.register("lora-ft")
class LoraFT(Method):
    """One LoRA adapter, trained on task after task with nothing to prevent forgetting."""

    name = "lora-ft"
    Options = LoraOptions
    supports = frozenset({"ddp", "fsdp", "zero1", "zero2", "zero3"})

    def setup(self, model: torch.nn.Module) -> torch.nn.Module:
        torch.manual_seed(self.ctx.seed)
        self.model = get_peft_model(model, lora_config(self))
        return self.model
