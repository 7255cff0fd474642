"""``quad``: a question-only memory, object-matched replay, replay and attention distillation, end to end."""

from __future__ import annotations

import json
import random
import re
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from conftest import build_test_method, run_quick

import mmcl.methods.quad  # noqa: F401  (registers "quad")
from mmcl.config import load_config
from mmcl.data.sample import Benchmark, Sample, Task
from mmcl.methods import METHODS, RunContext, build_method
from mmcl.methods.quad import Quad, QuadOptions, StoredQuestion, question_pool
from mmcl.models.loader import Family, ModelBundle

ROOT = Path(__file__).resolve().parent.parent
# stage 2 (high-altitude) shares its object categories with stage 0, not with stage 1 (underwater)
ORDER = "benchmark.order=[high-altitude.attribute, underwater.counting, high-altitude.existence]"
HIGH_ALTITUDE = {"airplane", "storage-tank", "vehicle", "ship"}


def synthetic_ctx(*options: str, seed: int = 0) -> RunContext:
    """Two text-only tasks with categories and a stand-in model (the memory needs no model)."""
    tasks = [
        Task(
            name,
            [
                Sample(
                    f"{name}-{i}",
                    f"{name} question {i}?",
                    [f"answer {i}"],
                    task=name,
                    meta={"category": f"c{i % 3}"},
                )
                for i in range(n)
            ],
            [Sample("x", "q", ["a"])],
        )
        for name, n in (("t0", 12), ("t1", 3))
    ]
    cfg = load_config(overrides=["method.name=quad", f"seed={seed}", *options])
    fam = Family("none", "none", "", "", "", "")
    return RunContext(
        cfg, ModelBundle(torch.nn.Linear(1, 1), None, fam, "none"), Benchmark("synthetic", tasks), seed=seed
    )


def fill_memory(ctx: RunContext) -> Quad:
    method = build_method(ctx)
    assert isinstance(method, Quad)
    for t, task in enumerate(ctx.benchmark.tasks):
        method.after_task(t, task)
    return method


def test_memory_holds_questions_only_k_per_task() -> None:
    ctx = synthetic_ctx("method.questions_per_task=5")
    method = fill_memory(ctx)
    t0, t1 = ctx.benchmark.tasks
    assert [q.task for q in method.replay.memory] == ["t0"] * 5 + ["t1"] * 3  # k per task, or all of a smaller task
    assert {f.name for f in fields(StoredQuestion)} == {"question", "category", "task", "sample_id"}
    by_id = {s.id: s for t in (t0, t1) for s in t.train}
    for q in method.replay.memory:
        sample = by_id[q.sample_id]
        assert (q.question, q.category, q.task) == (sample.question, sample.meta["category"], sample.task)
    assert len({q.sample_id for q in method.replay.memory}) == 8
    # JSON-friendly, and nothing but the question, its category and its provenance
    state = json.loads(json.dumps(method.state_dict()))
    assert all(set(entry) == {"question", "category", "task", "sample_id"} for entry in state["memory"])
    assert "answer" not in json.dumps(state)
    cost = method.cost()
    assert cost["questions_stored"] == 8 and cost["params_added_per_task"] == 0
    assert cost["held_bytes"] == {
        "teacher_adapter": 0,
        "question_memory": sum(len(q.question) + len(q.category or "") for q in method.replay.memory),
    }
    # the selection is random with the run seed: the same again, another with another seed
    assert fill_memory(synthetic_ctx("method.questions_per_task=5")).replay.memory == method.replay.memory
    assert fill_memory(synthetic_ctx("method.questions_per_task=5", seed=1)).replay.memory != method.replay.memory


