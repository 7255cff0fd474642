"""``msvqa``: the released MSVQA data (https://huggingface.co/datasets/Kaij00/MSVQA) from local files.

**The layout below is a guess.** The dataset card and files could not be read when this loader
was written (nothing may be downloaded here), so every column name is configurable and the
defaults are plausible choices, not facts. Check a real copy first with
``mmcl validate-data CONFIG`` (or ``python -c "from mmcl.benchmarks.msvqa.loader import
validate_msvqa; print(validate_msvqa({'path': '/data/msvqa'}).render())"``): it lists, per
scenario and task, what was found and every problem, without training.

Sources (one of):

* ``path``: a ``DatasetDict`` saved with ``save_to_disk``, splits ``train_split`` / ``test_split``
  (default ``train`` / ``test``);
* ``train`` and ``test``: each a saved Dataset directory or a ``.json`` / ``.jsonl`` file of flat
  rows, or a list of them (e.g. one file per scenario).

Columns (``fields``; ``auto`` = the first of the listed names that the data has):

- ``image`` (``image``): a ``datasets.Image`` column or a path relative to ``image_folder``
  (default: the dataset folder or the JSON file's folder); null = text-only row.
- ``question`` (``question``).
- ``answer`` (auto: ``answers``, ``answer``): a string or a list of reference strings.
- ``id`` (auto: ``question_id``, ``id``; else the row number): unique within a file.
- ``boxes`` (auto: ``bbox``, ``boxes``, ``bboxes``; else none): ``[x1, y1, x2, y2]``, a list of
  such boxes, or text holding boxes; ``box_format: xywh`` converts ``[x, y, w, h]``.
- ``scenario`` (``scenario``): mapped to the four canonical scenarios (see below).
- ``task`` (auto: ``task``, ``step``): a string or an integer; one task per (scenario, value),
  named ``"<scenario>.<value>"``.
- ``task_type`` (auto: ``task_type``, ``question_type``, ``type``; else none): used only to tell
  grounding tasks apart.

Scenario values are compared case-insensitively, ignoring spaces, ``-`` and ``_``, so
``"High Altitude"``, ``"high_altitude"`` and ``"high-altitude"`` are all ``high-altitude``.
:data:`DEFAULT_SCENARIO_ALIASES` adds abbreviations (``HA``, ``UW``, ``LA``, ``IN``...);
``scenario_aliases`` adds more (``{"Scene-1": high-altitude}``) or drops rows (``{"other": null}``).
A value that maps to nothing is a data problem naming the file, the first row and the count.

Protocol (as far as it is known, see shared/references/unifier_quad_msvqa.md §2.3):
``steps: 5`` = the five tasks of one ``scenario``; ``steps: 20`` = all four scenarios in
``scenario_order`` (default high-altitude → underwater → low-altitude → indoor), blocked by
scenario, or with ``interleave: true`` step i = task i // 4 of scenario ``scenario_order[i % 4]``.
Each scenario used must have exactly five task values; inside a scenario they are ordered by
``task_order`` (task values) or else naturally ("2" before "10"). The common ``order``,
``tasks`` and ``*_per_task`` options apply afterwards.

Scoring: a grounding task gets ``box_f1``, any other task ``vqa_score``, ``exact_match`` and
``token_f1`` (as ``msvqa-synth``). A task is grounding when, first rule that applies:
``grounding_tasks`` lists its value; its rows' ``task_type`` says so (contains one of
``grounding_keywords``, e.g. "grounding", "detection"; the majority of its rows decides); its
task value says so; every one of its answers holds a box. A grounding row whose answer holds
no box gets the boxes column, written as ``[x1, y1, x2, y2]; ...``, as its reference. A task
whose rows all carry boxes but that none of these rules makes grounding stays QA; the
validation report notes it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmcl.benchmarks import BENCHMARKS, DATA_VALIDATORS
from mmcl.benchmarks.msvqa.synth import GROUNDING_SCORERS, QA_SCORERS, SCENARIOS, check_permutation
from mmcl.benchmarks.stream import apply_stream_options, parse_options, stream_seed
from mmcl.config import BenchmarkConfig
from mmcl.data.errors import DataError, DataProblem
from mmcl.data.hf_dataset import FieldMap, open_saved_dataset, parse_source
from mmcl.data.llava_json import ParsedFile, read_json_records
from mmcl.data.sample import Benchmark, Sample, Task
from mmcl.synth.boxes import format_boxes_as_written, parse_boxes

BENCHMARK_NAME = "msvqa"
AUTO = "auto"
TASKS_PER_SCENARIO = 5

AUTO_COLUMNS: dict[str, tuple[str, ...]] = {
    "answer": ("answers", "answer"),
    "id": ("question_id", "id"),
    "boxes": ("bbox", "boxes", "bboxes"),
    "task": ("task", "step"),
    "task_type": ("task_type", "question_type", "type"),
}
"""The column names ``auto`` looks for, in order of preference."""

DEFAULT_SCENARIO_ALIASES: dict[str, str] = {
    "ha": "high-altitude",
    "high": "high-altitude",
    "aerial": "high-altitude",
    "remote sensing": "high-altitude",
    "uw": "underwater",
    "la": "low-altitude",
    "low": "low-altitude",
    "drone": "low-altitude",
    "uav": "low-altitude",
    "in": "indoor",
    "indoors": "indoor",
}
"""Abbreviations mapped to canonical scenarios (the canonical names themselves always map)."""

DEFAULT_GROUNDING_KEYWORDS: tuple[str, ...] = ("ground", "detect", "bbox", "box", "localiz", "localis")

Box = list[float]


def scenario_key(value: str) -> str:
    """How scenario values are compared: case-folded, without spaces, ``-`` and ``_``."""
    return re.sub(r"[\s_\-]+", "", value.casefold())


def natural_key(value: str) -> list[int | str]:
    """Sort key putting "step2" before "step10"."""
    return [int(p) if i % 2 else p.casefold() for i, p in enumerate(re.split(r"(\d+)", value))]


# ---------------------------------------------------------------- options


class MSVQAFields(BaseModel):
    """Column names; ``"auto"`` looks for the names in :data:`AUTO_COLUMNS`, None = no such column."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = "image"
    question: str = "question"
    answer: str = AUTO
    id: str | None = AUTO
    boxes: str | None = AUTO
    scenario: str = "scenario"
    task: str = AUTO
    task_type: str | None = AUTO


