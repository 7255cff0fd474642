"""Loaders for Hugging Face ``datasets`` directories and flat JSON/JSONL tables.

A directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` is read with
``datasets.load_from_disk`` (never the hub). Column names are configurable with a
:class:`FieldMap`, so a dataset whose layout is not known in advance (e.g. the released
MSVQA) can be loaded from either a saved dataset or a JSON/JSONL export of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from pydantic import BaseModel, ConfigDict

from mmcl.data.errors import DataProblem
from mmcl.data.llava_json import ParsedFile, read_answers, read_json_records, resolve_image
from mmcl.data.sample import Sample


class FieldMap(BaseModel):
    """Which column holds what. ``None`` means the column is absent.

    ``image``: a ``datasets.Image`` column (decoded lazily to PIL) or a path string relative to
    the loader's ``image_folder``; None = text-only data. ``answer``: a string or a list of
    strings. ``id``: None = use the row index. ``boxes`` goes to ``Sample.meta["boxes"]``.
    ``task``: a column naming each row's task, so one dataset can hold several tasks.
    """

    model_config = ConfigDict(extra="forbid")

    image: str | None = "image"
    question: str = "question"
    answer: str = "answer"
    id: str | None = "question_id"
    boxes: str | None = None
    scenario: str | None = None
    task: str | None = None

    def columns(self) -> list[str]:
        """Every column this map needs, in a fixed order."""
        names = [self.image, self.question, self.answer, self.id, self.boxes, self.scenario, self.task]
        return [n for n in names if n is not None]


@dataclass
class _DatasetImage:
    """Lazily decodes row ``index`` of an image column (picklable, unlike a lambda)."""

    dataset: Any
    column: str
    index: int

    def __call__(self) -> PILImage.Image:
        return self.dataset[self.index][self.column]


@dataclass
class _DatasetImageBytes:
    """The encoded bytes (or the path) of one row's image, for checking without decoding."""

    dataset: Any
    column: str
    index: int

    def __call__(self) -> bytes | str | None:
        value = self.dataset[self.index][self.column]
        if value is None:
            return None
        return value.get("bytes") or value.get("path")


def _read_question(pf: ParsedFile, row: int, column: str, value: Any) -> str | None:
    """The question text, or None after recording a problem."""
    if not isinstance(value, str):
        pf.problem(f"must be a string, got {type(value).__name__} {value!r}", row, column)
        return None
    if not value.strip():
        pf.problem("empty question", row, column)
        return None
    return value.strip()


def _rows_to_samples(
    pf: ParsedFile,
    rows: list[tuple[int, dict[str, Any]]],
    fields: FieldMap,
    task: str,
    scenario: str | None,
    task_filter: str | None,
    image_for: Callable[[int, Any], tuple[Any, Any] | None],
) -> None:
    """Turn rows into samples. ``image_for(loc, cell)`` gives (Sample.image, check source), or None
    after recording a problem."""
    known = set(fields.columns())
    seen: dict[str, int] = {}
    tasks_seen: list[str] = []
    for loc, row in rows:
        n_before = len(pf.problems)
        row_task = task
        if fields.task is not None:
            value = row.get(fields.task)
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)  # a numbered step column ("step": 3) names task "3"
            if not isinstance(value, str) or not value.strip():
                pf.problem(f"must be a non-empty string or integer naming the task, got {value!r}", loc, fields.task)
                continue
            row_task = value.strip()
            if row_task not in tasks_seen:
                tasks_seen.append(row_task)
            if task_filter is not None and row_task != task_filter:
                continue
        question = _read_question(pf, loc, fields.question, row.get(fields.question))
        answers, err = read_answers(row.get(fields.answer))
        if err:
            pf.problem(err, loc, fields.answer)
        sid = str(loc)
        if fields.id is not None:
            raw = row.get(fields.id)
            if isinstance(raw, bool) or not isinstance(raw, (str, int)) or not str(raw).strip():
                pf.problem(f"must be a non-empty string or an integer, got {raw!r}", loc, fields.id)
            else:
                sid = str(raw)
        key = f"{row_task}\x00{sid}"
        if key in seen:
            where = "line" if pf.by_line else "item"
            pf.problem(f"duplicate id {sid!r} (first at {where} {seen[key]})", loc, fields.id or "id")
        else:
            seen[key] = loc
        row_scenario = scenario
        if fields.scenario is not None:
            value = row.get(fields.scenario)
            if value is not None and not isinstance(value, str):
                pf.problem(f"must be a string, got {value!r}", loc, fields.scenario)
            row_scenario = value or scenario
        image = (None, None)
        if fields.image is not None:
            got = image_for(loc, row.get(fields.image))
            if got is None:
                continue
            image = got
        if len(pf.problems) > n_before:
            if image[1] is not None:
                pf.rejected_images.append((loc, image[1]))
            continue
        meta = {k: v for k, v in row.items() if k not in known}
        if fields.boxes is not None:
            meta["boxes"] = row.get(fields.boxes)
        sample = Sample(
            id=sid,
            question=question,  # type: ignore[arg-type]
            answers=answers,  # type: ignore[arg-type]
            image=image[0],
            task=row_task,
            scenario=row_scenario,
            meta=meta,
        )
        pf.add(sample, loc, image[1])
    if task_filter is not None and not pf.samples and not pf.problems and tasks_seen:
        pf.problem(
            f"no rows of task {task_filter!r} in column {fields.task!r}; tasks present: {', '.join(tasks_seen)}"
        )


