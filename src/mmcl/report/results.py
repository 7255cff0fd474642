"""Read a run's ``results.json``, compute per-track metrics, and write ``matrix.csv``.

A *track* is one key of ``results["matrix"]``: ``"primary"`` (each task's first declared
scorer) or a scorer name. In a scorer's track a cell is null when that task does not
declare the scorer, so the track's metrics are computed over the tasks whose column is
fully scored (see :func:`track_metrics`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmcl.metrics import INTRUSION_TRACKS, compute_metrics, compute_metrics_subset, intrusion_metrics
from mmcl.utils.io import atomic_write_text
from mmcl.utils.paths import inside

Matrix = list[list[float | None]]

RESULTS_FILE = "results.json"
MATRIX_CSV = "matrix.csv"
METRIC_KEYS = ("last", "average", "mft", "bwt", "fwt", "forgetting")
_REQUIRED = ("name", "benchmark", "method", "seed", "tasks", "matrix")


class ResultsError(ValueError):
    """A run directory or its results.json is missing or malformed; the message names the file."""


def results_path(run_dir: str | Path) -> Path:
    """The results.json of a run directory (``run_dir`` may also be the results.json itself)."""
    p = Path(run_dir)
    return p if p.name == RESULTS_FILE and p.is_file() else p / RESULTS_FILE


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """Load and check ``RUN_DIR/results.json``.

    Raises :class:`ResultsError` naming the directory or file when the directory does not
    exist, the file is missing or not JSON, a required key is absent, or a matrix track
    does not have one column per task.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ResultsError(f"run directory {run_dir} does not exist")
    path = results_path(run_dir)
    if not path.is_file():
        raise ResultsError(f"{path} not found: {run_dir} is not a finished (or resumable) run directory")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: cannot be read: {e}") from None
    if not isinstance(results, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(results).__name__}")
    missing = [k for k in _REQUIRED if k not in results]
    if missing:
        raise ResultsError(f"{path}: missing key(s) {', '.join(missing)}")
    tasks = results["tasks"]
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks) or not tasks:
        raise ResultsError(f"{path}: 'tasks' must be a non-empty list of task names")
    matrix = results["matrix"]
    if not isinstance(matrix, dict) or "primary" not in matrix:
        raise ResultsError(f"{path}: 'matrix' must be an object with at least a 'primary' track")
    n = len(tasks)
    for track, rows in matrix.items():
        if not isinstance(rows, list) or len(rows) > n:
            raise ResultsError(f"{path}: matrix[{track!r}] must be a list of at most {n} rows")
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != n:
                raise ResultsError(
                    f"{path}: matrix[{track!r}] row {i + 1} must have {n} cells (one per task)"
                )
    for track, row in (results.get("zero_shot") or {}).items():
        if not isinstance(row, list) or len(row) != n:
            raise ResultsError(f"{path}: zero_shot[{track!r}] must have {n} cells (one per task)")
    return results


def track_names(results: dict[str, Any]) -> list[str]:
    """The matrix tracks, ``"primary"`` first, then the others in file order."""
    names = list(results["matrix"])
    return ["primary"] + [n for n in names if n != "primary"] if "primary" in names else names


def evaluated_rows(results: dict[str, Any]) -> int:
    """How many matrix rows have been evaluated: the primary rows up to the last non-null one."""
    rows = results["matrix"]["primary"]
    k = len(rows)
    while k and all(v is None for v in rows[k - 1]):
        k -= 1
    return k


def row_labels(results: dict[str, Any]) -> list[str]:
    """A label per evaluated row: the run's ``stages`` names when given, else ``after <task>``.

    Runs that are not sequential have other rows: joint training has one row ("after
    joint training"), a zero-shot-only run one row ("zero-shot").
    """
    k = evaluated_rows(results)
    stages = results.get("stages")
    if isinstance(stages, list) and len(stages) >= k and all(isinstance(x, str) for x in stages[:k]):
        return list(stages[:k])
    return [f"after {task}" for task in results["tasks"][:k]]


def track_matrix(results: dict[str, Any], scorer: str) -> Matrix:
    """The evaluated rows of one track (raises :class:`ResultsError` listing tracks if absent)."""
    matrix = results["matrix"]
    if scorer not in matrix:
        raise ResultsError(
            f"run {results.get('name')!r} has no {scorer!r} track; tracks: {', '.join(track_names(results))}"
        )
    return [list(r) for r in matrix[scorer][: evaluated_rows(results)]]


def track_zero_shot(results: dict[str, Any], scorer: str) -> list[float | None] | None:
    """The zero-shot row of one track, or None when the run has none."""
    zs = (results.get("zero_shot") or {}).get(scorer)
    return list(zs) if zs is not None else None