Scenario = Literal["high-altitude", "underwater", "low-altitude", "indoor"]


class MSVQAOptions(BaseModel):
    """The options of the ``msvqa`` benchmark (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    train: str | list[str] | None = None
    test: str | list[str] | None = None
    train_split: str = "train"
    test_split: str = "test"
    image_folder: str | None = None
    fields: MSVQAFields = Field(default_factory=MSVQAFields)
    steps: Literal[5, 20] = 20
    scenario: Scenario = "high-altitude"
    scenario_order: list[str] = Field(default_factory=lambda: list(SCENARIOS))
    interleave: bool = False
    task_order: list[str] | None = None  # task values, in training order inside each scenario
    scenario_aliases: dict[str, Scenario | None] = Field(default_factory=dict)
    grounding_tasks: list[str] | None = None  # task values that are grounding (replaces the auto rules)
    grounding_keywords: list[str] = Field(default_factory=lambda: list(DEFAULT_GROUNDING_KEYWORDS))
    box_format: Literal["xyxy", "xywh"] = "xyxy"
    qa_max_new_tokens: int = Field(16, ge=1)
    grounding_max_new_tokens: int = Field(128, ge=1)
    check_images: bool = True
    description: str = ""

    @field_validator("scenario_order")
    @classmethod
    def _scenario_perm(cls, v: list[str]) -> list[str]:
        return check_permutation("scenario_order", v, SCENARIOS)

    @model_validator(mode="after")
    def _one_source(self) -> MSVQAOptions:
        if self.path is not None and (self.train is not None or self.test is not None):
            raise ValueError("give either path (a DatasetDict directory) or train and test, not both")
        if self.path is None and (self.train is None or self.test is None):
            raise ValueError(
                "give path (a DatasetDict directory) or both train and test (files or dataset dirs)"
            )
        return self

    def sources(self, split: Literal["train", "test"]) -> list[tuple[str, str | None]]:
        """(source, split name or None) pairs to read for one split."""
        if self.path is not None:
            return [(self.path, self.train_split if split == "train" else self.test_split)]
        given = self.train if split == "train" else self.test
        return [(s, None) for s in ([given] if isinstance(given, str) else list(given or []))]

    def data_label(self) -> str:
        return self.path or "train/test sources"


def map_scenario(value: str, aliases: Mapping[str, str | None] | None = None) -> tuple[bool, str | None]:
    """(known, canonical scenario or None to drop the row) for a raw scenario value.

    ``aliases`` (user aliases) win over the canonical names and :data:`DEFAULT_SCENARIO_ALIASES`.
    """
    key = scenario_key(value)
    user = {scenario_key(k): v for k, v in (aliases or {}).items()}
    if key in user:
        return True, user[key]
    table = {scenario_key(s): s for s in SCENARIOS}
    table.update({scenario_key(k): v for k, v in DEFAULT_SCENARIO_ALIASES.items()})
    return (True, table[key]) if key in table else (False, None)


# ---------------------------------------------------------------- reading


@dataclass
class Columns:
    """The columns used for one source after ``auto`` detection."""

    fieldmap: FieldMap
    scenario: str
    task: str
    task_type: str | None
    boxes: str | None

    def describe(self) -> str:
        f = self.fieldmap
        parts = {
            "image": f.image,
            "question": f.question,
            "answer": f.answer,
            "id": f.id or "(row number)",
            "boxes": self.boxes,
            "scenario": self.scenario,
            "task": self.task,
            "task_type": self.task_type,
        }
        return ", ".join(f"{k}={v!r}" if v else f"{k}=none" for k, v in parts.items())


@dataclass
class Row:
    """One parsed row with what the protocol needs."""

    sample: Sample
    pf: ParsedFile
    loc: int
    scenario: str
    value: str  # task value
    kind: str | None  # task type value
    boxes: list[Box]
    answer_field: str
    box_field: str | None


def source_columns(source: str, split: str | None) -> list[str] | None:
    """The column names of a source (for JSON: every key of any row), or None when unreadable."""
    if Path(source).suffix.lower() in (".json", ".jsonl"):
        raw = read_json_records(source)
        if not raw.records:
            return None
        keys: dict[str, None] = {}
        for _, obj in raw.records:
            if isinstance(obj, dict):
                keys.update(dict.fromkeys(obj))
        return list(keys)
    ds, _, _ = open_saved_dataset(source, split)
    return None if ds is None else list(ds.column_names)


def resolve_columns(
    fields: MSVQAFields, present: list[str] | None, label: str
) -> tuple[Columns | None, list[DataProblem], list[str]]:
    """Resolve ``auto`` names against ``present`` columns: (columns, problems, notes).

    Columns are None (the source is skipped) when a needed or named column is missing.
    """
    problems: list[DataProblem] = []
    notes: list[str] = []
    shown = ", ".join(present or [])

    def pick(role: str, value: str | None, required: bool) -> str | None:
        if value != AUTO:
            if value is not None and present is not None and value not in present:
                problems.append(
                    DataProblem(label, f"missing column {value!r} (fields.{role}); present columns: {shown}")
                )
            return value
        candidates = AUTO_COLUMNS[role]
        if present is None:  # unreadable: parse_source reports why
            return candidates[0] if required else None
        found = [c for c in candidates if c in present]
        if not found:
            if required:
                problems.append(
                    DataProblem(
                        label,
                        f"no {role} column: looked for {', '.join(map(repr, candidates))}; "
                        f"present columns: {shown} (set fields.{role})",
                    )
                )
            return None
        if len(found) > 1:
            notes.append(
                f"{label}: columns {', '.join(map(repr, found))} could each be the {role}; "
                f"using {found[0]!r} (set fields.{role} to choose)"
            )
        return found[0]

    answer = pick("answer", fields.answer, True)
    sid = pick("id", fields.id, False)
    boxes = pick("boxes", fields.boxes, False)
    task = pick("task", fields.task, True)
    task_type = pick("task_type", fields.task_type, False)
    if present is not None and fields.scenario not in present:
        problems.append(
            DataProblem(
                label, f"missing column {fields.scenario!r} (fields.scenario); present columns: {shown}"
            )
        )
    if problems or answer is None or task is None:
        return None, problems, notes
    fieldmap = FieldMap(image=fields.image, question=fields.question, answer=answer, id=sid)
    return Columns(fieldmap, fields.scenario, task, task_type, boxes), problems, notes


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_boxes(value: Any, box_format: str = "xyxy") -> tuple[list[Box], str | None]:
    """Normalise a boxes cell to a list of ``[x1, y1, x2, y2]``; or say what is wrong.

    Accepts null / ``[]`` (no box), ``[x1, y1, x2, y2]``, a list of such boxes, or text holding
    boxes (read with :func:`mmcl.synth.boxes.parse_boxes`). ``box_format="xywh"`` reads
    ``[x, y, w, h]`` (not for text, which is taken as written).
    """
    if value is None:
        return [], None
    if isinstance(value, str):
        found = [list(b) for b in parse_boxes(value)]
        if value.strip() and not found:
            return [], f"holds no box [x1, y1, x2, y2]: {value!r}"
        return found, None
    if not isinstance(value, (list, tuple)):
        return [], f"must be [x1, y1, x2, y2], a list of boxes or text, got {type(value).__name__} {value!r}"
    if not value:
        return [], None
    raw = [value] if all(_number(v) for v in value) else list(value)
    boxes: list[Box] = []
    for b in raw:
        if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(_number(v) for v in b):
            return [], f"must be [x1, y1, x2, y2] or a list of such boxes, got {value!r}"
        x1, y1, a, b2 = (float(v) for v in b)
        boxes.append([x1, y1, x1 + a, y1 + b2] if box_format == "xywh" else [x1, y1, a, b2])
    return boxes, None


def _cell_text(value: Any) -> str | None:
    """A non-empty string or an integer as text; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


