"""The optimisation primitive (``mmcl.train.steps.fit``): its order of operations, and that the
continual loop and every pre-training recipe run through it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mmcl.pretrain.janus as janus_recipe
import mmcl.pretrain.janus_vision as janus_vision
import mmcl.pretrain.judge as judge_recipe
import mmcl.pretrain.llava as llava_recipe
import mmcl.train.loop as loop
from mmcl.train import steps
from mmcl.train.steps import Optim, PerStepLR, Updates, fit, one_cycle


def _toy(seed: int = 0) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 1), torch.randn(8, 3), torch.randn(8, 1)


def test_fit_is_the_plain_loop_it_replaces() -> None:
    """fit with a per-step lr, clipping and zero_grad before backward equals the hand-written loop
    (the shape of the tiny Janus stages), bit for bit."""
    lr_at = lambda step: 0.1 * (step + 1) / 3  # noqa: E731
    net, x, y = _toy()
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        idx = torch.randint(8, (4,), generator=g)
        loss = ((net(x[idx]) - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(net.parameters()), 0.5)
        opt.step()
    expected = {k: v.clone() for k, v in net.state_dict().items()}

    net, x, y = _toy()
    g = torch.Generator().manual_seed(1)
    seen: list[tuple[int, float]] = []
    norms: list[torch.Tensor] = []
    updates = Updates(list(net.parameters()), Optim("adam", 0.1), PerStepLR(lr_at), max_grad_norm=0.5,
                      zero_grad="before_backward")
    last = fit(updates, iter(lambda: torch.randint(8, (4,), generator=g), None),
               lambda idx: ((net(x[idx]) - y[idx]) ** 2).mean(), 3,
               after_clip=norms.append, on_step=lambda done, loss: seen.append((done, loss.item())))
    assert all(torch.equal(net.state_dict()[k], v) for k, v in expected.items())
    assert [d for d, _ in seen] == [1, 2, 3] and last.item() == seen[-1][1] and len(norms) == 3
    assert updates.optimizer.param_groups[0]["lr"] == lr_at(2)


def test_fit_reads_only_the_batches_it_uses_and_steps_a_torch_scheduler_after_each_update() -> None:
    net, x, y = _toy()
    drawn: list[int] = []

    def batches():
        i = 0
        while True:
            drawn.append(i)
            yield i % 8
            i += 1

    updates = Updates(list(net.parameters()), Optim("adamw", 0.05), one_cycle(0.05, 4, 0.5))
    assert fit(updates, batches(), lambda i: ((net(x[i]) - y[i]) ** 2).mean(), 0) is None
    fit(updates, batches(), lambda i: ((net(x[i]) - y[i]) ** 2).mean(), 4)
    assert drawn == [0, 1, 2, 3]
    assert updates.schedule.scheduler.last_epoch == 4
    assert all(p.grad is None for p in net.parameters())  # zero_grad="after_step" (the default)


def test_epochs_refuses_an_empty_loader() -> None:
    with pytest.raises(ValueError, match="no batch"):
        next(steps.epochs([]))


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every ``fit`` call of the loop and the recipes, with its step count and the updates it made."""
    calls: list[dict] = []

    def spy_fit(updates: Updates, batches, loss_fn, n: int, **kwargs):
        call = {"steps": n, "optimizer": type(updates.optimizer).__name__, "zero_grad": updates.zero_grad,
                "clip": updates.max_grad_norm, "updates": 0}
        calls.append(call)
        real_apply = updates.apply

        def counted(*args, **kw) -> None:
            call["updates"] += 1
            real_apply(*args, **kw)

        updates.apply = counted
        return fit(updates, batches, loss_fn, n, **kwargs)

    for module in (loop, janus_recipe, janus_vision, judge_recipe, llava_recipe):
        monkeypatch.setattr(module, "fit", spy_fit)
    return calls


def _changed(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def test_the_judge_recipe_trains_through_fit(spy: list[dict]) -> None:
    torch.set_num_threads(1)
    judge = judge_recipe.train_judge(judge_recipe.JudgeRecipe(steps=2, n_train=64, n_heldout=32, width=8,
                                                              batch_size=8), log=lambda *_: None)
    assert spy == [{"steps": 2, "optimizer": "Adam", "zero_grad": "before_backward", "clip": None, "updates": 2}]
    assert judge.info["heldout_accuracy"]["all"] >= 0.0


def test_the_janus_stages_train_through_fit(tiny_janus_dir: Path, spy: list[dict]) -> None:
    from mmcl.models import tiny_janus as tj

    torch.set_num_threads(1)
    model, processor = tj.load_tiny_janus(tiny_janus_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    janus_recipe.train_vq(model, 2, 2, 1e-3, 0, warmup_frac=0.5, log=lambda *_: None)
    vq = _changed(model, before)
    assert vq and all(n.startswith("model.vqmodel.") for n in vq)
    janus_vision.warm_up_vision(model, processor, 2, n_images=40, batch_size=8, log=lambda *_: None)
    assert {n for n in _changed(model, before) - vq} and all(
        n.startswith("model.vision_model.") for n in _changed(model, before) - vq)
    assert spy == [
        {"steps": 2, "optimizer": "Adam", "zero_grad": "before_backward", "clip": 1.0, "updates": 2},
        {"steps": 2, "optimizer": "AdamW", "zero_grad": "before_backward", "clip": None, "updates": 2},
    ]


def test_the_llava_vision_warm_up_and_the_continual_loop_train_through_fit(tiny_llava_dir: Path,
                                                                           spy: list[dict]) -> None:
    from conftest import build_test_method, train_stage

    from mmcl.config import ModelConfig
    from mmcl.models.loader import load_model
    from mmcl.pretrain.data import caption_samples

    torch.set_num_threads(1)
    bundle = load_model(ModelConfig(path=str(tiny_llava_dir), dtype="float32"))
    res = llava_recipe.pretrain_vision(bundle.model, bundle.processor, caption_samples(16, seed=0), 2, batch_size=4)
    assert res["vision_loss"] == res["vision_loss"]  # a number, not NaN: the warm-up ran
    method = build_test_method(tiny_llava_dir, "lora-ft", "train.max_steps=2", "train.num_threads=1")
    stats = train_stage(method, 0)
    assert stats.steps == 2
    assert spy == [
        {"steps": 2, "optimizer": "AdamW", "zero_grad": "after_step", "clip": None, "updates": 2},
        {"steps": 2, "optimizer": "AcceleratedOptimizer", "zero_grad": "after_step",  # AdamW, prepared by accelerate
         "clip": method.ctx.config.train.max_grad_norm, "updates": 2},
    ]
