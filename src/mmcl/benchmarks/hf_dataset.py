"""``hf-dataset``: a stream of tasks read from ``save_to_disk`` directories (or JSON/JSONL tables).

Two ways to say where the tasks are:

* ``path``: one DatasetDict directory with ``train_split`` and ``test_split``. With a task column
  (``fields.task``) it holds several tasks (``task_names`` picks them and their order; default:
  first-seen order); without one it is a single task named ``task_name`` (default: the folder name).
* ``tasks_spec``: a list of tasks, each with ``path`` (a DatasetDict directory) or ``train`` and
  ``test`` (each a saved Dataset directory or a ``.json``/``.jsonl`` file).

Example::

    benchmark:
      name: hf-dataset
      path: /data/msvqa_hf
      fields: {question: query, answer: answers, id: qid, task: step, scenario: scene, boxes: bbox}
      task_scorers: {grounding-1: [box_f1]}
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmcl.benchmarks import BENCHMARKS
from mmcl.benchmarks.stream import (
    cap_task,
    check_scorer_names,
    parse_options,
    select_task_names,
    stream_seed,
)
from mmcl.config import BenchmarkConfig, ConfigError
from mmcl.data.errors import DataError, DataProblem
from mmcl.data.hf_dataset import FieldMap, parse_source
from mmcl.data.llava_json import ParsedFile
from mmcl.data.sample import Benchmark, Sample, Task


class HFTaskSpec(BaseModel):
    """One task: a DatasetDict ``path``, or ``train`` and ``test`` sources; scoring overrides."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str | None = None
    train: str | None = None
    test: str | None = None
    scorers: list[str] | None = Field(None, min_length=1)  # default: the benchmark's scorers
    max_new_tokens: int | None = Field(None, ge=1)
    scenario: str | None = None
    description: str = ""

    @model_validator(mode="after")
    def _one_source(self) -> HFTaskSpec:
        if (self.path is None) == (self.train is None or self.test is None) or (
            self.path is not None and (self.train or self.test)
        ):
            raise ValueError(f"task {self.name!r}: give either path (a DatasetDict) or both train and test")
        return self


