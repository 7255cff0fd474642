"""Re-score a finished run's saved predictions with another scorer, without re-running the model.

``mmcl rescore RUN_DIR --scorer relaxed_numeric`` answers "how much of my exact-match
score was "3" vs "3.0"?": every saved prediction is scored again, the per-task means
fill ``matrix[scorer]`` (every task, declared or not: the user asked for this scorer),
and results.json, matrix.csv and report.md are rewritten.

Sample-aware scorers (``mllmcl_sci``, ``mllmcl_ocr``, ``mllmcl_ocr_strict``,
``cnext_grounding``) read more than the answers: the image file name, the OCRBench category,
the image size. The evaluator saves those with every prediction (``sample_meta``), and
rescore rebuilds a sample from them. Predictions saved before that (no ``sample_meta``)
cannot be rescored with these scorers: rescore stops with a DataError naming the file and
field, and writes nothing. A scorer that only applies to some tasks (``cnext_grounding`` needs
boxes and an image) is restricted with ``tasks`` (``--task`` on the command line); a task it
cannot read stops the rescore, naming task, file and line, before anything is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mmcl.benchmarks.builtin  # noqa: F401  registers the benchmarks' scorers (cnext_*, mllmcl_*) and protocols
from mmcl.data.errors import DataError, DataProblem
from mmcl.eval.scorers import (
    Scorer,
    call_scorer,
    get_scorer,
    needs_sample,
    sample_from_context,
    vqa_normalize,
)
from mmcl.metrics import INTRUSION, INTRUSION_FORM
from mmcl.report.markdown import write_report
from mmcl.report.results import RESULTS_FILE, load_results, row_labels, track_metrics, write_matrix_csv
from mmcl.rundir import RunLock
from mmcl.utils.io import atomic_write_json, atomic_write_text
from mmcl.utils.paths import check_name, inside

PREDICTIONS_DIR = "predictions"
ZERO_SHOT_STAGE = "zero-shot"


def stage_dir_name(stage: int) -> str:
    """Directory name of stage ``stage`` (1-based) under ``predictions/``: ``stage-01``..."""
    return f"stage-{stage:02d}"


def _read_predictions(path: Path, problems: list[DataProblem]) -> list[dict[str, Any]]:
    """The prediction lines of one file; bad lines are added to ``problems`` (file, line, field)."""
    rows: list[dict[str, Any]] = []
    name = str(path)
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(DataProblem(name, f"not valid JSON: {e.msg}", item=i, line=True))
            continue
        if not isinstance(row, dict):
            problems.append(DataProblem(name, "expected a JSON object", item=i, line=True))
            continue
        if not isinstance(row.get("prediction"), str):
            problems.append(
                DataProblem(name, "missing or not a string", item=i, field="prediction", line=True)
            )
            continue
        answers = row.get("answers")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            problems.append(
                DataProblem(name, "must be a non-empty list of strings", item=i, field="answers", line=True)
            )
            continue
        rows.append(row)
    if not rows and not any(p.file == name for p in problems):
        problems.append(DataProblem(name, "holds no predictions"))
    return rows


def _score_rows(rows: list[dict[str, Any]], scorer_name: str, fn: Scorer, path: Path, task: str) -> float:
    """Score each prediction line in place (``scores[scorer_name]``) and return the mean.

    A sample-aware scorer gets a sample rebuilt from the line (``sample_from_context``). A
    scorer that cannot read a line (e.g. a box scorer on a task without boxes) raises a
    ValueError naming the task, the file and the line.
    """
    aware = needs_sample(fn)
    for i, row in enumerate(rows, 1):
        scores = row.get("scores")
        if not isinstance(scores, dict):
            scores = row["scores"] = {}
        sample = sample_from_context(row) if aware else None
        try:
            scores[scorer_name] = float(call_scorer(fn, row["prediction"], row["answers"], sample))
        except ValueError as e:
            raise ValueError(
                f"scorer {scorer_name!r} cannot score task {task!r} ({path}, line {i}): {e}. "
                "Rescore only the tasks it applies to with --task."
            ) from None
    return sum(r["scores"][scorer_name] for r in rows) / len(rows)


def _check_sample_context(path: Path, rows: list[dict[str, Any]], scorer: str, problems: list[DataProblem]) -> None:
    """A sample-aware scorer needs each line's ``sample_meta``; lines saved without it are problems."""
    for i, row in enumerate(rows, 1):
        if not isinstance(row.get("sample_meta"), dict):
            problems.append(
                DataProblem(
                    str(path),
                    f"missing: scorer {scorer!r} reads the test sample (image file, OCRBench category or "
                    "image size), which mmcl saves with each prediction only since sample-aware rescoring "
                    "was added; re-run the evaluation to rescore with it",
                    item=i,
                    field="sample_meta",
                )
            )
            return


