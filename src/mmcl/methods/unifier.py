"""``unifier``: UNIFIER (Jiang et al., arXiv 2511.18507, ICML 2026) for multi-scenario continual VQA.

Two parts, both on the vision side (see ../shared/references/unifier_quad_msvqa.md; the paper's
method section and code are not public, so the details below are our reading of second-hand
notes, each choice a config option):

**Vision Representation Expansion (VRE).** Every vision-encoder block gets K bottleneck branches
(one per scenario) and a shared projection P, in parallel with its MLP:
``h = h + MLP(LN(h)) + scale * P([phi_1(h), ..., phi_K(h)])`` (:mod:`mmcl.adapters.vision_branches`).
While learning a step of scenario k only branch k (all blocks) and the shared projections train;
the vision tower stays frozen. A scenario's branch is reopened, never re-initialised, at each of
its steps, so knowledge accumulates within the scenario. At test time all branches run in one
forward pass: no task id, no router. Up-projections start at zero (the model is unchanged at
initialisation) and P as the average ``[I/K, ..., I/K]`` (so every trainable part gets gradient).

**Vision Consistency Constraint (VCC).** Per block l, with the K branch outputs ``phi_k`` of the
training batch and their mean, the prototype ``mu`` (detached: a target, as in distillation)::

    L_c(l) = sum_k KLt(mean_tokens(mu) || mean_tokens(phi_k)) + KLt(mean_dim(mu) || mean_dim(phi_k))
    L_p(l) = KLt(mean_tokens(p_old) || mean_tokens(p)) + KLt(mean_dim(p_old) || mean_dim(p))
    VCC    = (1 / L) * sum_l (L_p(l) + L_c(l))
    loss   = task loss + lambda * VCC

``KLt(a || b) = tau^2 * KL(softmax(a / tau) || softmax(b / tau))`` per sample (batch mean);
``mean_tokens`` is the feature channel (a d-vector per image), ``mean_dim`` the embedding
channel (one value per token). ``p`` is P's output (before ``scale``) and ``p_old`` the same in
the previous step's model on the same images: a frozen copy of every block's branches and P
is taken at the start of each step (after the first), and one extra no-grad pass of the vision
tower runs it. Packed vision sequences (Qwen2-VL) count as one sample.

Choices where the sources are silent (all options below): the direction of each KL (the
prototype / the old model is the target); the prototype is detached; branches see the block's
hidden state before ``norm2``; the branch key of a task is its scenario (a task without one is
its own scenario), branches numbered in order of first appearance in the stream; the language
model optionally gets one shared LoRA trained through the whole stream (``lm_lora``; off, the
default, = the faithful vision-only UNIFIER; on = the references' pragmatic option B, which a
base that has never seen the stream's question types needs: docs/unifier-quad.md#defaults).

Both parts are :class:`UnifierVision`, a part the method holds and calls from its hooks
(``unifier-quad`` holds the same part beside QUAD's question replay).

Distributed: ``ddp`` only. The frozen teacher copies live outside the model and the trainable
set changes between steps, which FSDP's flat parameters and DeepSpeed ZeRO's partitions,
built once for a fixed set of trainable parameters, do not allow.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from peft import get_peft_model
from pydantic import Field

from mmcl.adapters.vision_branches import BranchOutputs, VisionBranches, install_branches
from mmcl.data.sample import Task
from mmcl.methods.base import METHODS, Method, MethodOptions, RunContext, copy_tensors_into

VISION_KEYS = ("pixel_values", "image_grid_thw", "image_sizes")


class UnifierOptions(MethodOptions):
    """Options of ``unifier`` (defaults: see docs/unifier-quad.md for the sweep)."""

    bottleneck: int = Field(16, ge=1, description="Width of each branch's down-projection.")
    scale: float = Field(1.0, gt=0.0, description="Multiplier of P's output added to the block.")
    activation: Literal["gelu", "relu"] = Field("gelu", description="Non-linearity inside each branch.")
    lambda_vcc: float = Field(1.0, ge=0.0, description="Weight of the vision consistency constraint.")
    tau: float = Field(1.0, gt=0.0, description="Temperature of the VCC's softened KL terms.")
    projector_term: bool = Field(True, description="Include L_p (P's output vs the previous step's).")
    detach_prototype: bool = Field(True, description="Treat the prototype as a fixed target.")
    lm_lora: bool = Field(
        False, description="Also train one shared LoRA on the language model (off: the paper's vision-only form).")
    branches_off_track: bool = Field(
        False, description="Also answer every test set with the branches switched off: tracks branches_off "
                           "(its score) and branches_off_changed (share of answers that change); doubles evaluation.")
    num_branches: int | None = Field(
        None, ge=1, description="Branches per block (default: the number of scenarios in the stream)."
    )


BRANCHES_OFF_TRACKS = ("branches_off", "branches_off_changed")


def branch_keys(tasks: list[Task]) -> list[str]:
    """Scenario keys in order of first appearance (a task without a scenario is its own)."""
    keys: list[str] = []
    for t in tasks:
        key = t.scenario or t.name
        if key not in keys:
            keys.append(key)
    return keys


def soft_kl(target: torch.Tensor, pred: torch.Tensor, tau: float) -> torch.Tensor:
    """``tau^2 * KL(softmax(target / tau) || softmax(pred / tau))`` over the last dim, batch mean."""
    log_t = F.log_softmax(target.float() / tau, dim=-1)
    log_p = F.log_softmax(pred.float() / tau, dim=-1)
    return F.kl_div(log_p, log_t, log_target=True, reduction="batchmean") * tau * tau


def _batched(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(0) if x.dim() == 2 else x  # a packed [tokens, d] sequence is one sample


def two_channel_kl(target: torch.Tensor, pred: torch.Tensor, tau: float) -> torch.Tensor:
    """Feature channel (token mean, a d-vector) plus embedding channel (feature mean, per token)."""
    target, pred = _batched(target), _batched(pred)
    return soft_kl(target.mean(1), pred.mean(1), tau) + soft_kl(target.mean(2), pred.mean(2), tau)


def consistency_loss(
    outputs: list[BranchOutputs],
    tau: float,
    teacher: list[BranchOutputs] | None = None,
    detach_prototype: bool = True,
) -> torch.Tensor:
    """The VCC over blocks: branch-vs-prototype terms, plus P-vs-teacher terms when given."""
    total = outputs[0].projected.new_zeros((), dtype=torch.float32)
    for i, out in enumerate(outputs):
        proto = torch.stack(out.branches).mean(0)
        if detach_prototype:
            proto = proto.detach()
        block = sum(two_channel_kl(proto, b, tau) for b in out.branches)
        if teacher is not None:
            block = block + two_channel_kl(teacher[i].projected, out.projected, tau)
        total = total + block
    return total / len(outputs)


class UnifierVision:
    """UNIFIER's vision side as a part a method holds: the scenario branches, their schedule, the VCC.

    The host calls :meth:`install` from its ``setup``, :meth:`open` / :meth:`close` from
    ``before_task`` / ``after_task`` and :meth:`loss` from ``extra_loss``; ``options`` holds
    :class:`UnifierOptions`' fields.
    """

    def __init__(self, ctx: RunContext, options: UnifierOptions) -> None:
        self.options = options
        self.model: torch.nn.Module = ctx.model  # the model the branches are installed in, from install on
        self.keys = branch_keys(ctx.benchmark.tasks)
        k = options.num_branches or len(self.keys)
        if k < len(self.keys):
            raise ValueError(
                f"method.num_branches={k} is smaller than the {len(self.keys)} scenarios of the stream "
                f"({', '.join(self.keys)})"
            )
        self.num_branches = k
        self.branch: int | None = None
        self.branches: VisionBranches | None = None

    def install(self, model: torch.nn.Module) -> None:
        """Add the branches to every vision block; ``model.disable_adapter`` then switches them off too."""
        o = self.options
        self.model = model
        self.branches = install_branches(model, self.num_branches, o.bottleneck, o.scale, o.activation)
        self.branches.freeze()  # nothing of the branches trains before the first step
        self._peft_disable = getattr(model, "disable_adapter", None)
        model.disable_adapter = self.disable_adapter  # the runner's zero-shot context

    def off_states(self) -> dict[str, contextlib.AbstractContextManager[None]]:
        """The branches-off evaluation state, when ``branches_off_track`` asks for it."""
        return {"branches_off": self.branches.disabled()} if self.options.branches_off_track else {}

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """The base model: branches off (and the LM LoRA off, when there is one)."""
        assert self.branches is not None
        with self.branches.disabled(), (self._peft_disable() if self._peft_disable else contextlib.nullcontext()):
            yield

    def teacher_mode(self) -> contextlib.AbstractContextManager[None]:
        """Run every block with the frozen branches of the start of the step (the previous step's model)."""
        assert self.branches is not None
        return self.branches.teacher_mode()

    def branch_of(self, task: Task) -> int:
        return self.keys.index(task.scenario or task.name)

    def open(self, stage: int, task: Task, need_teacher: bool = False) -> None:
        """Make branch k(task) and the projections trainable; snapshot the teacher branches if needed."""
        assert self.branches is not None
        self.branch = self.branch_of(task)
        self.branches.set_trainable(self.branch)
        o = self.options
        if stage > 0 and (need_teacher or (o.lambda_vcc > 0 and o.projector_term)):
            self.branches.snapshot_teacher()
        self.branches.set_record(o.lambda_vcc > 0)

    def close(self) -> None:
        assert self.branches is not None
        self.branches.set_record(False)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """``lambda * VCC`` on the branch outputs recorded in the batch's forward pass."""
        o = self.options
        if o.lambda_vcc == 0 or self.branches is None:
            return None
        student = self.branches.recorded()
        teacher = None
        if o.projector_term and self.branches.has_teacher:
            vision = {k: batch[k] for k in VISION_KEYS if k in batch}
            if "pixel_values" in vision:
                teacher = self.branches.teacher_outputs(lambda: self.vision_forward(vision))
        return o.lambda_vcc * consistency_loss(student, o.tau, teacher, o.detach_prototype)

    def vision_forward(self, vision: dict[str, torch.Tensor]) -> Any:
        """Run the vision tower (through the model's own ``get_image_features``) on a batch's images."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            return model.get_image_features(**vision)
        finally:
            model.train(was_training)

    def _branch_tensors(self) -> dict[str, torch.Tensor]:
        assert self.branches is not None
        return {
            f"{slot.name}.{n}": p for slot in self.branches.slots for n, p in slot.live.named_parameters()
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The branch and projection weights of every block, on the CPU."""
        return {k: v.detach().cpu().clone() for k, v in self._branch_tensors().items()}

    def load_state_dict(self, saved: dict[str, torch.Tensor]) -> None:
        copy_tensors_into(self._branch_tensors(), saved, "unifier")

    def cost(self) -> dict[str, Any]:
        """Parameters per branch, branches, shared projection parameters, bytes of the teacher copies."""
        assert self.branches is not None
        mods = self.branches.modules
        teacher = sum(
            p.numel() * p.element_size()
            for s in self.branches.slots
            if s.teacher is not None
            for p in s.teacher.parameters()
        )
        return {
            "params_per_branch": sum(sum(p.numel() for p in m.branch_parameters(0)) for m in mods),
            "branches": self.num_branches,
            "shared_projection_params": sum(sum(p.numel() for p in m.proj.parameters()) for m in mods),
            "teacher_branches_bytes": teacher,
        }


@METHODS.register("unifier")
class Unifier(Method):
    """Scenario branches in every vision block + a consistency constraint (+ an optional LM LoRA)."""

    name = "unifier"
    image_answers = False  # its branches and consistency loss are built for LLaVA-style vision towers and text answers
    Options = UnifierOptions
    supports = frozenset({"ddp"})
    options: UnifierOptions

    def __init__(self, ctx: RunContext, options: UnifierOptions) -> None:
        super().__init__(ctx, options)
        self.vision = UnifierVision(ctx, options)
        self.extra_tracks = BRANCHES_OFF_TRACKS if options.branches_off_track else ()

    def extra_states(self, task: Task) -> dict[str, contextlib.AbstractContextManager[None]]:
        return self.vision.off_states()

    def setup(self, model: torch.nn.Module) -> torch.nn.Module:
        torch.manual_seed(self.ctx.seed)
        if self.options.lm_lora:
            model = get_peft_model(model, self.ctx.lora_config())  # freezes everything but the LoRA
        else:
            for p in model.parameters():
                p.requires_grad_(False)
            if self.ctx.config.model.train_projector:
                model.get_submodule(self.ctx.bundle.family.projector).requires_grad_(True)
        self.vision.install(model)
        self.model = model
        return model

    def before_task(self, stage: int, task: Task) -> None:
        self.vision.open(stage, task)

    def after_task(self, stage: int, task: Task) -> None:
        self.vision.close()

    def extra_loss(self, batch: dict[str, torch.Tensor], outputs: Any, stage: int) -> torch.Tensor | None:
        return self.vision.loss(batch)

    def state_dict(self) -> dict[str, Any]:
        """The branch and projection weights of every block (the LM LoRA is saved with the model)."""
        return {"branches": self.vision.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vision.load_state_dict(state["branches"])

    def cost(self) -> dict[str, Any]:
        c = self.vision.cost()
        held = c.pop("teacher_branches_bytes")
        return {"params_added_per_task": 0, **c, "held_bytes": {"teacher_branches": held}}