class HFDatasetOptions(BaseModel):
    """The options of the ``hf-dataset`` benchmark."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    tasks_spec: list[HFTaskSpec] | None = None
    train_split: str = "train"
    test_split: str = "test"
    fields: FieldMap = Field(default_factory=FieldMap)
    image_folder: str | None = None  # base of path-string images (default: the dataset folder)
    task_names: list[str] | None = None  # with path + fields.task: tasks to use, in order
    task_name: str | None = None  # with path and no task column: the single task's name
    scorers: list[str] = Field(default_factory=lambda: ["exact_match"], min_length=1)
    task_scorers: dict[str, list[str]] = Field(default_factory=dict)
    max_new_tokens: int = Field(32, ge=1)
    check_images: bool = True
    description: str = ""

    @model_validator(mode="after")
    def _one_source(self) -> HFDatasetOptions:
        if (self.path is None) == (self.tasks_spec is None):
            raise ValueError("give either path (one DatasetDict directory) or tasks_spec (a list of tasks)")
        if self.tasks_spec is not None and not self.tasks_spec:
            raise ValueError("tasks_spec is empty")
        if self.path is not None and self.task_names is not None and self.fields.task is None:
            raise ValueError("task_names needs a task column: set fields.task")
        if self.path is not None and self.task_name is not None and self.fields.task is not None:
            raise ValueError("task_name is for a single-task dataset; with fields.task use task_names")
        if self.tasks_spec is not None:
            names = [t.name for t in self.tasks_spec]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"task name(s) repeated in tasks_spec: {', '.join(dup)}")
        return self


def _no_samples(pf: ParsedFile, task: str, samples: list[Sample]) -> list[DataProblem]:
    return [] if pf.problems or samples else [DataProblem(pf.file, f"task {task!r} has no samples")]


def _load_from_path(opts: HFDatasetOptions) -> tuple[ParsedFile, ParsedFile, list[str]]:
    """Read both splits of ``opts.path``: (train, test, task names in stream order)."""
    path = opts.path or ""
    kw = {"fields": opts.fields, "task": opts.task_name or Path(path).name, "image_folder": opts.image_folder}
    train = parse_source(path, opts.train_split, **kw)  # type: ignore[arg-type]
    test = parse_source(path, opts.test_split, **kw)  # type: ignore[arg-type]
    if train.problems or test.problems:
        raise DataError(train.problems + test.problems)
    found: list[str] = []
    for s in train.samples + test.samples:
        if s.task not in found:
            found.append(s.task)
    names = opts.task_names if opts.task_names is not None else found
    unknown = [n for n in names if n not in found]
    if unknown:
        raise DataError(
            DataProblem(
                path,
                f"task_names names task(s) not in column {opts.fields.task!r}: {', '.join(unknown)}; "
                f"tasks present: {', '.join(found)}",
            )
        )
    return train, test, names


def _check_task_scorers(opts: HFDatasetOptions, names: list[str]) -> None:
    unknown = [n for n in opts.task_scorers if n not in names]
    if unknown:
        raise ConfigError(
            f"benchmark 'hf-dataset': task_scorers names unknown task(s) {', '.join(unknown)}; "
            f"tasks: {', '.join(names)}"
        )


@BENCHMARKS.register("hf-dataset")
def build(cfg: BenchmarkConfig) -> Benchmark:
    """Build the stream from saved datasets: validate options, load, order/subset, cap, check images.

    Raises ConfigError for bad options and one DataError listing every data problem.
    """
    opts = parse_options(HFDatasetOptions, cfg.options(), "hf-dataset")
    check_scorer_names(opts.scorers, "benchmark 'hf-dataset', scorers")
    for name, scorers in opts.task_scorers.items():
        check_scorer_names(scorers, f"benchmark 'hf-dataset', task_scorers.{name}")
    for spec in opts.tasks_spec or []:
        check_scorer_names(spec.scorers or [], f"benchmark 'hf-dataset', task {spec.name!r}")
    problems: list[DataProblem] = []
    # per task: (name, train samples, test samples, train file, test file, its spec)
    loaded: list[tuple[str, list[Sample], list[Sample], ParsedFile, ParsedFile, HFTaskSpec | None]] = []
    if opts.tasks_spec is not None:
        specs = {s.name: s for s in opts.tasks_spec}
        _check_task_scorers(opts, list(specs))
        for name in select_task_names(list(specs), cfg):
            s = specs[name]
            kw = {
                "fields": opts.fields,
                "task": name,
                "scenario": s.scenario,
                "image_folder": opts.image_folder,
                "task_filter": name if opts.fields.task is not None else None,
            }
            if s.path is not None:
                train = parse_source(s.path, opts.train_split, **kw)  # type: ignore[arg-type]
                test = parse_source(s.path, opts.test_split, **kw)  # type: ignore[arg-type]
            else:
                train = parse_source(s.train, None, **kw)  # type: ignore[arg-type]
                test = parse_source(s.test, None, **kw)  # type: ignore[arg-type]
            for pf in (train, test):
                problems += pf.problems + _no_samples(pf, name, pf.samples)
            loaded.append((name, train.samples, test.samples, train, test, s))
    else:
        train, test, names = _load_from_path(opts)
        _check_task_scorers(opts, names)
        for name in select_task_names(names, cfg):
            tr = [s for s in train.samples if s.task == name]
            te = [s for s in test.samples if s.task == name]
            problems += _no_samples(train, name, tr) + _no_samples(test, name, te)
            loaded.append((name, tr, te, train, test, None))
    if problems:
        raise DataError(problems)

    seed = stream_seed(cfg)
    tasks: list[Task] = []
    for name, tr, te, train, test, spec in loaded:
        scorers = (spec.scorers if spec else None) or opts.task_scorers.get(name) or opts.scorers
        scenarios = {s.scenario for s in tr + te}
        task = Task(
            name=name,
            train=tr,
            test=te,
            scorers=list(scorers),
            scenario=(spec.scenario if spec else None) or (scenarios.pop() if len(scenarios) == 1 else None),
            max_new_tokens=(spec.max_new_tokens if spec else None) or opts.max_new_tokens,
            description=spec.description if spec else "",
            meta={"train_file": train.file, "test_file": test.file},
        )
        task = cap_task(task, cfg, seed)
        if opts.check_images:  # only the samples kept after the caps
            problems += train.image_problems(task.train) + test.image_problems(task.test)
        tasks.append(task)
    if problems:
        raise DataError(problems)
    return Benchmark(name=cfg.name, tasks=tasks, description=opts.description)
