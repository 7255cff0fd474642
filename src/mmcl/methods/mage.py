"""``mage``: MAGE of Continual-NExT (Qiao et al., 2026, arXiv 2602.18055): Mixture and Aggregation
of General and Expert LoRAs, as in the released code (``JingyangQiao/MAGE``; see
``shared/references/continual_next_mage.md`` (next to the repository), "the reference", sections cited as §).

**Experts (§2.1).** Every target linear layer of the run's LoRA config (``ctx.lora_config()``: the LM's
attention and MLP projections by default) holds four LoRA experts, here four peft adapters on the
same model::

    gen_text_in    general LoRA, text input      (released expert index 0, flag ``text_input``)
    gen_image_in   general LoRA, image input     (index 1, ``image_input``)
    exp_text_out   expert LoRA, text output      (index 2, ``text_output``)
    exp_image_out  expert LoRA, image output     (index 3, ``image_output``)

All four are active at every step and in evaluation (``LoraModel.set_adapter([all four])``:
peft's ``lora.Linear.forward`` adds ``B_i A_i x * scaling_i`` for each active adapter), so a layer
computes ``W x + sum_i s B_i A_i x``: the **equal-weight sum** of the released ``MAGELinear``
(``router = [1, 1, 1, 1]``). With ``split_rank`` (default, as released) each expert has rank
``model.lora_rank / 4`` and peft ``lora_alpha = model.lora_alpha / 4``, so every expert's scaling
is ``lora_alpha / lora_rank`` of the whole layer (the released ``r: 32`` = 4 experts of rank 8,
scaling 32/32 = 1) and the four together hold as many parameters as one ``lora-ft`` adapter.
Initialisation is peft's (A Kaiming-uniform, B = 0; released: A ~ N(0, 0.01), B = 0).

``gate: token`` replaces the equal weights by a learned per-token softmax over the four experts,
the released code's commented-out ``router = softmax(self.lora_router(x))`` (§2.1). peft cannot
express a per-token mixture of adapters, so it is done with forward hooks: each LoRA layer gets a
``mage_router`` ``nn.Linear(in_features, 4)`` (zero-initialised, so the gate starts uniform at
1/4 each); a pre-forward hook computes ``softmax(router(x))`` and a forward hook on each expert's
``lora_B`` multiplies its output by that expert's gate column. The routers train at every task
(they are not modality-gated) and are not aggregated. Off by default, as released.

**Modality gating (§2.2).** Per task, only the experts of the modalities it uses train: the
general expert of each input modality and the expert of each output modality. The modalities come
from ``task.meta["modalities"]`` (``{"in": ["text", "image"], "out": ["text"]}``) when present,
else: in = text, plus image if any training sample has an image; out = text. So VQA trains
gen_text_in, gen_image_in, exp_text_out; text-to-image trains gen_text_in, exp_image_out; editing
trains gen_text_in, gen_image_in, exp_image_out. The other experts stay frozen but active (weight
1 in the sum). ``gating: false`` trains all four at every task (the ablation "equal-weight sum
only" together with ``aggregation: false``).

**Aggregation (§2.3): ``aggregation: adaptive`` (default) | ``released`` | ``off``.** During a
task, each trained expert tensor ``theta`` (every A and B) keeps a running average ``avg`` (set to
``theta`` when the task starts). At every update step (``after_backward``, i.e. before the
optimizer step, as released) with gradient ``g``, ``a = theta - avg``, a weight ``alpha`` on the
OLD (stable) copy updates ``avg = alpha * avg + (1 - alpha) * theta``; at the end of the task
(``after_task``) the averages replace the trained weights (released ``ema_replace``; an average
with a NaN/inf is not copied, as released, and counted). A task marked ``meta["warm_start"]`` (the
shared first task of Continual-NExT, trained "without any CL method" by every baseline) is trained
without aggregation. ``true`` / ``false`` (the earlier boolean option) read as ``released`` / ``off``.

``released`` (PEMA as in the code, elementwise; see the differences below)::

    alpha = (1 + g) / (a * g**2 + eps)       # released: alpha = (g + 1) @ inv(aᵀ g² + eps·I)
    alpha = fallback_alpha where alpha is not finite or outside [0, 1]   (pema_out_of_range=fallback)

Measured, it never acts: on the tiny Janus' LoRA experts ``a g²`` is far below ``eps = 1e-5``, so
alpha is about 1e5 and the share of elements whose alpha lands in [0, 1] is below 1 %
(``tests/test_method_mage.py``; 0 of 57.3 M element updates on ``configs/continual-next-quick.yaml``,
seed 0, ``docs/results-continual-next.md``). Run in its released matrix form on the same
tensors, the average diverged (max |avg| 0.12 -> 2e9 in 3 updates), so in the release the
adaptive weight cannot have acted either (its NaN guard or bare ``except`` catches it): what runs
is the fallback, a plain EMA.

``adaptive`` with ``adaptive_weight: noise-share`` (default), one weight per tensor::

    m     = beta * m + (1 - beta) * g                # running gradient moments (beta = adaptive_beta, 0.9)
    s     = beta * s + (1 - beta) * |g|**2
    alpha = 1 - |m / (1 - beta**t)|**2 / (s / (1 - beta**t))

``alpha`` is the share of the recent gradients' energy that cancels out: dimensionless (the units
of ``g`` cancel; rescaling a tensor changes nothing) and in [0, 1] by construction (the two
bias-corrected EMAs are means under the same weights, so ``|m_hat|**2 <= s_hat`` by Jensen), so it
needs no fallback and no clamp (only against rounding). Where successive gradients agree (the
task is still being learned along a direction) alpha is near 0 and the average follows the
weights; where they cancel (the weights oscillate around what the task wants) alpha approaches
1 - ((1 - beta) / (1 + beta))**2 = 0.997 and the average holds, filtering the oscillation out of
what is kept. It costs one more fp32 copy of the trained experts (``m``; DEMA keeps ``g_prev``,
the same size) and one scalar per tensor. A tensor without a gradient yet (LoRA A while its B
is still 0) takes the fallback, counted.

``adaptive`` with ``adaptive_weight: second-order``: the per-tensor optimum of the released
derivation, ``alpha = clamp(<g, a> / (sum g**2 a**2 + eps |a|**2), 0, 1)`` (the loss along
``theta - alpha a`` to second order, the empirical-Fisher diagonal of the batch gradient as the
Hessian). Kept to be reproducible, not the default: measured on the tiny Janus (classification
stage, 20 steps, 3,024 tensor updates) the unclamped value's median is -1.9e5 and only 2.8 % land
in [0, 1] (79 % below 0, 18 % above 1): the squared *mean* batch gradient underestimates the
curvature by orders of magnitude, so the weight is a sign test (keep the old average entirely, or
jump to the weights). The per-tensor form of the same authors' DEMA (CIA,
``0.01 (1 + |g|_1) / (|a|_1 |g - g_prev|_1)``, base weight 0.001 outside (0, 1)) was not
chosen: it is not dimensionless (``1 + |g|_1`` adds a number to a gradient) and, like the
released form, bounded only by a fallback.

Counts, per task (``cost()["pema"]["per_task"]``, in results.json) and for the run: element
updates, those that used the adaptive weight (``share_adaptive``), clamped (``share_clamped``),
the fallbacks by cause, and the mean weight on the old average (``mean_alpha``).

**The fallback weight** (``pema_fallback_alpha``, released 0.99) acts where the adaptive weight
cannot. With ``pema_fallback_horizon: scaled`` (default) it is ``0.99 ** (pema_release_steps /
steps)`` for a task of ``steps`` update steps (released: 3,000 steps per task), so a task keeps
the share of its start-of-task weights the release's keeps (0.99 ** 3000); ``fixed`` uses 0.99
per step, which over the quick config's 100 steps keeps 0.37 of the start-of-task weights (the
release: 8e-14), pulling each task's experts back toward where they started.

Differences from the released code, on purpose:

* **Elementwise instead of a d×d inverse.** The released code forms ``aᵀ g²`` (an
  ``in × in`` matrix for every A: 5120² or 13824² on SEED-X) and inverts it at every step. Here the
  matrix is replaced by its elementwise analogue ``a ⊙ g² + eps`` (each element its own 1×1
  "Hessian"), which costs O(params) time and one extra copy of the trained experts in memory. This
  is the diagonal approximation the reference proposes ([inferred] in §2.3).
* **Fallback explicit and counted.** The released code falls back to ``ema = 0.99 ema + 0.01 θ``
  inside a bare ``except:`` (singular matrix, missing grad). Here the fallback is per element and
  counted in ``cost()["pema"]``: ``zero_denominator`` (``a g² + eps == 0``), ``out_of_range``
  (alpha not finite or outside [0, 1]; with ``pema_out_of_range: clamp`` a finite alpha is clamped
  instead and only non-finite ones fall back), ``no_grad_elements`` (a trained tensor without a
  gradient: the whole tensor takes the plain EMA) and ``not_replaced`` (averages with NaN/inf
  left out at the end). With the released constants (``eps = 1e-5``) and LoRA-sized weights and
  gradients, ``a g²`` is far below ``eps``, so alpha is about ``1e5`` and most elements take the
  fallback, i.e. a plain EMA with coefficient ``pema_fallback_alpha``: the counts say how often.
  (The released matrix form has the same scale: ``inv(aᵀg² + 1e-5 I)`` is about ``1e5 I``.)
  The fallback's horizon is scaled to the task's length by default (above).
* **Gradient as released: clipped.** The released update reads ``param.grad`` after clipping;
  ``after_backward`` runs before the loop clips, so with ``pema_clipped_grad`` (default) ``g`` is
  scaled by the clipping factor ``min(1, max_grad_norm / (||g||_2 + 1e-6))`` over the trainable
  parameters, the factor ``clip_grad_norm_`` applies next (the loop publishes it: ``ctx.clip_scale()``).
* **Update steps only.** The released code also updates on non-synchronising micro-steps of
  gradient accumulation (partial gradients). Here, by default, only steps whose gradients are
  complete (accelerate's ``sync_gradients``) update the averages: the same on one process with
  ``grad_accum: 1``, and under DDP every process then holds the same averages.
  ``pema_micro_steps: true`` updates on every backward, as released.
* **Only the experts.** The released code also snapshots every other trainable tensor (norms,
  embeddings, the unused router) and ``ema_replace`` resets them to their start-of-task values
  (§2.3, point 1). Here only the trained experts are averaged.

Resume: a checkpoint is written after ``after_task`` (see :mod:`mmcl.checkpoint`), when no average
is held; ``state_dict`` still carries the averages if any (mid-task), the counters and the
per-stage log. ``model.train_projector`` is refused: peft's ``modules_to_save`` keeps one active
adapter, MAGE keeps four. Distributed: DDP (``param.grad`` must be local and full, §4).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from accelerate.state import GradientState
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from pydantic import Field, field_validator

from mmcl.adapters.lora import refuse_train_projector
from mmcl.adapters.pool import activate, adapter_weights, lora_layers
from mmcl.data.sample import Sample, Task
from mmcl.methods.base import METHODS, Method, MethodOptions, RunContext

MODALITIES = ("text", "image")
EXPERTS = ("gen_text_in", "gen_image_in", "exp_text_out", "exp_image_out")
"""Adapter names, in the released code's expert order (text_input, image_input, text_output, image_output)."""
N_EXPERTS = len(EXPERTS)


