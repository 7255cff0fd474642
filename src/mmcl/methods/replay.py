"""``replay``: experience replay from a bounded memory of earlier tasks' samples (one LoRA, as ``lora-ft``).

After each task the method puts some of that task's training samples into a memory; every
later stage trains on the task's own samples plus samples drawn from the memory, so that
a share ``ratio`` of the stage's training samples are replayed. The memory holds
*references* (task name + sample id), never images or tensors: a reference is resolved
through ``ctx.benchmark.tasks`` when a stage's samples are built, and encoded again like
any other sample. The memory is therefore a few bytes per sample (``cost()`` reports the
bytes of those strings); the images themselves are not held, which a real deployment
with images on disk would have to account for separately.

Memory size (exactly one of the two):

* ``memory_per_task=k``: up to ``k`` samples of every finished task (it grows with the
  number of tasks).
* ``memory_total=M``: at most ``M`` samples overall. With ``selection=random`` the memory
  is re-balanced after every task: each seen task gets an equal share of ``M`` (a share a
  task cannot fill, because it has fewer samples, goes to the others) and earlier tasks
  are cut down to their new share. With ``selection=reservoir`` the balance is the one
  reservoir sampling gives: each sample of the whole stream so far is in memory with the
  same probability ``M / n_seen``, so a task's share is proportional to its size.

Selection:

* ``random``: a uniformly random subset of each finished task.
* ``reservoir``: reservoir sampling (Vitter's algorithm R) over the stream of training
  samples in task order. With ``memory_per_task`` the reservoir runs over each task's own
  samples, which amounts to a uniformly random subset too (drawn differently).

Memory draws for a stage use ``round(ratio / (1 - ratio) * n_task)`` samples, without
replacement when the memory is large enough and with replacement when it is smaller.
Every random choice uses a generator seeded from the run seed, the stage and its purpose,
so all processes of a distributed run build the same sample list, and ``state_dict``
(the references, JSON-friendly) is all a resumed run needs to continue identically.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from mmcl.data.sample import Sample, Task
from mmcl.methods.base import METHODS, MethodOptions, RunContext
from mmcl.methods.lora_ft import LoraFT


class ReplayOptions(MethodOptions):
    """Options of ``replay``. Set exactly one of ``memory_per_task`` and ``memory_total``."""

    memory_per_task: int | None = Field(
        20,
        ge=1,
        description="Samples kept from every finished task (default 20). Becomes null by itself when only "
        "memory_total is given.",
    )
    memory_total: int | None = Field(
        None,
        ge=1,
        validate_default=True,
        description="Total samples kept over all finished tasks (default null: use memory_per_task).",
    )
    selection: Literal["reservoir", "random"] = Field(
        "reservoir",
        description="How samples enter the memory: reservoir sampling over the stream, or a random "
        "subset of each task (default reservoir).",
    )
    ratio: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Share of each stage's training samples drawn from memory, in [0, 1) (default 0.2).",
    )

    @model_validator(mode="before")
    @classmethod
    def _total_replaces_default_per_task(cls, data: Any) -> Any:
        # memory_per_task has a default; giving only memory_total means "use a total instead"
        if isinstance(data, dict) and data.get("memory_total") is not None and "memory_per_task" not in data:
            data = {**data, "memory_per_task": None}
        return data

    @field_validator("memory_total")
    @classmethod
    def _exactly_one_size(cls, total: int | None, info: ValidationInfo) -> int | None:
        if "memory_per_task" not in info.data:  # memory_per_task itself was invalid
            return total
        per_task = info.data["memory_per_task"]
        if (per_task is None) == (total is None):
            raise ValueError(
                "set exactly one of memory_per_task and memory_total, the other to null "
                f"(got memory_per_task={per_task}, memory_total={total})"
            )
        return total


Ref = tuple[str, str]  # (task name, sample id)


@METHODS.register("replay")
class Replay(LoraFT):
    """One LoRA adapter trained on each task mixed with samples replayed from a bounded memory."""

    name = "replay"
    Options = ReplayOptions
    supports = frozenset({"ddp", "fsdp", "zero1", "zero2", "zero3"})
    options: ReplayOptions

    def __init__(self, ctx: RunContext, options: ReplayOptions) -> None:
        super().__init__(ctx, options)
        self._by_id: dict[str, dict[str, Sample]] = {}
        for t in ctx.benchmark.tasks:
            ids: dict[str, Sample] = {}
            for s in t.train:
                if s.id in ids:
                    raise ValueError(
                        f"method 'replay' stores samples by id, but task {t.name!r} has two training "
                        f"samples with id {s.id!r}"
                    )
                ids[s.id] = s
            self._by_id[t.name] = ids
        self.memory: list[Ref] = []  # task by task; reservoir slots with memory_total + reservoir
        self.tasks_seen: list[str] = []
        self.stream_seen = 0  # samples seen by the reservoir (memory_total + reservoir only)

    # ------------------------------------------------------------------ helpers
    def _rng(self, stage: int, purpose: str) -> random.Random:
        # str seeds are hashed with SHA-512: the same in every process and Python run
        return random.Random(f"mmcl-replay:{self.ctx.seed}:{stage}:{purpose}")

    def resolve(self, ref: Ref) -> Sample:
        task, sid = ref
        try:
            return self._by_id[task][sid]
        except KeyError:
            raise KeyError(
                f"replay memory refers to sample {sid!r} of task {task!r}, which the benchmark "
                "does not have (was the memory saved for another benchmark?)"
            ) from None

    def memory_counts(self) -> dict[str, int]:
        """How many memory slots each task holds."""
        counts: dict[str, int] = {}
        for task, _ in self.memory:
            counts[task] = counts.get(task, 0) + 1
        return counts

    # ------------------------------------------------------------------ hooks
    def train_samples(self, stage: int, task: Task) -> list[Sample]:
        samples = list(task.train)
        n_mem = round(self.options.ratio / (1.0 - self.options.ratio) * len(samples))
        if not self.memory or n_mem == 0:
            return samples
        rng = self._rng(stage, "draw")
        if n_mem <= len(self.memory):
            refs = rng.sample(self.memory, n_mem)
        else:
            refs = rng.choices(self.memory, k=n_mem)
        return samples + [self.resolve(r) for r in refs]

    def after_task(self, stage: int, task: Task) -> None:
        self.tasks_seen.append(task.name)
        rng = self._rng(stage, "select")
        refs = [(task.name, s.id) for s in task.train]
        o = self.options
        if o.selection == "reservoir":
            if o.memory_total is not None:
                self.stream_seen = self._reservoir_into(
                    self.memory, refs, o.memory_total, self.stream_seen, rng
                )
            else:
                assert o.memory_per_task is not None
                kept: list[Ref] = []
                self._reservoir_into(kept, refs, o.memory_per_task, 0, rng)
                self.memory.extend(kept)
        else:
            cap = o.memory_per_task if o.memory_per_task is not None else o.memory_total
            assert cap is not None
            picked = rng.sample(refs, min(cap, len(refs)))  # a random order; any prefix is a random subset
            self.memory.extend(picked)
            if o.memory_total is not None:
                self._rebalance(o.memory_total)

    @staticmethod
    def _reservoir_into(
        slots: list[Ref], refs: list[Ref], capacity: int, seen: int, rng: random.Random
    ) -> int:
        """Algorithm R: feed ``refs`` into ``slots`` (capacity ``capacity``) after ``seen`` earlier items."""
        for ref in refs:
            if len(slots) < capacity:
                slots.append(ref)
            else:
                j = rng.randrange(seen + 1)
                if j < capacity:
                    slots[j] = ref
            seen += 1
        return seen

    def _rebalance(self, total: int) -> None:
        """Cut each task's block to an equal share of ``total`` (what a task cannot fill goes to others)."""
        blocks: dict[str, list[Ref]] = {}
        for ref in self.memory:
            blocks.setdefault(ref[0], []).append(ref)
        order = [t for t in dict.fromkeys(self.tasks_seen) if t in blocks]
        quota = dict.fromkeys(order, 0)
        left = total
        while left > 0:  # round robin, one slot at a time: the remainder goes to the earlier tasks
            grew = False
            for t in order:
                if left > 0 and quota[t] < len(blocks[t]):
                    quota[t] += 1
                    left -= 1
                    grew = True
            if not grew:
                break
        self.memory = [r for t in order for r in blocks[t][: quota[t]]]

    # ------------------------------------------------------------------ bookkeeping
    def state_dict(self) -> dict[str, Any]:
        return {
            "memory": [list(r) for r in self.memory],
            "tasks_seen": list(self.tasks_seen),
            "stream_seen": self.stream_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        memory = [(str(t), str(i)) for t, i in state.get("memory", [])]
        for ref in memory:
            self.resolve(ref)  # fail now, not in the middle of a stage
        self.memory = memory
        self.tasks_seen = [str(t) for t in state.get("tasks_seen", [])]
        self.stream_seen = int(state.get("stream_seen", 0))

    def cost(self) -> dict[str, Any]:
        ref_bytes = sum(len(t.encode()) + len(i.encode()) for t, i in self.memory)
        return {
            "params_added_per_task": 0,
            "held_bytes": {"replay_buffer": ref_bytes},
            "memory_samples": len(self.memory),
        }
