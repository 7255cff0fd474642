"""Continual-NExT's summary of a run: Avg.ACC, Forgetting, New.ACC, Avg.HAL / Avg.IUF / Avg.OTH,
cross-modal transfer, and example images before and after forgetting.

Read from ``results.json`` (``modality_pairs`` is written by the runner for tasks that declare
``meta["modalities"]``; the ``hal`` / ``iuf`` / ``oth`` tracks for tasks that declare
``meta["expect"]``, see :func:`mmcl.eval.evaluator.add_error_classes`):

- ``Avg.ACC`` = last, ``Forgetting``, ``New.ACC`` = MFT of the primary matrix
  (:func:`mmcl.benchmarks.continual_next.cross_modal.cross_modal_transfer`, which uses :mod:`mmcl.metrics`);
- ``Avg.HAL`` (and IUF, OTH) = mean over stages t of the mean over the tasks learned so far
  (j <= t) of the share of task j's test answers in that class after stage t: per-stage rates
  pooled over tasks ("seen" scope, task pooling of :func:`mmcl.eval.outputs.stage_error_rates`);
- cross-modal transfer = mean score change of a learned task when a task of the same / another
  modality pair is trained (``transfer_same_pair`` / ``transfer_different_pair``).

Only sequential runs (one matrix row per task) get a summary.

:class:`ContinualNextProtocol` (registered as ``cnext`` in :data:`mmcl.report.protocols.PROTOCOLS`)
adds ``modality_pairs`` and this summary (key ``continual_next``) to ``results.json`` at the end of
a run whose tasks declare ``meta["modalities"]``, the ``## Continual-NExT metrics`` section of
``report.md``, and ``mmcl compare --protocol cnext``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmcl.benchmarks.continual_next.cross_modal import cross_modal_transfer
from mmcl.data.sample import Task
from mmcl.report.compare import Stat, fmt_stat, group_notes, group_runs
from mmcl.report.markdown import md_code, md_inline, md_text
from mmcl.report.protocols import Compared, Protocol, RunResults, register_protocol
from mmcl.utils.io import atomic_write_json, atomic_write_text

PROTOCOL = "cnext"
RESULTS_KEY = "continual_next"
"""The key of :func:`continual_next_summary` in ``results.json``."""
PRIMARY = "primary"
RATE_TRACKS = {"Avg.HAL": "hal", "Avg.IUF": "iuf", "Avg.OTH": "oth"}


def modality_pair(task: Task) -> str | None:
    """``"image+text->text"``-style pair from ``task.meta["modalities"]`` (None when not declared)."""
    mods = task.meta.get("modalities") if task.meta else None
    if not mods:
        return None
    return "+".join(sorted(mods["in"])) + "->" + "+".join(sorted(mods["out"]))


def _seen_average(rows: list[list[float | None]]) -> float | None:
    per_stage = []
    for t, row in enumerate(rows):
        vals = [v for v in row[: t + 1] if v is not None and not math.isnan(v)]
        if vals:
            per_stage.append(sum(vals) / len(vals))
    return sum(per_stage) / len(per_stage) if per_stage else None


def continual_next_summary(results: dict[str, Any]) -> dict[str, Any] | None:
    """The summary above, or None (no modality pairs, or not one row per task)."""
    pairs = results.get("modality_pairs")
    matrix = results.get("matrix", {})
    n = len(results.get("tasks", []))
    if not pairs or PRIMARY not in matrix or len(matrix[PRIMARY]) != n or any(p is None for p in pairs):
        return None
    rep = cross_modal_transfer(matrix[PRIMARY], pairs)
    out: dict[str, Any] = {
        "Avg.ACC": rep.avg_acc,
        "Forgetting": rep.forgetting,
        "New.ACC": rep.new_acc,
    }
    for key, track in RATE_TRACKS.items():
        out[key] = _seen_average(matrix[track]) if track in matrix else None
    out.update({
        "transfer_same_pair": rep.same_pair_mean,
        "transfer_same_pair_n": rep.same_pair_n,
        "transfer_different_pair": rep.different_pair_mean,
        "transfer_different_pair_n": rep.different_pair_n,
        "transfer_per_pair": [{"trained": a, "evaluated": b, "mean": m, "n": k} for (a, b), (m, k) in rep.per_pair.items()],
    })
    return out


def _image_rows(run_dir: Path, stage: int, task: str) -> list[dict[str, Any]]:
    path = run_dir / "predictions" / f"stage-{stage:02d}" / f"{task}.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("image")]


def _f(x: float | None, scale: float = 100.0) -> str:
    return "n/a" if x is None else f"{scale * x:.1f}"


def continual_next_section(run_dir: str | Path, results: dict[str, Any], examples: int = 4) -> str | None:
    """Markdown: the summary table, the per-stage error rates, and before/after images of image tasks."""
    summary = continual_next_summary(results)
    if summary is None:
        return None
    run_dir = Path(run_dir)
    lines = [
        "## Continual-NExT metrics",
        "",
        "Scores x100. Avg.HAL / Avg.IUF / Avg.OTH: share of the learned tasks' test answers that are "
        "hallucinations / instruction unfollowing / other errors, averaged over stages (lower is better). "
        "Transfer: mean change of a learned task's score when a task of the same / another modality pair is trained.",
        "",
        "| Avg.ACC | Forgetting | New.ACC | Avg.HAL | Avg.IUF | Avg.OTH | transfer, same pair | transfer, other pair |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| " + " | ".join([_f(summary["Avg.ACC"]), _f(summary["Forgetting"]), _f(summary["New.ACC"]),
                           _f(summary["Avg.HAL"]), _f(summary["Avg.IUF"]), _f(summary["Avg.OTH"]),
                           f"{_f(summary['transfer_same_pair'])} (n={summary['transfer_same_pair_n']})",
                           f"{_f(summary['transfer_different_pair'])} (n={summary['transfer_different_pair_n']})"]) + " |",
    ]
    tasks = results["tasks"]
    matrix = results["matrix"]
    if all(t in matrix for t in RATE_TRACKS.values()):
        lines += ["", "Error rates per stage (tasks learned so far, x100):", "",
                  "| after stage | HAL | IUF | OTH |", "|---|---:|---:|---:|"]
        for t in range(len(tasks)):
            rates = [_seen_average([matrix[k][t][: t + 1]]) for k in RATE_TRACKS.values()]
            lines.append(f"| {t + 1} ({md_code(tasks[t])}) | " + " | ".join(_f(r) for r in rates) + " |")
    last = len(tasks)
    gallery = []
    for j, task in enumerate(tasks):
        own = {r["question_id"]: r for r in _image_rows(run_dir, j + 1, task)}
        if not own:
            continue
        final = {r["question_id"]: r for r in _image_rows(run_dir, last, task)} if last != j + 1 else own
        gallery += [f"**{md_code(task)}** (after its own stage {j + 1} / after the last stage {last}; "
                    "an empty cell: no image was produced):", "",
                    "| prompt | own stage | last stage |", "|---|---|---|"]
        for qid, r in list(own.items())[:examples]:
            after = final.get(qid)
            cell = f"![]({md_text(after['image'])})" if after else "(no image)"
            question = md_text(r.get("question", qid)).replace("|", "\\|")
            gallery.append(f"| {question} | ![]({md_text(r['image'])}) | {cell} |")
        gallery.append("")
    if gallery:
        lines += ["", "### Generated images before and after forgetting", "", *gallery]
    return "\n".join(lines)


# ---------------------------------------------------------------- comparing runs

COMPARE_KEYS = ("Avg.ACC", "Forgetting", "New.ACC", "Avg.HAL", "Avg.IUF", "Avg.OTH",
                "transfer_same_pair", "transfer_different_pair")
COMPARE_HEADERS = ("Avg.ACC", "Forgetting", "New.ACC", "Avg.HAL", "Avg.IUF", "Avg.OTH",
                   "transfer, same pair", "transfer, other pair")


def compare_cnext(run_dirs: list[str | Path], out_dir: str | Path | None = None) -> dict[str, Any]:
    """Per group of runs (name, method, benchmark, as ``mmcl compare``): the summary keys as mean ± std
    over seeds, x100. Runs without a summary (joint, zero-shot) get their last-stage mean score as
    Avg.ACC and nothing else. With ``out_dir``, writes ``protocol-cnext.md`` and ``.json``."""
    rows, notes = [], []
    for key, members in group_runs(run_dirs).items():
        sums = []
        for _, r in members:
            s = r.get(RESULTS_KEY) or {}
            if not s:  # one-stage runs: the final score is still Avg.ACC
                s = {"Avg.ACC": r["metrics"]["primary"]["last"]}
            sums.append(s)
        stats = {k: Stat.of([s.get(k) for s in sums]) for k in COMPARE_KEYS}
        rows.append({"name": key[0], "method": key[1], "benchmark": key[2], "seeds": [r["seed"] for _, r in members],
                     "stats": stats})
        notes += group_notes(key, members)
    lines = ["| run | method | seeds | " + " | ".join(COMPARE_HEADERS) + " |",
             "|---|---|---:|" + "---:|" * len(COMPARE_HEADERS)]
    for row in rows:
        n = len(row["seeds"])
        lines.append(f"| {md_text(row['name'])} | {md_text(row['method'])} | {n} | "
                     + " | ".join(fmt_stat(row["stats"][k], n) for k in COMPARE_KEYS) + " |")
    text = "\n".join(["# Continual-NExT comparison (x100, mean ± std over seeds)", "", *lines, "",
                      *(f"- {md_inline(x)}" for x in notes)]) + "\n"
    out = {"protocol": PROTOCOL, "markdown": text,
           "rows": [{**{k: v for k, v in r.items() if k != "stats"},
                     "stats": {k: s.to_dict() for k, s in r["stats"].items()}} for r in rows], "notes": notes}
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out_dir) / f"protocol-{PROTOCOL}.md", text)
        atomic_write_json(Path(out_dir) / f"protocol-{PROTOCOL}.json", {k: v for k, v in out.items() if k != "markdown"})
    return out


# ---------------------------------------------------------------- the protocol


class ContinualNextProtocol(Protocol):
    """Continual-NExT's metrics for any run whose tasks declare ``meta["modalities"]``."""

    name = PROTOCOL
    title = "Continual-NExT metrics"

    def run_results(self, tasks: Sequence[Task], results: RunResults) -> dict[str, Any]:
        pairs = [modality_pair(t) for t in tasks]
        if not any(p is not None for p in pairs):
            return {}
        return {"modality_pairs": pairs, RESULTS_KEY: continual_next_summary({**results, "modality_pairs": pairs})}

    def markdown_section(self, run_dir: Path, results: RunResults) -> str | None:
        return continual_next_section(run_dir, results)

    def compare(self, run_dirs: Sequence[Path], out_dir: Path | None = None) -> Compared:
        res = compare_cnext(list(run_dirs), out_dir=out_dir)
        files = [Path(out_dir) / f"protocol-{PROTOCOL}.md", Path(out_dir) / f"protocol-{PROTOCOL}.json"] if out_dir else []
        return Compared(res["markdown"], files)


register_protocol(ContinualNextProtocol())