def test_state_dict_round_trip_and_refusal() -> None:
    method = fill_memory(synthetic_ctx("method.questions_per_task=4"))
    fresh = build_method(synthetic_ctx("method.questions_per_task=4"))
    assert isinstance(fresh, Quad) and fresh.replay.memory == []
    fresh.load_state_dict(json.loads(json.dumps(method.state_dict())))
    assert fresh.replay.memory == method.replay.memory and fresh.cost() == method.cost()
    state = method.state_dict()
    state["memory"][0]["task"] = "gone"
    with pytest.raises(KeyError, match=r"tasks \['gone'\] that the benchmark does not have"):
        fresh.load_state_dict(state)


def test_question_pool_prefers_matching_categories() -> None:
    memory = [StoredQuestion(f"q{i}", cat, "t", str(i)) for i, cat in enumerate(["a", "b", None, "a"])]
    assert [q.question for q in question_pool(memory, {"a", "z"}, "object")] == ["q0", "q3"]
    assert question_pool(memory, {"z"}, "object") == memory  # no match: uniform over all
    assert question_pool(memory, {"a"}, "random") == memory


@pytest.fixture(scope="module")
def quad(tiny_llava_dir: Path) -> Quad:
    """Memory of stages 0 and 1 (5 questions each, untrained adapter), set up for stage 1 (teacher + pairs)."""
    m = build_test_method(tiny_llava_dir, "quad", ORDER, "method.questions_per_task=5")
    assert isinstance(m, Quad)
    tasks = m.ctx.benchmark.tasks
    assert m.extra_loss({}, None, 0) is None  # stage 0: no memory, no teacher
    m.after_task(0, tasks[0])
    m.flags_before = grad_flags(m)  # type: ignore[attr-defined]
    m.before_task(1, tasks[1])
    return m


def grad_flags(method: Quad) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in method.model.named_parameters()}


def attn_implementations(method: Quad) -> tuple[str, str]:
    cfg = method.replay.hf_model.config
    return cfg.text_config._attn_implementation, cfg.vision_config._attn_implementation


def test_replayed_questions_are_object_matched(quad: Quad) -> None:
    tasks = quad.ctx.benchmark.tasks
    # stage 1 (underwater) shares no category with the memory: uniform over what is stored
    assert len(quad.replay.pairs) == len(tasks[1].train) == 16
    assert {p.meta["question_task"] for p in quad.replay.pairs} == {tasks[0].name}
    # pairs: current images, old questions, no stored answers (the teacher's go in their place)
    current = {s.id: s for s in tasks[1].train}
    stored = {(q.question, q.sample_id) for q in quad.replay.memory}
    for p in quad.replay.pairs:
        assert p.image is current[p.meta["image_id"]].image and p.task == tasks[1].name
        assert (p.question, p.meta["question_id"]) in stored
    # stage 2 (high-altitude) with high-altitude and underwater questions stored
    memory, pairs = list(quad.replay.memory), list(quad.replay.pairs)
    try:
        quad.after_task(1, tasks[1])
        assert {q.task for q in quad.replay.memory} == {tasks[0].name, tasks[1].name}
        matched = quad.replay.build_pairs(2, tasks[2])
        assert {p.meta["question_task"] for p in matched} == {tasks[0].name}
        assert {p.meta["category"] for p in matched} <= HIGH_ALTITUDE
        quad.replay.options = quad.replay.options.model_copy(update={"selection": "random"})
        uniform = quad.replay.build_pairs(2, tasks[2])
        assert {p.meta["question_task"] for p in uniform} == {tasks[0].name, tasks[1].name}
    finally:
        quad.replay.options = quad.replay.options.model_copy(update={"selection": "object"})
        quad.replay.memory, quad.replay.pairs = memory, pairs


def test_teacher_is_a_frozen_copy_and_costs_one_adapter(quad: Quad) -> None:
    assert set(quad.model.peft_config) == {"default", "teacher"} and quad.model.active_adapter == "default"
    assert not any(p.requires_grad for p in quad.replay.teacher.parameters())
    flags = grad_flags(quad)
    assert {n: f for n, f in flags.items() if ".teacher." not in n} == {
        n: f for n, f in quad.flags_before.items() if ".teacher." not in n
    }
    teacher_bytes = sum(4 * p.numel() for p in quad.replay.teacher.parameters())
    assert quad.cost()["held_bytes"]["teacher_adapter"] == teacher_bytes > 0


