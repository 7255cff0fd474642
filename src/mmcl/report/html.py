"""One self-contained HTML page for one or several finished runs (``mmcl report RUN... --html OUT``).

The page needs no network to be viewed: CSS is inline, every image is a base64 ``data:`` URI,
there is no script. Runs are grouped as in :mod:`mmcl.report.compare` (seeds of one
configuration share ``name``, ``method`` and ``benchmark``); each group gets one set of figures.
Sections, in order:

- **Runs**: each run directory, its group and seed; notes on odd groups (repeated seeds,
  configs that differ beyond the seed).
- **Metrics**: per track, the group's metrics as mean ± sample std over seeds.
- **Method comparison**: bars of ``last`` and ``average`` (primary track) per group, std as
  error bars.
- **Accuracy matrices**: per group and track, a heatmap of the *cell-wise mean over seeds*
  (runs of the group with other tasks or another number of evaluated stages are left out of
  the mean, and the page says so).
- **Forgetting curves**: per group, each task's primary score over the stages (same mean matrix).
- **Benchmark protocols**: one section per registered protocol that has a table for some run
  (:mod:`mmcl.report.protocols`; e.g. the MSVQA protocol for runs with scenarios and a VQA/F1 track).
- **Cost**: time, parameters, peak memory and bytes held between tasks, mean ± std over seeds.
- **Forgetting examples**: per group, from its first run with saved predictions, the tasks
  with the largest drop from their best score (after learning them, before the final stage)
  to their final score, and the test samples that were right at that best stage and wrong at
  the end (primary-scorer score >= 0.5 then < 0.5), with a thumbnail of the image. Predictions
  store only the question id, so the benchmark is rebuilt from the run's ``config.yaml`` (with
  the ``rebuild`` function the caller passes, ``mmcl.benchmarks.builtin.build_benchmark``) to
  find the image; when that fails the rows are shown without thumbnails and the page says why.
- **Config**: each run's ``config.yaml`` in a collapsible block.

Every figure is also written as a PNG into ``<OUT stem>-figures/`` next to the page (files of
an earlier report there are overwritten, never deleted).
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from PIL import Image

from mmcl import __version__
from mmcl.config import RunConfig, load_config
from mmcl.data.sample import Benchmark, Sample
from mmcl.report.compare import Stat, fmt_stat, group_notes, group_runs
from mmcl.report.figures import (
    figure_png,
    forgetting_curves_figure,
    heatmap_figure,
    method_bars_figure,
    task_label,
)
from mmcl.report.markdown import METRIC_COLUMNS, METRIC_HELP, MISSING, fmt_score
from mmcl.report.protocols import HtmlTable, Protocol, protocols
from mmcl.report.results import (
    METRIC_KEYS,
    Matrix,
    row_labels,
    track_matrix,
    track_metrics,
    track_names,
    track_task_indices,
    track_zero_shot,
)
from mmcl.utils.io import atomic_write_bytes, atomic_write_text
from mmcl.utils.paths import inside

FIGURES_SUFFIX = "-figures"
TOP_FORGETTING_TASKS = 3
EXAMPLES_PER_TASK = 4
RIGHT = 0.5
"""A prediction counts as right when its primary-scorer score is at least this."""
THUMBNAIL_PX = 128
PRIMARY = "primary"

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 0 1.5em 3em; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: .3em .6em; vertical-align: top; }
th { background: #f6f8fa; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.cards { display: flex; flex-wrap: wrap; gap: 0 2em; }
.card { flex: 1 1 520px; min-width: 0; }
.card.wide { flex-basis: 100%; }
figure { margin: .8em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: .8em; color: #59636e; }
img.thumb { width: 96px; height: 96px; image-rendering: pixelated; border: 1px solid #d0d7de; }
details { margin: .5em 0; }
summary { cursor: pointer; font-weight: 600; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .85em; }
.note { background: #fff8c5; border-left: 4px solid #d4a72c; padding: .4em .8em; white-space: pre-line; }
.help { font-size: .85em; color: #59636e; }
code { background: #f6f8fa; padding: 0 .2em; }
"""


