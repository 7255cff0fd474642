"""``report.md`` for one run: metric table, benchmark protocols, task legend, accuracy matrices, heatmaps, cost.

A benchmark's own sections come from its protocol (:mod:`mmcl.report.protocols`; registered when
``mmcl.benchmarks.builtin`` is imported).

Scores are stored in [0, 1] and shown ×100 with one decimal; ``–`` marks a missing value
(a metric that cannot be computed, or a task that does not declare that scorer). Tasks
are labelled T1..Tn in matrix columns and heatmaps, with a legend mapping T-number to name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmcl.report.figures import plot_heatmap, task_label
from mmcl.report.protocols import protocols
from mmcl.report.results import (
    row_labels,
    track_matrix,
    track_metrics,
    track_names,
    track_task_indices,
    track_zero_shot,
)
from mmcl.report.sampling import sampling_section
from mmcl.utils.io import atomic_write_text
from mmcl.utils.paths import inside

REPORT_FILE = "report.md"
MISSING = "–"
METRIC_COLUMNS = (
    ("last", "last"),
    ("average", "average"),
    ("mft", "MFT"),
    ("bwt", "BWT"),
    ("fwt", "FWT"),
    ("forgetting", "forgetting"),
)
METRIC_HELP = (
    "last = mean score on every task after the final stage; "
    "average = mean over stages of the mean score on the tasks seen so far; "
    "MFT = mean score on each task right after training it; "
    "BWT = mean change on earlier tasks between learning them and the end (negative = forgetting); "
    "FWT = mean gain on each next task before training it, over its zero-shot score; "
    "forgetting = mean drop from the best score after learning a task to the final score."
)


def fmt_score(v: float | None) -> str:
    """A [0, 1] score as ×100 with one decimal, or ``–`` for None."""
    return MISSING if v is None else f"{100 * float(v):.1f}"


def heatmap_filename(track: str) -> str:
    """``heatmap-<track>.png``, with characters unsafe in a file name or link replaced by ``_``."""
    return f"heatmap-{re.sub(r'[^A-Za-z0-9_.-]', '_', track)}.png"


def _esc(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


_MD_SPECIAL = re.compile(r"([\\`*{}\[\]<>()#+!~&])")


def md_text(value: Any) -> str:
    """A value from results.json as literal Markdown text: one line, Markdown and HTML characters
    backslash-escaped (a run or model name cannot open a tag, a link or emphasis)."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(value).split()))


def md_inline(text: Any) -> str:
    """A sentence that may hold names from results.json (notes): HTML and link brackets escaped,
    its own `code` spans kept."""
    return re.sub(r"([<>&\[\]])", r"\\\1", " ".join(str(text).split()))


