"""``lwf``: learning without forgetting (Li & Hoiem, 2017) by self-distillation from the previous stage.

One LoRA adapter (``default``) is trained through the stream as in ``lora-ft``. Before
every stage after the first, the current ``default`` weights are copied into a second,
frozen LoRA adapter ``teacher`` on the *same* peft model (created once with the same
``LoraConfig``), so the teacher costs one extra set of LoRA weights, not a second model.
Each training step then adds

    weight * T² * KL(softmax(teacher / T) || softmax(student / T))

averaged over the answer-token positions of the batch (where the shifted labels are not
``IGNORE_INDEX``), summed over the vocabulary. The teacher's logits come from a forward
pass of the same model with the ``teacher`` adapter active, under ``torch.no_grad`` and
in ``eval()`` (no dropout), on the very batch the student just saw: the new task's
inputs, as in the original LwF, which has no access to old data.

On a dual-to-dual model (Janus) a batch with image answers is distilled at both heads:
the LM head at the text label positions and the generation head at the image-code
positions, each a mean over its own positions (as the loop's dual loss); the teacher runs
the loop's forward (``ctx.forward``), and rows whose prompt the student saw blanked for
classifier-free guidance are left out of both terms.

peft details: ``set_adapter`` also sets ``requires_grad`` (True on the adapter it
activates, False on every other one; all False with ``inference_mode=True``). The teacher
forward therefore records ``requires_grad`` of every parameter, switches to the teacher,
and afterwards switches back to ``default`` and restores the recorded flags exactly, so
the optimizer's view of the trainable parameters never changes and the teacher stays
frozen. The copy uses peft's own ``get_peft_model_state_dict`` / ``set_peft_model_state_dict``
(which also carries a trained projector when ``model.train_projector`` is on).

The teacher is a part the method holds (:class:`TeacherAdapter`); ``quad`` holds one too.

``state_dict`` is empty: the teacher is by definition the ``default`` adapter as it was
at the start of the stage, so a run resumed at a stage boundary rebuilds it in
``before_task``.

Distributed: ``ddp`` only. The teacher forward runs on the unwrapped module and switches
adapters by toggling ``requires_grad``, which DeepSpeed ZeRO (its gradient hooks and
partitions are built for a fixed set of trainable parameters) and FSDP (flat parameters
with one ``requires_grad``; sharded weights that would have to be gathered for the copy)
do not allow.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from pydantic import Field

from mmcl.adapters.pool import adapter_parameters
from mmcl.data.sample import Task
from mmcl.methods.base import METHODS, MethodOptions, RunContext
from mmcl.methods.lora_ft import LoraFT
from mmcl.models.chat import IGNORE_INDEX

STUDENT = "default"
TEACHER = "teacher"


class LwFOptions(MethodOptions):
    """Options of ``lwf``."""

    temperature: float = Field(2.0, gt=0.0, description="Distillation temperature T (default 2.0).")
    weight: float = Field(
        1.0, ge=0.0, description="Weight of the distillation loss against the task loss (default 1.0)."
    )


class TeacherAdapter:
    """A frozen ``teacher`` copy of the ``default`` LoRA adapter on the same peft model, and the
    distillation towards it (see the module docstring). ``around``: a context entered around every
    teacher forward (``unifier-quad`` runs it with the frozen vision branches of the previous step)."""

    def __init__(self, ctx: RunContext, around: Callable[[], AbstractContextManager[Any]] | None = None) -> None:
        self.ctx = ctx
        self.model: torch.nn.Module = ctx.model  # the peft model, from setup on
        self.around = around
        self.ready = False  # set once the teacher adapter holds a copy of the student

    def setup(self, model: torch.nn.Module) -> None:
        """Add the (empty, frozen) teacher adapter to ``model`` now, not at the first copy: a resumed
        run draws the same RNG."""
        self.model = model
        self.ready = False
        self.add()

    def add(self) -> None:
        """Create the frozen ``teacher`` adapter (once), leaving every existing ``requires_grad`` as it was."""
        model = self.model
        if TEACHER in model.peft_config:
            return
        grads = {p: p.requires_grad for p in model.parameters()}
        model.add_adapter(TEACHER, self.ctx.lora_config())
        for p, rg in grads.items():
            p.requires_grad = rg
        for p in self.parameters():
            p.requires_grad = False

    def copy_student(self) -> None:
        """Make the ``teacher`` adapter an exact, frozen copy of the current ``default`` adapter."""
        model = self.model
        self.add()
        state = get_peft_model_state_dict(model, adapter_name=STUDENT)
        result = set_peft_model_state_dict(model, state, adapter_name=TEACHER)
        bad = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k or "modules_to_save" in k]
        if bad:
            raise RuntimeError(f"lwf: could not copy the student adapter into the teacher: {bad[:3]}")
        for p in self.parameters():
            p.requires_grad = False
        self.ready = True

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, p in adapter_parameters(self.model, TEACHER)]

    def student_parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, p in adapter_parameters(self.model, STUDENT)]

    @torch.no_grad()
    def _as_teacher(self, run: Callable[[], Any]) -> Any:
        """``run()`` with the teacher adapter active (no dropout, no graph); every flag restored after."""
        model = self.model
        with self.around() if self.around is not None else contextlib.nullcontext():
            grads = {p: p.requires_grad for p in model.parameters()}
            modes = {m: m.training for m in model.modules()}
            try:
                model.set_adapter(TEACHER)
                model.eval()
                return run()
            finally:
                model.set_adapter(STUDENT)
                for m, training in modes.items():
                    m.training = training
                for p, rg in grads.items():
                    p.requires_grad = rg

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the teacher adapter on ``batch`` (no labels, no dropout, no graph)."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self._as_teacher(lambda: self.model(**inputs).logits)

    def dual_distillation_terms(self, batch: dict[str, torch.Tensor], student: Any,
                                temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(text, image) distillation terms on a batch with image answers (dual-to-dual models): the LM
        head's KL at the text label positions and the generation head's KL at the image positions, each
        a mean over its own positions (as the loop's dual loss). The teacher runs the loop's forward
        (``ctx.forward``); rows whose prompt the student saw blanked (classifier-free guidance dropout)
        are left out, since the teacher saw them whole."""
        teacher = self._as_teacher(lambda: self.ctx.forward(self.model, batch))
        keep = torch.ones(batch["labels"].shape[0], dtype=torch.bool, device=batch["labels"].device)
        if getattr(student, "blanked_rows", None) is not None:
            keep[student.blanked_rows] = False
        mask = (batch["labels"][:, 1:] != IGNORE_INDEX) & keep[:, None]
        text = image = student.logits.sum() * 0.0
        if mask.any():
            text = _kl(student.logits[:, :-1][mask], teacher.logits[:, :-1][mask], temperature)
        rows = keep[student.image_rows] if student.image_rows is not None else keep[:0]
        if rows.any():
            s_img, t_img = student.image_logits[rows], teacher.image_logits[rows]
            image = _kl(s_img.reshape(-1, s_img.shape[-1]), t_img.reshape(-1, t_img.shape[-1]), temperature)
        return text, image

    def distillation_loss(
        self, batch: dict[str, torch.Tensor], student_logits: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        """``T² * KL(p_teacher || p_student)`` at temperature T, mean over answer-token positions."""
        labels = batch["labels"]
        if student_logits.shape[:2] != labels.shape:
            raise RuntimeError(
                f"lwf: logits of shape {tuple(student_logits.shape)} do not line up with labels of shape "
                f"{tuple(labels.shape)}"
            )
        teacher = self.logits(batch)
        mask = labels[:, 1:] != IGNORE_INDEX  # logits at i predict token i + 1
        if not mask.any():
            return student_logits.sum() * 0.0
        return _kl(student_logits[:, :-1][mask], teacher[:, :-1][mask], temperature)

    def held_bytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.parameters())