def perturb_student(quad: Quad) -> dict[str, torch.Tensor]:
    saved = {n: p.detach().clone() for n, p in quad.model.named_parameters() if ".default." in n}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in quad.model.named_parameters():
            if ".default." in n and "lora_B" in n:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return saved


def restore_student(quad: Quad, saved: dict[str, torch.Tensor]) -> None:
    quad.model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for n, p in quad.model.named_parameters():
            if n in saved:
                p.copy_(saved[n])


def test_losses_zero_against_identical_teacher_positive_after_change(quad: Quad) -> None:
    model = quad.model
    model.train()
    replay = quad.replay.replay_batch(torch.device("cpu"))
    assert replay["input_ids"].shape[0] == quad.ctx.config.train.batch_size
    assert (replay["labels"] != -100).any(dim=1).all()  # teacher-forced on the teacher's answer + eos
    flags, impl = grad_flags(quad), attn_implementations(quad)
    assert impl == ("sdpa", "sdpa")
    replay_kl, attention = quad.replay.stability_losses(replay)
    assert replay_kl.requires_grad and attention.requires_grad
    assert abs(replay_kl.item()) < 1e-6 and abs(attention.item()) < 1e-6
    # nothing the loop relies on has changed: flags, adapter, train mode, attention implementation
    assert grad_flags(quad) == flags and model.active_adapter == "default" and model.training
    assert attn_implementations(quad) == impl
    saved = perturb_student(quad)
    try:
        replay_kl, attention = quad.replay.stability_losses(replay)
        assert replay_kl.item() > 1e-3 and attention.item() > 1e-5
        assert grad_flags(quad) == flags and attn_implementations(quad) == impl
        # the gradient of the extra loss reaches the student adapter only
        (replay_kl + attention).backward()
        for n, p in model.named_parameters():
            if ".default." in n:
                assert p.grad is not None, n
            else:
                assert p.grad is None, n
        assert all(float(p.grad.abs().sum()) > 0 for p in quad.replay.teacher.student_parameters() if p.grad is not None)
        # extra_loss = λ / (1 - λ) * (replay_weight * KL + attention_weight * ACD) on a drawn batch
        quad.replay._draw = random.Random(7)
        kl, acd = (x.item() for x in quad.replay.stability_losses(quad.replay.replay_batch(torch.device("cpu"))))
        quad.replay.options = quad.replay.options.model_copy(update={"stability_weight": 0.8, "replay_weight": 2.0})
        quad.replay._draw = random.Random(7)
        extra = quad.extra_loss(replay, None, 1)
        assert extra is not None and extra.item() == pytest.approx(4 * (2 * kl + acd), rel=1e-4)
        # attention_weight=0: no attention maps, and no switch to eager attention
        quad.replay.options = quad.replay.options.model_copy(update={"attention_weight": 0.0})
        switched = []
        quad.replay.hf_model.set_attn_implementation = lambda impl: switched.append(impl)
        try:
            _, attention = quad.replay.stability_losses(replay)
        finally:
            del quad.replay.hf_model.set_attn_implementation
        assert attention.item() == 0.0 and switched == []
    finally:
        quad.replay.options = QuadOptions(questions_per_task=5)
        restore_student(quad, saved)


