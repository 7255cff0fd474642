"""``ewc``: the Fisher after a task, the quadratic penalty around the anchor, online vs separate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import build_test_method, run_quick, train_stage

import mmcl.methods.ewc  # noqa: F401  (registers "ewc")
from mmcl.config import load_config
from mmcl.methods import METHODS
from mmcl.methods.ewc import EWC, EWCOptions

ROOT = Path(__file__).resolve().parent.parent


def make_ewc(model_dir: Path, *options: str) -> EWC:
    method = build_test_method(
        model_dir, "ewc", "benchmark.train_per_task=24", "method.fisher_batches=2", "method.fisher_batch_size=4", *options
    )
    assert isinstance(method, EWC)
    return method


def trainable(method: EWC) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in method.model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def after_two(tiny_llava_dir: Path) -> dict[str, EWC]:
    """Both modes, trained identically through stages 0 and 1 (gamma 0.5 for online)."""
    out = {}
    for mode in ("online", "separate"):
        m = make_ewc(tiny_llava_dir, f"method.mode={mode}", "method.gamma=0.5")
        train_stage(m, 0)
        m.f0 = {k: v.clone() for k, v in m.fishers[0].items()}  # type: ignore[attr-defined]
        m.a0 = {k: v.clone() for k, v in m.anchors[0].items()}  # type: ignore[attr-defined]
        train_stage(m, 1)
        out[mode] = m
    return out


def test_fisher_is_nonnegative_and_nonzero_after_a_task(after_two: dict[str, EWC]) -> None:
    m = after_two["separate"]
    params = trainable(m)
    for fisher in m.fishers:
        assert set(fisher) == set(params)  # keyed by parameter name, every LoRA matrix
        for name, f in fisher.items():
            assert f.shape == params[name].shape and f.device == params[name].device
            assert f.dtype == torch.float32 and bool((f >= 0).all()) and torch.isfinite(f).all()
        nonzero = [n for n, f in fisher.items() if f.sum() > 0]
        assert len(nonzero) == len(fisher)  # trained LoRA: both A and B get gradient
    assert all(p.grad is None for p in params.values())  # the estimate leaves no gradients behind


def test_penalty_zero_at_anchor_and_grows_quadratically(after_two: dict[str, EWC]) -> None:
    m = after_two["online"]
    task = m.ctx.benchmark.tasks[2]
    m.before_task(2, task)
    assert m.extra_loss({}, None, 0) is None  # nothing to protect at stage 0
    at_anchor = m.extra_loss({}, None, 2)
    assert at_anchor is not None and at_anchor.item() == 0.0  # exactly zero at θ = θ*
    params = trainable(m)
    fisher, anchor = m.fishers[0], m.anchors[0]
    gen = torch.Generator().manual_seed(0)
    direction = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
    curvature = sum(float((fisher[n] * direction[n] ** 2).sum()) for n in params)
    values = []
    with torch.no_grad():
        for alpha in (0.0, 0.01, 0.03, 0.1, 0.3, 1.0):
            for n, p in params.items():
                p.copy_(anchor[n] + alpha * direction[n])
            values.append(m.penalty().item())
            assert values[-1] == pytest.approx(0.5 * m.options.lam * alpha**2 * curvature, rel=1e-4)
    assert values[0] == 0.0 and all(b > a for a, b in zip(values, values[1:], strict=False))
    # and its gradient is lam * F * (θ - θ*), pulling back towards the anchor
    m.penalty().backward()
    for n, p in params.items():
        assert torch.allclose(p.grad, m.options.lam * fisher[n] * direction[n], rtol=1e-4, atol=1e-12)
        p.grad = None
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(anchor[n])


def test_online_and_separate_differ_as_documented(after_two: dict[str, EWC]) -> None:
    on, sep = after_two["online"], after_two["separate"]
    # identical training, so the per-task Fishers are the same in both runs
    for n in sep.fishers[0]:
        assert torch.equal(on.f0[n], sep.fishers[0][n]) and torch.equal(on.a0[n], sep.anchors[0][n])
    assert len(on.fishers) == len(on.anchors) == 1 and len(sep.fishers) == len(sep.anchors) == 2
    for n in sep.fishers[0]:
        # online: one Fisher gamma * F_old + F_new and the latest anchor
        assert torch.allclose(on.fishers[0][n], 0.5 * sep.fishers[0][n] + sep.fishers[1][n])
        assert torch.equal(on.anchors[0][n], sep.anchors[1][n])
    assert any(not torch.equal(sep.anchors[0][n], sep.anchors[1][n]) for n in sep.anchors[0])
    # separate sums one penalty per task: at the latest anchor only the task-0 term is left
    lam = sep.options.lam
    params = trainable(sep)
    task0_term = (
        0.5
        * lam
        * sum(
            float((sep.fishers[0][n] * (params[n].detach() - sep.anchors[0][n]) ** 2).sum()) for n in params
        )
    )
    assert sep.penalty().item() == pytest.approx(task0_term, rel=1e-5) and task0_term > 0
    assert on.penalty().item() == 0.0
    # memory: separate holds a pair per task, online one pair
    assert sep.cost()["held_bytes"]["fisher"] == 2 * on.cost()["held_bytes"]["fisher"] > 0
    assert sep.cost()["held_bytes"]["anchors"] == 2 * on.cost()["held_bytes"]["anchors"] > 0
    assert on.cost()["params_added_per_task"] == 0


def test_penalty_acts_during_training(tiny_llava_dir: Path) -> None:
    """With a large λ the weights the Fisher marks as important stay much closer to the anchor."""
    drift = {}
    for lam in (0, 1e6):
        m = make_ewc(tiny_llava_dir, f"method.lam={lam}")
        train_stage(m, 0)
        train_stage(m, 1, finish=False)
        params = trainable(m)
        f, a = m.fishers[0], m.anchors[0]
        drift[lam] = sum(float((f[n] * (params[n].detach() - a[n]).pow(2)).sum()) for n in params)
    # (about 3.5x smaller here; the first step of a stage is free, as θ = θ* there and the penalty is zero)
    assert drift[1e6] < 0.5 * drift[0]


def test_state_dict_round_trip(after_two: dict[str, EWC], tiny_llava_dir: Path) -> None:
    sep = after_two["separate"]
    fresh = make_ewc(tiny_llava_dir, "method.mode=separate", "method.gamma=0.5")
    fresh.load_state_dict(sep.state_dict())
    with torch.no_grad():
        for (_, a), (_, b) in zip(trainable(fresh).items(), trainable(sep).items(), strict=True):
            a.copy_(b)
    assert fresh.penalty().item() == pytest.approx(sep.penalty().item(), rel=1e-6)
    with pytest.raises(ValueError, match="saved in mode 'separate'"):
        make_ewc(tiny_llava_dir).load_state_dict(sep.state_dict())


@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
def test_end_to_end_two_tasks(tiny_llava_dir: Path, tmp_path: Path) -> None:
    res = run_quick(
        tiny_llava_dir,
        tmp_path,
        "method.name=ewc",
        "method.mode=separate",
        "eval.zero_shot=false",
        "benchmark.order=[high-altitude.attribute, underwater.existence]",
    )
    assert res["method"] == "ewc" and len(res["matrix"]["primary"]) == 2
    cost = res["cost"]
    lora_bytes = 4 * cost["trainable_params"]  # float32 on CPU
    assert cost["held_bytes"] == {"fisher": 2 * lora_bytes, "anchors": 2 * lora_bytes}  # a pair per task
    assert cost["params_added_per_task"] == 0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"lam": -1}, "method.lam: Input should be greater than or equal to 0"),
        ({"mode": "offline"}, "method.mode: Input should be 'online' or 'separate'"),
        ({"gamma": 1.5}, "method.gamma: Input should be less than or equal to 1"),
        ({"fisher_batches": 0}, "method.fisher_batches: Input should be greater than or equal to 1"),
        ({"lamda": 3}, "method.lamda: Extra inputs are not permitted. Valid options: lam, fisher_batches"),
    ],
)
def test_bad_options_are_refused(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        METHODS.get("ewc").parse_options(raw)


def test_supports_and_shipped_config() -> None:
    assert EWC.supports == {"ddp", "zero1"}
    cfg = load_config([ROOT / "configs" / "ewc.yaml"])
    assert cfg.method.name == "ewc" and cfg.name == "ewc"
    assert METHODS.get("ewc").parse_options(cfg.method.options()) == EWCOptions()
