"""``mllm-cl``: the MLLM-CL benchmark (Zhao et al. 2025) from its released files.

Two settings, each a stream of tasks read from LLaVA JSON files (parsed by
:mod:`mmcl.data.llava_json`):

- ``setting: dcl`` (domain continual learning, IID): RS, Med, AD, Sci, Fin, from
  ``<data_root>/<Task>/{train.json,test.json,images/}``.
- ``setting: acl`` (ability continual learning, non-IID): OCR, Math, VP, GUI, from
  ``<data_root>/<Folder>/{train.json,images/}`` and ``<data_root>/<Folder>_test/{test.json,images/}``
  with folders OCR, Math, VP and APP (the GUI task).

Image paths in a file are relative to that file's folder. Each task is scored by default with
the official rule (:mod:`mmcl.benchmarks.mllm_cl.scorers`); Math (MathVista, GPT judge) and GUI
(MMT-Bench, eval.ai server) have no rule-based official scorer and default to
``exact_match`` + ``contains``. Example::

    benchmark:
      name: mllm-cl
      data_root: /data/MLLM-CL/domain
      setting: dcl
      task_scorers: {Fin: [mllmcl_fin, exact_match]}
      test_per_task: 500

:func:`load_replay_file` reads the router/replay JSON files of ``MLLM-CL/MLLM-CL-ReplayData``
(``router_{DCL,ACL}/task{k}.json``, ``replay_{DCL,ACL}/task{k}.json``). See docs/mllm-cl.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmcl.benchmarks import BENCHMARKS
from mmcl.benchmarks.llava_json import parse_task_files
from mmcl.benchmarks.stream import cap_task, check_scorer_names, parse_options, select_task_names, stream_seed
from mmcl.config import BenchmarkConfig
from mmcl.data.errors import DataError, DataProblem
from mmcl.data.llava_json import ParsedFile, parse_llava_file
from mmcl.data.sample import Benchmark, Sample, Task

Setting = Literal["dcl", "acl"]

DEFAULT_MAX_NEW_TOKENS = 128
"""LLaVA's ``model_vqa.py`` default; the official per-task value is not known (see docs/mllm-cl.md)."""


@dataclass(frozen=True)
class MllmClTask:
    """The defaults of one MLLM-CL task."""

    name: str
    train_folder: str
    test_folder: str
    scorers: tuple[str, ...]
    official_eval: str  # the official scoring script (or how the paper scores it)
    router_letter: str  # the expert's letter in the official router prompt
    description: str  # the expert's description in the official router prompt


# Descriptions: the "Model Pool" entries of the official router prompts, verbatim
# (ETrain/Eval/LLaVA/CoIN/model_agents_select_lora.py and model_agents_select_lora_ability.py).
DCL_TASKS: tuple[MllmClTask, ...] = (
    MllmClTask(
        "RS", "RS", "RS", ("mllmcl_ai2d",), "eval_ai2d.py", "E",
        "A remote sensing expert, adept at analyzing aerial or satellite images. "
        "This model excels at object counting, presence detection, and area estimation.",
    ),
    MllmClTask(
        "Med", "Med", "Med", ("mllmcl_pvqa",), "eval_pvqa.py", "C",
        "A medical imaging expert, primarily focused on pathology, including cell sections "
        "and natural images of medical conditions.",
    ),
    MllmClTask(
        "AD", "AD", "AD", ("mllmcl_ai2d",), "eval_ai2d.py", "D",
        "An autonomous driving expert specializing in ego-view scene understanding, including "
        "coordinate prediction and action planning and other driving-related tasks. "
        "The input image is an image concatenated by 6 camera views.",
    ),
    MllmClTask(
        "Sci", "Sci", "Sci", ("mllmcl_sci",), "eval_sci.py", "B",
        "A science expert with proficiency in biology, map interpretation, physics, and chemistry.",
    ),
    MllmClTask(
        "Fin", "Fin", "Fin", ("mllmcl_fin",), "eval_finvis.py", "A",
        "A financial expert specializing in stock market analysis using candlestick charts. "
        "This model excels at trend prediction and technical indicator analysis.",
    ),
)  # fmt: skip

ACL_TASKS: tuple[MllmClTask, ...] = (
    MllmClTask(
        "OCR", "OCR", "OCR_test", ("mllmcl_ocr",), "eval_ocr.py", "A",
        "This model excels in OCR tasks, including text extraction, handwriting recognition, "
        "and document analysis.",
    ),
    MllmClTask(
        "Math", "Math", "Math_test", ("exact_match", "contains"),
        "eval_math.py (GPT-4o-mini answer extraction; not reproduced)", "C",
        "This model is an expert in math and logic, including solving equations, geometry, and "
        "logical reasoning. It is capable of on puzzle test figures, algebraic reasoning over "
        "functional plots, and scientific reasoning with academic paper figures.",
    ),
    MllmClTask(
        "VP", "VP", "VP_test", ("mllmcl_cvbench",), "eval_sat.py", "B",
        "This model excels in counting the number of objects in the image. "
        "However, it struggles to exact text in an image.",
    ),
    MllmClTask(
        "GUI", "APP", "APP_test", ("exact_match", "contains"),
        "eval.ai server, MMT-Bench challenge 2328 (not reproduced)", "D",
        "This model is an expert in GUI navigation, including identifying buttons, text fields, "
        "and other UI elements from screen shots. It is capable of giving coordinates of the "
        "elements in the image and conduct action on the elements.",
    ),
)  # fmt: skip