@dataclass
class _Unmapped:
    count: int
    first: int


class _Reader:
    """Reads every source of both splits into rows, collecting problems and notes."""

    def __init__(self, opts: MSVQAOptions) -> None:
        self.opts = opts
        self.files: list[ParsedFile] = []
        self.problems: list[DataProblem] = []
        self.notes: list[str] = []
        self.columns: list[tuple[str, str]] = []  # (source label, description)
        self.unmapped: dict[tuple[str, str], _Unmapped] = {}  # (file, raw value)
        self.dropped: Counter[str] = Counter()

    def read(self, split: Literal["train", "test"]) -> list[Row]:
        rows: list[Row] = []
        sources = self.opts.sources(split)
        for source, split_name in sources:
            label = f"{source} (split {split_name!r})" if split_name else source
            cols, problems, notes = resolve_columns(
                self.opts.fields, source_columns(source, split_name), label
            )
            self.problems += problems
            self.notes += notes
            if cols is None:
                continue
            self.columns.append((label, cols.describe()))
            pf = parse_source(source, split_name, cols.fieldmap, image_folder=self.opts.image_folder)
            self.files.append(pf)
            rows += self._rows(pf, cols, prefix=Path(source).stem if len(sources) > 1 else None)
        return rows

    def _rows(self, pf: ParsedFile, cols: Columns, prefix: str | None) -> list[Row]:
        out: list[Row] = []
        for sample, loc in zip(pf.samples, pf.locations, strict=True):
            n_before = len(pf.problems)
            meta = sample.meta
            scenario = self._scenario(pf, loc, cols.scenario, meta)
            value = _cell_text(meta.get(cols.task))
            if value is None:
                what = "missing required field" if cols.task not in meta else f"got {meta[cols.task]!r}"
                pf.problem(f"must name the task (a non-empty string or an integer); {what}", loc, cols.task)
            kind = _cell_text(meta.get(cols.task_type)) if cols.task_type else None
            boxes: list[Box] = []
            if cols.boxes is not None:
                boxes, err = read_boxes(meta.get(cols.boxes), self.opts.box_format)
                if err:
                    pf.problem(err, loc, cols.boxes)
            if len(pf.problems) > n_before or scenario is None or value is None:
                continue
            if prefix is not None and cols.fieldmap.id is None:
                sample.id = f"{prefix}:{sample.id}"  # row numbers repeat across files
            sample.scenario = scenario
            sample.meta = {**meta, "task_value": value, **({"boxes": boxes} if cols.boxes else {})}
            out.append(Row(sample, pf, loc, scenario, value, kind, boxes, cols.fieldmap.answer, cols.boxes))
        return out

    def _scenario(self, pf: ParsedFile, loc: int, column: str, meta: dict[str, Any]) -> str | None:
        """The canonical scenario of a row; None when dropped or not mappable (recorded)."""
        raw = _cell_text(meta.get(column))
        if raw is None:
            what = "missing required field" if column not in meta else f"got {meta[column]!r}"
            pf.problem(f"must name the scenario (a non-empty string); {what}", loc, column)
            return None
        known, scenario = map_scenario(raw, self.opts.scenario_aliases)
        if not known:
            entry = self.unmapped.setdefault((pf.file, raw), _Unmapped(0, loc))
            entry.count += 1
            return None
        if scenario is None:
            self.dropped[raw] += 1
        return scenario

    def unmapped_problems(self) -> list[DataProblem]:
        """One problem per (file, unmapped value), at its first row."""
        by_file = {pf.file: pf for pf in self.files}
        col = self.opts.fields.scenario
        out = []
        for (file, raw), u in self.unmapped.items():
            where = "line" if by_file[file].by_line else "item"
            out.append(
                DataProblem(
                    file,
                    f"scenario value {raw!r} ({u.count} row(s), first at {where} {u.first}) is not one of "
                    f"{', '.join(SCENARIOS)} nor a known alias; add it to scenario_aliases "
                    f"(e.g. {{{raw!r}: underwater}}, or null to drop those rows)",
                    item=u.first,
                    field=col,
                    line=by_file[file].by_line,
                )
            )
        return out

    def unmapped_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for (_, raw), u in self.unmapped.items():
            counts[raw] += u.count
        return dict(counts)


