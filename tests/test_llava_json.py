"""LLaVA conversation JSON loaders and the ``llava-json`` benchmark, on files written here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import mmcl.benchmarks.llava_json  # noqa: F401  (registers "llava-json")
from mmcl.benchmarks import BENCHMARKS
from mmcl.benchmarks.stream import apply_stream_options
from mmcl.config import BenchmarkConfig
from mmcl.data.errors import DataError
from mmcl.data.llava_json import load_llava_auto, load_llava_test, load_llava_train
from mmcl.data.sample import Sample, Task


def png(path: Path, color: str = "red", size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def write_json(path: Path, items: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, indent=2))
    return path


def write_jsonl(path: Path, items: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in items))
    return path


def train_item(
    i: int | str, image: str | None = "images/a.png", q: str = "What color?", a: str = "red"
) -> dict:
    item: dict[str, Any] = {
        "id": i,
        "conversations": [
            {"from": "human", "value": ("<image>\n" if image else "") + q},
            {"from": "gpt", "value": a},
        ],
    }
    if image is not None:
        item["image"] = image
    return item


def eval_item(
    i: int | str, image: str | None = "images/a.png", text: str = "What color?", answer: Any = "red"
) -> dict:
    item: dict[str, Any] = {"question_id": i, "text": text, "answer": answer}
    if image is not None:
        item["image"] = image
    return item


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    png(tmp_path / "images" / "a.png", "red")
    png(tmp_path / "images" / "b.png", "blue")
    return tmp_path


# ---------------------------------------------------------------- loading


def test_train_file_loads_single_multi_turn_and_text_only(folder: Path) -> None:
    items = [
        train_item(0, "images/a.png", "What color is the square?", "Red"),
        {
            "id": "rs-17",
            "image": "images/b.png",
            "type": "2D",
            "task": "Count",
            "conversations": [
                {"from": "human", "value": "<image>\nIs there a square?"},
                {"from": "gpt", "value": "Yes"},
                {"from": "human", "value": "What color is it?"},
                {"from": "gpt", "value": "Blue"},
                {"from": "human", "value": "How many squares?"},
                {"from": "gpt", "value": "1"},
            ],
        },
        train_item(2, None, "What is 2+2?", "4"),
    ]
    path = write_json(folder / "train.json", items)
    samples = load_llava_train(path, folder, task="RS", scenario="remote-sensing")

    assert samples[0] == Sample(
        id="0",
        question="What color is the square?",
        answers=["Red"],
        image=str(folder / "images" / "a.png"),
        task="RS",
        scenario="remote-sensing",
    )
    multi = samples[1]
    assert multi.id == "rs-17"
    assert multi.question == "How many squares?"
    assert multi.answers == ["1"]
    assert multi.history == [("Is there a square?", "Yes"), ("What color is it?", "Blue")]
    assert multi.meta == {"type": "2D", "task": "Count"}
    assert multi.load_image().getpixel((0, 0)) == (0, 0, 255)
    text_only = samples[2]
    assert text_only.image is None and text_only.question == "What is 2+2?" and text_only.load_image() is None


def test_image_paths_default_to_the_file_folder(folder: Path) -> None:
    path = write_json(folder / "train.json", [train_item(0)])
    assert load_llava_train(path)[0].image == str(folder / "images" / "a.png")


def test_test_file_loads_string_and_list_answers(folder: Path) -> None:
    items = [
        eval_item(1, text="What color?\nAnswer with one word.", answer="red"),
        {
            **eval_item("ocr_2", "images/b.png", "<image>\nRead the text.", ["STOP", "stop sign"]),
            "answer_type": "Regular Text",
        },
    ]
    samples = load_llava_test(write_json(folder / "test.json", items), folder, task="OCR")
    assert [s.id for s in samples] == ["1", "ocr_2"]
    assert samples[0].question == "What color?\nAnswer with one word."
    assert samples[0].answers == ["red"]
    assert samples[1].question == "Read the text."
    assert samples[1].answers == ["STOP", "stop sign"]
    assert samples[1].meta == {"answer_type": "Regular Text"}
    assert all(s.task == "OCR" and s.history == [] for s in samples)


def test_jsonl_and_auto_detection(folder: Path) -> None:
    train = write_jsonl(folder / "train.jsonl", [train_item(0), train_item(1, "images/b.png")])
    test = write_jsonl(folder / "test.jsonl", [eval_item(0), eval_item(1, None)])
    assert [s.answers for s in load_llava_auto(train)] == [["red"], ["red"]]
    auto_test = load_llava_auto(test)
    assert auto_test[1].image is None and auto_test[0].image == str(folder / "images" / "a.png")
    assert load_llava_auto(train) == load_llava_train(train)


def test_check_images_off_skips_missing_files(tmp_path: Path) -> None:
    path = write_json(tmp_path / "train.json", [train_item(0, "images/nope.png")])
    assert load_llava_train(path, check_images=False)[0].image == str(tmp_path / "images" / "nope.png")


# ---------------------------------------------------------------- validation


def problems_of(call: Any) -> tuple[str, DataError]:
    with pytest.raises(DataError) as info:
        call()
    return str(info.value), info.value


def convs(*turns: tuple[str, Any]) -> list[dict]:
    return [{"from": f, "value": v} for f, v in turns]


TRAIN_ERRORS = [
    # (items, where, field, words in the message)
    ([train_item(0), "just a string"], "item 1", None, "must be a JSON object"),
    (
        [{"image": "images/a.png", "conversations": convs(("human", "<image>\nQ"), ("gpt", "A"))}],
        "item 0",
        "'id'",
        "missing required field",
    ),
    ([{"id": 0, "image": "images/a.png"}], "item 0", "'conversations'", "missing required field"),
    (
        [{"id": 0, "image": "images/a.png", "conversations": "Q? A."}],
        "item 0",
        "'conversations'",
        "must be a list",
    ),
    (
        [{"id": 0, "image": "images/a.png", "conversations": convs(("human", "<image>\nQ"), ("gpt", 3))}],
        "item 0",
        "'conversations[1].value'",
        "must be a string",
    ),
    (
        [
            {
                "id": 0,
                "image": "images/a.png",
                "conversations": [{"from": "human", "value": "<image>\nQ"}, {"value": "A"}],
            }
        ],
        "item 0",
        "'conversations[1].from'",
        "missing required field",
    ),
    (
        [{"id": 0, "image": 5, "conversations": convs(("human", "<image>\nQ"), ("gpt", "A"))}],
        "item 0",
        "'image'",
        "must be a string path",
    ),
    (
        [{"id": [1], "image": "images/a.png", "conversations": convs(("human", "<image>\nQ"), ("gpt", "A"))}],
        "item 0",
        "'id'",
        "must be a string or an integer",
    ),
    (
        [
            {
                "id": 0,
                "image": "images/a.png",
                "conversations": convs(("system", "Be brief."), ("human", "<image>\nQ"), ("gpt", "A")),
            }
        ],
        "item 0",
        "'conversations[0].from'",
        "unknown speaker 'system'",
    ),
    (
        [
            {
                "id": 0,
                "image": "images/a.png",
                "conversations": convs(("human", "<image>\nQ"), ("human", "Q2"), ("gpt", "A")),
            }
        ],
        "item 0",
        "'conversations[1].from'",
        "alternate",
    ),
    (
        [{"id": 0, "image": "images/a.png", "conversations": convs(("human", "<image>\nQ"))}],
        "item 0",
        "'conversations[0].from'",
        "last turn must be a 'gpt' answer",
    ),
    ([{"id": 0, "image": "images/a.png", "conversations": []}], "item 0", "'conversations'", "is empty"),
    (
        [
            train_item(0),
            {"id": 1, "image": "images/a.png", "conversations": convs(("human", "Q"), ("gpt", "A"))},
        ],
        "item 1",
        "'conversations[0].value'",
        "no '<image>' token",
    ),
    (
        [{"id": 0, "conversations": convs(("human", "<image>\nQ"), ("gpt", "A"))}],
        "item 0",
        "'conversations[0].value'",
        "text-only item",
    ),
    (
        [
            {
                "id": 0,
                "image": "images/a.png",
                "conversations": convs(("human", "<image>\n<image>\nQ"), ("gpt", "A")),
            }
        ],
        "item 0",
        "'conversations'",
        "2 '<image>' tokens but the item has 1 image",
    ),
    (
        [
            {
                "id": 0,
                "image": "images/a.png",
                "conversations": convs(("human", "Q"), ("gpt", "A"), ("human", "<image>\nQ2"), ("gpt", "B")),
            }
        ],
        "item 0",
        "'conversations[2].value'",
        "must be in the first human turn",
    ),
    ([train_item(0, a="  ")], "item 0", "'conversations[1].value'", "empty answer"),
    ([train_item(0, q="")], "item 0", "'conversations[0].value'", "empty question"),
    ([train_item(7), train_item(7, "images/b.png")], "item 1", "'id'", "duplicate id '7' (first at item 0)"),
    ([train_item(0, "images/missing.png")], "item 0", "'image'", "image file not found"),
]


@pytest.mark.parametrize(("items", "where", "field", "words"), TRAIN_ERRORS)
def test_train_errors_name_file_item_and_field(
    folder: Path, items: list, where: str, field: str | None, words: str
) -> None:
    path = write_json(folder / "train.json", items)
    msg, err = problems_of(lambda: load_llava_train(path, folder))
    assert str(path) in msg and where in msg and words in msg, msg
    if field:
        assert f"field {field}" in msg, msg
    assert all(p.file == str(path) for p in err.problems)


TEST_ERRORS = [
    (
        [{"question_id": 0, "image": "images/a.png", "answer": "red"}],
        "item 0",
        "'text'",
        "missing required field",
    ),
    (
        [{"question_id": 0, "image": "images/a.png", "text": "Q"}],
        "item 0",
        "'answer'",
        "missing required field",
    ),
    (
        [{"image": "images/a.png", "text": "Q", "answer": "red"}],
        "item 0",
        "'question_id'",
        "missing required field",
    ),
    ([eval_item(0, answer=3)], "item 0", "'answer'", "must be a string or a list of strings"),
    ([eval_item(0, answer=["a", 3])], "item 0", "'answer'", "answer 1 must be a string"),
    ([eval_item(0, text=["Q"])], "item 0", "'text'", "must be a string"),
    ([eval_item(0, answer="")], "item 0", "'answer'", "empty answer"),
    ([eval_item(0, answer=[])], "item 0", "'answer'", "empty answer"),
    ([eval_item(0, None, text="<image>\nQ")], "item 0", "'text'", "text-only item"),
    ([eval_item(0, text="<image><image>Q")], "item 0", "'text'", "2 '<image>' tokens"),
    (
        [eval_item("q1"), eval_item("q1", "images/b.png")],
        "item 1",
        "'question_id'",
        "duplicate question_id 'q1'",
    ),
]


@pytest.mark.parametrize(("items", "where", "field", "words"), TEST_ERRORS)
def test_test_errors_name_file_item_and_field(
    folder: Path, items: list, where: str, field: str, words: str
) -> None:
    path = write_json(folder / "test.json", items)
    msg, _ = problems_of(lambda: load_llava_test(path, folder))
    assert str(path) in msg and where in msg and f"field {field}" in msg and words in msg, msg


def test_missing_file(tmp_path: Path) -> None:
    msg, _ = problems_of(lambda: load_llava_train(tmp_path / "nope" / "train.json"))
    assert str(tmp_path / "nope" / "train.json") in msg and "file not found" in msg


def test_malformed_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text('[\n  {"id": 0,\n   "image": "a.png" "conversations": []}\n]\n')
    msg, _ = problems_of(lambda: load_llava_train(path))
    assert str(path) in msg and "not valid JSON" in msg and "line 3, column 21" in msg, msg


def test_json_lines_in_a_json_file_gets_a_hint(folder: Path) -> None:
    path = folder / "train.json"
    path.write_text(json.dumps(train_item(0)) + "\n" + json.dumps(train_item(1)) + "\n")
    msg, _ = problems_of(lambda: load_llava_train(path))
    assert "Extra data" in msg and ".jsonl" in msg


def test_malformed_jsonl_reports_every_bad_line(folder: Path) -> None:
    path = folder / "train.jsonl"
    lines = [json.dumps(train_item(0)), '{"id": 1, "image": ', "", json.dumps(train_item(2, a=""))]
    path.write_text("\n".join(lines) + "\n")
    msg, err = problems_of(lambda: load_llava_train(path))
    assert f"{path}, line 2: not valid JSON" in msg, msg
    assert f"{path}, line 4, field 'conversations[1].value': empty answer" in msg, msg
    assert len(err.problems) == 2


def test_top_level_must_be_a_list(tmp_path: Path) -> None:
    path = write_json(tmp_path / "train.json", {"data": [train_item(0)]})
    msg, _ = problems_of(lambda: load_llava_train(path))
    assert str(path) in msg and "top level must be a JSON array" in msg and "got an object" in msg


@pytest.mark.parametrize("name", ["train.json", "train.jsonl"])
def test_zero_items(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("[]" if name.endswith(".json") else "\n")
    msg, _ = problems_of(lambda: load_llava_train(path))
    assert str(path) in msg and "task has no samples" in msg


def test_unreadable_and_truncated_images(folder: Path) -> None:
    (folder / "images" / "junk.png").write_bytes(b"this is not a png")
    big = png(folder / "images" / "big.png", size=64).read_bytes()
    (folder / "images" / "cut.png").write_bytes(big[: len(big) // 2])
    items = [train_item(0), train_item(1, "images/junk.png"), train_item(2, "images/cut.png")]
    path = write_json(folder / "train.json", items)
    msg, err = problems_of(lambda: load_llava_train(path))
    assert [(p.item, p.field) for p in err.problems] == [(1, "image"), (2, "image")]  # item 0 is fine
    assert "junk.png is unreadable" in msg and "cut.png is unreadable or truncated" in msg, msg


def test_several_missing_images_in_one_error(folder: Path) -> None:
    items = [
        train_item(0),
        train_item(1, "images/x1.png"),
        train_item(2, "images/x2.png"),
        train_item(3, "images/x3.png"),
    ]
    path = write_jsonl(folder / "train.jsonl", items)
    msg, err = problems_of(lambda: load_llava_train(path))
    assert len(err.problems) == 3
    for line, name in [(2, "x1.png"), (3, "x2.png"), (4, "x3.png")]:
        assert (
            f"{path}, line {line}, field 'image': image file not found: {folder / 'images' / name}" in msg
        ), msg


def test_all_problems_of_a_file_come_together(folder: Path) -> None:
    items = [
        train_item(0),
        train_item(0),
        {"id": 2, "image": "images/gone2.png"},
        train_item(3, "images/gone.png"),
        5,
    ]
    path = write_json(folder / "train.json", items)
    _, err = problems_of(lambda: load_llava_train(path))
    assert [(p.item, p.field) for p in err.problems] == [
        (1, "id"),
        (2, "conversations"),
        (4, None),
        (2, "image"),  # the image of a rejected item is checked too
        (3, "image"),
    ]


# ---------------------------------------------------------------- the llava-json benchmark

TASKS = ["RS", "Med", "AD"]


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """The MLLM-CL layout: <root>/<task>/{train.json,test.json,images/}."""
    root = tmp_path / "domain"
    for t, color in zip(TASKS, ["red", "green", "blue"], strict=True):
        png(root / t / "images" / f"{t}_0.png", color)
        png(root / t / "images" / f"{t}_1.png", color)
        write_json(
            root / t / "train.json",
            [
                train_item(f"{t}-{i}", f"images/{t}_{i % 2}.png", f"{t} question {i}?", color)
                for i in range(8)
            ],
        )
        write_json(
            root / t / "test.json",
            [eval_item(f"{t}-t{i}", f"images/{t}_{i % 2}.png", f"{t} test {i}?", [color]) for i in range(5)],
        )
    return root


def build(**kw: Any):
    return BENCHMARKS.get("llava-json")(BenchmarkConfig(name="llava-json", **kw))


def test_benchmark_from_data_root(data_root: Path) -> None:
    bench = build(data_root=str(data_root), task_names=TASKS, task_scorers={"Med": ["contains"]})
    assert bench.name == "llava-json" and bench.task_names == TASKS
    rs = bench.task("RS")
    assert len(rs.train) == 8 and len(rs.test) == 5 and rs.max_new_tokens == 32
    assert rs.scorers == ["exact_match"] and bench.task("Med").scorers == ["contains"]
    assert rs.train[0].image == str(data_root / "RS" / "images" / "RS_0.png") and rs.train[0].task == "RS"
    assert rs.test[1].answers == ["red"]


def test_benchmark_order_subset_and_caps(data_root: Path) -> None:
    common = {"data_root": str(data_root), "task_names": TASKS}
    assert build(order=["AD", "RS", "Med"], **common).task_names == ["AD", "RS", "Med"]
    assert build(order=["AD", "RS", "Med"], tasks=2, **common).task_names == ["AD", "RS"]
    assert build(tasks=["AD", "RS"], **common).task_names == ["RS", "AD"]

    capped = build(train_per_task=3, test_per_task=2, seed=5, **common)
    assert [(len(t.train), len(t.test)) for t in capped.tasks] == [(3, 2)] * 3
    again = build(train_per_task=3, test_per_task=2, seed=5, **common)
    assert [s.id for s in capped.tasks[0].train] == [s.id for s in again.tasks[0].train]
    ids = [s.id for s in capped.tasks[0].train]
    assert ids == sorted(ids, key=lambda i: int(i.split("-")[1]))  # original order kept
    picks = {tuple(s.id for s in build(train_per_task=3, seed=k, **common).tasks[0].train) for k in range(6)}
    assert len(picks) > 1  # the seed changes which samples are kept


def test_caps_check_only_the_kept_images(data_root: Path) -> None:
    train = data_root / "RS" / "train.json"
    write_json(train, [*json.loads(train.read_text()), train_item("RS-lost", "images/lost.png")])
    common = {"data_root": str(data_root), "task_names": TASKS, "tasks": ["RS"]}
    with pytest.raises(DataError, match="lost.png"):
        build(**common)

    def kept(seed: int) -> list[str]:
        return [s.id for s in build(train_per_task=2, seed=seed, check_images=False, **common).tasks[0].train]

    with_lost = [k for k in range(40) if "RS-lost" in kept(k)]
    without = [k for k in range(40) if "RS-lost" not in kept(k)]
    assert with_lost and without
    assert len(build(train_per_task=2, seed=without[0], **common).tasks[0].train) == 2
    with pytest.raises(DataError) as info:
        build(train_per_task=2, seed=with_lost[0], **common)
    assert len(info.value.problems) == 1 and info.value.problems[0].item == 8


def test_missing_images_of_a_benchmark_come_in_one_error(data_root: Path) -> None:
    (data_root / "RS" / "images" / "RS_1.png").unlink()
    (data_root / "AD" / "images" / "AD_0.png").unlink()
    with pytest.raises(DataError) as info:
        build(data_root=str(data_root), task_names=TASKS)
    # RS_1.png: train items 1,3,5,7 and test items 1,3; AD_0.png: train 0,2,4,6 and test 0,2,4
    assert len(info.value.problems) == 6 + 7
    assert {p.field for p in info.value.problems} == {"image"}


def test_benchmark_from_tasks_spec(data_root: Path) -> None:
    spec = [
        {
            "name": "remote",
            "train": str(data_root / "RS" / "train.json"),
            "test": str(data_root / "RS" / "test.json"),
            "scorers": ["vqa_score", "exact_match"],
            "max_new_tokens": 8,
            "scenario": "high-altitude",
            "description": "remote sensing",
        }
    ]
    task = build(tasks_spec=spec).task("remote")
    assert task.scorers == ["vqa_score", "exact_match"] and task.max_new_tokens == 8
    assert task.scenario == "high-altitude" and task.train[0].scenario == "high-altitude"
    assert task.train[0].image == str(data_root / "RS" / "images" / "RS_0.png")


def test_unknown_task_in_order(data_root: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown task 'Fin'.*Valid: RS, Med, AD"):
        build(data_root=str(data_root), task_names=TASKS, order=["Fin", "RS"])
    with pytest.raises(ValueError, match=r"benchmark.tasks: unknown task 'Sci'"):
        build(data_root=str(data_root), task_names=TASKS, tasks=["Sci"])


def test_unknown_option(data_root: Path) -> None:
    with pytest.raises(
        ValueError, match=r"unknown option 'data_rot'.*Did you mean 'data_root'.*Valid options: tasks_spec"
    ):
        build(data_rot=str(data_root), task_names=TASKS)
    spec = [{"name": "x", "train": "a.json", "test": "b.json", "scorer": ["exact_match"]}]
    with pytest.raises(
        ValueError, match=r"unknown option 'tasks_spec.0.scorer'.*Valid options: name, train, test"
    ):
        build(tasks_spec=spec)
    with pytest.raises(ValueError, match=r"task 'x': unknown scorer 'exact'. Did you mean 'exact_match'"):
        build(tasks_spec=[{"name": "x", "train": "a.json", "test": "b.json", "scorers": ["exact"]}])
    with pytest.raises(ValueError, match="data_root needs task_names.*AD, Med, RS"):
        build(data_root=str(data_root))


def test_benchmark_reports_problems_of_every_task_together(data_root: Path) -> None:
    write_json(data_root / "Med" / "test.json", [eval_item("m", "images/Med_0.png", answer="")])
    (data_root / "AD" / "train.json").unlink()
    with pytest.raises(DataError) as info:
        build(data_root=str(data_root), task_names=TASKS)
    msg = str(info.value)
    assert "Med/test.json, item 0, field 'answer': empty answer" in msg
    assert "AD/train.json: file not found" in msg


def test_apply_stream_options_on_tasks() -> None:
    def task(name: str) -> Task:
        return Task(name, [Sample(f"{name}{i}", "q", ["a"]) for i in range(10)], [Sample("t", "q", ["a"])])

    tasks = [task("a"), task("b"), task("c")]
    out = apply_stream_options(
        tasks, BenchmarkConfig(order=["c", "a", "b"], tasks=2, train_per_task=4), seed=1
    )
    assert [t.name for t in out] == ["c", "a"] and [len(t.train) for t in out] == [4, 4]
    assert len(tasks[0].train) == 10  # inputs untouched
    with pytest.raises(ValueError, match="out of range"):
        apply_stream_options(tasks, BenchmarkConfig(tasks=4), seed=0)
