"""``unifier-quad``: UNIFIER's vision side plus QUAD's question-only replay on the language side.

The UNIFIER notes say it is evaluated in QUAD's regime ("images are not stored, but text
questions may be kept as exemplars"); whether UNIFIER itself replays questions is not stated
(shared/references/unifier_quad_msvqa.md §1.3). This composite answers the question "what do
UNIFIER's vision branches add on top of question replay?" on streams where much of the forgetting
is on the language side (``unifier`` alone protects only the vision tower):

* vision: exactly ``unifier`` (scenario branches + shared projection in every vision block, the
  vision consistency constraint; the part :class:`~mmcl.methods.unifier.UnifierVision`);
* language: exactly ``quad`` (one LoRA adapter through the stream; old questions about current
  images, answered by the previous step's model; answer-token and attention distillation; the part
  :class:`~mmcl.methods.quad.QuestionReplay`).

The method holds both parts and calls them from its hooks (composition, not inheritance).

The previous step's model is the teacher adapter AND the teacher copy of the branches: QUAD's
teacher forwards run with the frozen branches of the start of the stage, so the distillation
target is the whole previous model, not a hybrid. All options of both methods apply
(``lm_lora`` is true here and must stay so: QUAD distils the language model's LoRA).

Distributed: ``ddp`` only (both parts are).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from pydantic import Field, model_validator

from mmcl.data.sample import Task
from mmcl.methods.base import METHODS, RunContext
from mmcl.methods.lora_ft import LoraFT
from mmcl.methods.quad import QuadOptions, QuestionReplay
from mmcl.methods.unifier import BRANCHES_OFF_TRACKS, UnifierOptions, UnifierVision


class UnifierQuadOptions(UnifierOptions, QuadOptions):
    """Every option of ``unifier`` and of ``quad`` (``lm_lora`` on: QUAD needs the language model's LoRA)."""

    lm_lora: bool = Field(True, description="Must stay true: QUAD's replay distils the language model's LoRA.")

    @model_validator(mode="after")
    def _needs_lm_lora(self) -> UnifierQuadOptions:
        if not self.lm_lora:
            raise ValueError("lm_lora must be true: QUAD's replay distils the language model's LoRA")
        return self


@METHODS.register("unifier-quad")
class UnifierQuad(LoraFT):
    """UNIFIER's branches and VCC in the vision tower, QUAD's question replay on the language model."""

    name = "unifier-quad"
    image_answers = False  # its QUAD side reads text logits
    Options = UnifierQuadOptions
    supports = frozenset({"ddp"})
    options: UnifierQuadOptions

    def __init__(self, ctx: RunContext, options: UnifierQuadOptions) -> None:
        super().__init__(ctx, options)
        self.vision = UnifierVision(ctx, options)
        # the previous step's model: QUAD's teacher forwards run with the frozen branches of the step's start
        self.replay = QuestionReplay(ctx, options, teacher_mode=self.vision.teacher_mode)
        self.extra_tracks = BRANCHES_OFF_TRACKS if options.branches_off_track else ()

    def extra_states(self, task: Task) -> dict[str, contextlib.AbstractContextManager[None]]:
        return self.vision.off_states()

    def setup(self, model: torch.nn.Module) -> torch.nn.Module:
        model = super().setup(model)  # one peft LoRA on the language model
        self.replay.setup(model)  # + the teacher adapter
        self.vision.install(model)
        return model

    def before_task(self, stage: int, task: Task) -> None:
        # The branches' teacher copy first: the replay's before_task lets the model (still equal to the
        # previous step's) answer the replay questions, and its teacher forwards use these copies.
        self.vision.open(stage, task, need_teacher=True)
        self.replay.before_task(stage, task)

    def after_task(self, stage: int, task: Task) -> None:
        self.vision.close()
        self.replay.after_task(stage, task)

    def extra_loss(self, batch: dict[str, torch.Tensor], outputs: Any, stage: int) -> torch.Tensor | None:
        vcc = self.vision.loss(batch)  # first: the replay forwards overwrite the recorded branch outputs
        quad = self.replay.loss(batch, stage)
        terms = [t for t in (vcc, quad) if t is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def state_dict(self) -> dict[str, Any]:
        return {**self.replay.state_dict(), "branches": self.vision.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.replay.load_state_dict(state)
        self.vision.load_state_dict(state["branches"])

    def cost(self) -> dict[str, Any]:
        cost = self.replay.cost()
        branches = self.vision.cost()
        cost["held_bytes"]["teacher_branches"] = branches.pop("teacher_branches_bytes")
        return {**cost, **branches}