# ---------------------------------------------------------------- tasks and protocol


@dataclass
class TaskData:
    """The rows of one (scenario, task value), and how it is scored."""

    scenario: str
    value: str
    train: list[Row] = field(default_factory=list)
    test: list[Row] = field(default_factory=list)
    grounding: bool = False
    reason: str = ""
    answers_from_boxes: int = 0

    @property
    def name(self) -> str:
        return f"{self.scenario}.{self.value}"

    @property
    def rows(self) -> list[Row]:
        return self.train + self.test

    @property
    def scorers(self) -> list[str]:
        return list(GROUNDING_SCORERS if self.grounding else QA_SCORERS)


def _says_grounding(text: str, keywords: Sequence[str]) -> bool:
    low = text.casefold()
    return any(k.casefold() in low for k in keywords)


def _has_box_answer(row: Row) -> bool:
    return bool(parse_boxes(row.sample.answers[0]))


def decide_grounding(task: TaskData, opts: MSVQAOptions) -> tuple[bool, str, str | None]:
    """(grounding?, why, a note or None) by the rules of the module docstring."""
    if opts.grounding_tasks is not None:
        hit = task.value in opts.grounding_tasks
        return hit, ("listed in grounding_tasks" if hit else "not in grounding_tasks"), None
    kinds = [r.kind for r in task.rows if r.kind is not None]
    if kinds:
        hits = sum(_says_grounding(k, opts.grounding_keywords) for k in kinds)
        common = Counter(kinds).most_common(1)[0][0]
        note = None
        if 0 < hits < len(kinds):
            note = (
                f"task {task.name!r} mixes task types ({hits} of {len(kinds)} rows say grounding); "
                "one task has one set of scorers, so the majority decides"
            )
        grounding = hits * 2 > len(kinds)
        return grounding, f"task type {common!r}" + (" (majority)" if note else ""), note
    if _says_grounding(task.value, opts.grounding_keywords):
        return True, "task value says grounding", None
    if all(_has_box_answer(r) for r in task.rows):
        return True, "every answer is a box", None
    note = None
    if task.rows and all(r.boxes for r in task.rows):
        note = (
            f"task {task.name!r}: every row has boxes but it is scored as QA (no grounding task type, "
            "answers are not boxes); list its value in grounding_tasks if it is a grounding task"
        )
    return False, "no grounding type; answers are not boxes", note


