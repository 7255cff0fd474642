"""``replay``: stage samples mix in memory at the configured ratio, memory bounds, resume, end to end."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import quick_overrides, run_quick

import mmcl.methods.replay  # noqa: F401  (registers "replay")
from mmcl.benchmarks.builtin import build_benchmark
from mmcl.config import load_config
from mmcl.data.sample import Benchmark, Sample, Task
from mmcl.methods import METHODS, RunContext, build_method
from mmcl.methods.replay import Replay
from mmcl.models.loader import Family, ModelBundle, load_model

ROOT = Path(__file__).resolve().parent.parent


def synthetic_ctx(sizes: list[int], *options: str, seed: int = 0) -> RunContext:
    """A stream of text-only tasks of the given sizes and a stand-in model (memory logic needs no model)."""
    tasks = [
        Task(
            f"t{k}",
            [Sample(f"t{k}-{i}", "q", ["a"], task=f"t{k}") for i in range(n)],
            [Sample("x", "q", ["a"])],
        )
        for k, n in enumerate(sizes)
    ]
    cfg = load_config(overrides=["method.name=replay", f"seed={seed}", *options])
    fam = Family("none", "none", "", "", "", "")
    return RunContext(
        cfg, ModelBundle(torch.nn.Linear(1, 1), None, fam, "none"), Benchmark("synthetic", tasks), seed=seed
    )


def run_memory(ctx: RunContext, upto: int | None = None) -> Replay:
    method = build_method(ctx)
    assert isinstance(method, Replay)
    for t, task in enumerate(ctx.benchmark.tasks[:upto]):
        method.train_samples(t, task)
        method.after_task(t, task)
    return method


REAL = ("method.name=replay", "benchmark.train_per_task=40", "method.memory_per_task=7")


@pytest.fixture(scope="module")
def real_parts(tiny_llava_dir: Path) -> tuple[ModelBundle, Benchmark]:
    """The tiny model and the msvqa-synth stream of quick_overrides, 40 training samples per task."""
    cfg = load_config(overrides=quick_overrides(tiny_llava_dir, *REAL))
    return load_model(cfg.model), build_benchmark(cfg)


@pytest.mark.parametrize("selection", ["reservoir", "random"])
@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_stage_samples_mix_memory_at_the_ratio(
    real_parts: tuple[ModelBundle, Benchmark], tiny_llava_dir: Path, selection: str, ratio: float
) -> None:
    cfg = load_config(
        overrides=quick_overrides(
            tiny_llava_dir, *REAL, f"method.selection={selection}", f"method.ratio={ratio}"
        )
    )
    real_ctx = RunContext(cfg, *real_parts, seed=cfg.seed)
    method = build_method(real_ctx)
    tasks = real_ctx.benchmark.tasks
    assert method.train_samples(0, tasks[0]) == tasks[0].train  # empty memory at stage 0
    method.after_task(0, tasks[0])
    method.train_samples(1, tasks[1])
    method.after_task(1, tasks[1])
    assert method.memory_counts() == {tasks[0].name: 7, tasks[1].name: 7}
    samples = method.train_samples(2, tasks[2])
    by_task = Counter(s.task for s in samples)
    n_task = len(tasks[2].train)
    n_mem = round(ratio / (1 - ratio) * n_task)  # 10 or 40
    assert by_task[tasks[2].name] == n_task == 40
    assert by_task[tasks[0].name] + by_task[tasks[1].name] == n_mem
    assert by_task[tasks[0].name] > 0 and by_task[tasks[1].name] > 0
    assert n_mem / len(samples) == pytest.approx(ratio)
    memory_ids = {r[1] for r in method.memory}
    assert all(s.id in memory_ids for s in samples[n_task:])  # drawn from memory only
    if n_mem <= 14:
        assert len({s.id for s in samples[n_task:]}) == n_mem  # without replacement when it can
    # the samples are the benchmark's own objects, resolved from (task, id) references
    assert all(any(s is x for x in real_ctx.benchmark.task(s.task).train) for s in samples)


@pytest.mark.parametrize("selection", ["reservoir", "random"])
def test_memory_per_task_is_respected(selection: str) -> None:
    ctx = synthetic_ctx([30, 3, 30, 12], "method.memory_per_task=5", f"method.selection={selection}")
    method = run_memory(ctx)
    assert method.memory_counts() == {"t0": 5, "t1": 3, "t2": 5, "t3": 5}  # t1 has only 3 samples
    assert len(set(method.memory)) == len(method.memory)  # no sample twice


def test_memory_total_random_is_rebalanced_across_seen_tasks() -> None:
    ctx = synthetic_ctx([30, 30, 2, 30], "method.memory_total=10", "method.selection=random")
    method = build_method(ctx)
    expected = [
        {"t0": 10},
        {"t0": 5, "t1": 5},
        {"t0": 4, "t1": 4, "t2": 2},
        {"t0": 3, "t1": 3, "t2": 2, "t3": 2},
    ]
    for t, task in enumerate(ctx.benchmark.tasks):
        before = set(method.memory)
        method.after_task(t, task)
        assert method.memory_counts() == expected[t]
        assert len(method.memory) <= 10
        assert {r for r in method.memory if r[0] != task.name} <= before  # old tasks are only cut down


def test_memory_total_reservoir_stays_bounded() -> None:
    ctx = synthetic_ctx([40, 40, 40, 40, 40], "method.memory_total=25")
    method = build_method(ctx)
    for t, task in enumerate(ctx.benchmark.tasks):
        method.after_task(t, task)
        assert len(method.memory) == 25
        assert method.stream_seen == 40 * (t + 1)
    counts = method.memory_counts()
    assert sum(counts.values()) == 25 and len(set(method.memory)) == 25
    assert len(counts) >= 3  # a uniform sample of 200 stream items hits most of the 5 tasks
    assert method.cost()["memory_samples"] == 25


def test_selection_is_seeded() -> None:
    a = run_memory(synthetic_ctx([30, 30], "method.memory_per_task=5", seed=1))
    b = run_memory(synthetic_ctx([30, 30], "method.memory_per_task=5", seed=1))
    c = run_memory(synthetic_ctx([30, 30], "method.memory_per_task=5", seed=2))
    assert a.memory == b.memory and a.memory != c.memory


@pytest.mark.parametrize(
    "options",
    [
        ["method.memory_total=9"],
        ["method.memory_total=9", "method.selection=random"],
        ["method.memory_per_task=4", "method.ratio=0.6"],
    ],
)
def test_state_dict_round_trip_continues_identically(options: list[str]) -> None:
    sizes = [20, 20, 20, 20]
    first = run_memory(synthetic_ctx(sizes, *options), upto=2)
    state = json.loads(json.dumps(first.state_dict()))  # JSON-friendly
    resumed = build_method(synthetic_ctx(sizes, *options))
    resumed.load_state_dict(state)
    tasks = first.ctx.benchmark.tasks
    for t in (2, 3):
        a, b = first.train_samples(t, tasks[t]), resumed.train_samples(t, tasks[t])
        assert [s.id for s in a] == [s.id for s in b]
        first.after_task(t, tasks[t])
        resumed.after_task(t, tasks[t])
        assert first.memory == resumed.memory and first.state_dict() == resumed.state_dict()
    with pytest.raises(KeyError, match="does not have"):
        resumed.load_state_dict({"memory": [["t0", "nope"]]})


def test_cost_counts_reference_bytes() -> None:
    method = run_memory(synthetic_ctx([10, 10], "method.memory_per_task=3"))
    cost = method.cost()
    assert cost["params_added_per_task"] == 0 and cost["memory_samples"] == 6
    assert cost["held_bytes"]["replay_buffer"] == sum(len(t) + len(i) for t, i in method.memory) > 0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"ratio": 1.5}, "method.ratio: Input should be less than 1"),
        ({"ratio": -0.1}, "method.ratio: Input should be greater than or equal to 0"),
        ({"memory_per_task": 5, "memory_total": 50}, "set exactly one of memory_per_task and memory_total"),
        ({"memory_per_task": None}, "set exactly one of memory_per_task and memory_total"),
        ({"memory_total": 0}, "method.memory_total: Input should be greater than or equal to 1"),
        ({"selection": "fifo"}, "method.selection: Input should be 'reservoir' or 'random'"),
        ({"memory": 5}, "method.memory: Extra inputs are not permitted. Valid options: memory_per_task"),
    ],
)
def test_bad_options_are_refused(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        METHODS.get("replay").parse_options(raw)


def test_only_total_given_replaces_the_per_task_default() -> None:
    opts = METHODS.get("replay").parse_options({"memory_total": 50})
    assert (opts.memory_per_task, opts.memory_total) == (None, 50)


def test_duplicate_sample_ids_are_refused() -> None:
    ctx = synthetic_ctx([3])
    ctx.benchmark.tasks[0].train.append(ctx.benchmark.tasks[0].train[0])
    with pytest.raises(ValueError, match="two training samples with id 't0-0'"):
        build_method(ctx)


def test_shipped_config_has_the_defaults() -> None:
    cfg = load_config([ROOT / "configs" / "replay.yaml"])
    assert cfg.method.name == "replay" and cfg.name == "replay"
    assert METHODS.get("replay").parse_options(cfg.method.options()) == mmcl.methods.replay.ReplayOptions()


@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
def test_end_to_end_three_tasks(tiny_llava_dir: Path, tmp_path: Path) -> None:
    res = run_quick(tiny_llava_dir, tmp_path, "method.name=replay", "eval.zero_shot=false", "eval.full_matrix=false")
    assert res["method"] == "replay" and len(res["matrix"]["primary"]) == 3
    # 16 samples per task; ratio 0.2 adds round(0.25 * 16) = 4 memory samples from stage 2 on
    assert [s["train_samples"] for s in res["stage_stats"]] == [16, 20, 20]
    cost = res["cost"]
    assert cost["params_added_per_task"] == 0 and cost["memory_samples"] == 3 * 16  # memory_per_task=20 > 16
    assert cost["held_bytes"]["replay_buffer"] > 0
