"""Compare finished runs: group seeds of the same configuration, show mean ± std per metric.

Group key: runs are grouped by ``(name, method, benchmark)`` from their results.json.
Seeds of one configuration must therefore share the run name (do not put the seed in
``name``), and two different configurations of one method on one benchmark must have
different names. When config.yaml is present, a group whose configs differ in anything
but ``seed`` and ``output`` gets a note naming the differing keys.

Extra columns (``mmcl compare --also TRACK[:METRIC]``) put one metric of another track beside
the main one, e.g. ``--also drift_probe --also intrusion`` (docs/metrics.md#compare-columns).

Scores are [0, 1] in ``compare.json`` and ×100 with one decimal in the rendered tables;
std is the sample std over seeds (:func:`mmcl.metrics.summarize_seeds`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from mmcl import __version__
from mmcl.metrics import summarize_seeds
from mmcl.report.markdown import MISSING, md_inline, md_text
from mmcl.report.results import METRIC_KEYS, load_results, track_metrics
from mmcl.utils.io import atomic_write_json, atomic_write_text

GROUP_KEY = ("name", "method", "benchmark")
COMPARE_MD = "compare.md"
COMPARE_JSON = "compare.json"
COLUMNS = (
    "name",
    "method",
    "benchmark",
    "n_seeds",
    *METRIC_KEYS,
    "trainable_params",
    "train_seconds",
)
_HEADERS = {
    "name": "name",
    "method": "method",
    "benchmark": "benchmark",
    "n_seeds": "seeds",
    "last": "last",
    "average": "average",
    "mft": "MFT",
    "bwt": "BWT",
    "fwt": "FWT",
    "forgetting": "forgetting",
    "trainable_params": "trainable params",
    "train_seconds": "train time (s)",
}
# Shorter headers for the terminal, where 12 columns must fit.
_SHORT_HEADERS = {
    **_HEADERS,
    "n_seeds": "n",
    "average": "avg",
    "forgetting": "forget",
    "trainable_params": "params",
    "train_seconds": "train s",
}
_IGNORED_CONFIG_KEYS = ("seed", "output")


@dataclass(frozen=True)
class ExtraColumn:
    """One ``--also`` column: a metric of another matrix track (``last`` unless named)."""

    track: str
    metric: str = "last"

    @property
    def label(self) -> str:
        return f"{self.track} {self.metric}"

    @classmethod
    def parse(cls, spec: str) -> ExtraColumn:
        """``TRACK`` or ``TRACK:METRIC``; raises ValueError naming the spec for a bad one."""
        track, _, metric = spec.partition(":")
        metric = metric or "last"
        if not track or metric not in METRIC_KEYS:
            raise ValueError(
                f"--also {spec!r}: expected TRACK or TRACK:METRIC with METRIC one of {', '.join(METRIC_KEYS)}"
            )
        return cls(track, metric)


@dataclass
class Stat:
    """Mean and sample std of one value over a group's seeds; ``n`` = seeds that had a value."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stat:
        mean, std = summarize_seeds(values)
        return cls(mean, std, sum(v is not None for v in values))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


@dataclass
class ComparisonRow:
    """One group of runs (same name, method and benchmark), one per seed."""

    name: str
    method: str
    benchmark: str
    seeds: list[int]
    runs: list[str]
    metrics: dict[str, Stat]
    trainable_params: Stat
    train_seconds: Stat
    extra: dict[str, Stat] = field(default_factory=dict)

    @property
    def n_seeds(self) -> int:
        return len(self.runs)