# ---------------------------------------------------------------- small helpers


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    """An HTML table; cells are HTML already (escape text before). Columns from ``numeric_from`` align right."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>" for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>\n{body}\n</section>'


def _inline(text: str) -> str:
    """Escape text for HTML, turning Markdown-style `code` spans into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))


def _note(text: str) -> str:
    return f'<p class="note">{_inline(text)}</p>'


def _card(group: RunGroup, body: str) -> str:
    """One group's block in a row of cards; full width for more than 10 tasks."""
    wide = " wide" if len(group.members[0][1]["tasks"]) > 10 else ""
    return f'<div class="card{wide}"><h3>{escape(group.label)}</h3>{body}</div>'


@dataclass
class FigureSink:
    """Writes each figure as a PNG into ``folder`` and returns HTML embedding the same bytes."""

    folder: Path
    written: list[Path] = field(default_factory=list)

    def add(self, name: str, fig: Figure, caption: str) -> str:
        """Save ``fig`` as ``folder/name`` and return a ``<figure>`` with it as a data URI."""
        png = figure_png(fig)
        path = inside(self.folder, name)
        atomic_write_bytes(path, png)
        self.written.append(path)
        return (
            f'<figure><img src="{data_uri(png)}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)} (also <code>{escape(self.folder.name)}/{escape(name)}</code>)"
            "</figcaption></figure>"
        )


# ---------------------------------------------------------------- groups of runs


@dataclass
class RunGroup:
    """Seeds of one configuration: runs sharing ``(name, method, benchmark)``."""

    key: tuple[str, str, str]
    members: list[tuple[Path, dict[str, Any]]]
    label: str = ""

    @property
    def n_seeds(self) -> int:
        return len(self.members)

    @property
    def slug(self) -> str:
        return _slug(self.label)

    def tracks(self) -> list[str]:
        """Tracks of any member, ``primary`` first, in first-seen order."""
        names: list[str] = []
        for _, r in self.members:
            names += [t for t in track_names(r) if t not in names]
        return names

    def comparable(self) -> tuple[list[dict[str, Any]], list[Path]]:
        """(members with the first member's tasks and evaluated stage count, run dirs left out)."""
        first = self.members[0][1]
        shape = (first["tasks"], len(track_matrix(first, PRIMARY)))
        kept, left = [], []
        for d, r in self.members:
            if (r["tasks"], len(track_matrix(r, PRIMARY))) == shape:
                kept.append(r)
            else:
                left.append(d)
        return kept, left


def load_groups(run_dirs: Sequence[str | Path]) -> list[RunGroup]:
    """Load and group the runs (:func:`mmcl.report.compare.group_runs`), each with a display label.

    The label is ``method · name``, plus the benchmark when the runs are on several benchmarks.
    """
    grouped = group_runs(run_dirs)
    several_benchmarks = len({k[2] for k in grouped}) > 1
    groups = []
    for key, members in grouped.items():
        name, method, benchmark = key
        label = f"{method} · {name}" + (f" · {benchmark}" if several_benchmarks else "")
        groups.append(RunGroup(key, members, label))
    return groups


def mean_matrix(matrices: Sequence[Sequence[Sequence[float | None]]]) -> Matrix:
    """Cell-wise mean of same-shape matrices, ignoring nulls; a cell is null where all are null."""
    out: Matrix = []
    for rows in zip(*matrices, strict=True):
        cells = []
        for values in zip(*rows, strict=True):
            xs = [float(v) for v in values if v is not None]
            cells.append(sum(xs) / len(xs) if xs else None)
        out.append(cells)
    return out


def _group_track(group: RunGroup, track: str) -> tuple[Matrix, list[float | None] | None]:
    """The group's mean matrix and mean zero-shot row of one track (comparable members only)."""
    kept, _ = group.comparable()
    with_track = [r for r in kept if track in r["matrix"]]
    if not with_track:
        return [], None
    matrix = mean_matrix([track_matrix(r, track) for r in with_track])
    zs = [z for z in (track_zero_shot(r, track) for r in with_track) if z is not None]
    return matrix, (mean_matrix([[z] for z in zs])[0] if zs else None)