class MAGEOptions(MethodOptions):
    """Ablation switches, the optional token gate, expert ranks and PEMA's coefficients."""

    gating: bool = Field(True, description="train only the experts of the task's modalities (false: all four)")
    aggregation: Literal["adaptive", "released", "off"] = Field(
        "adaptive",
        description="running average replacing the trained experts after each task: 'adaptive' (per-tensor "
        "second-order weight), 'released' (the released elementwise PEMA), 'off' (true = released, false = off)",
    )
    gate: Literal["none", "token"] = Field(
        "none", description="'none': equal-weight sum (released); 'token': learned per-token softmax over experts"
    )
    split_rank: bool = Field(
        True, description="each expert rank lora_rank/4 with scaling lora_alpha/lora_rank (released); false: full rank"
    )
    pema_eps: float = Field(1e-5, ge=0.0, description="ridge added to the denominator (released: 1e-5 * I)")
    pema_fallback_alpha: float = Field(
        0.99, ge=0.0, le=1.0, description="weight on the old average where PEMA's alpha is unusable (released: 0.99)"
    )
    pema_fallback_horizon: Literal["scaled", "fixed"] = Field(
        "scaled",
        description="'scaled': the fallback weight per step is pema_fallback_alpha ** (pema_release_steps / steps "
        "of the task), the same horizon as the release's; 'fixed': pema_fallback_alpha per step",
    )
    pema_release_steps: int = Field(3000, ge=1, description="update steps per task the fallback weight was set for (released: 3000)")
    pema_out_of_range: Literal["fallback", "clamp"] = Field(
        "fallback", description="alpha outside [0, 1]: 'fallback' to pema_fallback_alpha, or 'clamp' into [0, 1]"
    )
    adaptive_weight: Literal["noise-share", "second-order"] = Field(
        "noise-share",
        description="aggregation=adaptive: 'noise-share' (1 - |EMA g|^2 / EMA |g|^2 per tensor) or 'second-order' "
        "(clamp(<g, a> / (sum g^2 a^2 + eps |a|^2), 0, 1) per tensor; measured: clamped almost always)",
    )
    adaptive_beta: float = Field(
        0.9, ge=0.0, lt=1.0, description="noise-share: EMA coefficient of the gradient moments (Adam's beta1)"
    )
    pema_adaptive_eps: float = Field(
        1e-8, ge=0.0, description="second-order: ridge eps in <g, a> / (sum g^2 a^2 + eps |a|^2)"
    )
    pema_clipped_grad: bool = Field(True, description="scale g as the loop's grad clipping will (released: clipped)")
    pema_micro_steps: bool = Field(
        False, description="also update on non-sync gradient-accumulation micro-steps (released: true)"
    )

    @field_validator("aggregation", mode="before")
    @classmethod
    def _aggregation_bool(cls, value: Any) -> Any:
        """``true`` / ``false`` (the earlier boolean option) read as ``released`` / ``off``."""
        if isinstance(value, bool):
            return "released" if value else "off"
        if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
            return "released" if value.strip().lower() == "true" else "off"
        return value