SETTINGS: dict[str, tuple[MllmClTask, ...]] = {"dcl": DCL_TASKS, "acl": ACL_TASKS}

ROUTER_LETTERS: dict[str, dict[str, str]] = {
    setting: {t.router_letter: t.name for t in tasks} for setting, tasks in SETTINGS.items()
}
"""Router letter -> task name per setting (DCL: A=Fin, B=Sci, C=Med, D=AD, E=RS; ACL: A=OCR, B=VP, C=Math, D=GUI)."""


class FolderSpec(BaseModel):
    """A task's train and test folders (relative to ``data_root``, or absolute)."""

    model_config = ConfigDict(extra="forbid")

    train: str
    test: str


class MllmClOptions(BaseModel):
    """The options of the ``mllm-cl`` benchmark."""

    model_config = ConfigDict(extra="forbid")

    data_root: str
    setting: Setting = "dcl"
    folders: dict[str, str | FolderSpec] = Field(default_factory=dict)  # task -> folder or {train, test}
    task_scorers: dict[str, list[str]] = Field(default_factory=dict)  # task -> scorers (overrides defaults)
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1)
    task_max_new_tokens: dict[str, int] = Field(default_factory=dict)
    check_images: bool = True
    description: str = ""

    @field_validator("setting", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _known_tasks(self) -> MllmClOptions:
        names = [t.name for t in SETTINGS[self.setting]]
        for option in ("folders", "task_scorers", "task_max_new_tokens"):
            unknown = [k for k in getattr(self, option) if k not in names]
            if unknown:
                raise ValueError(
                    f"{option} names unknown task(s) {', '.join(unknown)}; "
                    f"tasks of setting {self.setting!r}: {', '.join(names)}"
                )
        for name, scorers in self.task_scorers.items():
            if not scorers:
                raise ValueError(f"task_scorers[{name!r}] is empty; give at least one scorer")
        for name, n in self.task_max_new_tokens.items():
            if n < 1:
                raise ValueError(f"task_max_new_tokens[{name!r}] must be >= 1, got {n}")
        return self


@dataclass
class _Resolved:
    spec: MllmClTask
    train_dir: Path
    test_dir: Path
    scorers: list[str]
    max_new_tokens: int


def _split_file(folder: Path, stem: str) -> Path:
    for ext in (".json", ".jsonl"):
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    return folder / f"{stem}.json"  # missing: the loader reports it


def _resolve(opts: MllmClOptions, root: Path) -> list[_Resolved]:
    out = []
    for spec in SETTINGS[opts.setting]:
        folder = opts.folders.get(spec.name)
        if isinstance(folder, str):
            train, test = folder, folder
        elif isinstance(folder, FolderSpec):
            train, test = folder.train, folder.test
        else:
            train, test = spec.train_folder, spec.test_folder
        out.append(
            _Resolved(
                spec,
                root / train,
                root / test,
                list(opts.task_scorers.get(spec.name, spec.scorers)),
                opts.task_max_new_tokens.get(spec.name, opts.max_new_tokens),
            )
        )
    return out


def _with_image_file(samples: list[Sample]) -> None:
    """Record each sample's image file name in ``meta['image_file']`` (the Sci rule reads it)."""
    for s in samples:
        if isinstance(s.image, str):
            s.meta.setdefault("image_file", Path(s.image).name)


def _missing_folder(root: Path, folder: Path, task: str) -> DataProblem:
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    return DataProblem(
        str(folder),
        f"folder of task {task!r} not found; folders in {root}: {', '.join(found) or '(none)'}; "
        "map task names to folders with the 'folders' option",
    )


@BENCHMARKS.register("mllm-cl")
def build(cfg: BenchmarkConfig) -> Benchmark:
    """Build the MLLM-CL stream: validate options, pick tasks (order/subset), load files, cap samples.

    Raises ConfigError for bad options and one DataError listing every data problem of every
    selected task (file, item and field).
    """
    opts = parse_options(MllmClOptions, cfg.options(), "mllm-cl")
    resolved = {r.spec.name: r for r in _resolve(opts, Path(opts.data_root))}
    for r in resolved.values():
        check_scorer_names(r.scorers, f"benchmark 'mllm-cl', task {r.spec.name!r}")
    names = select_task_names(list(resolved), cfg)
    root = Path(opts.data_root)
    if not root.is_dir():
        raise DataError(DataProblem(str(root), "data_root is not a directory"))

    problems: list[DataProblem] = []
    parsed: list[tuple[_Resolved, ParsedFile, ParsedFile]] = []
    for name in names:
        r = resolved[name]
        missing = [d for d in dict.fromkeys((r.train_dir, r.test_dir)) if not d.is_dir()]
        if missing:
            problems += [_missing_folder(root, d, name) for d in missing]
            continue
        train, test, found = parse_task_files(
            name, _split_file(r.train_dir, "train"), r.train_dir, _split_file(r.test_dir, "test"), r.test_dir
        )
        problems += found
        parsed.append((r, train, test))
    if problems:
        raise DataError(problems)

    seed = stream_seed(cfg)
    tasks: list[Task] = []
    for r, train, test in parsed:
        task = Task(
            name=r.spec.name,
            train=train.samples,
            test=test.samples,
            scorers=r.scorers,
            max_new_tokens=r.max_new_tokens,
            description=r.spec.description,
            meta={
                "setting": opts.setting,
                "router_letter": r.spec.router_letter,
                "official_eval": r.spec.official_eval,
                "train_file": train.file,
                "test_file": test.file,
            },
        )
        task = cap_task(task, cfg, seed)
        if opts.check_images:  # only the samples kept after the caps
            problems += train.image_problems(task.train) + test.image_problems(task.test)
        _with_image_file(task.train)
        _with_image_file(task.test)
        tasks.append(task)
    if problems:
        raise DataError(problems)
    description = opts.description or f"MLLM-CL {opts.setting.upper()} ({', '.join(t.name for t in tasks)})"
    return Benchmark(name=cfg.name, tasks=tasks, description=description)


# ---------------------------------------------------------------------------
# router / replay files of MLLM-CL/MLLM-CL-ReplayData
# ---------------------------------------------------------------------------

ReplayKind = Literal["router", "replay"]


def replay_file_path(replay_root: str | Path, kind: ReplayKind, setting: Setting, stage: int) -> Path:
    """``<replay_root>/{kind}_{DCL|ACL}/task{stage}.json``, the ReplayData layout (stage is 1-based)."""
    if kind not in ("router", "replay"):
        raise ValueError(f"kind must be 'router' or 'replay', got {kind!r}")
    setting_l = setting.lower()
    if setting_l not in SETTINGS:
        raise ValueError(f"setting must be 'dcl' or 'acl', got {setting!r}")
    n = len(SETTINGS[setting_l])
    if not 1 <= stage <= n:
        raise ValueError(f"stage must be in 1..{n} for setting {setting_l!r}, got {stage}")
    return Path(replay_root) / f"{kind}_{setting_l.upper()}" / f"task{stage}.json"


def load_replay_file(
    path: str | Path,
    data_root: str | Path,
    setting: Setting | None = None,
    folders: dict[str, str] | None = None,
    check_images: bool = True,
) -> list[Sample]:
    """Load a router or replay file of ``MLLM-CL-ReplayData`` as Samples (``[]`` for an empty file).

    The items are LLaVA train items whose image paths are relative to the released domain (or
    ability) root, e.g. ``Med/images/image_15610.jpg``; they are resolved against ``data_root``.
    Each sample's ``task`` is the first folder of its image path, turned into a task name with
    ``folders`` (folder -> task) or, when ``setting`` is given, with that setting's default
    folders (e.g. ``APP`` -> ``GUI``); ``meta['image_file']`` is the image file name. A router
    item's answer is the expert letter (see :data:`ROUTER_LETTERS`).

    Raises one DataError naming the file, item and field of every problem (missing or broken
    images included when ``check_images``).
    """
    to_task: dict[str, str] = {}
    if setting is not None:
        if setting.lower() not in SETTINGS:
            raise ValueError(f"setting must be 'dcl' or 'acl', got {setting!r}")
        for spec in SETTINGS[setting.lower()]:
            to_task[spec.train_folder] = spec.name
            to_task[spec.test_folder] = spec.name
    to_task.update(folders or {})
    pf = parse_llava_file(path, Path(data_root), kind="train")
    problems = list(pf.problems)
    if check_images:
        problems += pf.image_problems()
    if problems:
        raise DataError(problems)
    out = []
    for s in pf.samples:
        meta = dict(s.meta)
        task = ""
        if isinstance(s.image, str):
            rel = Path(s.image).relative_to(data_root) if Path(s.image).is_relative_to(data_root) else None
            first = rel.parts[0] if rel is not None and len(rel.parts) > 1 else ""
            task = to_task.get(first, first)
            meta.setdefault("image_file", Path(s.image).name)
        out.append(dataclasses.replace(s, task=task, meta=meta))
    return out
