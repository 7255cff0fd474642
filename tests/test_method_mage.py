"""MAGE: four always-active LoRA experts summed with equal weights, modality gating, PEMA aggregation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import build_test_method, quick_overrides, run_quick, train_stage

from mmcl.config import load_config
from mmcl.data.sample import Sample, Task
from mmcl.methods import RunContext
from mmcl.methods.mage import (
    EXPERTS,
    MAGE,
    GradientMoments,
    adaptive_weight,
    experts_to_train,
    fallback_weight,
    noise_share,
    noise_share_update,
    pema_update,
    task_modalities,
)
from mmcl.train.encode import Encoder, collate_train

TRAIN = ("train.lr=0.01",)


def _method(model_dir: Path, *extra: str) -> MAGE:
    method = build_test_method(model_dir, "mage", *TRAIN, *extra)
    assert isinstance(method, MAGE)
    return method


def _snapshot(method: MAGE) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in method.expert_tensors().items()}


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    """The experts with any tensor changed."""
    return {k.rsplit(".", 1)[1] for k in before if not torch.equal(before[k], after[k])}


def _logits(method: MAGE, n: int = 3) -> torch.Tensor:
    bundle = method.ctx.bundle
    enc = Encoder(bundle.processor).encode(method.ctx.benchmark.tasks[0].test[:n], with_answer=True)
    batch = collate_train(enc, bundle.tokenizer.pad_token_id)
    method.model.eval()
    with torch.no_grad():
        return method.model(**batch).logits


# ---------------------------------------------------------------------- experts
def test_four_experts_active_and_summed_with_equal_weights(tiny_llava_dir: Path) -> None:
    method = _method(tiny_llava_dir)
    model = method.model
    assert model.base_model.active_adapters == list(EXPERTS)
    assert len(method._layers) > 0
    name, layer = method._layers[0]
    # split_rank: each expert rank lora_rank/4, scaling lora_alpha/lora_rank (32/16 here)
    for e in EXPERTS:
        assert layer.lora_A[e].weight.shape[0] == 16 // 4 and layer.scaling[e] == pytest.approx(32 / 16)
    torch.manual_seed(1)
    x = torch.randn(2, 5, layer.in_features)
    layer.eval()
    base = layer.get_base_layer()
    with torch.no_grad():
        for e in EXPERTS:  # perturb expert e's B by d: the output moves by exactly s * d A x
            before = layer(x)
            d = 0.1 * torch.randn_like(layer.lora_B[e].weight)
            layer.lora_B[e].weight.add_(d)
            delta = layer(x) - before
            expected = layer.scaling[e] * (x @ layer.lora_A[e].weight.T) @ d.T
            assert delta.abs().max() > 1e-3
            assert torch.allclose(delta, expected, atol=1e-5), e
        # all four B's now non-zero: the output is the base plus the plain (weight 1) sum of the four
        total = base(x) + sum(
            layer.scaling[e] * layer.lora_B[e](layer.lora_A[e](x)) for e in EXPERTS
        )
        assert torch.allclose(layer(x), total, atol=1e-5)

    # the whole model: changing any one expert's B changes the logits
    ref = _logits(method)
    for e in EXPERTS:
        params = method.expert_tensors([e])
        key = next(k for k in params if ".lora_B." in k)
        with torch.no_grad():
            params[key].add_(0.5)
            moved = _logits(method)
            params[key].sub_(0.5)
        assert not torch.allclose(moved, ref, atol=1e-4), e
    assert torch.allclose(_logits(method), ref, atol=1e-6)


# ---------------------------------------------------------------------- gating
def test_task_modalities_from_meta_or_samples() -> None:
    with_img = [Sample(id="a", question="q", answers=["x"], image="img.png"), Sample(id="b", question="q", answers=["y"])]
    text_only = [Sample(id="c", question="q", answers=["x"])]
    assert task_modalities(Task("t", with_img, [])) == (("text", "image"), ("text",))
    assert task_modalities(Task("t", text_only, [])) == (("text",), ("text",))
    t2i = Task("t2i", text_only, [], meta={"modalities": {"in": ["text"], "out": ["image"]}})
    assert task_modalities(t2i) == (("text",), ("image",))
    edit = Task("edit", text_only, [], meta={"modalities": {"in": ["image", "text"], "out": ["image"]}})
    assert task_modalities(edit) == (("text", "image"), ("image",))
    # the gating rule of the released code (reference §2.2)
    assert experts_to_train(("text", "image"), ("text",)) == ["gen_text_in", "gen_image_in", "exp_text_out"]
    assert experts_to_train(("text",), ("image",)) == ["gen_text_in", "exp_image_out"]
    assert experts_to_train(("text", "image"), ("image",)) == ["gen_text_in", "gen_image_in", "exp_image_out"]
    for bad, match in [
        ({"in": ["text"]}, "keys 'in' and 'out'"),
        ({"in": ["text", "audio"], "out": ["text"]}, "unknown modality 'audio'"),
        ({"in": [], "out": ["text"]}, "non-empty list"),
        ({"in": "text", "out": ["text"]}, "non-empty list"),
    ]:
        with pytest.raises(ValueError, match=match):
            task_modalities(Task("bad", text_only, [], meta={"modalities": bad}))


@pytest.fixture(scope="module")
def gated_run(tiny_llava_dir: Path) -> dict:
    """Three stages: image+text -> text; text only (samples without images); image out (meta)."""
    method = _method(tiny_llava_dir)
    tasks = method.ctx.benchmark.tasks
    tasks[1] = dataclasses.replace(tasks[1], train=[dataclasses.replace(s, image=None) for s in tasks[1].train])
    tasks[2] = dataclasses.replace(tasks[2], meta={**tasks[2].meta, "modalities": {"in": ["text"], "out": ["image"]}})
    rec = []
    for t in range(3):
        before = _snapshot(method)
        method.before_task(t, tasks[t])
        flags = {e for e in EXPERTS if all(p.requires_grad for p in method.expert_tensors([e]).values())}
        frozen = {e for e in EXPERTS if not any(p.requires_grad for p in method.expert_tensors([e]).values())}
        train_stage(method, t)
        rec.append({"flags": flags, "frozen": frozen, "changed": _changed(before, _snapshot(method))})
    return {"method": method, "stages": rec}


@pytest.mark.parametrize(
    ("stage", "trained"),
    [
        (0, {"gen_text_in", "gen_image_in", "exp_text_out"}),  # images in, text out
        (1, {"gen_text_in", "exp_text_out"}),  # no image in any training sample
        (2, {"gen_text_in", "exp_image_out"}),  # meta: text -> image
    ],
)
def test_gating_trains_exactly_the_tasks_experts(gated_run: dict, stage: int, trained: set[str]) -> None:
    s = gated_run["stages"][stage]
    assert s["flags"] == trained
    assert s["frozen"] == set(EXPERTS) - trained
    assert s["changed"] == trained  # frozen experts bit-identical after the stage, trained ones moved


def test_gating_log_and_trainable_parameters(gated_run: dict) -> None:
    method: MAGE = gated_run["method"]
    assert method.trained == ["gen_text_in", "exp_image_out"]
    assert {id(p) for p in method.trainable_parameters()} == {
        id(p) for p in method.expert_tensors(method.trained).values()
    }
    assert {id(p) for p in method.model.parameters() if p.requires_grad} == {
        id(p) for p in method.expert_tensors(method.trained).values()
    }
    # peft re-enables grads of every active adapter when disable_adapter() exits; the flags come back
    with method.model.disable_adapter():
        pass
    assert len(list(method.trainable_parameters())) == len(method.expert_tensors(method.trained))
    log = method.cost()["trained_experts"]
    assert log == {"0": ["gen_text_in", "gen_image_in", "exp_text_out"], "1": ["gen_text_in", "exp_text_out"],
                   "2": ["gen_text_in", "exp_image_out"]}
    assert method.stage_log[2]["modalities"] == {"in": ["text"], "out": ["image"]}


def test_no_gating_trains_all_four(tiny_llava_dir: Path) -> None:
    method = _method(tiny_llava_dir, "method.gating=false", "train.max_steps=2")
    before = _snapshot(method)
    train_stage(method, 0)
    assert method.trained == list(EXPERTS)
    assert _changed(before, _snapshot(method)) == set(EXPERTS)


# ---------------------------------------------------------------------- aggregation
def _core(counts: dict) -> dict:
    return {k: counts[k] for k in ("elements", "zero_denominator", "out_of_range", "no_grad_elements")}


def test_pema_update_by_hand() -> None:
    avg = torch.tensor([0.0, 1.0, 2.0, 0.5, 3.0])
    theta = torch.tensor([4.0, 4.0, 2.0, 1.5, 2.0])
    grad = torch.tensor([1.0, 2.0, 1.0, 0.1, 1.0])
    # alpha = (1 + g) / ((theta - avg) g^2 + eps), eps = 0:
    #  0: 2 / (4 * 1) = 0.5        -> 0.5 * 0 + 0.5 * 4 = 2
    #  1: 3 / (3 * 4) = 0.25       -> 0.25 * 1 + 0.75 * 4 = 3.25
    #  2: a = 0: zero denominator  -> fallback 0.99 * 2 + 0.01 * 2 = 2
    #  3: 1.1 / (1 * 0.01) = 110 > 1: out of range -> 0.99 * 0.5 + 0.01 * 1.5 = 0.51
    #  4: 2 / (-1 * 1) = -2 < 0: out of range      -> 0.99 * 3 + 0.01 * 2 = 2.99
    a = avg.clone()
    counts = pema_update(a, theta, grad, eps=0.0, fallback_alpha=0.99)
    assert torch.allclose(a, torch.tensor([2.0, 3.25, 2.0, 0.51, 2.99]))
    assert _core(counts) == {"elements": 5, "zero_denominator": 1, "out_of_range": 2, "no_grad_elements": 0}
    assert counts["adaptive_elements"] == 2 and counts["alpha_sum"] == pytest.approx(0.5 + 0.25 + 3 * 0.99)
    # clamp: finite alphas are clamped into [0, 1] (110 -> 1 keeps the average, -2 -> 0 takes theta)
    a = avg.clone()
    counts = pema_update(a, theta, grad, eps=0.0, fallback_alpha=0.99, out_of_range="clamp")
    assert torch.allclose(a, torch.tensor([2.0, 3.25, 2.0, 0.5, 2.0]))
    assert _core(counts) == {"elements": 5, "zero_denominator": 1, "out_of_range": 0, "no_grad_elements": 0}
    assert (counts["adaptive_elements"], counts["clamped_low"], counts["clamped_high"]) == (4, 1, 1)
    # the released ridge eps = 1e-5, elementwise by hand
    a = avg.clone()
    pema_update(a, theta, grad, eps=1e-5, fallback_alpha=0.9)
    exp = []
    for av, th, g in zip(avg.tolist(), theta.tolist(), grad.tolist(), strict=True):
        al = (1 + g) / ((th - av) * g * g + 1e-5)
        al = al if 0 <= al <= 1 else 0.9
        exp.append(al * av + (1 - al) * th)
    assert torch.allclose(a, torch.tensor(exp))
    # a tensor without a gradient takes the plain EMA (the released except branch), counted
    a = avg.clone()
    counts = pema_update(a, theta, None, fallback_alpha=0.9)
    assert torch.allclose(a, 0.9 * avg + 0.1 * theta)
    assert counts["no_grad_elements"] == 5


def test_after_backward_and_after_task_apply_pema(tiny_llava_dir: Path) -> None:
    method = _method(tiny_llava_dir, "method.aggregation=released", "method.pema_fallback_horizon=fixed",
                     "method.pema_clipped_grad=false", "method.pema_eps=0.0")
    task = method.ctx.benchmark.tasks[0]
    method.before_task(0, task)
    params = method.expert_tensors(method.trained)
    assert set(method.avg) == set(params) and "gen_image_in" in method.trained
    start = {k: p.detach().clone() for k, p in params.items()}
    torch.manual_seed(3)
    with torch.no_grad():  # as if the optimizer had moved the weights
        for p in params.values():
            p.add_(0.3 * torch.randn_like(p))
    for p in params.values():
        p.grad = torch.randn_like(p)
    trained = {k: p.detach().clone() for k, p in params.items()}
    method.after_backward(0)
    for k, p in params.items():  # the formula, written out again
        g, a = p.grad, trained[k] - start[k]
        alpha = (1 + g) / (a * g * g)
        alpha = torch.where(torch.isfinite(alpha) & (alpha >= 0) & (alpha <= 1), alpha, torch.full_like(alpha, 0.99))
        assert torch.allclose(method.avg[k], alpha * start[k] + (1 - alpha) * trained[k], atol=1e-6), k
    c = method.cost()["pema"]
    assert c["elements"] == sum(p.numel() for p in params.values()) and 0 < c["out_of_range"] < c["elements"]
    expected = {k: t.clone() for k, t in method.avg.items()}
    assert method.cost()["held_bytes"]["running_averages"] == 4 * c["elements"]
    method.after_task(0, task)  # the averages replace the trained weights, then are dropped
    for k, p in params.items():
        assert torch.equal(p.detach(), expected[k])
        assert not torch.equal(p.detach(), trained[k])
    assert method.avg == {} and method.cost()["held_bytes"]["running_averages"] == 0
    # a non-finite average is not copied in (as released), and counted
    method.before_task(1, task)
    k0 = next(iter(method.avg))
    method.avg[k0][0, 0] = float("nan")
    before = params[k0].detach().clone()
    method.after_task(1, task)
    assert torch.equal(params[k0].detach(), before) and method.cost()["pema"]["not_replaced"] == 1


@pytest.mark.slow  # trains for a few seconds: CI's full suite, not the inner loop
def test_training_with_and_without_aggregation(tiny_llava_dir: Path) -> None:
    runs = {}
    for agg in (True, False):  # the earlier boolean values: true = released, false = off
        method = _method(tiny_llava_dir, f"method.aggregation={str(agg).lower()}", "train.max_steps=3")
        assert method.opts.aggregation == ("released" if agg else "off")
        train_stage(method, 0, finish=False)
        trained = _snapshot(method)
        avg = {k: t.clone() for k, t in method.avg.items()}
        method.after_task(0, method.ctx.benchmark.tasks[0])
        runs[agg] = (method, trained, avg, _snapshot(method))
    method, trained, avg, final = runs[True]
    assert set(avg) == set(method.expert_tensors(method.trained))
    for k, t in final.items():  # trained experts end at their running average, frozen ones untouched
        assert torch.equal(t, avg[k] if k in avg else trained[k]), k
    assert any(not torch.equal(final[k], trained[k]) for k in avg)
    c = method.cost()["pema"]
    assert c["elements"] == 3 * sum(t.numel() for t in avg.values())  # one update per step
    assert c["zero_denominator"] + c["out_of_range"] <= c["elements"]
    method, trained, avg, final = runs[False]
    assert avg == {} and final.keys() == trained.keys()
    assert all(torch.equal(final[k], trained[k]) for k in final)
    assert method.cost()["pema"]["elements"] == 0 and method.cost()["peak_running_average_bytes"] == 0
    # the same seed and data: without aggregation the weights are the plain trained ones
    assert all(torch.equal(runs[False][1][k], runs[True][1][k]) for k in trained)


# ---------------------------------------------------------------------- token gate
def test_token_gate(tiny_llava_dir: Path) -> None:
    method = _method(tiny_llava_dir, "method.gate=token", "train.max_steps=2")
    _, layer = method._layers[0]
    routers = method._router_params()
    assert len(routers) == 2 * len(method._layers)
    assert {id(p) for p in routers} <= {id(p) for p in method.trainable_parameters()}
    torch.manual_seed(2)
    x = torch.randn(2, 5, layer.in_features)
    layer.eval()
    with torch.no_grad():
        for e in EXPERTS:
            layer.lora_B[e].weight.normal_(0, 0.1)
        layer.mage_router.weight.normal_(0, 1.0)
        gate = torch.softmax(layer.mage_router(x), dim=-1)
        deltas = [layer.scaling[e] * x @ layer.lora_A[e].weight.T @ layer.lora_B[e].weight.T for e in EXPERTS]
        base = layer.get_base_layer()(x)
        expected = base + sum(gate[..., i : i + 1] * d for i, d in enumerate(deltas))
        assert torch.allclose(layer(x), expected, atol=1e-5)
        assert not torch.allclose(layer(x), base + sum(deltas), atol=1e-4)  # not the equal-weight sum
        with pytest.raises(RuntimeError, match="does not match the gate"):  # an expert called outside its layer
            layer.lora_B[EXPERTS[0]](layer.lora_A[EXPERTS[0]](x))
    before = [p.detach().clone() for p in routers]
    train_stage(method, 0)
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, routers, strict=True))  # the gate trains
    assert method.cost()["params_added"] == sum(p.numel() for p in method.expert_tensors().values()) + sum(
        p.numel() for p in routers
    )


# ---------------------------------------------------------------------- options, state, end to end
def test_bad_options_are_refused(tiny_llava_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"method 'mage': method.gatting: .*Valid options: gating"):
        MAGE.parse_options({"gatting": False})
    with pytest.raises(ValueError, match=r"method.gate: .*'none' or 'token'"):
        MAGE.parse_options({"gate": "soft"})
    with pytest.raises(ValueError, match=r"pema_fallback_alpha.*less than or equal to 1"):
        MAGE.parse_options({"pema_fallback_alpha": 1.5})
    with pytest.raises(ValueError, match=r"pema_eps.*greater than or equal to 0"):
        MAGE.parse_options({"pema_eps": -1})
    with pytest.raises(ValueError, match=r"pema_out_of_range"):
        MAGE.parse_options({"pema_out_of_range": "ignore"})
    with pytest.raises(ValueError, match=r"aggregation"):
        MAGE.parse_options({"aggregation": "sometimes"})

    def ctx(*extra: str) -> RunContext:
        cfg = load_config(overrides=quick_overrides(tiny_llava_dir, "method.name=mage", *extra))
        return RunContext(cfg, SimpleNamespace(model=None), None)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="train_projector"):
        MAGE(ctx("model.train_projector=true"), MAGE.parse_options({}))
    with pytest.raises(ValueError, match=r"model.lora_rank=6 is not a multiple of 4.*split_rank=false"):
        MAGE(ctx("model.lora_rank=6"), MAGE.parse_options({}))
    MAGE(ctx("model.lora_rank=6"), MAGE.parse_options({"split_rank": False}))  # full-rank experts: fine


def test_state_dict_round_trip_mid_task(tiny_llava_dir: Path) -> None:
    method = _method(tiny_llava_dir, "train.max_steps=2")
    train_stage(method, 0)
    train_stage(method, 1, finish=False)  # averages held, as if saved in the middle of a task
    state = method.state_dict()
    assert state["avg"] and state["counts"]["elements"] > 0 and len(state["stage_log"]) == 1
    fresh = _method(tiny_llava_dir, "train.max_steps=2")
    fresh.load_state_dict(state)
    assert fresh.trained == method.trained and fresh.modalities == method.modalities
    assert fresh.avg.keys() == method.avg.keys()
    assert all(torch.equal(fresh.avg[k], method.avg[k]) for k in method.avg)
    assert fresh.counts == method.counts and fresh.stage_log == method.stage_log
    assert [n for n, p in fresh.model.named_parameters() if p.requires_grad] == [
        n for n, p in method.model.named_parameters() if p.requires_grad
    ]
    with pytest.raises(ValueError, match="unknown expert 'exp_audio_out'"):
        fresh.load_state_dict({**state, "trained": ["exp_audio_out"]})


@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
def test_end_to_end(tiny_llava_dir: Path, tmp_path: Path) -> None:
    res = run_quick(tiny_llava_dir, tmp_path, "method.name=mage")
    assert res["method"] == "mage" and len(res["matrix"]["primary"]) == 3
    cost = res["cost"]
    per_expert = cost["params_per_expert"]
    assert cost["params_added"] == 4 * per_expert > 0 and cost["params_added_per_task"] == 0
    assert cost["held_bytes"] == {"running_averages": 0}  # nothing held between tasks
    # during a task: three fp32 experts' averages and (noise-share) their gradient EMAs
    assert cost["peak_running_average_bytes"] == 2 * 3 * per_expert * 4
    # msvqa-synth: images in, text out at every stage -> three experts train
    assert [s["trainable_params"] for s in res["stage_stats"]] == [3 * per_expert] * 3
    pema = cost["pema"]
    assert pema["elements"] == 3 * 3 * 3 * per_expert  # 3 stages x 3 steps x 3 experts
    assert pema["mode"] == "adaptive" and pema["adaptive_elements"] + pema["zero_denominator"] == pema["elements"]
    assert 0 < pema["share_adaptive"] <= 1 and 0 <= pema["mean_alpha"] <= 1
    # per task: the share of updates that used the adaptive weight, with the task's steps and fallback weight
    assert [t["stage"] for t in pema["per_task"]] == [0, 1, 2]
    assert pema["share_adaptive"] == pytest.approx(pema["adaptive_elements"] / pema["elements"], abs=1e-4)
    for t in pema["per_task"]:  # in results.json: the share per task, with its steps and fallback weight
        assert t["steps"] == 3 and t["fallback_alpha"] == pytest.approx(0.99 ** (3000 / 3), abs=1e-4)
        assert 0 < t["share_adaptive"] <= 1 and 0 <= t["mean_alpha"] <= 1


# ---------------------------------------------------------------------- adaptive aggregation, fallback horizon
def test_aggregation_option_values() -> None:
    assert MAGE.parse_options({}).aggregation == "adaptive"
    assert MAGE.parse_options({}).adaptive_weight == "noise-share"
    for raw, mode in ((True, "released"), (False, "off"), ("true", "released"), ("false", "off"),
                      ("released", "released"), ("adaptive", "adaptive"), ("off", "off")):
        assert MAGE.parse_options({"aggregation": raw}).aggregation == mode
    with pytest.raises(ValueError, match=r"pema_fallback_horizon"):
        MAGE.parse_options({"pema_fallback_horizon": "long"})


@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
def test_the_scaled_fallback_horizon(tiny_llava_dir: Path) -> None:
    assert fallback_weight(0.99, 3000) == pytest.approx(0.99)
    assert fallback_weight(0.99, 100) == pytest.approx(0.99 ** 30)  # 0.74: keeps 0.99 ** 3000 after 100 steps
    assert fallback_weight(0.99, 100) ** 100 == pytest.approx(0.99 ** 3000)
    for horizon, steps in (("scaled", 7), ("fixed", 7), ("scaled", 5)):
        method = _method(tiny_llava_dir, f"method.pema_fallback_horizon={horizon}", f"train.max_steps={steps}")
        method.before_task(1, method.ctx.benchmark.tasks[1])
        assert method.task_steps == steps
        assert method.fallback_alpha == pytest.approx(0.99 ** (3000 / steps) if horizon == "scaled" else 0.99)
    # without max_steps: the loop's own count (16 samples, batch 8, 2 epochs -> 4 updates)
    method = _method(tiny_llava_dir, "train.max_steps=null", "train.epochs=2")
    method.before_task(1, method.ctx.benchmark.tasks[1])
    assert method.task_steps == 4 and method.fallback_alpha == pytest.approx(0.99 ** 750)


def test_noise_share_by_hand() -> None:
    g = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    same = GradientMoments(torch.zeros_like(g))
    for _ in range(5):  # the same gradient every step: no noise, the average follows theta
        avg, theta = torch.zeros_like(g), torch.ones_like(g)
        c = noise_share_update(avg, theta, g, same, beta=0.9)
        assert noise_share(same, 0.9) == pytest.approx(0.0, abs=1e-6) and torch.allclose(avg, theta)
    assert c["adaptive_elements"] == 4 and c["alpha_sum"] == pytest.approx(0.0, abs=1e-6)
    flip = GradientMoments(torch.zeros_like(g))
    for i in range(200):  # g, -g, g, ...: the gradients cancel, the average barely moves
        noise_share_update(torch.zeros_like(g), torch.ones_like(g), g * (-1) ** i, flip, beta=0.9)
    # m_hat -> (1 - beta) / (1 + beta) g in norm, s_hat = |g|^2: share = 1 - ((1 - beta) / (1 + beta)) ** 2
    assert noise_share(flip, 0.9) == pytest.approx(1 - (0.1 / 1.9) ** 2, rel=1e-6)
    # written out: m and s are beta-EMAs, bias-corrected by 1 - beta ** t
    torch.manual_seed(0)
    gs = [torch.randn(3, 4) for _ in range(6)]
    mom, m, s = GradientMoments(torch.zeros(3, 4)), torch.zeros(3, 4), 0.0
    avg, theta = torch.zeros(3, 4), torch.randn(3, 4)
    for t, gt in enumerate(gs, 1):
        expected_avg = avg.clone()
        noise_share_update(avg, theta, gt, mom, beta=0.8)
        m, s = 0.8 * m + 0.2 * gt, 0.8 * s + 0.2 * float(gt.square().sum())
        w = 1 - float((m / (1 - 0.8**t)).square().sum()) / (s / (1 - 0.8**t))
        assert 0 <= w <= 1
        assert torch.allclose(avg, w * expected_avg + (1 - w) * theta, atol=1e-6)
    # no gradient yet (a LoRA A whose B is still zero): the fallback, counted
    c = noise_share_update(torch.zeros(2), torch.ones(2), torch.zeros(2), GradientMoments(torch.zeros(2)),
                           fallback_alpha=0.5)
    assert c["zero_denominator"] == 2 and c["adaptive_elements"] == 0
    # the second-order form by hand: <g, a> / (sum g^2 a^2 + eps |a|^2)
    a, gg = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -0.25])
    assert adaptive_weight(a, gg, eps=0.1) == pytest.approx((0.5 - 0.5) / (0.25 + 0.25 + 0.1 * 5))
    assert adaptive_weight(torch.zeros(2), gg) != adaptive_weight(torch.zeros(2), gg)  # NaN


def _real_gradient_steps(model_dir: Path, *extra: str, steps: int = 4, before_stage_1=None) -> MAGE:
    method = _method(model_dir, "train.lr=0.001", f"train.max_steps={steps}", *extra)
    train_stage(method, 0)  # the experts' B leave zero, so every tensor gets a gradient at stage 1
    if before_stage_1:
        before_stage_1()
    train_stage(method, 1, finish=False)
    return method


def test_the_adaptive_weight_lands_in_0_1_on_real_gradients(tiny_llava_dir: Path, monkeypatch) -> None:
    import mmcl.methods.mage as mage_module

    seen: list[float] = []
    real = mage_module.noise_share

    def spy(mom: GradientMoments, beta: float) -> float:
        seen.append(real(mom, beta))
        return seen[-1]

    monkeypatch.setattr(mage_module, "noise_share", spy)
    method = _real_gradient_steps(tiny_llava_dir, before_stage_1=seen.clear)
    n_tensors = len(method.avg)
    assert len(seen) == 4 * n_tensors  # 4 updates of every trained tensor
    # in [0, 1] by construction (up to rounding: the update clamps only that), never undefined
    assert all(-1e-6 <= w <= 1.0 + 1e-6 for w in seen)
    assert 0.05 < sum(seen) / len(seen) < 0.95 and len({round(w, 6) for w in seen}) > n_tensors
    assert [t["stage"] for t in method.cost()["pema"]["per_task"]] == [0]  # per_task lists finished tasks
    method.after_task(1, method.ctx.benchmark.tasks[1])
    per_task = method.cost()["pema"]["per_task"]
    assert [t["task"] for t in per_task] == [t.name for t in method.ctx.benchmark.tasks[:2]]
    # stage 0 starts from B = 0 (LoRA A has no gradient at its first step: that update falls back)
    assert 0.5 < per_task[0]["share_adaptive"] < 1.0
    assert method.stage_log[0]["pema"]["zero_denominator"] > 0
    assert per_task[1]["share_adaptive"] == 1.0 and per_task[1]["share_clamped"] == 0
    assert 0.0 < per_task[1]["mean_alpha"] < 1.0  # the element-weighted mean weight on the old average


def test_the_released_form_falls_back_on_real_gradients(tiny_llava_dir: Path) -> None:
    """The released alpha = (1 + g) / (a g^2 + 1e-5) is about 1e5 on LoRA-sized tensors: the 0.99 plain EMA acts."""
    method = _real_gradient_steps(tiny_llava_dir, "method.aggregation=released", "method.pema_fallback_horizon=fixed")
    pema = method.cost()["pema"]
    assert pema["mode"] == "released" and pema["share_adaptive"] < 0.01
    assert pema["out_of_range"] + pema["zero_denominator"] > 0.99 * pema["elements"]
    assert pema["mean_alpha"] == pytest.approx(0.99, abs=0.01)
    # one more update by hand: nearly every element moves as 0.99 * avg + 0.01 * theta
    k, p = next((k, p) for k, p in method.expert_tensors(method.trained).items() if ".lora_B." in k)
    avg = method.avg[k].clone()
    p.grad = torch.randn_like(p) * 1e-3
    method.after_backward(1)
    plain = 0.99 * avg + 0.01 * p.detach()
    assert (torch.isclose(method.avg[k], plain, atol=1e-7)).float().mean() > 0.99


# ---------------------------------------------------------------------- clip scale (the loop publishes it)
def test_the_published_clip_scale_is_the_factor_clipping_applies() -> None:
    from mmcl.train.hooks import GradClip

    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=gen)) for _ in range(3)]
    for p in params:
        p.grad = 10 * torch.randn(p.shape, generator=gen)
    clip = GradClip()
    assert clip.scale() == 1.0  # outside a pass
    clip.watch(params, 1.0)
    scale = clip.scale()
    before = [p.grad.clone() for p in params]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    assert 0 < scale < 1
    for b, p in zip(before, params, strict=True):
        torch.testing.assert_close(p.grad, b * scale)
    clip.watch(params, None)  # no clipping
    assert clip.scale() == 1.0
    clip.release()
    assert clip.scale() == 1.0


def test_mage_reads_the_clip_scale_in_after_backward(tiny_llava_dir: Path) -> None:
    method = _method(tiny_llava_dir, "train.max_grad_norm=0.001", "train.max_steps=2")
    seen: list[float] = []
    services = method.ctx.services
    real = services.clip_scale

    def spy() -> float:
        seen.append(real())
        return seen[-1]

    services.clip_scale = spy
    try:
        train_stage(method, 0)
        train_stage(method, 1, finish=False)
    finally:
        del services.clip_scale
    assert len(seen) == 4 and all(0 < s < 1 for s in seen)  # every update of both stages, clipped