def _short_row_labels(results: dict[str, Any]) -> list[str]:
    short = {f"after {t}": f"after {task_label(j)}" for j, t in enumerate(results["tasks"])}
    return [short.get(x, x) for x in row_labels(results)]


# ---------------------------------------------------------------- sections


def _runs_section(groups: list[RunGroup]) -> str:
    rows = []
    notes: list[str] = []
    for g in groups:
        for d, r in g.members:
            rows.append(
                [
                    escape(g.label),
                    f"<code>{escape(str(d))}</code>",
                    escape(str(r["benchmark"])),
                    escape(str(r["seed"])),
                    escape(str(r.get("model", MISSING))),
                    str(len(r["tasks"])),
                    escape(str(r.get("stages_complete", MISSING))),
                ]
            )
        notes += group_notes(g.key, g.members)
    body = _table(
        ["group", "run directory", "benchmark", "seed", "model", "tasks", "stages complete"], rows, 3
    )
    body += "".join(_note(n) for n in notes)
    return _section("runs", "Runs", body)


def _metric_stats(group: RunGroup, track: str) -> dict[str, Stat]:
    per_run = [
        track_metrics(r, track) if track in r["matrix"] else dict.fromkeys(METRIC_KEYS)
        for _, r in group.members
    ]
    return {k: Stat.of([m.get(k) for m in per_run]) for k in METRIC_KEYS}


def _metrics_table(groups: list[RunGroup], track: str) -> str:
    rows = []
    for g in groups:
        first = next((r for _, r in g.members if track in r["matrix"]), None)
        used = f"{len(track_task_indices(first, track))}/{len(first['tasks'])}" if first else MISSING
        stats = _metric_stats(g, track)
        rows.append(
            [
                escape(g.label),
                str(g.n_seeds),
                used,
                *(fmt_stat(stats[k], g.n_seeds) for k, _ in METRIC_COLUMNS),
            ]
        )
    return _table(["group", "seeds", "tasks", *(label for _, label in METRIC_COLUMNS)], rows)


def _metrics_section(groups: list[RunGroup]) -> str:
    tracks: list[str] = []
    for g in groups:
        tracks += [t for t in g.tracks() if t not in tracks]
    parts = [f"<h3><code>{PRIMARY}</code></h3>" + _metrics_table(groups, PRIMARY)]
    for track in tracks:
        if track != PRIMARY:
            parts.append(
                f"<details><summary>track <code>{escape(track)}</code></summary>"
                f"{_metrics_table(groups, track)}</details>"
            )
    help_ = (
        "Scores ×100, mean ± sample std over the seeds of a group (no ± for one seed; (n=k) when only "
        f"k seeds have a value); {MISSING} = not computable. <code>primary</code> uses each task's first "
        "declared scorer; a scorer track uses the tasks scored in every evaluated stage (column tasks). "
        + escape(METRIC_HELP)
    )
    return _section("metrics", "Metrics", "".join(parts) + f'<p class="help">{help_}</p>')


def _comparison_section(groups: list[RunGroup], sink: FigureSink) -> str:
    stats = [_metric_stats(g, PRIMARY) for g in groups]
    series = {
        key: [(s[key].mean, s[key].std if s[key].n > 1 else None) for s in stats]
        for key in ("last", "average")
    }
    labels = [g.label.replace(" · ", "\n") for g in groups]
    fig = method_bars_figure(labels, series, "last and average per method (primary track)")
    body = sink.add("methods-last-average.png", fig, "last and average per group, mean ± std over seeds")
    return _section("comparison", "Method comparison", body)


def _task_legend(tasks: Sequence[str]) -> str:
    items = ", ".join(f"{task_label(j)} = <code>{escape(t)}</code>" for j, t in enumerate(tasks))
    return f'<p class="help">Tasks: {items}.</p>'


