"""Continual-learning metrics on hand-computed 3 x 3 accuracy matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmcl.metrics import (
    METRIC_NAMES,
    compute_metrics,
    compute_metrics_subset,
    per_task_forgetting,
    summarize_seeds,
)

# A[t][j]: score on task j after stage t. Each task is learned well and then
# partly forgotten.
A = [
    [0.8, 0.1, 0.2],
    [0.6, 0.9, 0.3],
    [0.5, 0.7, 0.9],
]
Z = [0.05, 0.05, 0.1]  # zero-shot scores


def test_metrics_3x3() -> None:
    m = compute_metrics(A, zero_shot=Z)
    assert list(m) == list(METRIC_NAMES)
    # last = (0.5 + 0.7 + 0.9) / 3 = 0.7
    assert m["last"] == pytest.approx(0.7)
    # average = mean(0.8, (0.6 + 0.9) / 2, (0.5 + 0.7 + 0.9) / 3) = (0.8 + 0.75 + 0.7) / 3 = 0.75
    assert m["average"] == pytest.approx(0.75)
    # mft = (0.8 + 0.9 + 0.9) / 3 = 2.6 / 3
    assert m["mft"] == pytest.approx(2.6 / 3)
    # bwt = mean(0.5 - 0.8, 0.7 - 0.9) = mean(-0.3, -0.2) = -0.25 (negative: forgetting)
    assert m["bwt"] == pytest.approx(-0.25)
    # fwt = mean(A[0][1] - z1, A[1][2] - z2) = mean(0.1 - 0.05, 0.3 - 0.1) = mean(0.05, 0.2) = 0.125
    assert m["fwt"] == pytest.approx(0.125)
    # forgetting = mean(max(0.8, 0.6) - 0.5, 0.9 - 0.7) = mean(0.3, 0.2) = 0.25
    assert m["forgetting"] == pytest.approx(0.25)


def test_fwt_is_none_without_zero_shot() -> None:
    m = compute_metrics(A)
    assert m["fwt"] is None
    assert m["last"] == pytest.approx(0.7)


def test_forgetting_uses_max_over_earlier_stages() -> None:
    # Task 0 improves after stage 1 (0.5 -> 0.8) and then drops to 0.4;
    # task 1 ends higher than right after it was learned (0.6 -> 0.7).
    b = [
        [0.5, 0.0, 0.0],
        [0.8, 0.6, 0.0],
        [0.4, 0.7, 0.9],
    ]
    # f_0 = max(0.5, 0.8) - 0.4 = 0.4 (not A[0][0] - 0.4 = 0.1); f_1 = 0.6 - 0.7 = -0.1; f_2: none.
    assert per_task_forgetting(b) == pytest.approx([0.4, -0.1, None])
    m = compute_metrics(b)
    # forgetting = (0.4 - 0.1) / 2 = 0.15 (not clipped at 0)
    assert m["forgetting"] == pytest.approx(0.15)
    # bwt = mean(0.4 - 0.5, 0.7 - 0.6) = mean(-0.1, 0.1) = 0: it compares with A[j][j], not the max
    assert m["bwt"] == pytest.approx(0.0)


def test_no_forgetting_gives_zero_bwt() -> None:
    ones = [[1.0] * 3 for _ in range(3)]
    m = compute_metrics(ones, zero_shot=[1.0, 1.0, 1.0])
    assert m == {"last": 1.0, "average": 1.0, "mft": 1.0, "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0}


def test_single_task() -> None:
    m = compute_metrics([[0.7]], zero_shot=[0.2])
    assert m == {"last": 0.7, "average": 0.7, "mft": 0.7, "bwt": None, "fwt": None, "forgetting": None}
    assert per_task_forgetting([[0.7]]) == [None]


def test_percent_scale_and_numpy_input() -> None:
    m = compute_metrics(np.array(A) * 100, zero_shot=np.array(Z) * 100)
    assert m["last"] == pytest.approx(70.0)
    assert m["bwt"] == pytest.approx(-25.0)
    assert m["fwt"] == pytest.approx(12.5)


def test_subset_keeps_all_stages() -> None:
    # Columns {0, 2} (given out of order), every stage kept.
    m = compute_metrics_subset(A, [2, 0], zero_shot=Z)
    assert m["last"] == pytest.approx(0.7)  # final row: (0.5 + 0.9) / 2
    assert m["average"] == pytest.approx(0.7)  # stages: {0}: 0.8, {0}: 0.6, {0,2}: 0.7 -> mean 0.7
    assert m["mft"] == pytest.approx(0.85)  # (A00 + A22) / 2 = (0.8 + 0.9) / 2
    assert m["bwt"] == pytest.approx(-0.3)  # task 0 only: 0.5 - 0.8
    assert m["fwt"] == pytest.approx(0.2)  # task 2 only: A[1][2] - z[2] = 0.3 - 0.1
    assert m["forgetting"] == pytest.approx(0.3)  # task 0: max(0.8, 0.6) - 0.5


def test_subset_last_is_after_the_final_stage() -> None:
    # Columns {0, 1}: "last" is the final row of the whole stream.
    m = compute_metrics_subset(A, [0, 1])
    assert m["last"] == pytest.approx(0.6)  # (0.5 + 0.7) / 2
    assert m["bwt"] == pytest.approx(-0.25)  # mean(0.5 - 0.8, 0.7 - 0.9)


def test_subset_of_all_tasks_equals_full_metrics() -> None:
    assert compute_metrics_subset(A, [0, 1, 2], zero_shot=Z) == compute_metrics(A, zero_shot=Z)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([], "empty"),
        ([[0.1, 0.2], [0.3]], "square"),
        ([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], "square"),
        ([[0.1, math.nan], [0.3, 0.4]], r"A\[0\]\[1\]"),
        ([[0.1, 0.2], [math.inf, 0.4]], "finite"),
        ([[0.1, None], [0.3, 0.4]], "must be a number"),
        ([[0.1, "0.2"], [0.3, 0.4]], "must be a number"),
        ([0.1, 0.2], "not a sequence"),
    ],
)
def test_invalid_matrix(matrix: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(matrix)


def test_invalid_zero_shot() -> None:
    with pytest.raises(ValueError, match="3 tasks"):
        compute_metrics(A, zero_shot=[0.1, 0.2])
    with pytest.raises(ValueError, match="zero_shot"):
        compute_metrics(A, zero_shot=[0.1, math.nan, 0.2])


def test_invalid_subset() -> None:
    with pytest.raises(ValueError, match="at least one"):
        compute_metrics_subset(A, [])
    with pytest.raises(ValueError, match="duplicate"):
        compute_metrics_subset(A, [1, 1])
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        compute_metrics_subset(A, [0, 3])


def test_summarize_seeds() -> None:
    mean, std = summarize_seeds([0.5, 0.7, None])
    assert mean == pytest.approx(0.6)
    # sample std: sqrt(((0.5 - 0.6)^2 + (0.7 - 0.6)^2) / (2 - 1)) = sqrt(0.02)
    assert std == pytest.approx(math.sqrt(0.02))
    assert summarize_seeds([0.4]) == (0.4, 0.0)
    assert summarize_seeds([None, None]) == (None, None)
    assert summarize_seeds([]) == (None, None)
    with pytest.raises(ValueError):
        summarize_seeds([0.1, math.nan])
