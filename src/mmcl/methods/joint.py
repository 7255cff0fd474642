"""``joint``: one LoRA model trained once on the union of all tasks (the upper bound)."""

from __future__ import annotations

from mmcl.data.sample import Sample, Task
from mmcl.methods.base import METHODS, MethodOptions
from mmcl.methods.lora_ft import LoraFT


class JointOptions(MethodOptions):
    """No options: the number of epochs is ``train.epochs`` over the union."""


@METHODS.register("joint")
class Joint(LoraFT):
    """Multi-task training (same LoRA as ``lora-ft``) on every task's training set at once; evaluated once."""

    name = "joint"
    Options = JointOptions
    schedule = "joint"

    def train_samples(self, stage: int, task: Task) -> list[Sample]:
        return [s for t in self.ctx.benchmark.tasks for s in t.train]