def _left_out_note(group: RunGroup) -> str:
    _, left = group.comparable()
    if not left:
        return ""
    return _note(
        f"{group.label}: left out of the mean over seeds (other tasks or stage count than "
        f"{group.members[0][0]}): {', '.join(map(str, left))}"
    )


def _matrices_section(groups: list[RunGroup], sink: FigureSink) -> str:
    help_ = (
        '<p class="help">Row <i>after Tk</i> = scores on every task after training task k; the outlined '
        "diagonal is each task right after it was learned, cells right of it are future tasks. Blank "
        "= no score (the task does not declare that scorer, or the cell was not evaluated). With several "
        "seeds each cell is the mean over seeds.</p>"
    )
    cards = []
    for i, g in enumerate(groups, 1):
        first = g.members[0][1]
        seeds = f"mean of {g.n_seeds} seeds" if g.n_seeds > 1 else f"seed {first['seed']}"
        figs = []
        for track in g.tracks():
            matrix, zs = _group_track(g, track)
            if not matrix:
                figs.append(f"<p>No stage evaluated for <code>{escape(track)}</code>.</p>")
                continue
            fig = heatmap_figure(
                matrix, first["tasks"], f"{g.label}: {track} (×100, {seeds})", zs, _short_row_labels(first)
            )
            html_fig = sink.add(f"heatmap-g{i}-{g.slug}-{_slug(track)}.png", fig, f"{g.label}, {track}")
            figs.append(
                html_fig
                if track == PRIMARY
                else f"<details><summary>track <code>{escape(track)}</code></summary>{html_fig}</details>"
            )
        cards.append(_card(g, _left_out_note(g) + "".join(figs) + _task_legend(first["tasks"])))
    return _section("matrices", "Accuracy matrices", help_ + f'<div class="cards">{"".join(cards)}</div>')


def _curves_section(groups: list[RunGroup], sink: FigureSink) -> str:
    help_ = (
        '<p class="help">Each task\'s primary score after each stage. The dotted part of a line is before '
        "the task is trained, the dot right after; a falling solid line is forgetting.</p>"
    )
    cards = []
    for i, g in enumerate(groups, 1):
        first = g.members[0][1]
        matrix, _ = _group_track(g, PRIMARY)
        if len(matrix) < 2:
            text = "<p>One evaluated stage (joint training, zero-shot or an unfinished run): no curve.</p>"
            cards.append(_card(g, text))
            continue
        seeds = f"mean of {g.n_seeds} seeds" if g.n_seeds > 1 else f"seed {first['seed']}"
        fig = forgetting_curves_figure(
            matrix, first["tasks"], f"{g.label}: primary ({seeds})", _short_row_labels(first)
        )
        cards.append(_card(g, sink.add(f"curves-g{i}-{g.slug}.png", fig, f"{g.label}, forgetting curves")))
    return _section("curves", "Forgetting curves", help_ + f'<div class="cards">{"".join(cards)}</div>')


def _protocol_section(protocol: Protocol, table: HtmlTable | None, groups: list[RunGroup]) -> str | None:
    if table is None:
        return None
    body = _table([escape(h) for h in table.header], [[escape(c) for c in r] for r in table.rows], table.text_columns)
    shown = {n for g in groups for n in group_notes(g.key, g.members)}  # already under Runs
    body += "".join(_note(n) for n in table.notes if n not in shown)
    if table.legend:
        body += f'<p class="help">{_inline(table.legend)}</p>'
    return _section(f"protocol-{protocol.name}", protocol.title, body)


def _held_total(cost: dict[str, Any]) -> float | None:
    held = cost.get("held_bytes")
    if not isinstance(held, dict):
        return None
    return float(sum(v for v in held.values() if isinstance(v, (int, float))))