def test_attention_loss_matches_a_direct_computation(quad: Quad) -> None:
    """The hooks read the same maps as ``output_attentions=True`` under eager, on the rows after the image."""
    model, base = quad.model, quad.replay.hf_model
    replay = quad.replay.replay_batch(torch.device("cpu"))
    inputs = {k: v for k, v in replay.items() if k != "labels"}
    saved = perturb_student(quad)
    flags = grad_flags(quad)
    try:
        got = quad.replay.stability_losses(replay)[1].item()
        base.set_attn_implementation({"text_config": "eager"})
        with torch.no_grad():
            student = model(**inputs, output_attentions=True).attentions
            model.set_adapter("teacher")
            teacher = model(**inputs, output_attentions=True).attentions
    finally:
        model.set_adapter("default")
        for n, p in model.named_parameters():
            p.requires_grad = flags[n]
        base.set_attn_implementation({"text_config": "sdpa"})
        restore_student(quad, saved)
    image_id = base.config.image_token_id
    assert len(student) == len(teacher) == base.config.text_config.num_hidden_layers
    per_layer = []
    for s, t in zip(student, teacher, strict=True):
        kls = []
        for b in range(inputs["input_ids"].shape[0]):
            ids, mask = inputs["input_ids"][b].tolist(), inputs["attention_mask"][b].tolist()
            first = max(i for i, x in enumerate(ids) if x == image_id) + 1
            for r in range(first, len(ids)):
                if not mask[r]:
                    continue
                p, q = t[b, :, r].double(), s[b, :, r].double()  # [heads, keys]
                keep = p > 0
                kls.extend(
                    float((p[h][keep[h]] * (p[h][keep[h]] / q[h][keep[h]]).log()).sum())
                    for h in range(p.shape[0])
                )
        per_layer.append(sum(kls) / len(kls))
    assert got == pytest.approx(sum(per_layer) / len(per_layer), rel=1e-4) and got > 0


def test_attention_layers_select_and_refuse(quad: Quad, tiny_llava_dir: Path) -> None:
    assert len(quad.replay.distilled_attention) == 2  # all layers of the test checkpoint
    quad.replay.options = quad.replay.options.model_copy(update={"attention_layers": [-1]})
    try:
        last = quad.replay.hf_model.get_decoder().layers[-1].self_attn
        assert quad.replay._attention_modules() == [last]
        quad.replay.options = quad.replay.options.model_copy(update={"attention_layers": [0, 2]})
        with pytest.raises(
            ValueError, match=r"attention_layers \[2\] out of range for a language model with 2 layers"
        ):
            quad.replay._attention_modules()
    finally:
        quad.replay.options = QuadOptions(questions_per_task=5)


@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
def test_end_to_end(tiny_llava_dir: Path, tmp_path: Path) -> None:
    res = run_quick(
        tiny_llava_dir,
        tmp_path,
        "method.name=quad",
        "method.questions_per_task=4",
        "benchmark.order=[high-altitude.attribute, underwater.existence]",
        "eval.zero_shot=false",
    )
    assert res["method"] == "quad" and len(res["matrix"]["primary"]) == 2
    cost = res["cost"]
    assert cost["questions_stored"] == 8 and cost["params_added_per_task"] == 0
    assert cost["held_bytes"]["question_memory"] > 0 and cost["held_bytes"]["teacher_adapter"] > 0
    assert res["stage_stats"][0]["trainable_params"] == res["stage_stats"][1]["trainable_params"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"questions_per_task": 0}, "method.questions_per_task: Input should be greater than or equal to 1"),
        ({"stability_weight": 1}, "method.stability_weight: Input should be less than 1"),
        ({"attention_layers": []}, "method.attention_layers: List should have at least 1 item"),
        ({"selection": "best"}, "method.selection: Input should be 'object' or 'random'"),
        ({"memory": 5}, "method.memory: Extra inputs are not permitted. Valid options: questions_per_task"),
    ],
)
def test_bad_options_are_refused(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        METHODS.get("quad").parse_options(raw)


def test_supports_and_shipped_config() -> None:
    assert Quad.supports == {"ddp"}
    cfg = load_config([ROOT / "configs" / "quad.yaml"])
    assert cfg.method.name == "quad" and cfg.name == "quad"
    assert METHODS.get("quad").parse_options(cfg.method.options()) == QuadOptions()