def md_code(value: Any) -> str:
    """A value as a Markdown code span (shown literally, HTML included), fenced with more backticks
    than it contains so that a backtick in a name cannot end the span early."""
    text = " ".join(str(value).split())
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "r") -> str:
    lines = ["| " + " | ".join(_esc(h) for h in header) + " |"]
    lines.append("|" + "|".join([":---"] + [("---:" if align == "r" else ":---")] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(_esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt_seconds(s: float) -> str:
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{s:.1f} s ({h}:{m:02d}:{sec:02d})"


def _fmt_cost(key: str, v: Any) -> str:
    if v is None:
        return MISSING
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if key.endswith("_seconds"):
        return _fmt_seconds(v)
    if key.endswith("_mb"):
        return f"{float(v):,.1f} MB"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.4g}"


def _metrics_section(results: dict[str, Any]) -> str:
    n = len(results["tasks"])
    rows = []
    for track in track_names(results):
        m = track_metrics(results, track)
        used = len(track_task_indices(results, track))
        rows.append([md_code(track), f"{used}/{n}", *(fmt_score(m.get(k)) for k, _ in METRIC_COLUMNS)])
    header = ["track", "tasks", *(label for _, label in METRIC_COLUMNS)]
    note = (
        "Scores ×100. `primary` uses each task's first declared scorer; a scorer track is "
        "computed over the tasks scored in every evaluated stage (column *tasks*). "
        f"`{MISSING}` = not computable (e.g. FWT without zero-shot scores; a run with one "
        "evaluated row, such as joint training or zero-shot only, has only *last*).\n\n" + METRIC_HELP
    )
    return "## Metrics\n\n" + _table(header, rows) + "\n\n" + note


def _tasks_section(results: dict[str, Any]) -> str:
    declared = results.get("scorers") or {}
    rows = [
        [task_label(j), md_code(t), md_text(", ".join(map(str, declared.get(t, [])))) or MISSING]
        for j, t in enumerate(results["tasks"])
    ]
    return "## Tasks\n\nIn stream order; the first scorer of a task is its primary one.\n\n" + _table(
        ["", "task", "scorers"], rows, align="l"
    )


def _matrix_section(run_dir: Path, results: dict[str, Any], heatmaps: bool) -> str:
    tasks = results["tasks"]
    labels = row_labels(results)
    short = {f"after {t}": f"after {task_label(j)}" for j, t in enumerate(tasks)}
    parts = [
        "## Accuracy matrices\n\n"
        "Row *after X* = scores on every task (columns, see Tasks) after training X; "
        "the diagonal is each task right after it was learned, cells right of it are future tasks. "
        f"`{MISSING}` = no score (the task does not declare this scorer, or the cell was not evaluated)."
    ]
    for track in track_names(results):
        rows_m = track_matrix(results, track)
        zero_shot = track_zero_shot(results, track)
        body = []
        if zero_shot is not None:
            body.append(["zero-shot", *(fmt_score(v) for v in zero_shot)])
        body += [[md_text(label), *(fmt_score(v) for v in row)] for label, row in zip(labels, rows_m, strict=True)]
        section = f"### {md_code(track)}\n\n"
        if heatmaps and rows_m:
            name = heatmap_filename(track)
            plot_heatmap(
                rows_m,
                tasks,
                inside(run_dir, name),
                f"{results['name']}: {track} (×100)",
                zero_shot=zero_shot,
                row_labels=[short.get(x, x) for x in labels],
            )
            section += f"![{md_text(track)} heatmap]({name})\n\n"
        section += (
            _table(["", *(task_label(j) for j in range(len(tasks)))], body)
            if body
            else "No stage evaluated yet."
        )
        parts.append(section)
    return "\n\n".join(parts)


def _cost_section(results: dict[str, Any]) -> str:
    cost = results.get("cost") or {}
    if not cost:
        return "## Cost\n\nNot recorded."
    labels = {
        "trainable_params": "trainable parameters",
        "train_seconds": "training time",
        "eval_seconds": "evaluation time",
        "peak_memory_mb": "peak memory",
    }
    rows = [[labels.get(k, k.replace("_", " ")), _fmt_cost(k, v)] for k, v in cost.items()]
    return "## Cost\n\n" + _table(["", "value"], rows, align="l")


def render_report(run_dir: str | Path, results: dict[str, Any], heatmaps: bool = True) -> str:
    """The Markdown text of report.md; with ``heatmaps`` also writes the heatmap PNGs into ``run_dir``."""
    run_dir = Path(run_dir)
    n = len(results["tasks"])
    done = results.get("stages_complete", MISSING)
    head = [
        f"# {md_text(results['name'])}: {md_code(results['method'])} on {md_code(results['benchmark'])} "
        f"(seed {md_text(results['seed'])})",
        "",
        _table(
            ["", ""],
            [
                ["run", md_code(results["name"])],
                ["benchmark", md_code(results["benchmark"])],
                ["method", md_code(results["method"])],
                ["seed", md_text(results["seed"])],
                ["model", md_text(results.get("model", MISSING))],
                ["tasks", str(n)],
                ["stages complete", md_text(done)],
                ["mmcl version", md_text(results.get("mmcl_version", MISSING))],
            ],
            align="l",
        ),
    ]
    sections = [
        "\n".join(head),
        _metrics_section(results),
        *filter(None, [p.markdown_section(run_dir, results) for p in protocols()]),
        _tasks_section(results),
        _matrix_section(run_dir, results, heatmaps),
        *filter(None, [sampling_section(results)]),
        _cost_section(results),
    ]
    return "\n\n".join(sections) + "\n"


def write_report(run_dir: str | Path, results: dict[str, Any]) -> Path:
    """Write ``RUN_DIR/report.md`` and one ``heatmap-<track>.png`` per matrix track; return the report path."""
    run_dir = Path(run_dir)
    path = inside(run_dir, REPORT_FILE)
    atomic_write_text(path, render_report(run_dir, results))
    return path