def _cost_section(groups: list[RunGroup]) -> str:
    rows = []
    for g in groups:
        costs = [r.get("cost") or {} for _, r in g.members]
        n_tasks = [len(r["tasks"]) for _, r in g.members]
        n = g.n_seeds

        def stat(key: str, costs: list[dict[str, Any]] = costs) -> Stat:
            return Stat.of([c.get(key) if isinstance(c.get(key), (int, float)) else None for c in costs])

        held = [_held_total(c) for c in costs]
        per_task = Stat.of([h / t if h is not None else None for h, t in zip(held, n_tasks, strict=True)])
        kinds = sorted({k for c in costs if isinstance(c.get("held_bytes"), dict) for k in c["held_bytes"]})
        kib = 1 / 1024
        rows.append(
            [
                escape(g.label),
                str(n),
                fmt_stat(stat("train_seconds"), n, scale=1.0),
                fmt_stat(stat("eval_seconds"), n, scale=1.0),
                fmt_stat(stat("trainable_params"), n, scale=1.0, fmt=",.0f", hide_zero_std=True),
                fmt_stat(stat("total_params"), n, scale=1.0, fmt=",.0f", hide_zero_std=True),
                fmt_stat(stat("peak_memory_mb"), n, scale=1.0, fmt=",.1f"),
                fmt_stat(stat("params_added_per_task"), n, scale=1.0, fmt=",.0f", hide_zero_std=True),
                fmt_stat(Stat.of(held), n, scale=kib, fmt=",.1f", hide_zero_std=True),
                fmt_stat(per_task, n, scale=kib, fmt=",.1f", hide_zero_std=True),
                escape(", ".join(kinds)) or MISSING,
            ]
        )
    header = [
        "group",
        "seeds",
        "train (s)",
        "eval (s)",
        "trainable params",
        "total params",
        "peak memory (MB)",
        "params added / task",
        "held (KiB)",
        "held / task (KiB)",
        "held as",
    ]
    help_ = (
        '<p class="help">Mean ± sample std over seeds, from <code>results.json["cost"]</code>. '
        "<i>held</i> = bytes a method keeps between tasks (replay buffer, Fisher and anchors, teacher or "
        "frozen adapters) after the last stage; <i>held / task</i> = that divided by the number of tasks. "
        f"{MISSING} = not recorded (the method keeps nothing or does not report it).</p>"
    )
    return _section("cost", "Cost per method", _table(header, rows) + help_)


# ---------------------------------------------------------------- forgetting examples


@dataclass
class Example:
    """One test sample right at a task's best stage and wrong at the end."""

    question_id: str
    question: str
    answers: list[str]
    best_prediction: str
    final_prediction: str
    best_score: float
    final_score: float
    thumbnail: bytes | None = None


@dataclass
class ForgettingCase:
    """A task whose primary score fell from its best (stage ``best_stage``, 1-based) to the final stage."""

    task: str
    index: int
    best_stage: int
    final_stage: int
    best: float
    final: float
    examples: list[Example] = field(default_factory=list)
    note: str | None = None

    @property
    def drop(self) -> float:
        return self.best - self.final


def largest_drops(results: dict[str, Any], top: int = TOP_FORGETTING_TASKS) -> list[ForgettingCase]:
    """The ``top`` tasks with the largest positive drop best → final on the primary track.

    Only for sequential runs (at least two evaluated rows, row t = after training task t).
    Task j's best is ``max_{j <= t < last} A[t][j]`` (the earliest stage on ties), as in the
    forgetting metric; tasks learned at the final stage, or with a null cell, have no case.
    """
    rows = track_matrix(results, PRIMARY)
    n, k = len(results["tasks"]), len(rows)
    if k < 2 or k > n:
        return []
    final = rows[-1]
    cases = []
    for j in range(k - 1):
        past = [(float(rows[t][j]), t) for t in range(j, k - 1) if rows[t][j] is not None]
        if not past or final[j] is None:
            continue
        best, t_best = max(past, key=lambda p: (p[0], -p[1]))
        if best > float(final[j]):
            cases.append(ForgettingCase(results["tasks"][j], j, t_best + 1, k, best, float(final[j])))
    cases.sort(key=lambda c: (-c.drop, c.index))
    return cases[:top]


