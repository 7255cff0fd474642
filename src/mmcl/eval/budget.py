"""The evaluation budget (``eval.matrix``): which cells of the accuracy matrix are evaluated, and on what.

- ``full`` (the default): every task after every stage, future tasks included (T+1 evaluations
  of T test sets with the zero-shot row).
- ``seen``: only the tasks seen so far (MCITlib's protocol; ``eval.full_matrix: false``).
- ``sampled``: the zero-shot row, the diagonal A[t][t] and the final row A[T][j] on the full test
  sets; every other cell on a seeded subsample of ``eval.sample_per_cell`` items of that task's
  test set (the same items at every stage, so that two rows differ by the model, not by the
  draw). A sampled cell keeps its standard error, ``stderr/<scorer>`` in its scores: the sample
  standard deviation of the per-item scores over sqrt(n), with the finite-population correction
  sqrt((N - n) / (N - 1)) (n items drawn without replacement from N).

With ``sampled`` the exact metrics are ``last``, ``mft`` and ``bwt`` (final row and diagonal);
``average``, ``fwt`` and ``forgetting`` read sampled cells (:func:`metrics_from_sampled_cells`).
The cost of a stream of T tasks: ``full`` evaluates T(T+1) test sets, ``sampled`` 3T - 1 test
sets (zero-shot row included) plus (T - 1)^2 subsamples (:func:`cell_cost`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from mmcl.data.sample import Task

STDERR_PREFIX = "stderr/"
SAMPLED_N = "sampled_n"
"""Keys a sampled cell adds to its ``TaskResult.scores``: the items scored, and each scorer's standard error."""


def stage_tasks(mode: str, tasks: Sequence[Task], stage: int) -> list[Task]:
    """The tasks evaluated after sequential training stage ``stage`` (0-based)."""
    return list(tasks[: stage + 1]) if mode == "seen" else list(tasks)


def is_sampled(mode: str, task_index: int, stage: int | None, final: bool, per_cell: int, task: Task) -> bool:
    """Whether cell (``stage``, ``task_index``) is evaluated on a subsample (``stage`` None: zero-shot row)."""
    if mode != "sampled" or stage is None or final or task_index == stage:
        return False
    return per_cell < len(task.test)


def sample_indices(task: Task, n: int, seed: int) -> list[int]:
    """``n`` test items of ``task`` drawn without replacement, seeded by (run seed, task name), sorted."""
    rng = random.Random(f"mmcl-sampled-cell:{seed}:{task.name}")
    return sorted(rng.sample(range(len(task.test)), n))


def subsample(task: Task, n: int, seed: int) -> Task:
    """``task`` with its test set cut to :func:`sample_indices`."""
    return replace(task, test=[task.test[i] for i in sample_indices(task, n, seed)])


def standard_errors(task: Task, rows: Sequence[dict[str, Any]], population: int) -> dict[str, float]:
    """``{"stderr/<scorer>": se, "sampled_n": n}`` of a cell scored on ``rows`` out of ``population`` items."""
    n = len(rows)
    out: dict[str, float] = {SAMPLED_N: float(n)}
    fpc = math.sqrt((population - n) / (population - 1)) if population > 1 else 0.0
    for scorer in task.scorers:
        values = [float(r["scores"][scorer]) for r in rows if scorer in (r.get("scores") or {})]
        if len(values) < 2:
            out[STDERR_PREFIX + scorer] = math.nan
            continue
        mean = math.fsum(values) / len(values)
        var = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
        out[STDERR_PREFIX + scorer] = math.sqrt(var / len(values)) * fpc
    return out


def metrics_from_sampled_cells(sampled: Sequence[Sequence[bool]]) -> list[str]:
    """The metrics (of :data:`mmcl.report.results.METRIC_KEYS`) that read a sampled cell of this T x T mask."""
    rows = len(sampled)
    if not rows or any(len(r) != rows for r in sampled):
        return []
    T = rows
    used = []
    if any(sampled[t][j] for t in range(T) for j in range(t + 1)):
        used.append("average")
    if any(sampled[j - 1][j] for j in range(1, T)):
        used.append("fwt")
    if any(sampled[t][j] for j in range(T - 1) for t in range(j, T - 1)):
        used.append("forgetting")
    return used


def cell_cost(mode: str, T: int, test_size: int, per_cell: int, zero_shot: bool = True) -> int:
    """Test items generated over a whole sequential run of T tasks of ``test_size`` items each."""
    small = min(per_cell, test_size)
    zs = T * test_size if zero_shot else 0
    if mode == "seen":
        return zs + test_size * T * (T + 1) // 2
    if mode == "full":
        return zs + test_size * T * T
    full_cells = T + (T - 1)  # diagonal + the final row's off-diagonal cells
    return zs + full_cells * test_size + (T * T - full_cells) * small
