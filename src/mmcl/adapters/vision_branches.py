"""Parallel scenario branches inside every vision-encoder block (UNIFIER's Vision Representation Expansion).

A vision block computes ``h = h + attn(norm1(h)); h = h + mlp(norm2(h))``. :func:`install_branches`
adds, in parallel with the block's MLP, a :class:`BranchModule`::

    h = h + mlp(norm2(h)) + p,    p = scale * P([phi_1(h), ..., phi_K(h)])

``phi_k`` = up_k(act(down_k(h))) is one small bottleneck branch per scenario and ``P`` a shared
linear projection from ``K * d`` to ``d`` (one per block). The branches read ``h`` itself (the
block's hidden state after attention, before ``norm2``), as in the UNIFIER formula
``r_l = s_l(LN(a_l)) + p_l``.

How it is wired, without replacing any module of the model (so checkpoint names and LoRA target
regexes keep working): the branch module becomes a child ``mmcl_branches`` of the block, a
forward pre-hook on ``norm2`` keeps ``h``, and a forward hook on ``mlp`` adds ``p`` to the MLP's
output. This works for every block that has ``mlp`` and a ``norm2`` / ``layer_norm2`` child:
the CLIP encoder layers of LLaVA and the Qwen2-VL / Qwen2.5-VL vision blocks (whose hidden state
is a packed ``[tokens, d]`` sequence instead of ``[batch, tokens, d]``).

Initialisation: the up-projections are zero, so every branch outputs zero and the model is
exactly unchanged; ``P`` starts as the average ``[I/K, ..., I/K]`` so that a branch's first
update reaches the output, and every trainable part gets gradient from the first step (with ``P``
zero as well, nothing would). The down-projections use the default ``nn.Linear`` init.

During a forward pass with ``record`` on, each branch module keeps its K branch outputs and its
``p`` (before ``scale``) in ``last`` so that a loss (UNIFIER's consistency constraint) can read
them; ``teacher`` switches a block to a frozen copy of its branches (the previous step's).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

NORM_NAMES = ("norm2", "layer_norm2")
CHILD_NAME = "mmcl_branches"


@dataclass
class BranchOutputs:
    """What one block's branch module computed in the last recorded forward pass."""

    branches: list[torch.Tensor]  # K tensors shaped like h
    projected: torch.Tensor  # P([phi_1..phi_K]) before the scale


class BranchModule(nn.Module):
    """K bottleneck branches (one per scenario) and the shared projection P of one block."""

    def __init__(self, dim: int, num_branches: int, bottleneck: int, scale: float, act: str = "gelu") -> None:
        super().__init__()
        if num_branches < 1 or bottleneck < 1:
            raise ValueError("BranchModule needs at least one branch and a bottleneck of at least 1")
        self.dim, self.num_branches, self.scale = dim, num_branches, scale
        self.down = nn.ModuleList(nn.Linear(dim, bottleneck) for _ in range(num_branches))
        self.up = nn.ModuleList(nn.Linear(bottleneck, dim) for _ in range(num_branches))
        self.act = nn.GELU() if act == "gelu" else nn.ReLU()
        self.proj = nn.Linear(num_branches * dim, dim)
        with torch.no_grad():
            for up in self.up:
                up.weight.zero_()
                up.bias.zero_()
            self.proj.weight.copy_(torch.eye(dim).repeat(1, num_branches) / num_branches)
            self.proj.bias.zero_()
        self.disabled = False
        self.record = False
        self.last: BranchOutputs | None = None

    def branch_parameters(self, k: int) -> list[nn.Parameter]:
        return [*self.down[k].parameters(), *self.up[k].parameters()]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        outs = [up(self.act(down(h))) for down, up in zip(self.down, self.up, strict=True)]
        projected = self.proj(torch.cat(outs, dim=-1))
        if self.record:
            self.last = BranchOutputs(outs, projected)
        return self.scale * projected


@dataclass
class _BlockSlot:
    """One wrapped block: its live branch module, an optional frozen teacher copy, the hooks."""

    name: str
    block: nn.Module
    live: BranchModule
    teacher: BranchModule | None = None
    use_teacher: bool = False
    pending: torch.Tensor | None = None  # the block's h, kept by the norm2 pre-hook for the MLP hook
    hooks: list[Any] = field(default_factory=list)

    @property
    def active(self) -> BranchModule:
        return self.teacher if self.use_teacher and self.teacher is not None else self.live