def _box_references(task: TaskData) -> list[DataProblem]:
    """Give grounding rows without a box in their answer the boxes column as reference."""
    problems = []
    for r in task.rows:
        if _has_box_answer(r):
            continue
        if r.boxes:
            r.sample.answers = [format_boxes_as_written(r.boxes)]
            task.answers_from_boxes += 1
            continue
        boxes = f"the boxes column {r.box_field!r} is empty" if r.box_field else "there is no boxes column"
        problems.append(
            DataProblem(
                r.pf.file,
                f"grounding task {task.name!r}: the answer holds no box [x1, y1, x2, y2] and {boxes}",
                item=r.loc,
                field=r.answer_field,
                line=r.pf.by_line,
            )
        )
    return problems


def group_tasks(train: list[Row], test: list[Row]) -> dict[tuple[str, str], TaskData]:
    """Rows grouped by (scenario, task value), scenarios in canonical order, values naturally."""
    groups: dict[tuple[str, str], TaskData] = {}
    for split, rows in (("train", train), ("test", test)):
        for r in rows:
            task = groups.setdefault((r.scenario, r.value), TaskData(r.scenario, r.value))
            getattr(task, split).append(r)
    order = sorted(groups, key=lambda k: (SCENARIOS.index(k[0]), natural_key(k[1])))
    return {k: groups[k] for k in order}


