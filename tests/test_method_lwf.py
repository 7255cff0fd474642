"""``lwf``: a frozen in-memory teacher adapter, the distillation loss, where its gradients go."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import build_test_method, run_quick, train_stage

import mmcl.methods.lwf  # noqa: F401  (registers "lwf")
from mmcl.config import load_config
from mmcl.methods import METHODS
from mmcl.methods.lwf import LwF, LwFOptions
from mmcl.train.encode import Encoder, collate_train
from mmcl.train.loop import train_on

ROOT = Path(__file__).resolve().parent.parent


def make_lwf(model_dir: Path, *options: str) -> LwF:
    method = build_test_method(model_dir, "lwf", *options)
    assert isinstance(method, LwF)
    return method


def a_batch(method: LwF, t: int = 1) -> dict[str, torch.Tensor]:
    ctx = method.ctx
    encoded = Encoder(ctx.bundle.processor).encode(ctx.benchmark.tasks[t].train[:6], with_answer=True)
    return collate_train(encoded, ctx.bundle.tokenizer.pad_token_id)


def adapter_state(method: LwF, adapter: str) -> dict[str, torch.Tensor]:
    return {
        n.replace(f".{adapter}.", "."): p.detach().clone()
        for n, p in method.model.named_parameters()
        if f".{adapter}." in n
    }


def grad_flags(method: LwF) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in method.model.named_parameters()}


@pytest.fixture(scope="module")
def lwf(tiny_llava_dir: Path) -> LwF:
    """Trained on stage 0, then the teacher is made for stage 1."""
    m = make_lwf(tiny_llava_dir)
    train_stage(m, 0)
    # The teacher adapter exists (frozen, counted) from setup; it is filled at the first before_task.
    assert "teacher" in m.model.peft_config and not m.teacher.ready
    assert m.cost()["held_bytes"]["teacher_adapter"] == sum(4 * p.numel() for p in m.teacher.parameters()) > 0
    m.flags_before = grad_flags(m)  # type: ignore[attr-defined]
    m.before_task(1, m.ctx.benchmark.tasks[1])
    return m


def test_teacher_is_a_frozen_copy_in_the_same_model(lwf: LwF) -> None:
    model = lwf.model
    assert set(model.peft_config) == {"default", "teacher"} and model.active_adapter == "default"
    student, teacher = adapter_state(lwf, "default"), adapter_state(lwf, "teacher")
    assert student.keys() == teacher.keys() and len(student) > 0
    assert all(torch.equal(student[k], teacher[k]) for k in student)
    assert any(v.abs().sum() > 0 for k, v in student.items() if "lora_B" in k)  # really trained at stage 0
    assert not any(p.requires_grad for p in lwf.teacher.parameters())
    assert all(p.requires_grad for p in lwf.teacher.student_parameters())
    # the copy changed no flag: the same trainable set as before, no second model
    assert grad_flags(lwf) == lwf.flags_before
    teacher_numel = sum(p.numel() for p in lwf.teacher.parameters())
    assert teacher_numel == sum(p.numel() for p in lwf.teacher.student_parameters())
    assert lwf.cost() == {"params_added_per_task": 0, "held_bytes": {"teacher_adapter": 4 * teacher_numel}}


def test_distillation_zero_at_copy_positive_after_perturbation(lwf: LwF) -> None:
    model, batch = lwf.model, a_batch(lwf)
    model.train()
    outputs = model(**batch)
    assert lwf.extra_loss(batch, outputs, 0) is None  # no teacher at stage 0
    flags = grad_flags(lwf)
    loss = lwf.extra_loss(batch, outputs, 1)
    assert loss is not None and loss.requires_grad
    assert abs(loss.item()) < 1e-6  # student == teacher
    assert grad_flags(lwf) == flags and model.active_adapter == "default" and model.training
    saved = adapter_state(lwf, "default")
    try:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if ".default." in n and "lora_B" in n:
                    p.add_(0.05 * torch.randn(p.shape, generator=gen))
        outputs = model(**batch)
        loss = lwf.extra_loss(batch, outputs, 1)
        assert loss.item() > 1e-3
        assert grad_flags(lwf) == flags and model.active_adapter == "default"
        # gradients reach the student adapter only
        loss.backward()
        for n, p in model.named_parameters():
            if ".default." in n:
                assert p.grad is not None, n
            else:
                assert p.grad is None, n
        assert any(float(p.grad.abs().sum()) > 0 for p in lwf.teacher.student_parameters())
        # T² * KL at T: a larger weight scales it linearly
        lwf.options = lwf.options.model_copy(update={"weight": 3.0})
        assert lwf.extra_loss(batch, model(**batch), 1).item() == pytest.approx(3 * loss.item(), rel=1e-5)
    finally:
        lwf.options = lwf.options.model_copy(update={"weight": 1.0})
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if ".default." in n:
                    p.copy_(saved[n.replace(".default.", ".")])


def test_distillation_matches_a_direct_computation(lwf: LwF) -> None:
    model, batch = lwf.model, a_batch(lwf)
    student = model(**batch).logits.detach()
    student += torch.randn(
        student.shape, generator=torch.Generator().manual_seed(1)
    )  # differ from the teacher
    teacher = lwf.teacher.logits(batch).double()
    T = lwf.options.temperature
    mask = batch["labels"][:, 1:] != -100
    expected, n = 0.0, 0
    for b, i in mask.nonzero().tolist():
        p = torch.softmax(teacher[b, i] / T, -1)
        q = torch.softmax(student[b, i] / T, -1)
        expected += float((p * (p.log() - q.log())).sum())
        n += 1
    assert n == int(mask.sum()) > 0
    got = lwf.teacher.distillation_loss(batch, student, T).item()
    assert got == pytest.approx(expected / n * T * T, rel=1e-4) and got > 0


def test_teacher_unchanged_during_a_training_stage(tiny_llava_dir: Path) -> None:
    m = make_lwf(tiny_llava_dir)
    train_stage(m, 0)
    calls: list[float] = []
    distill = m.extra_loss

    def spy(batch, outputs, stage):
        loss = distill(batch, outputs, stage)
        calls.append(float(loss.detach()))
        return loss

    m.extra_loss = spy  # type: ignore[method-assign]
    task = m.ctx.benchmark.tasks[1]
    m.before_task(1, task)
    teacher, student = adapter_state(m, "teacher"), adapter_state(m, "default")
    encoded = Encoder(m.ctx.bundle.processor).encode(m.train_samples(1, task), with_answer=True)
    train_on(m, encoded, m.ctx.config.train, Accelerator(cpu=True), 1, 0, m.ctx.bundle.tokenizer.pad_token_id)
    after_t, after_s = adapter_state(m, "teacher"), adapter_state(m, "default")
    assert all(torch.equal(teacher[k], after_t[k]) for k in teacher)
    assert any(not torch.equal(student[k], after_s[k]) for k in student)
    assert len(calls) == 3 and calls[0] < 1e-6 and max(calls[1:]) > 0  # the student drifts, the loss notices
    # the next stage's teacher is the student as it ended this stage
    m.before_task(2, m.ctx.benchmark.tasks[2])
    assert all(torch.equal(after_s[k], adapter_state(m, "teacher")[k]) for k in after_s)


@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
def test_end_to_end_two_tasks(tiny_llava_dir: Path, tmp_path: Path) -> None:
    res = run_quick(
        tiny_llava_dir,
        tmp_path,
        "method.name=lwf",
        "benchmark.order=[high-altitude.attribute, underwater.existence]",
        "eval.zero_shot=false",
    )
    assert res["method"] == "lwf" and len(res["matrix"]["primary"]) == 2
    assert res["cost"]["held_bytes"]["teacher_adapter"] > 0 and res["cost"]["params_added_per_task"] == 0
    # the teacher is not trainable: the trainable count is lora-ft's at every stage
    assert res["stage_stats"][0]["trainable_params"] == res["stage_stats"][1]["trainable_params"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"temperature": 0}, "method.temperature: Input should be greater than 0"),
        ({"weight": -1}, "method.weight: Input should be greater than or equal to 0"),
        ({"alpha": 1}, "method.alpha: Extra inputs are not permitted. Valid options: temperature, weight"),
    ],
)
def test_bad_options_are_refused(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        METHODS.get("lwf").parse_options(raw)


def test_supports_and_shipped_config() -> None:
    assert LwF.supports == {"ddp"}
    cfg = load_config([ROOT / "configs" / "lwf.yaml"])
    assert cfg.method.name == "lwf" and cfg.name == "lwf"
    assert METHODS.get("lwf").parse_options(cfg.method.options()) == LwFOptions()


def test_on_a_dual_to_dual_stream_both_heads_are_distilled(tiny_janus_dir: Path) -> None:
    """Janus batches with image answers: zero at the copy; after the student moves, the LM head's and
    the generation head's KL both count, rows blanked for guidance are left out, and the gradient
    reaches the student only."""
    from mmcl.benchmarks.builtin import build_benchmark
    from mmcl.methods import build_method
    from mmcl.models.loader import load_model
    from mmcl.runner import run_context, seed_everything

    cfg = load_config([ROOT / "configs" / "continual-next-quick.yaml"],
                      overrides=[f"model.path={tiny_janus_dir}", "model.preset=null", "method.name=lwf",
                                 "benchmark.train_size=6", "benchmark.test_size=2"])
    m = build_method(run_context(cfg, load_model(cfg.model), build_benchmark(cfg)))
    seed_everything(0)
    m.setup(m.ctx.model)
    tasks = {t.name: t for t in m.ctx.benchmark.tasks}
    m.before_task(1, tasks["classification"])
    batch = m.ctx.collate(m.ctx.encode(tasks["t2i"].train[:3] + tasks["vqa"].train[:3], with_answer=True))
    assert "image_targets" in batch
    m.model.train()
    out = m.ctx.forward(m.model, batch)
    assert float(m.extra_loss(batch, out, 1)) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for p in m.teacher.student_parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = m.ctx.forward(m.model, batch)
    text, image = m.teacher.dual_distillation_terms(batch, out, 2.0)
    assert float(text) > 0 and float(image) > 0
    full = m.extra_loss(batch, out, 1)
    assert float(full) == pytest.approx(float(text + image))
    out.blanked_rows = out.image_rows  # as if every image prompt had been blanked: those rows are left out
    text_b, image_b = m.teacher.dual_distillation_terms(batch, out, 2.0)
    assert float(image_b) == 0.0 and float(text_b) > 0
    full.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.teacher.student_parameters())
    assert all(p.grad is None for p in m.teacher.parameters())