@dataclass
class ComparisonTable:
    """The result of :func:`compare_runs`: one row per group, plus notes on anything odd."""

    scorer: str
    rows: list[ComparisonRow]
    notes: list[str] = field(default_factory=list)
    extra: list[ExtraColumn] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (scores in [0, 1]); the content of compare.json."""

        return {
            "mmcl_version": __version__,
            "scorer": self.scorer,
            "group_key": list(GROUP_KEY),
            "extra_columns": [{"track": c.track, "metric": c.metric} for c in self.extra],
            "rows": [
                {
                    "name": r.name,
                    "method": r.method,
                    "benchmark": r.benchmark,
                    "n_seeds": r.n_seeds,
                    "seeds": r.seeds,
                    "runs": r.runs,
                    "metrics": {k: v.to_dict() for k, v in r.metrics.items()},
                    "trainable_params": r.trainable_params.to_dict(),
                    "train_seconds": r.train_seconds.to_dict(),
                    "extra": {k: v.to_dict() for k, v in r.extra.items()},
                }
                for r in self.rows
            ],
            "notes": self.notes,
        }


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}"))
    return out


def _config_without_seed(run_dir: Path) -> dict[str, Any] | None:
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(cfg, dict):
        return None
    return _flatten({k: v for k, v in cfg.items() if k not in _IGNORED_CONFIG_KEYS})


def _config_differences(run_dirs: list[Path]) -> list[str]:
    """Dotted config keys that differ between the runs (empty when a config.yaml is unreadable)."""
    configs: list[dict[str, Any]] = []
    for d in run_dirs:
        cfg = _config_without_seed(d)
        if cfg is None:
            return []
        configs.append(cfg)
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


RunGroups = dict[tuple[str, str, str], list[tuple[Path, dict[str, Any]]]]


def group_runs(run_dirs: Sequence[str | Path]) -> RunGroups:
    """Load each run's results.json and group the runs by :data:`GROUP_KEY`, in order of first run.

    Raises ``ResultsError`` for a bad run directory, ValueError for an empty list.
    """
    if not run_dirs:
        raise ValueError("comparing needs at least one run directory")
    groups: RunGroups = {}
    for d in run_dirs:
        results = load_results(d)
        key = (str(results["name"]), str(results["method"]), str(results["benchmark"]))
        groups.setdefault(key, []).append((Path(d), results))
    return groups


def group_notes(key: tuple[str, str, str], members: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """Notes on one group: repeated seeds, configs that differ beyond the seed."""
    name, method, benchmark = key
    label = f"{name} ({method} on {benchmark})"
    seeds = [r["seed"] for _, r in members]
    notes = []
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        notes.append(f"{label}: seed(s) {', '.join(map(str, dup))} appear more than once")
    diff = _config_differences([d for d, _ in members])
    if diff:
        notes.append(f"{label}: configs differ beyond the seed in {', '.join(diff)}")
    return notes


def _extra_stats(columns: Sequence[ExtraColumn], members: list[tuple[Path, dict[str, Any]]]) -> dict[str, Stat]:
    """Each extra column over a group's seeds; a run without that track counts as a missing seed.
    Each track's metrics are computed once per run, however many of its metrics are columns."""
    per_track = {
        track: [track_metrics(r, track) if track in r["matrix"] else {} for _, r in members]
        for track in {c.track for c in columns}
    }
    return {c.label: Stat.of([m.get(c.metric) for m in per_track[c.track]]) for c in columns}


def compare_runs(
    run_dirs: Sequence[str | Path],
    scorer: str = "primary",
    out_dir: str | Path | None = None,
    also: Sequence[str] = (),
) -> ComparisonTable:
    """Group runs by ``(name, method, benchmark)`` and summarise each metric as mean ± std over seeds.

    ``scorer`` picks the matrix track (``"primary"`` or a scorer name); metrics are
    recomputed from each run's matrix with :func:`mmcl.report.results.track_metrics`.
    ``also`` adds columns ``TRACK[:METRIC]`` (:class:`ExtraColumn`) from other tracks; a run
    without such a track leaves that seed out of the column (shown as ``(n=k)``).
    Groups keep the order in which their first run is given. With ``out_dir``, also
    writes compare.md and compare.json there. Raises ``ResultsError`` for a bad run
    directory or a run without the ``scorer`` track, ValueError for an empty list, a bad
    ``also`` spec, or an ``also`` track that no run has.
    """
    columns = list(dict.fromkeys(ExtraColumn.parse(spec) for spec in also))
    groups = group_runs(run_dirs)
    for c in columns:
        if not any(c.track in r["matrix"] for members in groups.values() for _, r in members):
            raise ValueError(f"--also {c.track!r}: none of the {len(run_dirs)} runs has a {c.track!r} track")
    rows: list[ComparisonRow] = []
    notes: list[str] = []
    for (name, method, benchmark), members in groups.items():
        per_run = [track_metrics(r, scorer) for _, r in members]
        costs = [r.get("cost") or {} for _, r in members]
        seeds = [r["seed"] for _, r in members]
        rows.append(
            ComparisonRow(
                name=name,
                method=method,
                benchmark=benchmark,
                seeds=seeds,
                runs=[str(d) for d, _ in members],
                metrics={k: Stat.of([m.get(k) for m in per_run]) for k in METRIC_KEYS},
                trainable_params=Stat.of([c.get("trainable_params") for c in costs]),
                train_seconds=Stat.of([c.get("train_seconds") for c in costs]),
                extra=_extra_stats(columns, members),
            )
        )
        notes += group_notes((name, method, benchmark), members)
    table = ComparisonTable(scorer=scorer, rows=rows, notes=notes, extra=columns)
    if out_dir is not None:
        write_comparison(table, out_dir)
    return table


def fmt_stat(
    s: Stat, n_seeds: int, scale: float = 100.0, fmt: str = ".1f", hide_zero_std: bool = False
) -> str:
    if s.mean is None:
        return MISSING
    text = f"{s.mean * scale:{fmt}}"
    if s.n > 1 and not (hide_zero_std and s.std == 0):
        text += f" ± {(s.std or 0.0) * scale:{fmt}}"
    if s.n < n_seeds:
        text += f" (n={s.n})"
    return text


def _cells(row: ComparisonRow) -> list[str]:
    n = row.n_seeds
    return [
        row.name,
        row.method,
        row.benchmark,
        str(n),
        *(fmt_stat(row.metrics[k], n) for k in METRIC_KEYS),
        *(fmt_stat(v, n) for v in row.extra.values()),
        fmt_stat(row.trainable_params, n, scale=1.0, fmt=",.0f", hide_zero_std=True),
        fmt_stat(row.train_seconds, n, scale=1.0),
    ]


def _legend(table: ComparisonTable) -> str:
    also = "".join(f" `{c.label}` = the {c.metric} of the `{c.track}` track." for c in table.extra)
    return (
        f"Track `{table.scorer}`.{also} Scores ×100, mean ± sample std over seeds "
        "(no ± for a single seed, nor for a parameter count equal across seeds; "
        "(n=k) when only k seeds have a value). "
        f"Runs grouped by {' + '.join(GROUP_KEY)}."
    )


def _headers(table: ComparisonTable, names: dict[str, str]) -> list[str]:
    """Column headers: the fixed columns with the ``--also`` columns before the cost columns."""
    fixed = [names[c] for c in COLUMNS]
    k = COLUMNS.index("trainable_params")
    return [*fixed[:k], *(c.label for c in table.extra), *fixed[k:]]


def render_markdown(table: ComparisonTable) -> str:
    """The comparison as a Markdown document (table, legend, notes)."""
    header = _headers(table, _HEADERS)
    lines = [
        f"# Comparison ({table.scorer})",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] * 3 + ["---:"] * (len(header) - 3)) + "|",
    ]
    for row in table.rows:
        cells = _cells(row)
        cells[:3] = [md_text(c) for c in cells[:3]]  # name, method, benchmark: from results.json
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", _legend(table)]
    if table.notes:
        lines += ["", "Notes:", ""] + [f"- {md_inline(n)}" for n in table.notes]
    return "\n".join(lines) + "\n"


def render_rich(table: ComparisonTable) -> Table:
    """The comparison as a ``rich`` table for the terminal (legend and notes in the caption)."""
    out = Table(title=f"Comparison ({table.scorer})", caption="\n".join([_legend(table), *table.notes]))
    for i, c in enumerate(_headers(table, _SHORT_HEADERS)):
        # Text columns fold rather than vanish on a narrow terminal; numbers wrap at " ± ".
        out.add_column(c, justify="left" if i < 3 else "right", min_width=4, overflow="fold")
    for row in table.rows:
        out.add_row(*_cells(row))
    return out


def write_comparison(table: ComparisonTable, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``compare.md`` and ``compare.json`` into ``out_dir`` (atomically); return both paths."""
    out_dir = Path(out_dir)
    md, js = out_dir / COMPARE_MD, out_dir / COMPARE_JSON
    atomic_write_text(md, render_markdown(table))
    atomic_write_json(js, table.to_dict())
    return md, js