def stream_order(
    opts: MSVQAOptions, groups: Mapping[tuple[str, str], TaskData]
) -> tuple[list[tuple[str, str]], list[str]]:
    """The (scenario, task value) keys in training order, or problems saying why the protocol fails."""
    scenarios = [opts.scenario] if opts.steps == 5 else list(opts.scenario_order)
    per: dict[str, list[str]] = {}
    problems: list[str] = []
    for s in scenarios:
        values = [v for sc, v in groups if sc == s]
        if opts.task_order is not None:
            extra = [v for v in values if v not in opts.task_order]
            if extra:
                problems.append(f"scenario {s!r} has task value(s) not in task_order: {', '.join(extra)}")
            values = [v for v in opts.task_order if v in values]
        if len(values) != TASKS_PER_SCENARIO:
            found = f"{len(values)}: {', '.join(values)}" if values else "none"
            problems.append(
                f"steps={opts.steps} needs {TASKS_PER_SCENARIO} tasks in scenario {s!r}; found {found}"
            )
        per[s] = values
    if problems:
        return [], problems
    if opts.steps == 20 and opts.interleave:
        n = len(scenarios)
        return [(scenarios[i % n], per[scenarios[i % n]][i // n]) for i in range(n * TASKS_PER_SCENARIO)], []
    return [(s, v) for s in scenarios for v in per[s]], []


@dataclass
class Collected:
    """Everything read and decided, before the stream is built."""

    opts: MSVQAOptions
    reader: _Reader
    tasks: dict[tuple[str, str], TaskData]
    order: list[tuple[str, str]]
    problems: list[DataProblem]
    notes: list[str]


def collect(opts: MSVQAOptions) -> Collected:
    """Read all sources, map scenarios, group tasks, decide scoring and the stream order (no raise)."""
    reader = _Reader(opts)
    train, test = reader.read("train"), reader.read("test")
    tasks = group_tasks(train, test)
    notes = list(reader.notes)
    problems: list[DataProblem] = []
    for task in tasks.values():
        task.grounding, task.reason, note = decide_grounding(task, opts)
        if note:
            notes.append(note)
        if task.grounding:
            problems += _box_references(task)
    if opts.grounding_tasks is not None:
        unknown = [v for v in opts.grounding_tasks if v not in {t.value for t in tasks.values()}]
        if unknown:
            problems.append(
                DataProblem(
                    opts.data_label(),
                    f"grounding_tasks names task value(s) not in the data: {', '.join(unknown)}",
                )
            )
    order, order_problems = stream_order(opts, tasks)
    problems += [DataProblem(opts.data_label(), p) for p in order_problems]
    for key in order:
        for split in ("train", "test"):
            if not getattr(tasks[key], split):
                problems.append(
                    DataProblem(opts.data_label(), f"task {tasks[key].name!r} has no {split} samples")
                )
    if reader.dropped:
        dropped = ", ".join(f"{v!r} ({n})" for v, n in reader.dropped.items())
        notes.append(f"rows dropped by scenario_aliases (value: null): {dropped}")
    file_problems = [p for pf in reader.files for p in pf.problems]
    all_problems = reader.problems + file_problems + reader.unmapped_problems() + problems
    return Collected(opts, reader, tasks, order, all_problems, notes)


def _make_task(data: TaskData, opts: MSVQAOptions) -> Task:
    files = {"train": sorted({r.pf.file for r in data.train}), "test": sorted({r.pf.file for r in data.test})}
    return Task(
        name=data.name,
        train=[r.sample for r in data.train],
        test=[r.sample for r in data.test],
        scorers=data.scorers,
        scenario=data.scenario,
        max_new_tokens=opts.grounding_max_new_tokens if data.grounding else opts.qa_max_new_tokens,
        description=f"MSVQA {data.scenario}, task {data.value!r}"
        + (" (grounding)" if data.grounding else ""),
        meta={
            "task_value": data.value,
            "grounding": data.grounding,
            "grounding_reason": data.reason,
            "train_files": files["train"],
            "test_files": files["test"],
        },
    )


def _image_problems(samples: Sequence[Sample], rows: Mapping[int, Row]) -> list[DataProblem]:
    """Missing or broken images of ``samples``, checked per source file."""
    by_file: dict[int, tuple[ParsedFile, list[Sample]]] = {}
    for s in samples:
        pf = rows[id(s)].pf
        by_file.setdefault(id(pf), (pf, []))[1].append(s)
    return [p for pf, kept in by_file.values() for p in pf.image_problems(kept)]


@BENCHMARKS.register(BENCHMARK_NAME)
def build(cfg: BenchmarkConfig) -> Benchmark:
    """Build the MSVQA stream; raises ConfigError for bad options, one DataError listing every data problem."""
    opts = parse_options(MSVQAOptions, cfg.options(), BENCHMARK_NAME)
    data = collect(opts)
    if data.problems:
        raise DataError(data.problems)
    tasks = apply_stream_options([_make_task(data.tasks[k], opts) for k in data.order], cfg, stream_seed(cfg))
    if opts.check_images:  # only the samples kept after the caps
        rows = {id(r.sample): r for t in data.tasks.values() for r in t.rows}
        problems = _image_problems([s for t in tasks for s in t.train + t.test], rows)
        if problems:
            raise DataError(problems)
    scope = opts.scenario if opts.steps == 5 else "4 scenarios" + (", interleaved" if opts.interleave else "")
    return Benchmark(
        name=BENCHMARK_NAME,
        tasks=tasks,
        description=opts.description
        or f"MSVQA multi-scenario VQA and grounding ({scope}, {opts.steps} steps)",
    )


# ---------------------------------------------------------------- validation report


@dataclass
class TaskCounts:
    """One (scenario, task value) in the validation report."""

    scenario: str
    value: str
    name: str
    step: int | None  # 1-based place in the protocol's stream (before order/tasks); None = not used
    train: int
    test: int
    boxes_train: int  # rows with at least one box in the boxes column
    boxes_test: int
    missing_images: int | None  # None = images not checked
    grounding: bool
    reason: str
    answers_from_boxes: int
    scorers: list[str]


@dataclass
class MSVQAValidation:
    """What :func:`validate_msvqa` found. ``ok`` when there is no problem; notes are warnings."""

    source: str
    protocol: str
    columns: list[tuple[str, str]]
    tasks: list[TaskCounts]
    unmapped: dict[str, int]  # raw scenario value -> rows
    problems: list[DataProblem]
    notes: list[str]
    images_checked: bool

    @property
    def ok(self) -> bool:
        return not self.problems

    def scenario_totals(self) -> dict[str, dict[str, int]]:
        """Per scenario: tasks, train, test, rows with boxes, missing images (summed over its tasks)."""
        out: dict[str, dict[str, int]] = {}
        for t in self.tasks:
            d = out.setdefault(
                t.scenario, dict.fromkeys(("tasks", "train", "test", "boxes", "missing_images"), 0)
            )
            d["tasks"] += 1
            d["train"] += t.train
            d["test"] += t.test
            d["boxes"] += t.boxes_train + t.boxes_test
            d["missing_images"] += t.missing_images or 0
        return out

    def render(self, max_problems: int = 200) -> str:
        """A plain-text report: columns used, per-task and per-scenario counts, unmapped values, problems."""
        lines = [f"MSVQA data check: {self.source} ({self.protocol})", "", "columns:"]
        lines += [f"  {label}: {desc}" for label, desc in self.columns] or ["  (no readable source)"]
        missing = "missing images" if self.images_checked else "missing images (not checked)"
        header = ["step", "scenario", "task", "train", "test", "boxes train/test", missing, "scoring"]
        body = [
            [
                str(t.step) if t.step is not None else "-",
                t.scenario,
                t.value,
                str(t.train),
                str(t.test),
                f"{t.boxes_train}/{t.boxes_test}",
                "-" if t.missing_images is None else str(t.missing_images),
                ("grounding" if t.grounding else "QA")
                + f" ({t.reason}): {', '.join(t.scorers)}"
                + (f"; {t.answers_from_boxes} answers from boxes" if t.answers_from_boxes else ""),
            ]
            for t in self.tasks
        ]
        lines += ["", *_text_table(header, body)]
        totals = self.scenario_totals()
        if totals:
            body = [
                [
                    s,
                    str(d["tasks"]),
                    str(d["train"]),
                    str(d["test"]),
                    str(d["boxes"]),
                    str(d["missing_images"]) if self.images_checked else "-",
                ]
                for s, d in totals.items()
            ]
            lines += ["", *_text_table(["scenario", "tasks", "train", "test", "with boxes", missing], body)]
        if self.unmapped:
            lines += [
                "",
                "unmapped scenario values (rows): "
                + ", ".join(f"{v!r} ({n})" for v, n in self.unmapped.items()),
            ]
        if self.notes:
            lines += ["", "notes:", *(f"  - {n}" for n in self.notes)]
        if self.problems:
            lines += ["", f"{len(self.problems)} problem(s):"]
            lines += [f"  - {p}" for p in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more")
        lines += ["", "OK: the data fits the protocol." if self.ok else "NOT OK: fix the problems above."]
        return "\n".join(lines) + "\n"


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [
        fmt.format(*header).rstrip(),
        fmt.format(*("-" * w for w in widths)),
        *(fmt.format(*r).rstrip() for r in rows),
    ]


def _options_of(cfg: BenchmarkConfig | Mapping[str, Any]) -> MSVQAOptions:
    if isinstance(cfg, BenchmarkConfig):
        return parse_options(MSVQAOptions, cfg.options(), BENCHMARK_NAME)
    return parse_options(MSVQAOptions, {k: v for k, v in cfg.items() if k != "name"}, BENCHMARK_NAME)


def validate_msvqa(cfg: BenchmarkConfig | Mapping[str, Any], check_images: bool = True) -> MSVQAValidation:
    """Check MSVQA data against the options without raising for data problems.

    ``cfg`` is the ``benchmark`` config section, or a plain dict of the ``msvqa`` options.
    Reads every row of both splits (the common ``order``/``tasks``/``*_per_task`` options are
    not applied) and, with ``check_images``, opens every image. Raises ConfigError for bad options.
    """
    opts = _options_of(cfg)
    data = collect(opts)
    problems = list(data.problems)
    bad: dict[tuple[str, int], str] = {}
    if check_images:
        for pf in data.reader.files:
            for p in pf.image_problems():
                problems.append(p)
                bad[(p.file, p.item)] = p.message  # type: ignore[index]
    step = {k: i + 1 for i, k in enumerate(data.order)}
    tasks = [
        TaskCounts(
            scenario=t.scenario,
            value=t.value,
            name=t.name,
            step=step.get(key),
            train=len(t.train),
            test=len(t.test),
            boxes_train=sum(bool(r.boxes) for r in t.train),
            boxes_test=sum(bool(r.boxes) for r in t.test),
            missing_images=sum((r.pf.file, r.loc) in bad for r in t.rows) if check_images else None,
            grounding=t.grounding,
            reason=t.reason,
            answers_from_boxes=t.answers_from_boxes,
            scorers=t.scorers,
        )
        for key, t in data.tasks.items()
    ]
    tasks.sort(key=lambda c: (c.step is None, c.step or 0))
    scope = opts.scenario if opts.steps == 5 else ", ".join(opts.scenario_order)
    protocol = f"steps {opts.steps}: {scope}" + (
        ", interleaved" if opts.steps == 20 and opts.interleave else ""
    )
    return MSVQAValidation(
        source=opts.data_label() if opts.path else f"train {opts.train}, test {opts.test}",
        protocol=protocol,
        columns=data.reader.columns,
        tasks=tasks,
        unmapped=data.reader.unmapped_counts(),
        problems=problems,
        notes=data.notes,
        images_checked=check_images,
    )


DATA_VALIDATORS.add(BENCHMARK_NAME, validate_msvqa)