def _path_image(pf: ParsedFile, base: Path, column: str) -> Callable[[int, Any], tuple[Any, Any] | None]:
    def image_for(loc: int, value: Any) -> tuple[Any, Any] | None:
        if value is None:
            return None, None
        if not isinstance(value, str) or not value.strip():
            pf.problem(f"must be an image path (a string) or null, got {value!r}", loc, column)
            return None
        path = resolve_image(value, base)
        return str(path), path

    return image_for


def _missing_columns(pf: ParsedFile, present: list[str], fields: FieldMap) -> bool:
    missing = [c for c in fields.columns() if c not in present]
    if missing:
        pf.problem(
            f"missing column(s) {', '.join(repr(c) for c in missing)}; present columns: {', '.join(present)} "
            "(map names with FieldMap)"
        )
    return bool(missing)


def _saved_splits(path: Path) -> list[str] | None:
    """The split names of a saved DatasetDict, or None when ``path`` is not one."""
    try:
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [str(s) for s in splits] if isinstance(splits, list) else None


def _load_one(path: Path) -> tuple[Any, str | None]:
    """Load a saved (single) Dataset directory: (dataset, None) or (None, what is wrong)."""
    import datasets

    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        return None, f"unreadable state.json: {e}"
    if isinstance(state, dict) and state.get("_data_files") == []:
        # save_to_disk writes no data file for 0 rows, and load_from_disk then fails
        return None, "task has no samples (the saved dataset has 0 rows)"
    try:
        return datasets.load_from_disk(str(path)), None
    except Exception as e:
        return None, f"cannot load the saved dataset: {type(e).__name__}: {e}"


def open_saved_dataset(path: str | Path, split: str | None) -> tuple[Any, str, list[DataProblem]]:
    """Open one split of a saved Dataset/DatasetDict: (dataset or None, label for messages, problems).

    Only the chosen split of a DatasetDict is loaded.
    """
    path = Path(path)
    label = f"{path} (split {split!r})" if split else str(path)

    def fail(message: str) -> tuple[Any, str, list[DataProblem]]:
        return None, label, [DataProblem(str(path), message)]

    if not path.exists():
        return fail("dataset directory not found")
    if not path.is_dir():
        json_hint = path.suffix.lower() in (".json", ".jsonl")
        return fail(
            "is a file, not a saved dataset directory"
            + (" (a JSON/JSONL table: use load_table_file)" if json_hint else "")
        )
    splits = _saved_splits(path)
    if splits is not None:
        if split is None:
            if len(splits) != 1:
                return fail(f"holds several splits ({', '.join(splits)}); choose one with split=")
            split = splits[0]
            label = f"{path} (split {split!r})"
        if split not in splits:
            return fail(f"has no split {split!r}; available splits: {', '.join(splits)}")
        ds, err = _load_one(path / split)
        return (None, label, [DataProblem(label, err)]) if err else (ds, label, [])
    if not (path / "state.json").is_file():
        return fail(
            "is not a dataset saved with Dataset.save_to_disk or DatasetDict.save_to_disk "
            "(no dataset_dict.json or state.json inside)"
        )
    if split is not None:
        return fail(
            f"is a single Dataset without splits, so split {split!r} cannot be chosen; "
            "pass split=None or save a DatasetDict"
        )
    ds, err = _load_one(path)
    return (None, label, [DataProblem(label, err)]) if err else (ds, label, [])


