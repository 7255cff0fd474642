"""Matplotlib figures of the reports: accuracy-matrix heatmap, forgetting curves, method bars.

Each figure is built by a ``*_figure`` function returning a matplotlib :class:`Figure` (no
pyplot state, so safe in threads and without a display); :func:`figure_png` renders one to PNG
bytes. Scores are given in [0, 1] and drawn ×100. Tasks are labelled T1..Tn.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from mmcl.utils.io import atomic_write_bytes

DPI = 120


def task_label(j: int) -> str:
    """Short column label of the j-th task (0-based): ``T1``, ``T2``..."""
    return f"T{j + 1}"


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def heatmap_figure(
    matrix: Sequence[Sequence[float | None]],
    tasks: Sequence[str],
    title: str,
    zero_shot: Sequence[float | None] | None = None,
    row_labels: Sequence[str] | None = None,
) -> Figure:
    """An accuracy matrix as an annotated heatmap.

    Rows are stages (``row_labels``, default "after T1"...), columns tasks (T1..Tn); an
    optional zero-shot row goes on top. Cells show the score ×100; null cells are left
    blank; for a T x T matrix the diagonal cells (score right after training that task)
    are outlined. The figure grows with the task count.
    """
    n_tasks = len(tasks)
    labels = (
        list(row_labels) if row_labels is not None else [f"after {task_label(t)}" for t in range(len(matrix))]
    )
    rows: list[Sequence[float | None]] = list(matrix)
    offset = 0
    if zero_shot is not None:
        rows = [zero_shot, *rows]
        labels = ["zero-shot", *labels]
        offset = 1
    data = np.array([[np.nan if v is None else 100.0 * float(v) for v in r] for r in rows], dtype=float)
    data = data.reshape(len(rows), n_tasks)
    masked = np.ma.masked_invalid(data)

    cell = 0.75 if n_tasks <= 8 else 0.55 if n_tasks <= 14 else 0.5
    font = 9 if n_tasks <= 8 else 7 if n_tasks <= 14 else 6
    fig = Figure(figsize=(n_tasks * cell + 2.8, max(len(rows), 1) * cell + 1.6), layout="constrained")
    ax = fig.add_subplot()
    norm = Normalize(vmin=0.0, vmax=100.0)
    cmap = colormaps["viridis"].with_extremes(bad="white")
    im = ax.imshow(masked, cmap=cmap, norm=norm, aspect="auto")
    for i in range(data.shape[0]):
        for j in range(n_tasks):
            v = data[i, j]
            if np.isnan(v):
                continue
            r, g, b, _ = cmap(norm(v))
            color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=font, color=color)
    for t in range(n_tasks if len(matrix) == n_tasks else 0):
        ax.add_patch(
            Rectangle((t - 0.5, t + offset - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.2)
        )
    if offset:
        ax.axhline(0.5, color="black", linewidth=1.0)
    ax.set_xticks(range(n_tasks), [task_label(j) for j in range(n_tasks)], fontsize=font + 1)
    ax.set_yticks(range(len(rows)), labels, fontsize=font + 1)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("evaluated task", fontsize=font + 2)
    ax.set_ylabel("stage (after training)", fontsize=font + 2)
    ax.set_title(title, fontsize=font + 3)
    fig.colorbar(im, ax=ax, label="score ×100", shrink=0.9)
    return fig


def plot_heatmap(
    matrix: Sequence[Sequence[float | None]],
    tasks: Sequence[str],
    path: str | Path,
    title: str,
    zero_shot: Sequence[float | None] | None = None,
    row_labels: Sequence[str] | None = None,
) -> Path:
    """Draw :func:`heatmap_figure` into a PNG file (atomic write) and return its path."""
    path = Path(path)
    atomic_write_bytes(path, figure_png(heatmap_figure(matrix, tasks, title, zero_shot, row_labels)))
    return path


def forgetting_curves_figure(
    matrix: Sequence[Sequence[float | None]],
    tasks: Sequence[str],
    title: str,
    stage_labels: Sequence[str] | None = None,
) -> Figure:
    """Each task's score over the stages, one line per task (a forgetting curve).

    ``matrix[t][j]`` is the score on task j after stage t. For a T x T matrix the part of a
    line before the task is trained (future cells) is dotted and the point right after its
    training is marked; from there on the line is solid, so a falling solid line is
    forgetting. Null cells break the line. The legend maps T-numbers to task names.
    """
    n_stages, n_tasks = len(matrix), len(tasks)
    square = n_stages == n_tasks
    x = np.arange(1, n_stages + 1)
    fig = Figure(figsize=(max(6.0, 0.35 * n_stages + 4.5), 4.2), layout="constrained")
    ax = fig.add_subplot()
    cmap = colormaps["tab20" if n_tasks > 10 else "tab10"]
    for j in range(n_tasks):
        y = np.array([np.nan if r[j] is None else 100.0 * float(r[j]) for r in matrix], dtype=float)
        color = cmap(j % cmap.N)
        label = f"{task_label(j)} {tasks[j]}"
        if square:
            ax.plot(x[: j + 1], y[: j + 1], linestyle=":", linewidth=1.0, color=color)
            ax.plot(x[j:], y[j:], linestyle="-", linewidth=1.6, color=color, label=label)
            ax.plot(x[j], y[j], marker="o", markersize=5, color=color)
        else:
            ax.plot(x, y, linestyle="-", marker="o", markersize=3, linewidth=1.6, color=color, label=label)
    labels = (
        list(stage_labels)
        if stage_labels is not None
        else [f"after {task_label(t)}" for t in range(n_stages)]
    )
    font = 8 if n_stages <= 10 else 6
    ax.set_xticks(
        x, labels, rotation=45 if n_stages > 4 else 0, ha="right" if n_stages > 4 else "center", fontsize=font
    )
    ax.set_ylim(-3, 103)
    ax.set_ylabel("score ×100")
    ax.set_xlabel("stage")
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7 if n_tasks > 10 else 8, frameon=False)
    return fig


def method_bars_figure(
    groups: Sequence[str],
    series: dict[str, Sequence[tuple[float | None, float | None]]],
    title: str,
) -> Figure:
    """Grouped bars: one group of bars per method group, one bar per series, std as error bars.

    ``series`` maps a series name (e.g. ``"last"``) to one ``(mean, std)`` per group, in
    [0, 1]. A missing mean leaves the bar out and writes ``–`` at its place; a missing std
    (one seed) draws no error bar.
    """
    n_groups, n_series = len(groups), max(len(series), 1)
    width = 0.8 / n_series
    fig = Figure(figsize=(max(5.0, 1.1 * n_groups * n_series + 2.0), 4.2), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(n_groups)
    cmap = colormaps["tab10"]
    for k, (name, values) in enumerate(series.items()):
        pos = x - 0.4 + width * (k + 0.5)
        means = np.array([math.nan if m is None else 100.0 * m for m, _ in values], dtype=float)
        bars = ax.bar(pos, means, width * 0.92, color=cmap(k), label=name)
        has_err = np.array([m is not None and sd is not None for m, sd in values], dtype=bool)
        errs = np.array([100.0 * sd if m is not None and sd is not None else 0.0 for m, sd in values])
        if has_err.any():
            ax.errorbar(
                pos[has_err], means[has_err], yerr=errs[has_err], fmt="none", ecolor="black", capsize=4
            )
        for rect, m, e in zip(bars, means, errs, strict=True):
            text, h = ("–", 0.0) if math.isnan(m) else (f"{m:.1f}", m + e)
            ax.text(rect.get_x() + rect.get_width() / 2, h + 1.0, text, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel("score ×100 (mean ± std over seeds)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig
