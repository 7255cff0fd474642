"""The MSVQA protocol summary: last-step VQA score and F1, their average over steps, and forgetting.

UNIFIER reports the "last-step VQA score" and "last-step F1" of a run, per scenario and overall.
The paper's exact definitions are not public (shared/references/unifier_quad_msvqa.md §2.2), so
the ones below are **choices made here**:

- **VQA score**: the ``vqa_score`` track, over the tasks that declare that scorer.
- **F1**: per task, ``box_f1`` when the task declares it (grounding), else ``token_f1``. The two
  tracks are merged column by column into one composite matrix; a task declaring neither has no
  F1. (Box F1 and token F1 are different quantities; their mean is what "F1" means here.)
- **last** = mean over the scope's tasks of the final row; **average** = mean over stages t of the
  mean over the scope's tasks seen so far (j <= t), stages before the scope's first task skipped;
  **forgetting** = mean over the scope's tasks j < T of ``max_{j<=t<T} a[t][j] - a[T][j]``.
  These are :func:`mmcl.metrics.compute_metrics_subset` on the scope's columns, reached through
  :func:`mmcl.report.results.compute_track_metrics`: stages are never cut, so "last" is after the
  final stage of the whole stream and a scenario's forgetting includes drops caused by training
  on the other scenarios.
- **Scopes**: ``overall`` (every task) and each scenario of ``results["scenarios"]``, in order of
  first appearance in the stream. A task whose column is null in some stage from its own on (not
  evaluated) is left out, as in :func:`mmcl.report.results.track_metrics`; a one-row run (joint
  training, zero-shot) has only *last*.

Scores are in [0, 1]; tables show them ×100. :func:`compare_protocol` summarises groups of runs
(seeds of one configuration, grouped as in :mod:`mmcl.report.compare`) as mean ± std.

:class:`MSVQAProtocol` (registered as ``msvqa`` in :data:`mmcl.report.protocols.PROTOCOLS`) gives
the ``## MSVQA protocol`` section of ``report.md``, the one of ``report.html`` and
``mmcl compare --protocol msvqa``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from mmcl import __version__
from mmcl.report.compare import GROUP_KEY, Stat, fmt_stat, group_notes, group_runs
from mmcl.report.markdown import MISSING, fmt_score, md_inline, md_text
from mmcl.report.protocols import Compared, HtmlTable, Protocol, RunResults, register_protocol
from mmcl.report.results import (
    Matrix,
    compute_track_metrics,
    evaluated_rows,
    scored_task_indices,
)
from mmcl.utils.io import atomic_write_json, atomic_write_text

PROTOCOL = "msvqa"
OVERALL = "overall"
VQA_TRACK = "vqa_score"
F1_TRACKS = ("box_f1", "token_f1")  # in order of preference per task
SUMMARY_KEYS = ("last_vqa", "last_f1", "average_vqa", "average_f1", "forgetting_vqa", "forgetting_f1")
"""Keys of one scope in :func:`msvqa_summary` (plus ``tasks``, ``vqa_tasks``, ``f1_tasks``)."""
PROTOCOL_LABELS = {
    "last_vqa": "last VQA",
    "last_f1": "last F1",
    "average_vqa": "average VQA",
    "average_f1": "average F1",
    "forgetting_vqa": "forgetting VQA",
    "forgetting_f1": "forgetting F1",
}
COMPARE_KEYS = SUMMARY_KEYS
"""The columns of the ``mmcl compare --protocol msvqa`` table."""
DEFINITIONS = (
    "VQA = the `vqa_score` track over the tasks that declare it; F1 = per task `box_f1` if declared "
    "(grounding), else `token_f1`. last = mean over the scope's tasks after the final stage; "
    "average = mean over stages of the mean over the scope's tasks seen so far; forgetting = mean "
    "over the scope's tasks (but the last one) of best score after learning it minus final score. "
    "Stages are never cut: a scenario's numbers include what training on other scenarios did."
)


def _declares(results: dict[str, Any], j: int, scorer: str) -> bool:
    """Whether task j declares ``scorer``: from ``results["scorers"]``, else a non-null column."""
    task = results["tasks"][j]
    declared = results.get("scorers")
    if isinstance(declared, dict) and isinstance(declared.get(task), list):
        return scorer in declared[task]
    rows = results["matrix"].get(scorer) or []
    return any(j < len(r) and r[j] is not None for r in rows[: evaluated_rows(results)])


def _cell(results: dict[str, Any], track: str | None, t: int, j: int) -> float | None:
    rows = results["matrix"].get(track) if track else None
    if not rows or t >= len(rows):
        return None
    return rows[t][j]


def f1_sources(results: dict[str, Any]) -> list[str | None]:
    """Per task, the track its F1 comes from: ``box_f1``, ``token_f1`` or None."""
    out: list[str | None] = []
    for j in range(len(results["tasks"])):
        found = [s for s in F1_TRACKS if s in results["matrix"] and _declares(results, j, s)]
        out.append(found[0] if found else None)
    return out


def vqa_matrix(results: dict[str, Any]) -> Matrix:
    """The evaluated rows of the ``vqa_score`` track, null where a task does not declare it."""
    n, k = len(results["tasks"]), evaluated_rows(results)
    keep = [_declares(results, j, VQA_TRACK) for j in range(n)]
    return [[_cell(results, VQA_TRACK, t, j) if keep[j] else None for j in range(n)] for t in range(k)]


def f1_matrix(results: dict[str, Any]) -> Matrix:
    """The composite F1 matrix: column j from ``box_f1`` or ``token_f1`` (see :func:`f1_sources`)."""
    sources = f1_sources(results)
    n, k = len(results["tasks"]), evaluated_rows(results)
    return [[_cell(results, sources[j], t, j) for j in range(n)] for t in range(k)]


def _scope_metrics(matrix: Matrix, columns: Sequence[int]) -> tuple[dict[str, float | None], int]:
    """(metrics, tasks used) of ``matrix`` restricted to ``columns``."""
    cols = set(columns)
    masked = [[v if j in cols else None for j, v in enumerate(row)] for row in matrix]
    return compute_track_metrics(masked), len(scored_task_indices(masked))


def scenario_columns(results: dict[str, Any]) -> dict[str, list[int]]:
    """Task indices per scenario, scenarios in order of first appearance (tasks without one left out)."""
    scenarios = results.get("scenarios") or {}
    out: dict[str, list[int]] = {}
    for j, task in enumerate(results["tasks"]):
        s = scenarios.get(task)
        if s:
            out.setdefault(str(s), []).append(j)
    return out


def msvqa_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The MSVQA protocol numbers of one run (see the module docstring), scores in [0, 1].

    Returns ``{"protocol": "msvqa", "f1_source": {task: track or None}, "scopes": {scope: {...}}}``
    where each scope has ``tasks`` (names), ``vqa_tasks`` / ``f1_tasks`` (how many tasks each
    number uses) and the :data:`SUMMARY_KEYS` (None when not computable).
    """
    tasks = results["tasks"]
    tracks = {"vqa": vqa_matrix(results), "f1": f1_matrix(results)}
    scopes = {OVERALL: list(range(len(tasks))), **scenario_columns(results)}
    out: dict[str, Any] = {}
    for scope, columns in scopes.items():
        entry: dict[str, Any] = {"tasks": [tasks[j] for j in columns]}
        for short, matrix in tracks.items():
            metrics, used = _scope_metrics(matrix, columns)
            entry[f"{short}_tasks"] = used
            for m in ("last", "average", "forgetting"):
                entry[f"{m}_{short}"] = metrics[m]
        out[scope] = entry
    return {
        "protocol": PROTOCOL,
        "f1_source": dict(zip(tasks, f1_sources(results), strict=True)),
        "scopes": out,
    }


def has_msvqa_tracks(results: dict[str, Any]) -> bool:
    """True when the run has scenarios and at least one of the tracks the summary reads."""
    scenarios = results.get("scenarios") or {}
    return any(scenarios.values()) and any(t in results["matrix"] for t in (VQA_TRACK, *F1_TRACKS))


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_msvqa_markdown(summary: dict[str, Any]) -> str:
    """The summary of one run as a Markdown section (``## MSVQA protocol``)."""
    header = ["scope", "tasks", "VQA / F1 tasks", *(PROTOCOL_LABELS[k] for k in SUMMARY_KEYS)]
    rows = [
        [
            md_text(scope),
            str(len(e["tasks"])),
            f"{e['vqa_tasks']} / {e['f1_tasks']}",
            *(fmt_score(e[k]) for k in SUMMARY_KEYS),
        ]
        for scope, e in summary["scopes"].items()
    ]
    box = [t for t, s in summary["f1_source"].items() if s == "box_f1"]
    f1_note = (
        f"F1 from `box_f1` for {len(box)} task(s), `token_f1` for the others that declare it. " if box else ""
    )
    return (
        "## MSVQA protocol\n\n"
        + _md_table(header, rows)
        + f"\n\nScores ×100; `{MISSING}` = not computable. {f1_note}{DEFINITIONS}"
    )


def msvqa_section(results: dict[str, Any]) -> str | None:
    """The report.md section for a run with scenarios (None when it has none or no VQA/F1 track)."""
    return render_msvqa_markdown(msvqa_summary(results)) if has_msvqa_tracks(results) else None


# ---------------------------------------------------------------- comparison over seeds


@dataclass
class ProtocolGroup:
    """One group of runs (same name, method, benchmark): per scope, each number as mean ± std."""

    name: str
    method: str
    benchmark: str
    seeds: list[int]
    runs: list[str]
    scopes: dict[str, dict[str, Stat]]

    @property
    def n_seeds(self) -> int:
        return len(self.runs)


@dataclass
class ProtocolComparison:
    """The result of :func:`compare_protocol`."""

    protocol: str
    groups: list[ProtocolGroup]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (scores in [0, 1])."""

        return {
            "mmcl_version": __version__,
            "protocol": self.protocol,
            "group_key": list(GROUP_KEY),
            "groups": [
                {
                    "name": g.name,
                    "method": g.method,
                    "benchmark": g.benchmark,
                    "n_seeds": g.n_seeds,
                    "seeds": g.seeds,
                    "runs": g.runs,
                    "scopes": {s: {k: v.to_dict() for k, v in m.items()} for s, m in g.scopes.items()},
                }
                for g in self.groups
            ],
            "notes": self.notes,
        }


def compare_protocol(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None) -> ProtocolComparison:
    """Per group of runs, per scope: the :data:`SUMMARY_KEYS` as mean ± std over seeds.

    Groups as :func:`mmcl.report.compare.compare_runs`. A scope missing from some seeds counts
    only the seeds that have it (``n``). With ``out_dir``, writes ``protocol-<name>.md`` and
    ``.json`` there. Raises ValueError for no runs, ``ResultsError`` for a bad run directory.
    """
    groups: list[ProtocolGroup] = []
    notes: list[str] = []
    for key, members in group_runs(run_dirs).items():
        summaries = [msvqa_summary(r)["scopes"] for _, r in members]
        scope_names = list(dict.fromkeys(s for summary in summaries for s in summary))
        scopes = {
            s: {k: Stat.of([summary.get(s, {}).get(k) for summary in summaries]) for k in SUMMARY_KEYS}
            for s in scope_names
        }
        name, method, benchmark = key
        groups.append(
            ProtocolGroup(
                name=name,
                method=method,
                benchmark=benchmark,
                seeds=[r["seed"] for _, r in members],
                runs=[str(d) for d, _ in members],
                scopes=scopes,
            )
        )
        notes += group_notes(key, members)
        if not any(has_msvqa_tracks(r) for _, r in members):
            notes.append(
                f"{name} ({method} on {benchmark}): no scenarios or no vqa_score/box_f1/token_f1 track"
            )
    cmp = ProtocolComparison(PROTOCOL, groups, notes)
    if out_dir is not None:
        write_protocol_comparison(cmp, out_dir)
    return cmp


def _rows(cmp: ProtocolComparison) -> list[list[str]]:
    return [
        [g.name, g.method, str(g.n_seeds), scope, *(fmt_stat(stats[k], g.n_seeds) for k in COMPARE_KEYS)]
        for g in cmp.groups
        for scope, stats in g.scopes.items()
    ]


def _header() -> list[str]:
    return ["name", "method", "seeds", "scope", *(PROTOCOL_LABELS[k] for k in COMPARE_KEYS)]


def _legend(cmp: ProtocolComparison, definitions: bool = True) -> str:
    text = (
        f"Protocol `{cmp.protocol}`. Scores ×100, mean ± sample std over seeds (no ± for one seed; "
        f"(n=k) when only k seeds have a value). Runs grouped by {' + '.join(GROUP_KEY)}."
    )
    return f"{text} {DEFINITIONS}" if definitions else f"{text} Definitions: mmcl.benchmarks.msvqa.protocol."


def render_protocol_markdown(cmp: ProtocolComparison) -> str:
    """The protocol comparison as a Markdown document (table, legend, notes)."""
    lines = [
        f"# Comparison ({cmp.protocol} protocol)",
        "",
        _md_table(_header(), [[md_text(c) for c in r[:2]] + [r[2], md_text(r[3]), *r[4:]] for r in _rows(cmp)]),
        "",
        _legend(cmp),
    ]
    if cmp.notes:
        lines += ["", "Notes:", ""] + [f"- {md_inline(n)}" for n in cmp.notes]
    return "\n".join(lines) + "\n"


def render_protocol_rich(cmp: ProtocolComparison) -> Table:
    """The protocol comparison as a ``rich`` table for the terminal (short headers, short legend)."""
    caption = "\n".join([_legend(cmp, definitions=False), *cmp.notes])
    table = Table(title=f"Comparison ({cmp.protocol} protocol)", caption=caption)
    short = {"seeds": "n", "average VQA": "avg VQA", "average F1": "avg F1", "forgetting VQA": "forget VQA", "forgetting F1": "forget F1"}
    for i, h in enumerate(_header()):
        text = i in (0, 1, 3)
        table.add_column(short.get(h, h), justify="left" if text else "right", overflow="fold", min_width=4)
    for row in _rows(cmp):
        table.add_row(*row)
    return table


def write_protocol_comparison(cmp: ProtocolComparison, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``protocol-<name>.md`` and ``protocol-<name>.json`` into ``out_dir``; return both paths."""
    out_dir = Path(out_dir)
    md, js = out_dir / f"protocol-{cmp.protocol}.md", out_dir / f"protocol-{cmp.protocol}.json"
    atomic_write_text(md, render_protocol_markdown(cmp))
    atomic_write_json(js, cmp.to_dict())
    return md, js


# ---------------------------------------------------------------- the protocol


class MSVQAProtocol(Protocol):
    """The MSVQA protocol for any run with scenarios and a VQA / F1 track (:func:`has_msvqa_tracks`)."""

    name = PROTOCOL
    title = "MSVQA protocol"

    def markdown_section(self, run_dir: Path, results: RunResults) -> str | None:
        return msvqa_section(results)

    def html_table(self, runs: Sequence[tuple[Path, RunResults]]) -> HtmlTable | None:
        dirs = [d for d, r in runs if has_msvqa_tracks(r)]
        if not dirs:
            return None
        cmp = compare_protocol(dirs)
        rows = [
            [f"{g.method} · {g.name}", str(g.n_seeds), scope, *(fmt_stat(s[k], g.n_seeds) for k in SUMMARY_KEYS)]
            for g in cmp.groups
            for scope, s in g.scopes.items()
        ]
        return HtmlTable(
            header=["group", "seeds", "scope", *(PROTOCOL_LABELS[k] for k in SUMMARY_KEYS)],
            rows=rows,
            text_columns=3,
            notes=cmp.notes,
            legend=f"Scores ×100, mean ± sample std over seeds. {DEFINITIONS}",
        )

    def compare(self, run_dirs: Sequence[Path], out_dir: Path | None = None) -> Compared:
        cmp = compare_protocol(run_dirs, out_dir=out_dir)
        files = [Path(out_dir) / f"protocol-{PROTOCOL}.md", Path(out_dir) / f"protocol-{PROTOCOL}.json"] if out_dir else []
        return Compared(render_protocol_rich(cmp), files)


register_protocol(MSVQAProtocol())
