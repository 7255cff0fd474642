"""Continual-learning metrics from the accuracy matrix (the one place they are defined).

Notation (0-based, as in the code): T tasks learned in stream order; the
accuracy matrix ``A`` is T x T and ``A[t][j]`` is the score on task j after
stage t (training on task t), future tasks (j > t) included. ``z[j]`` is the
zero-shot score on task j (the model before any stage). Scores may be on any
scale (fractions or percentages); the metrics share it.

- ``last`` (a.k.a. MFN, Avg.ACC): ``mean_j A[T-1][j]``, the mean over all
  tasks after the final stage.
- ``average`` (MAA): ``mean_t ( mean_{j<=t} A[t][j] )``, the mean over stages
  of the mean score on the tasks seen so far.
- ``mft`` (New.ACC): ``mean_t A[t][t]``, the score on each task right after
  learning it.
- ``bwt``: ``mean_{j<T-1} ( A[T-1][j] - A[j][j] )``; negative under
  forgetting. None when T == 1.
- ``fwt``: ``mean_{j>=1} ( A[j-1][j] - z[j] )``, the score on a task before
  learning it minus its zero-shot score. None when no zero-shot vector is given
  or T == 1.
- ``forgetting``: ``mean_{j<T-1} f_j`` with
  ``f_j = max_{j<=t<T-1} A[t][j] - A[T-1][j]``, the best score on task j
  after learning it and before the final stage, minus its final score. Not
  clipped at 0: it is negative when the final score beats every earlier one.
  None when T == 1.

The ``intrusion`` and ``intrusion_form`` tracks (``mmcl rescore --intrusion``) are not scores:
``I[t][j]`` is the share of task j's answers after stage t taken from the answer sets (or, for
``intrusion_form``, the answer shapes) of tasks learned after j. Their metrics are
:func:`intrusion_metrics` (``last`` and ``average`` only).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from numbers import Real

METRIC_NAMES: tuple[str, ...] = ("last", "average", "mft", "bwt", "fwt", "forgetting")
"""The keys of :func:`compute_metrics`' result, in this order."""


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _as_score(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{where} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{where} is {x}; scores must be finite (was a stage not evaluated?)")
    return x


def _validate_matrix(matrix: Sequence[Sequence[float]]) -> list[list[float]]:
    """The matrix as a list of float rows; ValueError unless it is non-empty, square and finite."""
    if isinstance(matrix, str | bytes):
        raise ValueError("the accuracy matrix must be a sequence of rows, got a string")
    rows = list(matrix)
    n = len(rows)
    if n == 0:
        raise ValueError("the accuracy matrix is empty; it needs one row per stage (T x T)")
    out: list[list[float]] = []
    for t, row in enumerate(rows):
        if isinstance(row, str | bytes) or not hasattr(row, "__len__"):
            raise ValueError(f"row {t} of the accuracy matrix is not a sequence of scores: {row!r}")
        if len(row) != n:
            raise ValueError(
                f"the accuracy matrix must be square (T x T, future tasks included): "
                f"it has {n} rows but row {t} has {len(row)} entries"
            )
        out.append([_as_score(v, f"A[{t}][{j}]") for j, v in enumerate(row)])
    return out


def _validate_zero_shot(zero_shot: Sequence[float], n: int) -> list[float]:
    z = list(zero_shot)
    if len(z) != n:
        raise ValueError(f"the zero-shot vector has {len(z)} entries but the matrix has {n} tasks")
    return [_as_score(v, f"zero_shot[{j}]") for j, v in enumerate(z)]


def _forgetting(a: list[list[float]]) -> list[float | None]:
    last = len(a) - 1
    return [max(a[t][j] for t in range(j, last)) - a[last][j] if j < last else None for j in range(len(a))]


def per_task_forgetting(matrix: Sequence[Sequence[float]]) -> list[float | None]:
    """``f_j = max_{j<=t<T-1} A[t][j] - A[T-1][j]`` for each task j; None for the last task.

    The last task has no stage between learning it and the end, so it has no
    forgetting. The mean of the non-None entries is ``forgetting``.
    """
    return _forgetting(_validate_matrix(matrix))


def compute_metrics(
    matrix: Sequence[Sequence[float | None]],
    zero_shot: Sequence[float | None] | None = None,
    columns: Sequence[int] | None = None,
) -> dict[str, float | None]:
    """The six metrics of the module docstring, keyed by :data:`METRIC_NAMES`.

    ``matrix`` is the full T x T accuracy matrix (row t = stage t); ``zero_shot``
    the T zero-shot scores, needed only for ``fwt``. ``columns`` restricts every
    mean over tasks j to those task indices (e.g. one scenario's tasks, or the
    tasks that declare a scorer) while keeping all stages: ``last`` is still
    measured after the final stage, ``bwt``/``forgetting`` against it. Cells of
    columns not selected are ignored (they may be None). Raises ValueError for an
    empty, ragged or non-square matrix, a non-finite selected score, or a
    zero-shot vector of the wrong length.
    """
    n = _check_shape(matrix)
    cols = list(range(n)) if columns is None else _check_columns(columns, n)
    a = _validate_matrix([[row[j] if j in cols else 0.0 for j in range(n)] for row in matrix])
    z = None
    if zero_shot is not None:
        zl = list(zero_shot)
        z = _validate_zero_shot([zl[j] if j in cols and j < len(zl) else 0.0 for j in range(len(zl))], n)
    last = n - 1
    final = a[last]
    seen_means = [_mean([a[t][j] for j in cols if j <= t]) for t in range(n) if any(j <= t for j in cols)]
    forget = [f for j, f in enumerate(_forgetting(a)) if j in cols and f is not None]
    bwt_terms = [final[j] - a[j][j] for j in cols if j < last]
    fwt_terms = [a[j - 1][j] - z[j] for j in cols if j >= 1] if z is not None else []
    return {
        "last": _mean([final[j] for j in cols]),
        "average": _mean(seen_means),
        "mft": _mean([a[j][j] for j in cols]),
        "bwt": _mean(bwt_terms) if bwt_terms else None,
        "fwt": _mean(fwt_terms) if fwt_terms else None,
        "forgetting": _mean(forget) if forget else None,
    }


def _check_shape(matrix: Sequence[Sequence[object]]) -> int:
    if isinstance(matrix, str | bytes):
        raise ValueError("the accuracy matrix must be a sequence of rows, got a string")
    rows = list(matrix)
    if not rows:
        raise ValueError("the accuracy matrix is empty; it needs one row per stage (T x T)")
    for t, row in enumerate(rows):
        if isinstance(row, str | bytes) or not hasattr(row, "__len__"):
            raise ValueError(f"row {t} of the accuracy matrix is not a sequence of scores: {row!r}")
        if len(row) != len(rows):
            raise ValueError(
                f"the accuracy matrix must be square (T x T, future tasks included): "
                f"it has {len(rows)} rows but row {t} has {len(row)} entries"
            )
    return len(rows)


def _check_columns(columns: Sequence[int], n: int) -> list[int]:
    idx = sorted(int(i) for i in columns)
    if not idx:
        raise ValueError("the metrics need at least one task index")
    if len(set(idx)) != len(idx):
        raise ValueError(f"duplicate task indices in {list(columns)}")
    if idx[0] < 0 or idx[-1] >= n:
        raise ValueError(f"task indices must be in [0, {n - 1}], got {list(columns)}")
    return idx


def compute_metrics_subset(
    matrix: Sequence[Sequence[float | None]],
    indices: Sequence[int],
    zero_shot: Sequence[float | None] | None = None,
) -> dict[str, float | None]:
    """:func:`compute_metrics` over the task columns ``indices`` (e.g. one scenario's tasks).

    All stages are kept: ``last`` is the mean of the selected tasks after the
    final stage of the whole stream; ``average`` the mean over stages of the mean
    of the selected tasks seen so far (stages before the first selected task are
    skipped); ``mft``, ``bwt``, ``fwt`` and ``forgetting`` average their per-task
    terms over the selected tasks only. ``zero_shot`` is indexed by full-stream
    task index. Raises ValueError for an empty selection, duplicates or
    out-of-range indices.
    """
    return compute_metrics(matrix, zero_shot, columns=indices)


def summarize_seeds(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation) of one metric over seeds, ignoring None.

    The std uses the n-1 denominator; it is 0.0 for a single value. Returns
    (None, None) when no value is given. Raises ValueError for a non-finite value.
    """
    xs = [_as_score(v, f"values[{i}]") for i, v in enumerate(values) if v is not None]
    if not xs:
        return None, None
    if len(xs) == 1:
        return xs[0], 0.0
    return _mean(xs), statistics.stdev(xs)


INTRUSION = "intrusion"
"""Name of the intrusion track (see the module docstring and docs/metrics.md#intrusion)."""
INTRUSION_FORM = "intrusion_form"
"""Name of the form-level intrusion track (docs/metrics.md#intrusion)."""
INTRUSION_TRACKS = (INTRUSION, INTRUSION_FORM)
"""The tracks that are shares of intruding answers, not scores (:func:`intrusion_metrics`)."""


def intrusion_metrics(matrix: Sequence[Sequence[float | None]]) -> dict[str, float | None]:
    """Metrics of an intrusion track: ``last``, the last row's mean over its non-null cells (the tasks
    learned before the last stage), and ``average``, the mean over rows of each row's mean (rows with
    a value). The score metrics (MFT, BWT, ...) do not apply and are None."""
    def mean(values: Sequence[float | None]) -> float | None:
        known = [float(v) for v in values if v is not None]
        return math.fsum(known) / len(known) if known else None

    rows = [mean(row) for row in matrix]
    out: dict[str, float | None] = dict.fromkeys(METRIC_NAMES)
    out["last"] = rows[-1] if rows else None
    out["average"] = mean(rows)
    return out
