"""Hugging Face ``save_to_disk`` / JSON table loaders and the ``hf-dataset`` benchmark."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import datasets
import pytest
from PIL import Image

import mmcl.benchmarks.hf_dataset  # noqa: F401  (registers "hf-dataset")
from mmcl.benchmarks import BENCHMARKS
from mmcl.config import BenchmarkConfig
from mmcl.data.errors import DataError
from mmcl.data.hf_dataset import FieldMap, load_hf_dataset, load_table_file

datasets.disable_progress_bars()

COLORS = ["red", "green", "blue", "yellow"]


def rows(n: int, prefix: str = "q", task: str | None = None, scenario: str = "underwater") -> dict[str, list]:
    """Columns of a small MSVQA-like split: one colored square per row."""
    data: dict[str, list] = {
        "image": [Image.new("RGB", (8, 8), COLORS[i % 4]) for i in range(n)],
        "question": [f"What color is square {i}?" for i in range(n)],
        "answer": [[COLORS[i % 4], f"{COLORS[i % 4]} square"] if i % 2 else COLORS[i % 4] for i in range(n)],
        "question_id": [f"{prefix}{i}" for i in range(n)],
        "bbox": [[0.0, 0.0, 1.0, 1.0]] * n,
        "scene": [scenario] * n,
        "difficulty": ["easy"] * n,
    }
    if task is not None:
        data["step"] = [task] * n
    return data


def make(data: dict[str, list]) -> datasets.Dataset:
    # answers mix strings and lists, as real exports do; store them as lists of strings
    data = {**data, "answer": [a if isinstance(a, list) else [a] for a in data["answer"]]}
    return datasets.Dataset.from_dict(data).cast_column("image", datasets.Image())


FIELDS = FieldMap(boxes="bbox", scenario="scene")


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "msvqa"
    datasets.DatasetDict({"train": make(rows(6, "tr")), "test": make(rows(3, "te"))}).save_to_disk(str(path))
    return path


def test_loads_a_saved_datasetdict_with_image_feature(saved: Path) -> None:
    samples = load_hf_dataset(saved, "train", FIELDS, task="underwater-1")
    assert [s.id for s in samples] == [f"tr{i}" for i in range(6)]
    s0, s1 = samples[0], samples[1]
    assert s0.question == "What color is square 0?" and s0.answers == ["red"]
    assert s1.answers == ["green", "green square"]
    assert s0.task == "underwater-1" and s0.scenario == "underwater"
    assert s0.meta == {"boxes": [0.0, 0.0, 1.0, 1.0], "difficulty": "easy"}
    img = s1.load_image()  # decoded lazily, on demand
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (0, 128, 0)
    assert pickle.loads(pickle.dumps(s1)).load_image().getpixel((0, 0)) == (0, 128, 0)


def test_plain_dataset_and_path_string_images(tmp_path: Path) -> None:
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    for i, c in enumerate(COLORS[:2]):
        Image.new("RGB", (4, 4), c).save(img_dir / f"{i}.png")
    ds = datasets.Dataset.from_dict(
        {
            "img": ["0.png", "1.png", None],
            "query": ["Q0", "Q1", "Q2 (text only)"],
            "answers": [["r"], ["g"], ["t"]],
        }
    )
    ds.save_to_disk(str(tmp_path / "plain"))
    fields = FieldMap(image="img", question="query", answer="answers", id=None)
    samples = load_hf_dataset(tmp_path / "plain", None, fields, task="t", image_folder=img_dir)
    assert [s.id for s in samples] == ["0", "1", "2"]
    assert samples[1].image == str(img_dir / "1.png") and samples[2].image is None
    msg = _error(lambda: load_hf_dataset(tmp_path / "plain", "train", fields))
    assert "single Dataset without splits" in msg


def test_task_column_and_task_filter(tmp_path: Path) -> None:
    train = datasets.concatenate_datasets([make(rows(3, "a", "step1")), make(rows(2, "b", "step2"))])
    path = tmp_path / "multi"
    datasets.DatasetDict({"train": train}).save_to_disk(str(path))
    fields = FieldMap(task="step")
    everything = load_hf_dataset(path, "train", fields)
    assert [s.task for s in everything] == ["step1"] * 3 + ["step2"] * 2
    assert [s.id for s in load_hf_dataset(path, "train", fields, task_filter="step2")] == ["b0", "b1"]
    msg = _error(lambda: load_hf_dataset(path, "train", fields, task_filter="step9"))
    assert "no rows of task 'step9' in column 'step'; tasks present: step1, step2" in msg


def test_integer_task_column_names_tasks_by_number(tmp_path: Path) -> None:
    data = rows(4, "s")
    data["step"] = [1, 1, 2, 10]
    path = tmp_path / "numbered"
    datasets.DatasetDict({"train": make(data)}).save_to_disk(str(path))
    samples = load_hf_dataset(path, "train", FieldMap(task="step"))
    assert [s.task for s in samples] == ["1", "1", "2", "10"]
    assert [s.id for s in load_hf_dataset(path, "train", FieldMap(task="step"), task_filter="10")] == ["s3"]


def test_table_files_with_the_same_field_map(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4), "red").save(tmp_path / "a.png")
    items = [
        {
            "question_id": 1,
            "image": "a.png",
            "question": "Color?",
            "answer": "red",
            "scene": "indoor",
            "bbox": [1, 2],
        },
        {
            "question_id": 2,
            "image": None,
            "question": "2+2?",
            "answer": ["4", "four"],
            "scene": "indoor",
            "bbox": None,
        },
    ]
    (tmp_path / "t.json").write_text(json.dumps(items))
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    for name in ("t.json", "t.jsonl"):
        samples = load_table_file(tmp_path / name, FIELDS, task="indoor-1")
        assert [(s.id, s.answers, s.scenario) for s in samples] == [
            ("1", ["red"], "indoor"),
            ("2", ["4", "four"], "indoor"),
        ]
        assert samples[0].image == str(tmp_path / "a.png") and samples[0].meta == {"boxes": [1, 2]}
    (tmp_path / "bad.jsonl").write_text(
        json.dumps({**items[0], "question_id": 3}) + "\n" + json.dumps({"question": "Q"}) + "\n"
    )
    msg = _error(lambda: load_table_file(tmp_path / "bad.jsonl", FIELDS))
    assert f"{tmp_path / 'bad.jsonl'}, line 2, field 'answer': missing required field" in msg, msg
    assert "line 2, field 'image': missing required field (use null for text-only rows)" in msg


# ---------------------------------------------------------------- validation


def _error(call: Any) -> str:
    with pytest.raises(DataError) as info:
        call()
    return str(info.value)


def test_missing_directory(tmp_path: Path) -> None:
    msg = _error(lambda: load_hf_dataset(tmp_path / "nope", "train"))
    assert str(tmp_path / "nope") in msg and "dataset directory not found" in msg


def test_not_a_saved_dataset(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "data.parquet").write_bytes(b"")
    msg = _error(lambda: load_hf_dataset(tmp_path / "raw", "train"))
    assert "is not a dataset saved with Dataset.save_to_disk or DatasetDict.save_to_disk" in msg
    (tmp_path / "rows.json").write_text("[]")
    assert "use load_table_file" in _error(lambda: load_hf_dataset(tmp_path / "rows.json", "train"))


def test_missing_split_lists_the_available_ones(saved: Path) -> None:
    msg = _error(lambda: load_hf_dataset(saved, "validation", FIELDS))
    assert str(saved) in msg and "has no split 'validation'; available splits: train, test" in msg
    assert "several splits (train, test)" in _error(lambda: load_hf_dataset(saved, None, FIELDS))


def test_missing_columns_list_the_present_ones(saved: Path) -> None:
    msg = _error(lambda: load_hf_dataset(saved, "train", FieldMap(question="query", id="qid")))
    assert f"{saved} (split 'train')" in msg
    assert (
        "missing column(s) 'query', 'qid'; present columns: image, question, answer, question_id, bbox" in msg
    )


def test_empty_answers_and_duplicate_ids(tmp_path: Path) -> None:
    data = rows(4, "x")
    data["answer"] = ["red", "", [], "yellow"]
    data["question_id"] = ["x0", "x1", "x2", "x0"]
    datasets.DatasetDict({"test": make(data)}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError) as info:
        load_hf_dataset(tmp_path / "bad", "test", FIELDS)
    msg = str(info.value)
    assert "(split 'test'), item 1, field 'answer': empty answer" in msg, msg
    assert "item 2, field 'answer': empty answer" in msg
    assert "item 3, field 'question_id': duplicate id 'x0' (first at item 0)" in msg
    assert len(info.value.problems) == 3


def test_broken_images_are_reported_together(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": b"junk", "path": None}, {"bytes": b"also junk", "path": None}],
            "question": ["Q0", "Q1"],
            "answer": ["a", "b"],
            "question_id": [0, 1],
        }
    ).cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "junk"))
    with pytest.raises(DataError) as info:
        load_hf_dataset(tmp_path / "junk", "train")
    assert [(p.item, p.field) for p in info.value.problems] == [(0, "image"), (1, "image")]
    assert "unreadable" in str(info.value)
    assert len(load_hf_dataset(tmp_path / "junk", "train", check_images=False)) == 2


def test_zero_rows(tmp_path: Path) -> None:
    datasets.DatasetDict({"train": make(rows(0))}).save_to_disk(str(tmp_path / "empty"))
    assert "task has no samples" in _error(lambda: load_hf_dataset(tmp_path / "empty", "train"))


# ---------------------------------------------------------------- the hf-dataset benchmark


def build(**kw: Any):
    return BENCHMARKS.get("hf-dataset")(BenchmarkConfig(name="hf-dataset", **kw))


@pytest.fixture
def multi(tmp_path: Path) -> Path:
    """One DatasetDict holding three tasks in a ``step`` column."""
    path = tmp_path / "msvqa"
    split = {
        "train": [
            make(rows(6, f"{t}-", t, scene))
            for t, scene in [("ua", "underwater"), ("hi", "high"), ("in", "indoor")]
        ],
        "test": [
            make(rows(3, f"{t}-t", t, scene))
            for t, scene in [("ua", "underwater"), ("hi", "high"), ("in", "indoor")]
        ],
    }
    datasets.DatasetDict({k: datasets.concatenate_datasets(v) for k, v in split.items()}).save_to_disk(
        str(path)
    )
    return path


def test_benchmark_from_a_task_column(multi: Path) -> None:
    fields = {"task": "step", "scenario": "scene", "boxes": "bbox"}
    bench = build(
        path=str(multi), fields=fields, task_scorers={"hi": ["vqa_score", "token_f1"]}, max_new_tokens=8
    )
    assert bench.task_names == ["ua", "hi", "in"]
    hi = bench.task("hi")
    assert hi.scorers == ["vqa_score", "token_f1"] and bench.task("ua").scorers == ["exact_match"]
    assert hi.scenario == "high" and hi.max_new_tokens == 8 and (len(hi.train), len(hi.test)) == (6, 3)
    assert {s.task for s in hi.train + hi.test} == {"hi"}

    ordered = build(
        path=str(multi), fields=fields, task_names=["in", "ua"], order=["ua", "in"], train_per_task=2
    )
    assert ordered.task_names == ["ua", "in"] and [len(t.train) for t in ordered.tasks] == [2, 2]
    assert build(path=str(multi), fields=fields, tasks=1).task_names == ["ua"]
    with pytest.raises(ValueError, match=r"unknown task 'lo'.*Valid: ua, hi, in"):
        build(path=str(multi), fields=fields, order=["lo"])
    with pytest.raises(DataError, match="task_names names task"):
        build(path=str(multi), fields=fields, task_names=["lo"])


def test_benchmark_single_task_dataset(saved: Path) -> None:
    bench = build(path=str(saved), fields={"boxes": "bbox", "scenario": "scene"})
    assert bench.task_names == ["msvqa"] and bench.tasks[0].train[0].task == "msvqa"
    assert build(path=str(saved), task_name="uw").task_names == ["uw"]


def test_benchmark_from_tasks_spec_with_files(tmp_path: Path, saved: Path) -> None:
    for name in ("a", "b"):
        Image.new("RGB", (4, 4), "red").save(tmp_path / f"{name}.png")
        row = {"question_id": f"{name}0", "image": f"{name}.png", "question": "Q", "answer": "red"}
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    spec = [
        {
            "name": "files",
            "train": str(tmp_path / "a.jsonl"),
            "test": str(tmp_path / "b.jsonl"),
            "scorers": ["contains"],
        },
        {"name": "saved", "path": str(saved), "max_new_tokens": 4, "scenario": "underwater"},
    ]
    bench = build(tasks_spec=spec, image_folder=str(tmp_path))
    assert bench.task_names == ["files", "saved"]
    assert bench.task("files").scorers == ["contains"] and bench.task("files").train[0].image == str(
        tmp_path / "a.png"
    )
    assert bench.task("saved").max_new_tokens == 4 and bench.task("saved").scenario == "underwater"


def test_benchmark_rejects_unknown_options(saved: Path) -> None:
    with pytest.raises(
        ValueError, match=r"unknown option 'split'.*Valid options: path, tasks_spec, train_split"
    ):
        build(path=str(saved), split="train")
    with pytest.raises(ValueError, match=r"unknown option 'fields.questions'.*Did you mean 'question'"):
        build(path=str(saved), fields={"questions": "q"})
    with pytest.raises(ValueError, match=r"task_scorers.ua: unknown scorer 'f1'.*Valid: box_f1"):
        build(path=str(saved), task_scorers={"ua": ["f1"]})
    with pytest.raises(ValueError, match="task_scorers names unknown task"):
        build(path=str(saved), task_scorers={"nope": ["token_f1"]})
