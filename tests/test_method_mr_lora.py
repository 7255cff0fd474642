"""MR-LoRA: isolated experts, an MLLM router trained on stored samples, batched routing."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import build_test_method, run_quick, train_stage

from mmcl.eval.generate import generate_answers
from mmcl.methods.mr_lora import LETTERS, ROUTER, MRLoRA, expert_name, parse_choice, router_prompt
from mmcl.train.encode import Encoder

TRAIN = ("train.max_steps=4", "train.lr=0.01", "method.router_samples_per_task=5", "method.router_epochs=1")


def _method(model_dir: Path, *extra: str) -> MRLoRA:
    method = build_test_method(model_dir, "mr-lora", *TRAIN, *extra)
    assert isinstance(method, MRLoRA)
    calls: list[dict[str, Any]] = []

    def train_extra(samples, label, **overrides):  # the runner's pass, recorded and really trained
        from accelerate import Accelerator

        from mmcl.train.loop import train_on

        ctx = method.ctx
        calls.append({"samples": samples, "label": label, "overrides": overrides})
        enc = Encoder(ctx.bundle.processor).encode(samples, with_answer=True)
        tcfg = ctx.config.train.model_copy(update={**overrides, "max_steps": 2})
        train_on(method, enc, tcfg, Accelerator(cpu=True), 99, ctx.seed, ctx.bundle.tokenizer.pad_token_id)
        return {}

    method.ctx.train_extra = train_extra
    method.router_calls = calls  # type: ignore[attr-defined]
    return method


def _snapshot(method: MRLoRA) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in method.model.named_parameters()}


@pytest.mark.parametrize(
    ("reply", "n", "expected"),
    [
        ("B", 3, 1),
        ("b.", 3, 1),
        ("(C)", 3, 2),
        ("Expert D", 4, 3),
        ("A B", 2, 0),  # the first valid letter wins
        ("D", 3, None),  # a letter beyond the experts
        ("Bad", 3, None),  # not a standalone letter
        ("", 3, None),
        ("the answer is 2", 3, None),
    ],
)
def test_parse_choice(reply: str, n: int, expected: int | None) -> None:
    assert parse_choice(reply, n) == expected


def test_router_prompt_lists_experts_by_letter() -> None:
    p = router_prompt("How many cars?", ["Remote sensing.", "Medical images"])
    assert "A: Remote sensing; B: Medical images" in p and "Question: How many cars?" in p
    with pytest.raises(ValueError, match="at most"):
        router_prompt("q", ["x"] * (len(LETTERS) + 1))
    # expert_text: letters lists the letters alone: 20 experts stay short
    p = router_prompt("How many cars?", [""] * 20)
    assert "Experts: A; B; C;" in p and "; T. Question: How many cars?" in p


def test_training_an_expert_changes_no_other_expert(tiny_llava_dir: Path) -> None:
    method = _method(tiny_llava_dir)
    train_stage(method, 0)
    method.before_task(1, method.ctx.benchmark.tasks[1])
    before = _snapshot(method)
    trainable = {n for n, p in method.model.named_parameters() if p.requires_grad}
    assert trainable and all(".expert-1." in n or n.endswith(".expert-1") for n in trainable), sorted(trainable)[:3]
    assert any("multi_modal_projector" in n for n in trainable)  # the expert's own projector copy
    train_stage(method, 1, finish=False)
    after = _snapshot(method)
    changed = {n for n in before if n in after and not torch.equal(before[n], after[n])}
    assert changed and changed <= trainable  # only expert 1's own tensors moved
    assert not any(".expert-0." in n for n in changed)
    assert not any(ROUTER in n for n in changed)


def test_router_data_grows_with_every_stage(tiny_llava_dir: Path) -> None:
    method = _method(tiny_llava_dir)
    tasks = method.ctx.benchmark.tasks
    train_stage(method, 0)
    assert method.router_calls == [] and not method.has_router  # no router with one expert
    train_stage(method, 1)
    train_stage(method, 2)
    assert [len(c["samples"]) for c in method.router_calls] == [10, 15]
    last = method.router_calls[-1]["samples"]
    assert [s.answers for s in last] == [["A"]] * 5 + [["B"]] * 5 + [["C"]] * 5
    train_ids = {t.name: {s.id for s in t.train} for t in tasks}
    for k, t in enumerate(tasks):
        kept = method.buffer[t.name]
        assert len(kept) == 5 and set(kept) <= train_ids[t.name]
        assert [s.id for s in last[5 * k : 5 * k + 5]] == [f"router:{i}" for i in kept]
    q = last[0].question
    for k, t in enumerate(tasks):  # the prompt lists every expert by letter with its description
        assert f"{LETTERS[k]}: {(t.description or t.name).rstrip('.')}" in q
    assert method.router_calls[0]["overrides"]["epochs"] == 1.0
    assert method.has_router and method.model.active_adapter == expert_name(2)


def test_unparsable_replies_fall_back_to_a_random_seen_expert(tiny_llava_dir: Path) -> None:
    method = _method(tiny_llava_dir)
    train_stage(method, 0)
    train_stage(method, 1)
    task = method.ctx.benchmark.tasks[0]
    # an untrained-enough router replies with anything: force it to reply nothing useful
    services = method.ctx.services
    services.generate = lambda model, samples, *a, **k: ["no letter here"] * len(samples)
    try:
        names = method.route(task.test, task)
    finally:
        del services.generate
    assert names is not None and set(names) <= {expert_name(0), expert_name(1)}
    assert method.fallbacks == {"stage 2": len(task.test)}
    assert method.sample_tracks(task)["router_fallback"] == [1.0] * len(task.test)


def test_batched_routing_equals_one_at_a_time(tiny_llava_dir: Path) -> None:
    method = _method(tiny_llava_dir)
    for t in range(3):
        train_stage(method, t)
    ctx = method.ctx
    samples = [s for t in ctx.benchmark.tasks for s in t.test]
    task = ctx.benchmark.tasks[0]
    batched = method.route(samples, task)
    ctx.config.eval.batch_size = 1
    single = [method.route([s], task)[0] for s in samples]
    assert batched == single
    # answering: one batch with per-sample experts equals each sample alone on its expert
    enc = Encoder(ctx.bundle.processor).encode(samples, with_answer=False)
    tok = ctx.bundle.tokenizer
    mixed = generate_answers(method.model, tok, enc, batch_size=len(enc), max_new_tokens=6, adapter_names=batched)
    alone = []
    for e, name in zip(enc, batched, strict=True):
        method.model.set_adapter(name)
        alone += generate_answers(method.model, tok, [e], batch_size=1, max_new_tokens=6)
    assert mixed == alone


@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
def test_run_reports_router_accuracy_and_oracle_tracks(tiny_llava_dir: Path, tmp_path: Path) -> None:
    res = run_quick(tiny_llava_dir, tmp_path / "run", "method.name=mr-lora", *TRAIN)
    m = res["matrix"]
    T = len(res["tasks"])
    acc = m["router_accuracy"]
    assert acc[0] == [1.0] + [None] * (T - 1)  # one expert: everything goes to it
    for t in range(T):  # defined exactly for the tasks seen so far
        assert all((v is None) == (j > t) for j, v in enumerate(acc[t]))
        assert all(0.0 <= v <= 1.0 for v in acc[t][: t + 1])
    assert len(m["oracle"]) == T and res["metrics"]["oracle"]["last"] is not None
    assert m["oracle"][0] == m["primary"][0]  # one expert: the oracle routes the same way
    assert res["cost"]["experts"] == T and res["cost"]["router_buffer_samples"] == 5 * T
    assert [len(s.get("extra_training", [])) for s in res["stage_stats"]] == [0, 1, 1]
    row = (tmp_path / "run" / "predictions" / "stage-03").glob("*.jsonl")
    import json

    first = json.loads(next(iter(sorted(row))).read_text().splitlines()[0])
    assert first["adapter"].startswith("expert-") and "oracle_prediction" in first
    assert set(first["tracks"]) == {"router_accuracy", "router_fallback", "oracle"}


@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
def test_drift_reads_each_row_through_the_expert_that_answered_it(tiny_llava_dir: Path, tmp_path: Path) -> None:
    """An expert (and its projector copy) never changes after its stage, so a row of task 1 answered
    by expert 0 after a later stage gets the same drift mark as after stage 1: it is read through
    expert 0, not through the expert trained last (the active one)."""
    import json

    res = run_quick(tiny_llava_dir, tmp_path / "run", "method.name=mr-lora", "eval.drift_probe=true", *TRAIN)
    first_task = res["tasks"][0]

    def rows(stage: int) -> list[dict[str, Any]]:
        path = tmp_path / "run" / "predictions" / f"stage-{stage:02d}" / f"{first_task}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    after_first = rows(1)
    compared = 0
    for stage in range(2, len(res["tasks"]) + 1):
        for before, now in zip(after_first, rows(stage), strict=True):
            if now["adapter"] == expert_name(0) and now["tracks"]["drift_probe"] is not None:
                assert now["tracks"]["drift_probe"] == before["tracks"]["drift_probe"]
                compared += 1
    assert compared >= 4  # 8 rows on this seed
    # the later experts' projector copies moved: read through the last expert, the cell would differ
    assert any(v != res["matrix"]["drift_probe"][0][0] for v in res["matrix"]["drift_probe"][-1][1:] if v is not None)


def test_model_train_projector_is_refused(tiny_llava_dir: Path) -> None:
    with pytest.raises(ValueError, match="method.train_projector"):
        build_test_method(tiny_llava_dir, "mr-lora", "model.train_projector=true", setup=False)


def test_projector_copies_refused_where_the_projector_input_is_packed(tiny_llava_dir: Path) -> None:
    method = build_test_method(tiny_llava_dir, "mr-lora", setup=False)
    bundle = method.ctx.bundle
    bundle.family = dataclasses.replace(bundle.family, name="qwen2-vl")
    with pytest.raises(ValueError, match="train_projector=false"):
        MRLoRA(method.ctx, method.options)
    MRLoRA(method.ctx, MRLoRA.parse_options({"train_projector": False}))  # without copies it is fine


@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
def test_text_only_router_reads_the_question_without_the_image(tiny_llava_dir: Path, tmp_path: Path) -> None:
    method = _method(tiny_llava_dir, "method.router_input=text")
    train_stage(method, 0)
    train_stage(method, 1)
    (call,) = method.router_calls
    assert all(s.image is None for s in call["samples"]) and call["samples"][0].question
    default = _method(tiny_llava_dir)
    train_stage(default, 0)
    train_stage(default, 1)
    assert all(s.image is not None for s in default.router_calls[0]["samples"])  # the official router sees it
    res = run_quick(tiny_llava_dir, tmp_path / "run", "method.name=mr-lora", "method.router_input=text", *TRAIN)
    acc = res["matrix"]["router_accuracy"]
    assert all(0.0 <= v <= 1.0 for v in acc[-1])  # routed without images, at every stage


def test_letters_only_prompt_for_many_experts(tiny_llava_dir: Path) -> None:
    """expert_text: letters gives the router the letters alone; its data still label each task's expert."""
    method = _method(tiny_llava_dir, "method.expert_text=letters")
    train_stage(method, 0)
    train_stage(method, 1)
    (call,) = method.router_calls
    questions = {s.question.split(" Question: ")[0] for s in call["samples"]}
    assert questions == {"Experts: A; B."}
    assert {s.answers[0] for s in call["samples"]} == {"A", "B"}
    named = _method(tiny_llava_dir, "method.expert_text=name")
    train_stage(named, 0)
    train_stage(named, 1)
    assert all(named.experts[0] in s.question for s in named.router_calls[0]["samples"])