def _read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    out = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                out[str(rec["question_id"])] = rec
    return out


def _primary_score(rec: dict[str, Any], scorer: str | None) -> float | None:
    scores = rec.get("scores") or {}
    v = scores.get(scorer) if scorer else next(iter(scores.values()), None)
    return None if v is None else float(v)


def lost_examples(run_dir: Path, results: dict[str, Any], case: ForgettingCase, limit: int) -> list[Example]:
    """Samples of ``case`` right (score >= :data:`RIGHT`) at its best stage and wrong at the end.

    Read from ``predictions/stage-XX/<task>.jsonl``; sorted by the drop of the sample's score,
    then question id. Raises OSError / ValueError / KeyError when a file is missing or malformed.
    """
    scorer = ((results.get("scorers") or {}).get(case.task) or [None])[0]
    best = _read_predictions(inside(run_dir, "predictions", f"stage-{case.best_stage:02d}", f"{case.task}.jsonl"))
    final = _read_predictions(inside(run_dir, "predictions", f"stage-{case.final_stage:02d}", f"{case.task}.jsonl"))
    found = []
    for qid, b in best.items():
        f = final.get(qid)
        sb, sf = _primary_score(b, scorer), _primary_score(f, scorer) if f else None
        if sb is not None and sf is not None and sb >= RIGHT > sf:
            found.append(
                Example(
                    qid,
                    str(b.get("question", "")),
                    [str(a) for a in b.get("answers", [])],
                    str(b.get("prediction", "")),
                    str(f.get("prediction", "")),
                    sb,
                    sf,
                )
            )
    found.sort(key=lambda e: (-(e.best_score - e.final_score), e.question_id))
    return found[:limit]


BenchmarkBuilder = Callable[[RunConfig], Benchmark]
"""Builds a run's benchmark from its config (``mmcl.benchmarks.builtin.build_benchmark``)."""


class SampleImages:
    """Finds test samples by question id in the benchmark rebuilt from a run's ``config.yaml``.

    Benchmarks are cached by their config section (seeds of one configuration share the data).
    A ``given`` benchmark (one the caller already holds, e.g. the runner at the end of a run) is
    used instead of rebuilding for every run whose results name that benchmark. ``rebuild``
    builds the others (without it, only ``given`` is found).
    """

    def __init__(self, given: Benchmark | None = None, rebuild: BenchmarkBuilder | None = None) -> None:
        self._cache: dict[str, dict[str, Sample] | str] = {}
        self._rebuild = rebuild
        self._given = given
        self._given_index = {s.id: s for t in given.tasks for s in t.test} if given else {}

    def index(
        self, run_dir: Path, benchmark: str | None = None
    ) -> tuple[dict[str, Sample] | None, str | None]:
        """(question id -> test Sample, None), or (None, why the benchmark cannot be rebuilt).

        ``benchmark`` is the run's benchmark name (from results.json), matched against ``given``.
        """
        if self._given is not None and benchmark == self._given.name:
            return self._given_index, None
        if self._rebuild is None:
            return None, "no way to rebuild the benchmark was given"
        path = Path(run_dir) / "config.yaml"
        if not path.is_file():
            return None, f"{path} not found"
        try:
            cfg = load_config([path])
        except (ValueError, OSError) as e:
            return None, f"{path} cannot be loaded: {e}"
        key = cfg.benchmark.model_dump_json()
        if key not in self._cache:
            try:
                bench = self._rebuild(cfg)
                self._cache[key] = {s.id: s for t in bench.tasks for s in t.test}
            except Exception as e:  # any failure of a benchmark factory only costs the thumbnails
                self._cache[key] = f"benchmark {cfg.benchmark.name!r} cannot be rebuilt from {path}: {e}"
        found = self._cache[key]
        return (None, found) if isinstance(found, str) else (found, None)


