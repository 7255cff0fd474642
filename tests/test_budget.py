"""eval.matrix: full, seen (eval.full_matrix=false) and sampled cells with their standard errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import quick_overrides
from test_resume import _args, _assert_same_run, _killed_run, _reference, cli

from mmcl.cli import app
from mmcl.config import ConfigError, load_config
from mmcl.data.sample import Sample, Task
from mmcl.eval import budget
from mmcl.runner import Runner


def _task(n: int, name: str = "t") -> Task:
    return Task(name, [], [Sample(id=f"{name}{i}", question="q", answers=["a"], task=name) for i in range(n)])


def test_full_matrix_is_an_alias_of_matrix() -> None:
    assert load_config().eval.matrix == "full"
    assert load_config(overrides=["eval.full_matrix=false"]).eval.matrix == "seen"
    assert load_config(overrides=["eval.full_matrix=true", "eval.matrix=full"]).eval.matrix == "full"
    with pytest.raises(ConfigError, match="set only eval.matrix"):
        load_config(overrides=["eval.full_matrix=false", "eval.matrix=sampled"])
    with pytest.raises(ConfigError, match="eval.matrix"):
        load_config(overrides=["eval.matrix=some"])


def test_which_cells_are_sampled() -> None:
    t = _task(10)
    assert not budget.is_sampled("sampled", 1, None, False, 3, t)  # zero-shot row
    assert not budget.is_sampled("sampled", 2, 2, False, 3, t)  # diagonal
    assert not budget.is_sampled("sampled", 0, 3, True, 3, t)  # final row
    assert budget.is_sampled("sampled", 0, 2, False, 3, t) and budget.is_sampled("sampled", 3, 2, False, 3, t)
    assert not budget.is_sampled("sampled", 0, 2, False, 10, t)  # the sample would be the whole set
    assert not budget.is_sampled("full", 0, 2, False, 3, t)
    tasks = [_task(2, n) for n in "abc"]
    assert [x.name for x in budget.stage_tasks("seen", tasks, 1)] == ["a", "b"]
    assert [x.name for x in budget.stage_tasks("sampled", tasks, 1)] == ["a", "b", "c"]


def test_subsample_is_seeded_and_fixed_per_task() -> None:
    t = _task(20)
    a, b = budget.sample_indices(t, 5, 0), budget.sample_indices(t, 5, 0)
    assert a == b == sorted(a) and len(set(a)) == 5
    assert budget.sample_indices(t, 5, 1) != a
    assert [s.id for s in budget.subsample(t, 5, 0).test] == [f"t{i}" for i in a]


def test_standard_error_with_finite_population_correction() -> None:
    t = _task(10)
    rows = [{"scores": {"exact_match": v}} for v in (1.0, 0.0, 1.0, 0.0)]
    se = budget.standard_errors(t, rows, population=10)
    # sample sd of (1, 0, 1, 0) = sqrt(1/3); / sqrt(4); * sqrt((10 - 4) / 9)
    assert se["stderr/exact_match"] == pytest.approx(math.sqrt(1 / 3) / 2 * math.sqrt(6 / 9))
    assert se["sampled_n"] == 4
    assert math.isnan(budget.standard_errors(t, rows[:1], 10)["stderr/exact_match"])


def test_metrics_that_read_sampled_cells_and_cost() -> None:
    T = 4
    mask = [[budget.is_sampled("sampled", j, t, t == T - 1, 3, _task(10)) for j in range(T)] for t in range(T)]
    assert budget.metrics_from_sampled_cells(mask) == ["average", "fwt", "forgetting"]
    assert budget.metrics_from_sampled_cells([[False] * T for _ in range(T)]) == []
    assert budget.cell_cost("full", 20, 50, 10) == 20 * 50 + 400 * 50
    assert budget.cell_cost("sampled", 20, 50, 10) == 20 * 50 + 39 * 50 + (400 - 39) * 10
    assert budget.cell_cost("seen", 3, 10, 5, zero_shot=False) == 60


def _sampled(*extra: str) -> list[str]:
    return ["eval.matrix=sampled", "eval.sample_per_cell=3", *extra]


@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
def test_sampled_run_records_cells_and_errors(tiny_llava_dir: Path, tmp_path: Path) -> None:
    out = Runner(load_config(overrides=quick_overrides(tiny_llava_dir, "train.num_threads=1", *_sampled())),
                 output_dir=tmp_path / "run").run()
    res = json.loads((out / "results.json").read_text())
    assert res["eval_matrix"] == "sampled"
    s = res["sampling"]
    want = [[False, True, True], [True, False, True], [False, False, False]]
    assert s["cells"] == want
    assert s["n"] == [[None, 3, 3], [3, None, 3], [None, None, None]]
    for t in range(3):
        for j in range(3):
            rows = (out / "predictions" / f"stage-{t + 1:02d}" / f"{res['tasks'][j]}.jsonl").read_text().splitlines()
            assert len(rows) == (3 if want[t][j] else 6)
            assert (s["stderr"]["primary"][t][j] is not None) == want[t][j]
    assert all(len(p.read_text().splitlines()) == 6 for p in (out / "predictions" / "zero-shot").glob("*.jsonl"))
    assert s["metrics_from_sampled_cells"] == ["average", "fwt", "forgetting"]
    report = (out / "report.md").read_text()
    assert "Sampled cells" in report and "±" in report


@pytest.mark.slow
def test_sampled_run_killed_and_resumed_equals_uninterrupted(tiny_llava_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    # stage 1's second cell is a sampled one: killed right after it
    _killed_run(tiny_llava_dir, out, "eval:stage=1:task=2", *_sampled(), resume=False)
    res = cli.invoke(app, _args(tiny_llava_dir, out, *_sampled(), resume=True))
    assert res.exit_code == 0, res.output
    ref = _reference(tiny_llava_dir, tmp_path / "reference", *_sampled())
    _assert_same_run(ref, out)
    a, b = (json.loads((d / "results.json").read_text())["sampling"] for d in (ref, out))
    assert a == b
