"""``joint``: one LoRA model trained once on the union of all tasks (the upper bound)."""

from __future__ import annotations

import torch
from peft import get_peft_model

from mmcl.data.sample import Sample, Task
from mmcl.methods.base import METHODS, Method, MethodOptions
from mmcl.methods.lora_ft import lora_config


class JointOptions(MethodOptions):
    """No options: the number of epochs is ``train.epochs`` over the union."""


@METHODS.register("joint")
class Joint(Method):
    """Multi-task training on every task's training set at once; evaluated once, after training."""

    name = "joint"
    Options = JointOptions
    schedule = "joint"
    supports = frozenset({"ddp", "fsdp", "zero1", "zero2", "zero3"})

    def setup(self, model: torch.nn.Module) -> torch.nn.Module:
        torch.manual_seed(self.ctx.seed)
        self.model = get_peft_model(model, lora_config(self))
        return self.model

    def train_samples(self, stage: int, task: Task) -> list[Sample]:
        return [s for t in self.ctx.benchmark.tasks for s in t.train]