def thumbnail_png(image: Image.Image, px: int = THUMBNAIL_PX) -> bytes:
    """The image shrunk to fit ``px`` x ``px`` (never enlarged), as PNG bytes."""
    img = image.copy()
    img.thumbnail((px, px))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _attach_thumbnails(examples: list[Example], samples: dict[str, Sample]) -> list[str]:
    """Set each example's thumbnail; return notes for samples without one."""
    notes = []
    for ex in examples:
        sample = samples.get(ex.question_id)
        if sample is None:
            notes.append(f"{ex.question_id}: not in the rebuilt benchmark")
            continue
        try:
            image = sample.load_image()
        except (OSError, ValueError) as e:
            notes.append(f"{ex.question_id}: image cannot be loaded: {e}")
            continue
        if image is None:
            notes.append(f"{ex.question_id}: the sample has no image")
            continue
        ex.thumbnail = thumbnail_png(image)
        if not ex.question:
            ex.question = sample.question
    return notes


def _examples_table(examples: list[Example], case: ForgettingCase) -> str:
    rows = []
    for ex in examples:
        thumb = (
            f'<img class="thumb" src="{data_uri(ex.thumbnail)}" alt="image of {escape(ex.question_id)}">'
            if ex.thumbnail
            else MISSING
        )
        rows.append(
            [
                thumb,
                f"<code>{escape(ex.question_id)}</code>",
                escape(ex.question),
                escape(" | ".join(ex.answers)),
                escape(ex.best_prediction),
                escape(ex.final_prediction),
                f"{fmt_score(ex.best_score)} → {fmt_score(ex.final_score)}",
            ]
        )
    header = [
        "image",
        "question id",
        "question",
        "answer",
        f"prediction after stage {case.best_stage}",
        f"final prediction (stage {case.final_stage})",
        "score",
    ]
    return _table(header, rows, numeric_from=6)


def _examples_for_group(group: RunGroup, images: SampleImages) -> str:
    run_dir, results = next(
        ((d, r) for d, r in group.members if (d / "predictions").is_dir()), group.members[0]
    )
    cases = largest_drops(results)
    head = (f"<h3>{escape(group.label)}</h3><p>Run <code>{escape(str(run_dir))}</code> "
            f"(seed {escape(str(results['seed']))}).</p>")
    if not cases:
        return head + "<p>No task lost primary score between its best stage and the end.</p>"
    if not (run_dir / "predictions").is_dir():
        return head + _note("No predictions saved in this run (eval.save_predictions: false): no examples.")
    samples, why = images.index(run_dir, str(results["benchmark"]))
    parts = [head]
    if samples is None:
        parts.append(_note(f"Thumbnails not shown: {why}"))
    for case in cases:
        parts.append(
            f"<h4>{task_label(case.index)} <code>{escape(case.task)}</code>: best {fmt_score(case.best)} "
            f"after stage {case.best_stage}, final {fmt_score(case.final)} (drop {fmt_score(case.drop)})</h4>"
        )
        try:
            examples = lost_examples(run_dir, results, case, EXAMPLES_PER_TASK)
        except (OSError, ValueError, KeyError) as e:
            parts.append(_note(f"Predictions of {case.task} cannot be read: {e}"))
            continue
        if not examples:
            parts.append("<p>No sample went from right to wrong (the drop is partial credit).</p>")
            continue
        if samples is not None:
            parts += [_note(f"No thumbnail for {n}") for n in _attach_thumbnails(examples, samples)]
        parts.append(_examples_table(examples, case))
    return "".join(parts)


def _examples_section(
    groups: list[RunGroup], benchmark: Benchmark | None, rebuild: BenchmarkBuilder | None
) -> str:
    images = SampleImages(benchmark, rebuild)
    intro = (
        f'<p class="help">Per group, the {TOP_FORGETTING_TASKS} tasks with the largest drop from their best '
        "primary score (after learning them, before the final stage) to their final score, and up to "
        f"{EXAMPLES_PER_TASK} test samples right at that best stage (score ≥ {fmt_score(RIGHT)}) and wrong "
        "at the end. Images come from the benchmark rebuilt from the run's config.yaml.</p>"
    )
    return _section(
        "examples", "Forgetting examples", intro + "".join(_examples_for_group(g, images) for g in groups)
    )