class VisionBranches:
    """The branch modules of every vision block of a model, and switches over all of them."""

    def __init__(self, slots: list[_BlockSlot]) -> None:
        self.slots = slots

    @property
    def modules(self) -> list[BranchModule]:
        return [s.live for s in self.slots]

    def __len__(self) -> int:
        return len(self.slots)

    def trainable(self, branch: int) -> list[nn.Parameter]:
        """Branch ``branch`` and the shared projections of every block."""
        out: list[nn.Parameter] = []
        for m in self.modules:
            out += m.branch_parameters(branch) + list(m.proj.parameters())
        return out

    def set_trainable(self, branch: int) -> None:
        """Freeze every branch parameter except branch ``branch`` and the projections."""
        keep = {id(p) for p in self.trainable(branch)}
        for m in self.modules:
            for p in m.parameters():
                p.requires_grad_(id(p) in keep)

    def freeze(self) -> None:
        for m in self.modules:
            m.requires_grad_(False)

    def snapshot_teacher(self) -> None:
        """Make each block's teacher a frozen copy of its branches as they are now."""
        self.clear()
        for s in self.slots:
            s.teacher = copy.deepcopy(s.live)
            s.teacher.requires_grad_(False)
            s.teacher.record = False

    @property
    def has_teacher(self) -> bool:
        return all(s.teacher is not None for s in self.slots)

    def set_record(self, on: bool) -> None:
        """Keep (``on``) or stop keeping the live branches' outputs of each forward pass."""
        for m in self.modules:
            m.record, m.last = on, None

    def recorded(self) -> list[BranchOutputs]:
        """The live branches' outputs of the last recorded forward pass, one per block."""
        missing = [s.name for s in self.slots if s.live.last is None]
        if missing:
            raise RuntimeError(f"no recorded branch outputs for {missing[0]} (was recording on?)")
        return [s.live.last for s in self.slots]  # type: ignore[misc]

    @torch.no_grad()
    def teacher_outputs(self, forward: Callable[[], Any]) -> list[BranchOutputs]:
        """Run ``forward`` with every block's frozen teacher copy in place of its live branches."""
        if not self.has_teacher:
            raise RuntimeError("no teacher branches: call snapshot_teacher() first")
        teachers = [s.teacher for s in self.slots]
        try:
            for t in teachers:
                t.record, t.last = True, None  # type: ignore[union-attr]
            with self.teacher_mode():
                forward()
            outs = [t.last for t in teachers]  # type: ignore[union-attr]
        finally:
            for t in teachers:
                t.record, t.last = False, None  # type: ignore[union-attr]
        if any(o is None for o in outs):
            raise RuntimeError("the teacher forward pass did not run every vision block")
        return outs  # type: ignore[return-value]

    @contextlib.contextmanager
    def teacher_mode(self) -> Iterator[None]:
        """Run every block with its frozen teacher copy in place of its live branches."""
        if not self.has_teacher:
            raise RuntimeError("no teacher branches: call snapshot_teacher() first")
        try:
            for s in self.slots:
                s.use_teacher = True
            yield
        finally:
            for s in self.slots:
                s.use_teacher = False

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the model as if no branch were installed."""
        before = [m.disabled for m in self.modules]
        try:
            for m in self.modules:
                m.disabled = True
            yield
        finally:
            for m, d in zip(self.modules, before, strict=True):
                m.disabled = d

    def clear(self) -> None:
        for s in self.slots:
            s.live.last, s.pending = None, None
            if s.teacher is not None:
                s.teacher.last = None

    def remove(self) -> None:
        """Take the hooks and the branch modules out of the model again."""
        for s in self.slots:
            for h in s.hooks:
                h.remove()
            delattr(s.block, CHILD_NAME)
        self.slots = []


def _norm_of(block: nn.Module) -> tuple[str, nn.Module] | None:
    for name in NORM_NAMES:
        mod = getattr(block, name, None)
        if isinstance(mod, nn.Module):
            return name, mod
    return None


def _dim_of(norm: nn.Module) -> int:
    weight = getattr(norm, "weight", None)
    if weight is None:
        raise ValueError(f"cannot tell the hidden size of {type(norm).__name__}: it has no weight")
    return int(weight.shape[-1])


def find_vision_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Transformer blocks of the vision encoder: modules under a ``vision``/``visual`` path with
    ``mlp`` and ``norm2``/``layer_norm2`` children, in model order."""
    found = []
    for name, module in model.named_modules():
        path = name.lower()
        if ("vision" not in path and "visual" not in path) or not isinstance(getattr(module, "mlp", None), nn.Module):
            continue
        if _norm_of(module) is not None and not hasattr(module, CHILD_NAME):
            found.append((name, module))
    return found


def install_branches(
    model: nn.Module, num_branches: int, bottleneck: int, scale: float = 1.0, act: str = "gelu"
) -> VisionBranches:
    """Add a :class:`BranchModule` in parallel with the MLP of every vision block of ``model``.

    Raises ValueError if the model has no recognisable vision block.
    """
    blocks = find_vision_blocks(model)
    if not blocks:
        raise ValueError(
            "no vision-encoder block found: expected modules under a 'vision'/'visual' path with "
            f"'mlp' and one of {NORM_NAMES} children"
        )
    slots = []
    for name, block in blocks:
        norm_name, norm = _norm_of(block)  # type: ignore[misc]
        ref = next(block.parameters())
        module = BranchModule(_dim_of(norm), num_branches, bottleneck, scale, act).to(ref.device, ref.dtype)
        block.add_module(CHILD_NAME, module)
        slot = _BlockSlot(name, block, module)

        def keep_input(_mod: nn.Module, args: tuple, slot: _BlockSlot = slot) -> None:
            slot.pending = args[0]

        def add_branches(_mod: nn.Module, _args: tuple, out: torch.Tensor, slot: _BlockSlot = slot) -> torch.Tensor:
            h, slot.pending = slot.pending, None
            if slot.live.disabled or h is None:
                return out
            return out + slot.active(h)

        slot.hooks = [norm.register_forward_pre_hook(keep_input), block.mlp.register_forward_hook(add_branches)]
        slots.append(slot)
    return VisionBranches(slots)