def _kl(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    """``T² * KL(softmax(teacher / T) || softmax(student / T))``, mean over the rows (positions)."""
    s, t = student.float() / T, teacher.float() / T
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean") * T * T


@METHODS.register("lwf")
class LwF(LoraFT):
    """One LoRA adapter, distilled towards a frozen copy of itself from the start of each stage."""

    name = "lwf"
    Options = LwFOptions
    supports = frozenset({"ddp"})
    options: LwFOptions

    def __init__(self, ctx: RunContext, options: LwFOptions) -> None:
        super().__init__(ctx, options)
        self.teacher = TeacherAdapter(ctx)

    def setup(self, model: torch.nn.Module) -> torch.nn.Module:
        model = super().setup(model)
        self.teacher.setup(model)
        return model

    def before_task(self, stage: int, task: Task) -> None:
        if stage > 0:
            self.teacher.copy_student()

    def extra_loss(self, batch: dict[str, torch.Tensor], outputs: Any, stage: int) -> torch.Tensor | None:
        if stage == 0 or not self.teacher.ready:
            return None
        if "image_targets" in batch:  # a dual-to-dual batch: text and image answers
            text, image = self.teacher.dual_distillation_terms(batch, outputs, self.options.temperature)
            return self.options.weight * (text + image)
        return self.options.weight * self.teacher.distillation_loss(batch, outputs.logits, self.options.temperature)

    def cost(self) -> dict[str, Any]:
        return {"params_added_per_task": 0, "held_bytes": {"teacher_adapter": self.teacher.held_bytes()}}