def _config_section(groups: list[RunGroup]) -> str:
    parts = []
    for g in groups:
        for d, r in g.members:
            path = d / "config.yaml"
            try:
                text = f"<pre>{escape(path.read_text(encoding='utf-8'))}</pre>"
            except OSError:
                text = f"<p>No readable <code>{escape(str(path))}</code>.</p>"
            parts.append(
                f"<details><summary>{escape(g.label)}, seed {escape(str(r['seed']))}: "
                f"<code>{escape(str(d))}</code></summary>{text}</details>"
            )
    return _section("config", "Config", "".join(parts))


# ---------------------------------------------------------------- page


def render_html(
    run_dirs: Sequence[str | Path],
    figures_dir: Path,
    benchmark: Benchmark | None = None,
    rebuild: BenchmarkBuilder | None = None,
) -> str:
    """The HTML page for the runs; writes its figures as PNG files into ``figures_dir``.

    ``benchmark``, ``rebuild``: see :func:`write_html_report`.

    Raises ``ResultsError`` for a bad run directory, ValueError for an empty list.
    """
    groups = load_groups(run_dirs)
    runs = [m for g in groups for m in g.members]
    figures_dir.mkdir(parents=True, exist_ok=True)
    sink = FigureSink(figures_dir)
    sections = [
        ("runs", "Runs", _runs_section(groups)),
        ("metrics", "Metrics", _metrics_section(groups)),
        ("comparison", "Method comparison", _comparison_section(groups, sink)),
        ("matrices", "Accuracy matrices", _matrices_section(groups, sink)),
        ("curves", "Forgetting curves", _curves_section(groups, sink)),
        *(
            (f"protocol-{p.name}", p.title, _protocol_section(p, p.html_table(runs), groups))
            for p in protocols()
        ),
        ("cost", "Cost", _cost_section(groups)),
        ("examples", "Forgetting examples", _examples_section(groups, benchmark, rebuild)),
        ("config", "Config", _config_section(groups)),
    ]
    present = [(a, t, s) for a, t, s in sections if s]
    nav = "<nav>" + "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t, _ in present) + "</nav>"
    n_runs = sum(g.n_seeds for g in groups)
    title = groups[0].label if len(groups) == 1 else f"{len(groups)} methods"
    stamp = datetime.now().isoformat(timespec="seconds")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>mmcl report: {escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>"
        f"<h1>mmcl report: {escape(title)}</h1>"
        f'<p class="help">{n_runs} run(s) in {len(groups)} group(s) (grouped by name, method and benchmark); '
        f"written {stamp} by mmcl {escape(__version__)}.</p>"
        + nav
        + "\n".join(s for _, _, s in present)
        + "</body></html>\n"
    )


def figures_dir_for(out: Path) -> Path:
    """Where the PNG copies of a page's figures go: ``<OUT folder>/<OUT stem>-figures``."""
    return out.parent / f"{out.stem}{FIGURES_SUFFIX}"


def write_html_report(
    run_dirs: list[Path],
    out: Path,
    benchmark: Benchmark | None = None,
    rebuild: BenchmarkBuilder | None = None,
) -> Path:
    """Write the HTML report of the runs to ``out`` (atomically) and its figures next to it; return ``out``.

    Run directories are only read. ``benchmark``, when the caller already holds the runs'
    benchmark (the runner at the end of a run), is used for the example thumbnails instead of
    rebuilding it from config.yaml, for the runs whose results.json names it; ``rebuild``
    (``mmcl.benchmarks.builtin.build_benchmark``) rebuilds the others, and without it their
    examples have no thumbnails. Raises ``ResultsError`` for a bad run directory, ValueError for
    an empty list.
    """
    out = Path(out)
    atomic_write_text(out, render_html(run_dirs, figures_dir_for(out), benchmark, rebuild))
    return out