def parse_hf_dataset(
    path: str | Path,
    split: str | None = None,
    fields: FieldMap | None = None,
    task: str = "",
    scenario: str | None = None,
    image_folder: str | Path | None = None,
    task_filter: str | None = None,
) -> ParsedFile:
    """Parse one split of a saved dataset into a :class:`ParsedFile`, collecting problems (no raise).

    ``split=None`` takes a plain Dataset, or a DatasetDict with a single split. Path-string images
    resolve against ``image_folder`` (default: the dataset directory). With ``fields.task`` set,
    each sample's task comes from that column and ``task_filter`` keeps one task's rows.
    """
    import datasets

    fields = fields or FieldMap()
    ds, label, problems = open_saved_dataset(path, split)
    pf = ParsedFile(label, problems=problems)
    if ds is None or _missing_columns(pf, list(ds.column_names), fields):
        return pf
    if task_filter is not None and fields.task is None:
        pf.problem("task_filter needs a task column (FieldMap.task)")
        return pf

    # Image columns are not decoded while reading rows; images load lazily per sample.
    image_cols = [c for c, f in ds.features.items() if isinstance(f, datasets.Image)]
    plain = ds.remove_columns(image_cols) if image_cols else ds
    image_for: Callable[[int, Any], tuple[Any, Any] | None]
    if fields.image is not None and fields.image in image_cols:
        raw = ds.select_columns([fields.image]).cast_column(fields.image, datasets.Image(decode=False))
        is_null = raw.with_format("arrow")[:][fields.image].is_null().to_pylist()

        def image_for(loc: int, _value: Any) -> tuple[Any, Any] | None:
            if is_null[loc]:
                return None, None
            return _DatasetImage(ds, fields.image, loc), _DatasetImageBytes(raw, fields.image, loc)  # type: ignore[arg-type]

    else:
        base = Path(image_folder) if image_folder is not None else Path(path)
        image_for = _path_image(pf, base, fields.image or "image")
    rows = list(enumerate(plain))
    _rows_to_samples(pf, rows, fields, task, scenario, task_filter, image_for)
    return pf


def load_hf_dataset(
    path: str | Path,
    split: str | None = None,
    fields: FieldMap | None = None,
    task: str = "",
    scenario: str | None = None,
    image_folder: str | Path | None = None,
    task_filter: str | None = None,
    check_images: bool = True,
) -> list[Sample]:
    """Load one split of a ``save_to_disk`` directory as Samples; raise one DataError listing every problem."""
    pf = parse_hf_dataset(path, split, fields, task, scenario, image_folder, task_filter)
    return pf.result(check_images)


def parse_table_file(
    path: str | Path,
    fields: FieldMap | None = None,
    task: str = "",
    scenario: str | None = None,
    image_folder: str | Path | None = None,
    task_filter: str | None = None,
) -> ParsedFile:
    """Parse a JSON array / JSONL file of flat rows named by ``fields`` (no raise).

    Images are path strings (null = text-only) relative to ``image_folder`` (default: the file's folder).
    """
    fields = fields or FieldMap()
    raw = read_json_records(path)
    pf = ParsedFile(raw.file, problems=list(raw.problems), by_line=raw.by_line)
    if task_filter is not None and fields.task is None:
        pf.problem("task_filter needs a task column (FieldMap.task)")
        return pf
    rows: list[tuple[int, dict[str, Any]]] = []
    for loc, obj in raw.records:
        if not isinstance(obj, dict):
            pf.problem(f"each item must be a JSON object, got {type(obj).__name__}", loc)
            continue
        missing = [c for c in fields.columns() if c not in obj]
        for c in missing:
            pf.problem(
                "missing required field" + (" (use null for text-only rows)" if c == fields.image else ""),
                loc,
                c,
            )
        if not missing:
            rows.append((loc, obj))
    base = Path(image_folder) if image_folder is not None else Path(path).parent
    _rows_to_samples(
        pf, rows, fields, task, scenario, task_filter, _path_image(pf, base, fields.image or "image")
    )
    return pf


def load_table_file(
    path: str | Path,
    fields: FieldMap | None = None,
    task: str = "",
    scenario: str | None = None,
    image_folder: str | Path | None = None,
    task_filter: str | None = None,
    check_images: bool = True,
) -> list[Sample]:
    """Load a JSON/JSONL table with the same :class:`FieldMap` as :func:`load_hf_dataset`."""
    return parse_table_file(path, fields, task, scenario, image_folder, task_filter).result(check_images)


def parse_source(
    path: str | Path,
    split: str | None = None,
    fields: FieldMap | None = None,
    task: str = "",
    scenario: str | None = None,
    image_folder: str | Path | None = None,
    task_filter: str | None = None,
) -> ParsedFile:
    """A ``.json``/``.jsonl`` file goes to :func:`parse_table_file`, anything else to :func:`parse_hf_dataset`."""
    if Path(path).suffix.lower() in (".json", ".jsonl"):
        pf = parse_table_file(path, fields, task, scenario, image_folder, task_filter)
        if split is not None:
            pf.problem(f"a JSON/JSONL file has no splits, so split {split!r} cannot be chosen")
        return pf
    return parse_hf_dataset(path, split, fields, task, scenario, image_folder, task_filter)


__all__ = [
    "FieldMap",
    "load_hf_dataset",
    "load_table_file",
    "open_saved_dataset",
    "parse_hf_dataset",
    "parse_source",
    "parse_table_file",
]
