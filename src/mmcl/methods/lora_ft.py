"""``lora-ft``: sequential fine-tuning of one LoRA adapter (peft) through the whole stream."""

from __future__ import annotations

import torch
from peft import get_peft_model

from mmcl.methods.base import METHODS, Method, MethodOptions


class LoraOptions(MethodOptions):
    """No options of its own: rank, alpha and targets come from ``model.lora_*``."""


@METHODS.register("lora-ft")
class LoraFT(Method):
    """One LoRA adapter, trained on task after task with nothing to prevent forgetting."""

    name = "lora-ft"
    Options = LoraOptions
    supports = frozenset({"ddp", "fsdp", "zero1", "zero2", "zero3"})

    def setup(self, model: torch.nn.Module) -> torch.nn.Module:
        torch.manual_seed(self.ctx.seed)
        self.model = get_peft_model(model, self.ctx.lora_config())
        return self.model