def expert_of(role: Literal["in", "out"], modality: str) -> str:
    """The adapter for a modality on the input (general) or output (expert) side."""
    return f"gen_{modality}_in" if role == "in" else f"exp_{modality}_out"


def task_modalities(task: Task, samples: Sequence[Sample] | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input modalities, output modalities) of ``task``.

    ``task.meta["modalities"]`` (``{"in": [...], "out": [...]}``) when present; else input = text,
    plus image if any training sample (``samples`` if given, else ``task.train``) has an image, and
    output = text.
    """
    declared = task.meta.get("modalities") if task.meta else None
    if declared is not None:
        if not isinstance(declared, dict) or set(declared) != {"in", "out"}:
            raise ValueError(
                f"task {task.name!r}: meta['modalities'] must be a dict with keys 'in' and 'out', got {declared!r}"
            )
        out: list[tuple[str, ...]] = []
        for side in ("in", "out"):
            mods = declared[side]
            if isinstance(mods, str) or not isinstance(mods, Sequence) or not mods:
                raise ValueError(f"task {task.name!r}: meta['modalities'][{side!r}] must be a non-empty list, got {mods!r}")
            bad = [m for m in mods if m not in MODALITIES]
            if bad:
                raise ValueError(
                    f"task {task.name!r}: unknown modality {bad[0]!r} in meta['modalities'][{side!r}] "
                    f"(known: {', '.join(MODALITIES)})"
                )
            out.append(tuple(m for m in MODALITIES if m in mods))
        return out[0], out[1]
    pool = task.train if samples is None else samples
    has_image = any(s.image is not None for s in pool)
    return (("text", "image") if has_image else ("text",)), ("text",)


def experts_to_train(inputs: Sequence[str], outputs: Sequence[str]) -> list[str]:
    """The modality gating rule (§2.2): the general expert of each input, the expert of each output."""
    wanted = {expert_of("in", m) for m in inputs} | {expert_of("out", m) for m in outputs}
    return [e for e in EXPERTS if e in wanted]


COUNT_KEYS = ("elements", "adaptive_elements", "clamped_low", "clamped_high", "zero_denominator", "out_of_range",
              "no_grad_elements", "alpha_sum")
"""Per-update counts, in elements (one tensor update counts its numel): ``adaptive_elements`` took the
adaptive weight (clamped or not), ``clamped_low``/``clamped_high`` of them had it clamped to 0 / 1,
``zero_denominator``, ``out_of_range`` and ``no_grad_elements`` took the fallback; ``alpha_sum`` is
the sum of the weights on the old average actually used (fallbacks included)."""


def _counts(n: int, **kw: float) -> dict[str, float]:
    out: dict[str, float] = dict.fromkeys(COUNT_KEYS, 0)
    out.update(elements=n, **kw)
    return out


def _plain_ema(avg: torch.Tensor, th: torch.Tensor, fallback_alpha: float) -> None:
    avg.mul_(fallback_alpha).add_(th, alpha=1.0 - fallback_alpha)


def pema_update(
    avg: torch.Tensor,
    theta: torch.Tensor,
    grad: torch.Tensor | None,
    *,
    eps: float = 1e-5,
    fallback_alpha: float = 0.99,
    out_of_range: Literal["fallback", "clamp"] = "fallback",
) -> dict[str, float]:
    """One released-form PEMA step on ``avg`` in place (elementwise form of §2.3; see the module docstring).

    ``alpha = (1 + g) / ((theta - avg) * g**2 + eps)``; ``avg <- alpha * avg + (1 - alpha) * theta``.
    Elements whose alpha is unusable take ``fallback_alpha`` (the released ``except`` branch).
    Returns the counts of :data:`COUNT_KEYS`.
    """
    with torch.no_grad():
        th = theta.detach().to(avg.dtype)
        n = avg.numel()
        if grad is None:  # the released code's except branch for a missing grad: a plain EMA
            _plain_ema(avg, th, fallback_alpha)
            return _counts(n, no_grad_elements=n, alpha_sum=fallback_alpha * n)
        g = grad.detach().to(avg.dtype)
        den = (th - avg) * g.square() + eps
        zero = den == 0
        alpha = (1.0 + g) / torch.where(zero, torch.ones_like(den), den)
        finite = torch.isfinite(alpha) & ~zero
        low, high = finite & (alpha < 0), finite & (alpha > 1)
        if out_of_range == "clamp":
            alpha = alpha.clamp(0.0, 1.0)
            bad = ~finite
        else:
            bad = ~finite | low | high
            low, high = torch.zeros_like(low), torch.zeros_like(high)
        alpha = torch.where(bad, torch.full_like(alpha, fallback_alpha), alpha)
        avg.mul_(alpha).add_((1.0 - alpha) * th)
        n_zero, n_bad = int(zero.sum()), int(bad.sum())
        return _counts(n, adaptive_elements=n - n_bad, clamped_low=int(low.sum()), clamped_high=int(high.sum()),
                       zero_denominator=n_zero, out_of_range=n_bad - n_zero, alpha_sum=float(alpha.sum()))


def adaptive_weight(a: torch.Tensor, g: torch.Tensor, eps: float = 1e-8) -> float:
    """The unclamped per-tensor weight on the old average: ``<g, a> / (sum g**2 a**2 + eps |a|**2)``.

    With ``a = theta - avg``, the candidate ``avg' = theta - w a`` (``w`` on the old average), and the
    loss around ``theta`` to second order with the empirical-Fisher diagonal ``diag(g**2)`` as the
    Hessian, ``L(theta - w a) ~ L - w <g, a> + w**2 / 2 * a^T diag(g**2) a`` is lowest at this ``w``.
    NaN when the denominator is 0 (``a = 0``: every ``w`` gives the same average).
    """
    a64, g64 = a.double(), g.double()
    num = float((g64 * a64).sum())
    den = float((g64 * a64).square().sum() + eps * a64.square().sum())
    return num / den if den > 0 else float("nan")


def pema_adaptive_update(
    avg: torch.Tensor,
    theta: torch.Tensor,
    grad: torch.Tensor | None,
    *,
    eps: float = 1e-8,
    fallback_alpha: float = 0.99,
) -> dict[str, float]:
    """One second-order step on ``avg`` in place (``adaptive_weight: second-order``), one weight per tensor.

    ``w = clamp(adaptive_weight(a, g, eps), 0, 1)`` with ``a = theta - avg``;
    ``avg <- w * avg + (1 - w) * theta``. A tensor without a gradient, or whose ``w`` is undefined
    (``a = 0``) or not finite, takes ``fallback_alpha``. Returns the counts of :data:`COUNT_KEYS`.
    """
    with torch.no_grad():
        th = theta.detach().to(avg.dtype)
        n = avg.numel()
        if grad is None:
            _plain_ema(avg, th, fallback_alpha)
            return _counts(n, no_grad_elements=n, alpha_sum=fallback_alpha * n)
        w = adaptive_weight(th - avg, grad.detach().to(avg.dtype), eps)
        if not math.isfinite(w):
            zero = bool((th == avg).all())
            _plain_ema(avg, th, fallback_alpha)
            return _counts(n, zero_denominator=n if zero else 0, out_of_range=0 if zero else n,
                           alpha_sum=fallback_alpha * n)
        clamped = min(1.0, max(0.0, w))
        avg.mul_(clamped).add_(th, alpha=1.0 - clamped)
        return _counts(n, adaptive_elements=n, clamped_low=n if w < 0 else 0, clamped_high=n if w > 1 else 0,
                       alpha_sum=clamped * n)


@dataclass
class GradientMoments:
    """Running gradient moments of one tensor for :func:`noise_share_update`: ``m`` (EMA of ``g``,
    a tensor), ``s`` (EMA of ``|g|**2``, a scalar), ``t`` (updates so far)."""

    m: torch.Tensor
    s: float = 0.0
    t: int = 0


def noise_share(mom: GradientMoments, beta: float) -> float:
    """``1 - |m_hat|**2 / s_hat``: the share of the recent gradients' energy that cancels out (NaN if s = 0).

    ``m_hat = m / (1 - beta**t)`` and ``s_hat = s / (1 - beta**t)`` are weighted means of ``g`` and
    ``|g|**2`` with the same weights, so ``|m_hat|**2 <= s_hat`` (Jensen) and the share is in [0, 1]:
    0 when the recent gradients agree, ``(1 - beta) / (1 + beta)`` short of 1 for independent noise.
    """
    if mom.s <= 0 or mom.t == 0:
        return float("nan")
    corr = 1.0 - beta**mom.t
    ratio = float(mom.m.double().square().sum()) / corr / mom.s  # |m_hat|^2 / s_hat = |m|^2 / (corr * s)
    return 1.0 - ratio


def noise_share_update(
    avg: torch.Tensor,
    theta: torch.Tensor,
    grad: torch.Tensor | None,
    mom: GradientMoments,
    *,
    beta: float = 0.9,
    fallback_alpha: float = 0.99,
) -> dict[str, float]:
    """One adaptive aggregation step (``adaptive_weight: noise-share``, the default) on ``avg`` in place.

    The running moments take ``g``; then ``w = noise_share(mom, beta)`` (one weight per tensor, in
    [0, 1] by construction; clamped only against rounding) and ``avg <- w * avg + (1 - w) * theta``.
    No gradient, or an all-zero gradient history (``w`` undefined): ``fallback_alpha``, counted.
    """
    with torch.no_grad():
        th = theta.detach().to(avg.dtype)
        n = avg.numel()
        if grad is None:
            _plain_ema(avg, th, fallback_alpha)
            return _counts(n, no_grad_elements=n, alpha_sum=fallback_alpha * n)
        g = grad.detach().to(mom.m.dtype)
        mom.m.mul_(beta).add_(g, alpha=1.0 - beta)
        mom.s = beta * mom.s + (1.0 - beta) * float(g.double().square().sum())
        mom.t += 1
        w = noise_share(mom, beta)
        if not math.isfinite(w):
            _plain_ema(avg, th, fallback_alpha)
            return _counts(n, zero_denominator=n, alpha_sum=fallback_alpha * n)
        w = min(1.0, max(0.0, w))
        avg.mul_(w).add_(th, alpha=1.0 - w)
        return _counts(n, adaptive_elements=n, alpha_sum=w * n)


def _new_counts() -> dict[str, float]:
    return {**dict.fromkeys(COUNT_KEYS, 0), "not_replaced": 0}


def share_adaptive(counts: dict[str, float]) -> float | None:
    """The share of element updates that used the adaptive weight (None before any update)."""
    return counts["adaptive_elements"] / counts["elements"] if counts["elements"] else None


def fallback_weight(alpha: float, steps: int, release_steps: int = 3000) -> float:
    """The per-step fallback weight with the released horizon: ``alpha ** (release_steps / steps)``.

    A plain EMA of weight ``alpha`` over the release's ``release_steps`` steps keeps ``alpha **
    release_steps`` of the start-of-task weights (0.99 ** 3000 = 8e-14); over ``steps`` steps this
    weight keeps the same share.
    """
    return float(alpha ** (release_steps / max(1, steps)))


@METHODS.register("mage")
class MAGE(Method):
    """Four always-active LoRA experts per layer, modality-gated training, PEMA aggregation per task."""

    name = "mage"
    Options = MAGEOptions
    supports = frozenset({"ddp"})

    def __init__(self, ctx: RunContext, options: MethodOptions) -> None:
        super().__init__(ctx, options)
        refuse_train_projector(ctx.config.model, self.name,
                               "peft's modules_to_save allows one active adapter, while MAGE keeps its four experts active")
        if self.opts.split_rank and (ctx.config.model.lora_rank % N_EXPERTS):
            raise ValueError(
                f"method 'mage' with split_rank=true gives each of its {N_EXPERTS} experts rank lora_rank/{N_EXPERTS}: "
                f"model.lora_rank={ctx.config.model.lora_rank} is not a multiple of {N_EXPERTS} "
                "(set model.lora_rank, or method.split_rank=false for full-rank experts)"
            )
        self._layers: list[tuple[str, LoraLayer]] = []
        self._hooks: list[Any] = []
        self.trained: list[str] = list(EXPERTS)  # experts trainable in the current/last task
        self.modalities: dict[str, list[str]] = {}
        self.avg: dict[str, torch.Tensor] = {}  # PEMA running averages of the trained tensors (this task)
        self.moments: dict[str, GradientMoments] = {}  # aggregation=adaptive, noise-share: gradient moments
        self.counts: dict[str, float] = _new_counts()  # PEMA counters, whole run
        self.stage_log: list[dict[str, Any]] = []  # per stage: modalities, trained experts, PEMA counts
        self._stage_counts: dict[str, float] = _new_counts()
        self.fallback_alpha = self.opts.pema_fallback_alpha  # this task's per-step fallback weight
        self.task_steps = 0  # this task's update steps (for the scaled fallback horizon)
        self.peak_avg_bytes = 0

    @property
    def opts(self) -> MAGEOptions:
        assert isinstance(self.options, MAGEOptions)
        return self.options

    # ------------------------------------------------------------------ adapters
    def _config(self) -> LoraConfig:
        cfg = copy.deepcopy(self.ctx.lora_config())
        if self.opts.split_rank:  # scaling lora_alpha / lora_rank per expert, as the released MAGELinear
            cfg.r = cfg.r // N_EXPERTS
            cfg.lora_alpha = cfg.lora_alpha / N_EXPERTS
        return cfg

    def setup(self, model: torch.nn.Module) -> torch.nn.Module:
        torch.manual_seed(self.ctx.seed)
        self.model = get_peft_model(model, self._config(), adapter_name=EXPERTS[0])
        self._ensure_experts()
        return self.model

    def _ensure_experts(self) -> None:
        """Add the missing experts (and token gates), make all four active, set the trainable flags."""
        for e in EXPERTS:
            if e not in self.model.peft_config:
                self.model.add_adapter(e, self._config())
        self._layers = lora_layers(self.model, EXPERTS[0])
        if self.opts.gate == "token" and not self._hooks:
            self._add_token_gates()
        self._activate()

    def _activate(self) -> None:
        """Every expert active (summed in the forward); only ``self.trained`` (and the gates) trainable."""
        activate(self.model, EXPERTS, self.trained)
        for _, layer in self._layers:
            if hasattr(layer, "mage_router"):
                layer.mage_router.requires_grad_(True)

    def _add_token_gates(self) -> None:
        """Per-token softmax gate over the four experts, through forward hooks (see the module docstring)."""
        for _, layer in self._layers:
            base = layer.get_base_layer()
            if not isinstance(base, torch.nn.Linear):
                raise ValueError(f"method 'mage' gate=token needs nn.Linear targets, got {type(base).__name__}")
            if not hasattr(layer, "mage_router"):
                router = torch.nn.Linear(base.in_features, N_EXPERTS).to(base.weight.device)
                torch.nn.init.zeros_(router.weight)
                torch.nn.init.zeros_(router.bias)
                layer.mage_router = router  # a submodule: saved by the checkpoint with the model
            self._hooks.append(layer.register_forward_pre_hook(_compute_gate))
            self._hooks.append(layer.register_forward_hook(_drop_gate))
            for i, e in enumerate(EXPERTS):
                self._hooks.append(layer.lora_B[e].register_forward_hook(_gate_hook(layer, i)))

    def expert_tensors(self, experts: Iterable[str] = EXPERTS) -> dict[str, torch.nn.Parameter]:
        """``{"<layer>.lora_A.<expert>": weight, ...}`` for the given experts."""
        return adapter_weights(self._layers, experts)

    def _router_params(self) -> list[torch.nn.Parameter]:
        return [p for _, layer in self._layers if hasattr(layer, "mage_router") for p in layer.mage_router.parameters()]

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        # re-apply the flags: leaving peft's disable_adapter() re-enables grads on every active adapter
        self._activate()
        return list(self.expert_tensors(self.trained).values()) + self._router_params()

    # ------------------------------------------------------------------ stages
    def before_task(self, stage: int, task: Task) -> None:
        inputs, outputs = task_modalities(task)
        self.modalities = {"in": list(inputs), "out": list(outputs)}
        self.trained = experts_to_train(inputs, outputs) if self.opts.gating else list(EXPERTS)
        self._activate()
        self._stage_counts = _new_counts()
        self.avg, self.moments = {}, {}
        self.task_steps = self._task_steps(stage, task)
        o = self.opts
        self.fallback_alpha = (fallback_weight(o.pema_fallback_alpha, self.task_steps, o.pema_release_steps)
                               if o.pema_fallback_horizon == "scaled" else o.pema_fallback_alpha)
        # a shared warm-start task (task.meta["warm_start"], Continual-NExT's VQAv2) is trained without
        # the CL mechanism, as in the paper: gating applies, aggregation does not
        if o.aggregation != "off" and not task.meta.get("warm_start"):  # released: ema = deepcopy(θ) at the first step
            self.avg = {k: p.detach().clone().float() for k, p in self.expert_tensors(self.trained).items()}
            if o.aggregation == "adaptive" and o.adaptive_weight == "noise-share":
                self.moments = {k: GradientMoments(torch.zeros_like(t)) for k, t in self.avg.items()}
            self.peak_avg_bytes = max(self.peak_avg_bytes, self._avg_bytes())

    def _task_steps(self, stage: int, task: Task) -> int:
        """The update steps the loop will run on this task."""
        return self.ctx.update_steps(len(self.train_samples(stage, task)))

    def after_backward(self, stage: int) -> None:
        if self.opts.aggregation == "off" or not self.avg:
            return
        if not self.opts.pema_micro_steps and not GradientState().sync_gradients:
            return
        tensors = self.expert_tensors(self.trained)
        scale = self.ctx.clip_scale() if self.opts.pema_clipped_grad else 1.0
        o = self.opts
        for k, avg in self.avg.items():
            p = tensors[k]
            g = None if p.grad is None else p.grad * scale
            if o.aggregation == "adaptive" and o.adaptive_weight == "noise-share":
                c = noise_share_update(avg, p, g, self.moments[k], beta=o.adaptive_beta,
                                       fallback_alpha=self.fallback_alpha)
            elif o.aggregation == "adaptive":
                c = pema_adaptive_update(avg, p, g, eps=o.pema_adaptive_eps, fallback_alpha=self.fallback_alpha)
            else:
                c = pema_update(avg, p, g, eps=o.pema_eps, fallback_alpha=self.fallback_alpha,
                                out_of_range=o.pema_out_of_range)
            for name, v in c.items():
                self._stage_counts[name] += v
                self.counts[name] += v

    def after_task(self, stage: int, task: Task) -> None:
        if self.opts.aggregation != "off" and self.avg:
            self.replace_with_averages()
        self.stage_log.append(
            {
                "stage": stage,
                "task": task.name,
                "modalities": dict(self.modalities),
                "trained": list(self.trained),
                "pema": dict(self._stage_counts),
                "steps": self.task_steps,
                "fallback_alpha": self.fallback_alpha,
            }
        )

    def replace_with_averages(self) -> None:
        """Copy each running average into its expert tensor (released ``ema_replace``), then drop them."""
        tensors = self.expert_tensors(self.trained)
        with torch.no_grad():
            for k, avg in self.avg.items():
                if not bool(torch.isfinite(avg).all()):  # released: skipped when the EMA has NaNs
                    self._stage_counts["not_replaced"] += 1
                    self.counts["not_replaced"] += 1
                    continue
                tensors[k].copy_(avg.to(tensors[k].dtype))
        self.avg, self.moments = {}, {}

    def _avg_bytes(self) -> int:
        held = [*self.avg.values(), *(m.m for m in self.moments.values())]
        return sum(t.numel() * t.element_size() for t in held)

    # ------------------------------------------------------------------ bookkeeping
    def state_dict(self) -> dict[str, Any]:
        return {
            "trained": list(self.trained),
            "modalities": dict(self.modalities),
            "avg": {k: t.detach().cpu().clone() for k, t in self.avg.items()},
            "moments": {k: {"m": m.m.detach().cpu().clone(), "s": m.s, "t": m.t} for k, m in self.moments.items()},
            "counts": dict(self.counts),
            "stage_counts": dict(self._stage_counts),
            "stage_log": copy.deepcopy(self.stage_log),
            "peak_avg_bytes": self.peak_avg_bytes,
            "fallback_alpha": self.fallback_alpha,
            "task_steps": self.task_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-create missing experts, restore the trainable set, running averages and counters."""
        unknown = [e for e in state["trained"] if e not in EXPERTS]
        if unknown:
            raise ValueError(f"mage state: unknown expert {unknown[0]!r} (known: {', '.join(EXPERTS)})")
        self.trained = list(state["trained"])
        self.modalities = dict(state["modalities"])
        self._ensure_experts()
        own = self.expert_tensors(self.trained)
        extra = sorted(set(state["avg"]) - set(own))
        if extra:
            raise ValueError(f"mage state: running averages for unknown tensors {extra[:3]}")
        self.avg = {}
        for k, t in state["avg"].items():
            if t.shape != own[k].shape:
                raise ValueError(f"mage state: {k} has shape {tuple(t.shape)}, expected {tuple(own[k].shape)}")
            self.avg[k] = t.to(own[k].device, torch.float32).clone()
        self.moments = {k: GradientMoments(m["m"].to(own[k].device, torch.float32).clone(), float(m["s"]), int(m["t"]))
                        for k, m in state.get("moments", {}).items() if k in self.avg}
        self.counts = {**_new_counts(), **state["counts"]}
        self._stage_counts = {**_new_counts(), **state["stage_counts"]}
        self.stage_log = copy.deepcopy(state["stage_log"])
        self.peak_avg_bytes = int(state["peak_avg_bytes"])
        self.fallback_alpha = float(state.get("fallback_alpha", self.opts.pema_fallback_alpha))
        self.task_steps = int(state.get("task_steps", 0))

    def cost(self) -> dict[str, Any]:
        experts = self.expert_tensors()
        return {
            "params_added": sum(p.numel() for p in experts.values()) + sum(p.numel() for p in self._router_params()),
            "params_added_per_task": 0,  # four experts for the whole stream
            "params_per_expert": sum(p.numel() for p in self.expert_tensors([EXPERTS[0]]).values()),
            "held_bytes": {"running_averages": self._avg_bytes()},  # 0 between tasks: averages live in a task
            "peak_running_average_bytes": self.peak_avg_bytes,
            "pema": self.pema_summary(),
            "trained_experts": {str(s["stage"]): s["trained"] for s in self.stage_log},
        }

    def pema_summary(self) -> dict[str, Any]:
        """Whole-run counts (:data:`COUNT_KEYS`), the share of element updates that used the adaptive
        weight, the share clamped, the mean weight on the old average; ``per_task``: the same shares
        with the task's steps and fallback weight (tasks with aggregation only; counts in the state)."""

        def shares(c: dict[str, float]) -> dict[str, Any]:
            n = c["elements"]
            r = (lambda v: round(v, 4)) if n else (lambda v: None)
            return {"share_adaptive": r(c["adaptive_elements"] / n if n else 0),
                    "share_clamped": r((c["clamped_low"] + c["clamped_high"]) / n if n else 0),
                    "mean_alpha": r(c["alpha_sum"] / n if n else 0)}

        per_task = [
            {"stage": s["stage"], "task": s["task"], "steps": s.get("steps"),
             "fallback_alpha": round(s["fallback_alpha"], 4) if s.get("fallback_alpha") is not None else None,
             **shares({**_new_counts(), **s["pema"]})}
            for s in self.stage_log if s["pema"].get("elements")
        ]
        return {"mode": self.opts.aggregation, **shares(self.counts), **self.counts, "per_task": per_task}


# ---------------------------------------------------------------------- token gate hooks
def _compute_gate(layer: torch.nn.Module, args: tuple[Any, ...]) -> None:
    x = args[0]
    router = layer.mage_router
    layer._mage_gate = torch.softmax(router(x.to(router.weight.dtype)), dim=-1)


def _drop_gate(layer: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
    layer.__dict__.pop("_mage_gate", None)


def _gate_hook(layer: torch.nn.Module, index: int):
    def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        gate = layer.__dict__.get("_mage_gate")
        if gate is None or gate.shape[:-1] != output.shape[:-1]:
            raise RuntimeError(
                "method 'mage' gate=token: the expert's output does not match the gate computed for this layer "
                "(per-sample adapter_names routing is not supported with the token gate)"
            )
        return output * gate[..., index : index + 1].to(output.dtype)

    return hook
