"""``llava-json``: a stream of tasks read from LLaVA conversation JSON files (MCITlib, CoIN, MLLM-CL).

Either list each task's files in ``tasks_spec``, or point ``data_root`` at the MLLM-CL layout,
``<data_root>/<name>/{train.json,test.json,images/}`` (image paths relative to ``<data_root>/<name>``),
and name the tasks in order with ``task_names``. Example::

    benchmark:
      name: llava-json
      data_root: /data/MLLM-CL/domain
      task_names: [RS, Med, AD, Sci, Fin]
      task_scorers: {Fin: [exact_match]}
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
from mmcl.data.llava_json import ParsedFile, parse_llava_file
from mmcl.data.sample import Benchmark, Task


class LlavaTaskSpec(BaseModel):
    """One task: its train and test files and how it is scored."""

    model_config = ConfigDict(extra="forbid")

    name: str
    train: str
    test: str
    image_folder: str | None = None  # default: each file's own folder
    scorers: list[str] = Field(default_factory=lambda: ["exact_match"], min_length=1)
    max_new_tokens: int = Field(32, ge=1)
    scenario: str | None = None
    description: str = ""


class LlavaJsonOptions(BaseModel):
    """The options of the ``llava-json`` benchmark (``tasks_spec``, or ``data_root`` + ``task_names``)."""

    model_config = ConfigDict(extra="forbid")

    tasks_spec: list[LlavaTaskSpec] | None = None
    data_root: str | None = None
    task_names: list[str] | None = None
    scorers: list[str] = Field(default_factory=lambda: ["exact_match"], min_length=1)  # data_root default
    task_scorers: dict[str, list[str]] = Field(default_factory=dict)  # data_root: per-task scorers
    max_new_tokens: int = Field(32, ge=1)  # data_root default
    check_images: bool = True
    description: str = ""

    @model_validator(mode="after")
    def _one_source(self) -> LlavaJsonOptions:
        if (self.tasks_spec is None) == (self.data_root is None):
            raise ValueError(
                "give either tasks_spec (a list of tasks) or data_root + task_names, not both or neither"
            )
        if self.tasks_spec is not None:
            if not self.tasks_spec:
                raise ValueError("tasks_spec is empty")
            if self.task_names is not None or self.task_scorers:
                raise ValueError(
                    "task_names and task_scorers go with data_root; with tasks_spec set them per task"
                )
            names = [t.name for t in self.tasks_spec]
        else:
            names = self.task_names or []
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"task name(s) repeated: {', '.join(dup)}")
        unknown = [n for n in self.task_scorers if n not in names]
        if unknown and names:
            raise ValueError(
                f"task_scorers names unknown task(s) {', '.join(unknown)}; tasks: {', '.join(names)}"
            )
        return self


def _find_split_file(folder: Path, stem: str) -> Path:
    for ext in (".json", ".jsonl"):
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    return folder / f"{stem}.json"  # missing: the loader reports it


def _specs_from_root(opts: LlavaJsonOptions) -> list[LlavaTaskSpec]:
    root = Path(opts.data_root)  # type: ignore[arg-type]
    if not root.is_dir():
        raise DataError(DataProblem(str(root), "data_root is not a directory"))
    if not opts.task_names:
        found = sorted(
            p.name for p in root.iterdir() if p.is_dir() and _find_split_file(p, "train").is_file()
        )
        raise ConfigError(
            "benchmark 'llava-json': data_root needs task_names, the tasks in training order; "
            f"task folders found in {root}: {', '.join(found) or '(none)'}"
        )
    return [
        LlavaTaskSpec(
            name=name,
            train=str(_find_split_file(root / name, "train")),
            test=str(_find_split_file(root / name, "test")),
            image_folder=str(root / name),
            scorers=opts.task_scorers.get(name, opts.scorers),
            max_new_tokens=opts.max_new_tokens,
        )
        for name in opts.task_names
    ]


def parse_task_files(
    name: str,
    train_file: str | Path,
    train_images: str | Path | None,
    test_file: str | Path,
    test_images: str | Path | None,
    scenario: str | None = None,
) -> tuple[ParsedFile, ParsedFile, list[DataProblem]]:
    """Parse one task's train and test files; the problems found, plus "no samples" for an empty file."""
    train = parse_llava_file(train_file, train_images, task=name, scenario=scenario, kind="train")
    test = parse_llava_file(test_file, test_images, task=name, scenario=scenario, kind="test")
    problems: list[DataProblem] = []
    for pf in (train, test):
        problems += pf.problems
        if not pf.problems and not pf.samples:
            problems.append(DataProblem(pf.file, f"task {name!r} has no samples"))
    return train, test, problems


@BENCHMARKS.register("llava-json")
def build(cfg: BenchmarkConfig) -> Benchmark:
    """Build the stream: validate options, pick tasks (order/subset), load and check files, cap samples.

    Raises ConfigError for bad options and one DataError listing every data problem of every task.
    """
    opts = parse_options(LlavaJsonOptions, cfg.options(), "llava-json")
    specs = opts.tasks_spec if opts.tasks_spec is not None else _specs_from_root(opts)
    for s in specs:
        check_scorer_names(s.scorers, f"benchmark 'llava-json', task {s.name!r}")
    by_name = {s.name: s for s in specs}
    names = select_task_names([s.name for s in specs], cfg)

    parsed: list[tuple[LlavaTaskSpec, ParsedFile, ParsedFile]] = []
    problems: list[DataProblem] = []
    for name in names:
        s = by_name[name]
        train, test, found = parse_task_files(name, s.train, s.image_folder, s.test, s.image_folder, s.scenario)
        problems += found
        parsed.append((s, train, test))
    if problems:
        raise DataError(problems)

    seed = stream_seed(cfg)
    tasks: list[Task] = []
    for s, train, test in parsed:
        task = Task(
            name=s.name,
            train=train.samples,
            test=test.samples,
            scorers=list(s.scorers),
            scenario=s.scenario,
            max_new_tokens=s.max_new_tokens,
            description=s.description,
            meta={"train_file": train.file, "test_file": test.file},
        )
        task = cap_task(task, cfg, seed)
        if opts.check_images:  # only the samples kept after the caps
            problems += train.image_problems(task.train) + test.image_problems(task.test)
        tasks.append(task)
    if problems:
        raise DataError(problems)
    return Benchmark(name=cfg.name, tasks=tasks, description=opts.description)