def _open_run(run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """A run's results, with every task name checked like a benchmark's (it names files under the run)."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    for task in results["tasks"]:
        check_name(task, f"{run_dir / RESULTS_FILE}: task name")
    return run_dir, results


def rescore_run(run_dir: str | Path, scorer: str, tasks: Sequence[str] | None = None) -> dict[str, Any]:
    """Score every saved prediction of a run with ``scorer`` and add (or replace) that track.

    ``tasks``: only these tasks are scored (the track is null for the others); default every task.

    Reads ``predictions/stage-KK/<task>.jsonl`` for every evaluated stage (and
    ``predictions/zero-shot/`` when the run has zero-shot scores), sets
    ``matrix[scorer]`` (and ``zero_shot[scorer]``) to the per-task mean score, for every
    task, recomputes ``metrics[scorer]``, and rewrites results.json (other tracks kept),
    matrix.csv and report.md. Each prediction line also gets ``scores[scorer]``.
    A cell counts as evaluated when its primary score is non-null or its predictions file
    exists; cells not evaluated stay null.

    Raises ``UnknownNameError`` (listing valid scorers) for an unknown ``scorer``,
    ``ResultsError`` for a bad run directory, ``FileNotFoundError`` naming every missing
    stage/task predictions file, and ``DataError`` (file, line, field) for malformed lines.
    Task names from results.json are checked like a benchmark's (no path separators, ``..``...),
    every path is checked to stay inside ``run_dir``, and the run directory is locked while it
    is rewritten (a running ``mmcl run`` on it refuses the rescore, see :mod:`mmcl.rundir`).

    Returns the updated results.
    """
    fn = get_scorer(scorer)
    run_dir, results = _open_run(run_dir)
    task_names: list[str] = results["tasks"]
    if tasks is not None:
        unknown = [t for t in tasks if t not in task_names]
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)} in {run_dir}; tasks: {', '.join(task_names)}")
    with RunLock(run_dir, "mmcl rescore"):
        return _rescore(run_dir, results, scorer, fn, set(task_names if tasks is None else tasks))


def _evaluated_cells(run_dir: Path, results: dict[str, Any], chosen: set[str]) -> list[tuple[int | None, int, str]]:
    """``(row index or None for zero-shot, task index, stage dir name)`` of every evaluated cell of the
    ``chosen`` tasks; raises FileNotFoundError naming every cell whose predictions file is missing."""
    task_names: list[str] = results["tasks"]
    primary = results["matrix"]["primary"]
    pred_root = inside(run_dir, PREDICTIONS_DIR)
    cells: list[tuple[int | None, int, str]] = []
    zero_primary = (results.get("zero_shot") or {}).get("primary")
    zs_dir = pred_root / ZERO_SHOT_STAGE
    if zero_primary is not None or zs_dir.is_dir():
        for j, task in enumerate(task_names):
            exists = (zs_dir / f"{task}.jsonl").is_file()
            if exists or (zero_primary is not None and zero_primary[j] is not None):
                cells.append((None, j, ZERO_SHOT_STAGE))
    for t, label in enumerate(row_labels(results)):
        # A zero-shot-only run keeps its one row in predictions/zero-shot/.
        stage = ZERO_SHOT_STAGE if label == ZERO_SHOT_STAGE else stage_dir_name(t + 1)
        for j, task in enumerate(task_names):
            if primary[t][j] is not None or (pred_root / stage / f"{task}.jsonl").is_file():
                cells.append((t, j, stage))
    cells = [c for c in cells if task_names[c[1]] in chosen]
    missing = [
        f"stage {stage}, task {task_names[j]} ({pred_root / stage / (task_names[j] + '.jsonl')})"
        for _, j, stage in cells
        if not (pred_root / stage / f"{task_names[j]}.jsonl").is_file()
    ]
    if missing:
        shown = "\n".join(f"  - {m}" for m in missing[:20])
        more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise FileNotFoundError(
            f"cannot rescore {run_dir}: predictions missing for {len(missing)} evaluated cell(s) "
            f"(was the run made with eval.save_predictions=false?):\n{shown}{more}"
        )
    return cells


Loaded = list[tuple[int | None, int, Path, list[dict[str, Any]]]]


def _load_cells(run_dir: Path, results: dict[str, Any], chosen: set[str], scorer: Scorer | None = None,
                scorer_name: str = "") -> Loaded:
    """Read and check the predictions of every evaluated cell before anything is scored or written.

    Every bad line of every file is collected and raised at once as a DataError (file, line, field).
    """
    task_names: list[str] = results["tasks"]
    problems: list[DataProblem] = []
    loaded: Loaded = []
    for t, j, stage in _evaluated_cells(run_dir, results, chosen):
        path = inside(run_dir, PREDICTIONS_DIR, stage, f"{task_names[j]}.jsonl")
        rows = _read_predictions(path, problems)
        if scorer is not None and needs_sample(scorer):
            _check_sample_context(path, rows, scorer_name, problems)
        loaded.append((t, j, path, rows))
    if problems:
        raise DataError(problems)
    return loaded


def _write_tracks(run_dir: Path, results: dict[str, Any], matrices: dict[str, list[list[float | None]]],
                  zero_shot: dict[str, list[float | None]] | None = None) -> dict[str, Any]:
    """Set ``matrix[track]`` (and ``zero_shot[track]`` where given) and its metrics
    (:func:`track_metrics`) for each track, then rewrite results.json, matrix.csv and report.md once."""
    for track, matrix in matrices.items():
        results["matrix"][track] = matrix
        if zero_shot and track in zero_shot:
            results.setdefault("zero_shot", {})[track] = zero_shot[track]
        results.setdefault("metrics", {})[track] = track_metrics(results, track)
    atomic_write_json(run_dir / RESULTS_FILE, results)
    write_matrix_csv(run_dir, results)
    write_report(run_dir, results)
    return results


def _rescore(run_dir: Path, results: dict[str, Any], scorer: str, fn: Scorer, chosen: set[str]) -> dict[str, Any]:
    task_names: list[str] = results["tasks"]
    loaded = _load_cells(run_dir, results, chosen, fn, scorer)
    n = len(task_names)
    matrix: list[list[float | None]] = [[None] * n for _ in results["matrix"]["primary"]]
    zero_shot: list[float | None] | None = None
    values = [_score_rows(rows, scorer, fn, path, task_names[j]) for _, j, path, rows in loaded]
    # Everything scored: only now write.
    for (t, j, path, rows), value in zip(loaded, values, strict=True):
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        if t is None:
            zero_shot = zero_shot or [None] * n
            zero_shot[j] = value
        else:
            matrix[t][j] = value
    return _write_tracks(run_dir, results, {scorer: matrix}, None if zero_shot is None else {scorer: zero_shot})


def _learned_task(label: str, task_names: list[str]) -> int | None:
    """Index of the task a row's label says was just learned (``after <task>``), else None."""
    name = label.removeprefix("after ")
    return task_names.index(name) if label.startswith("after ") and name in task_names else None


_SHAPE_PIECES = re.compile(r"\d+|[^\W\d_]+|\s+|.")


def answer_shape(text: str) -> str:
    """The form of an answer with its content taken out: a run of digits is ``9``, a word ``a``, a
    single letter ``A`` (a choice letter), a run of spaces one space; other characters stay, and
    an end period and surrounding spaces are dropped. E.g. ``[0.12, 0.30, 0.45, 0.60]`` ->
    ``[9.9, 9.9, 9.9, 9.9]``, a truncated ``0.12,`` -> ``9.9,``, ``storage-tank`` -> ``a-a``,
    ``(B)`` -> ``(A)``, ``Yes.`` -> ``a``. See docs/metrics.md#intrusion."""
    out = []
    for piece in _SHAPE_PIECES.findall(text.strip().removesuffix(".").strip()):
        if piece[0].isdigit():
            out.append("9")
        elif piece[0].isspace():
            out.append(" ")
        elif piece[0].isalpha():
            out.append("A" if len(piece) == 1 else "a")
        else:
            out.append(piece)
    return "".join(out)


def _within(shape: str, shapes: set[str]) -> bool:
    """Whether ``shape`` is (part of) one of ``shapes``: a truncated box is still a box."""
    return any(shape in s for s in shapes)


def intrusion_run(run_dir: str | Path) -> dict[str, Any]:
    """Add the ``intrusion`` and ``intrusion_form`` tracks to a sequential run: how often later tasks'
    answers, or answer forms, replace an earlier task's.

    ``intrusion[t][j]`` (task j learned before stage t) is the share of task j's saved answers
    after stage t that are an answer of a task learned after j (up to stage t) and not an answer
    of task j. Answers are compared VQA-normalised; a task's answer set is the union of the gold
    answers of its test questions. ``intrusion_form[t][j]`` is the share whose shape
    (:func:`answer_shape`) is part of a shape of a later task's gold answers and of none of task
    j's: a count answered with a truncated box (``0.12,``) counts there, a category answered with
    a later scenario's category name only in ``intrusion``. Other cells are null (a task not yet
    learned, the diagonal, rows that name no learned task: joint training, zero-shot). E.g. 1.0
    for an old "what kind of object" task means every answer names a category of a later
    scenario. See docs/metrics.md#intrusion.

    Reads every prediction file first (errors as :func:`rescore_run`, nothing written on bad
    input), writes no per-line scores, and rewrites results.json, matrix.csv and report.md.
    Raises ValueError when no row names a learned task.
    """
    run_dir, results = _open_run(run_dir)
    task_names: list[str] = results["tasks"]
    learned = [_learned_task(label, task_names) for label in row_labels(results)]
    if all(k is None for k in learned):
        raise ValueError(
            f"{run_dir} has no row after learning one task (rows: {', '.join(row_labels(results))}); "
            "the intrusion track needs a sequential run"
        )
    learned_at = {k: s for s, k in enumerate(learned) if k is not None}
    with RunLock(run_dir, "mmcl rescore --intrusion"):
        loaded = _load_cells(run_dir, results, set(task_names))
        answer_sets: list[set[str]] = [set() for _ in task_names]
        shape_sets: list[set[str]] = [set() for _ in task_names]
        for _, j, _, rows in loaded:
            answer_sets[j].update(vqa_normalize(a) for row in rows for a in row["answers"])
            shape_sets[j].update(answer_shape(a) for row in rows for a in row["answers"])
        whole: list[list[float | None]] = [[None] * len(task_names) for _ in learned]
        form: list[list[float | None]] = [[None] * len(task_names) for _ in learned]
        for t, j, _, rows in loaded:
            if t is None or j not in learned_at or learned_at[j] >= t:
                continue
            later = [k for k in learned[learned_at[j] + 1 : t + 1] if k is not None]
            foreign = set().union(*(answer_sets[k] for k in later)) - answer_sets[j]
            whole[t][j] = sum(vqa_normalize(r["prediction"]) in foreign for r in rows) / len(rows)
            later_shapes = set().union(*(shape_sets[k] for k in later))
            shapes = [answer_shape(r["prediction"]) for r in rows]
            form[t][j] = sum(
                bool(s) and _within(s, later_shapes) and not _within(s, shape_sets[j]) for s in shapes
            ) / len(rows)
        return _write_tracks(run_dir, results, {INTRUSION: whole, INTRUSION_FORM: form})