def scored_task_indices(matrix: Sequence[Sequence[float | None]]) -> list[int]:
    """Indices of the tasks whose scores the metrics of this matrix use.

    For a T x T matrix, task j counts when its column is non-null in every row from
    stage j on: a task that does not declare the scorer (all-null column) is left out,
    while null *future* cells (``eval.full_matrix=false``) do not exclude a task (they
    only make FWT unavailable). For any other shape, task j counts when its column is
    non-null in every row.
    """
    rows = [list(r) for r in matrix]
    if not rows:
        return []
    n, square = len(rows[0]), len(rows) == len(rows[0])
    return [j for j in range(n) if all(r[j] is not None for r in rows[j if square else 0 :])]


def compute_track_metrics(
    matrix: Sequence[Sequence[float | None]], zero_shot: Sequence[float | None] | None = None
) -> dict[str, float | None]:
    """Metrics of one track's matrix, whose cells may be null.

    Nulls mark tasks that do not declare the track's scorer (or cells not evaluated).
    A T x T matrix gets :func:`mmcl.metrics.compute_metrics` when every task counts (see
    :func:`scored_task_indices`), else :func:`mmcl.metrics.compute_metrics_subset` over
    the counted tasks (all stages kept; see there).
    FWT is None without zero-shot scores for the counted tasks or when a needed
    "before learning" cell is null. A matrix that is not T x T (joint training or a
    zero-shot-only run: one row) has only ``last``, the mean of its final row over the
    counted tasks. Every metric is None when no task counts.
    """
    rows = [list(r) for r in matrix]
    while rows and all(v is None for v in rows[-1]):
        rows.pop()
    indices = scored_task_indices(rows)
    out: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    if not indices:
        return out
    n = len(rows[0])
    if len(rows) != n:
        final = [v for j, v in enumerate(rows[-1]) if j in indices and v is not None]
        out["last"] = math.fsum(final) / len(final)
        return out
    # compute_metrics needs an all-numeric matrix: fill nulls with a placeholder. They sit
    # only in columns left out, in future cells (read only by FWT, checked below) or in
    # zero-shot cells of tasks left out.
    square = [[0.0 if v is None else float(v) for v in row] for row in rows]
    zs: list[float] | None = None
    if zero_shot is not None and all(zero_shot[j] is not None for j in indices):
        zs = [0.0 if v is None else float(v) for v in zero_shot]
    if zs is not None and any(rows[a][b] is None for a, b in zip(indices, indices[1:], strict=False)):
        zs = None
    if len(indices) == n:
        metrics = compute_metrics(square, zero_shot=zs)
    else:
        metrics = compute_metrics_subset(square, indices, zero_shot=zs)
    return {key: metrics.get(key) for key in METRIC_KEYS}


def track_task_indices(results: dict[str, Any], scorer: str) -> list[int]:
    """Indices of the tasks a track's metrics use (see :func:`scored_task_indices`)."""
    return scored_task_indices(track_matrix(results, scorer))


def track_metrics(results: dict[str, Any], scorer: str) -> dict[str, float | None]:
    """Metrics of one track (``"primary"`` or a scorer name) of a run; see :func:`compute_track_metrics`
    (the intrusion tracks, not scores: :func:`mmcl.metrics.intrusion_metrics`)."""
    if scorer in INTRUSION_TRACKS:
        return intrusion_metrics(track_matrix(results, scorer))
    return compute_track_metrics(track_matrix(results, scorer), track_zero_shot(results, scorer))


def _cell(v: float | None) -> str:
    return "" if v is None else repr(round(float(v), 6))


def matrix_csv_text(results: dict[str, Any]) -> str:
    """The text of matrix.csv (see :func:`write_matrix_csv`)."""
    tasks = results["tasks"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for k, track in enumerate(track_names(results)):
        if k:
            buf.write("\n")
        w.writerow(["scorer", "stage", *tasks])
        zero_shot = track_zero_shot(results, track)
        if zero_shot is not None:
            w.writerow([track, "zero-shot", *(_cell(v) for v in zero_shot)])
        for t, row in enumerate(track_matrix(results, track), 1):
            w.writerow([track, str(t), *(_cell(v) for v in row)])
    return buf.getvalue()


def write_matrix_csv(run_dir: str | Path, results: dict[str, Any]) -> Path:
    """Write ``RUN_DIR/matrix.csv``: one block per track, blocks separated by a blank line.

    Each block has the header ``scorer,stage,<task1>,...``, an optional ``zero-shot`` row,
    then one row per evaluated stage (``1`` = after training the first task). Scores are
    in [0, 1], rounded to 6 decimals; an empty cell is a task without that scorer.
    """
    path = inside(run_dir, MATRIX_CSV)
    atomic_write_text(path, matrix_csv_text(results))
    return path
