"""The ``msvqa`` benchmark: the (guessed) released layout, the protocol, scoring and the validation report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest
from PIL import Image
from typer.testing import CliRunner

import mmcl.benchmarks.msvqa.loader  # noqa: F401  (registers "msvqa")
from mmcl.benchmarks import BENCHMARKS
from mmcl.benchmarks.builtin import build_benchmark
from mmcl.benchmarks.msvqa.loader import map_scenario, read_boxes, validate_msvqa
from mmcl.cli import app
from mmcl.config import BenchmarkConfig, ConfigError, load_config
from mmcl.data.errors import DataError
from mmcl.data.sample import Benchmark

datasets.disable_progress_bars()

# Raw scenario spellings as a release might write them; all map to the canonical four.
RAW_SCENARIOS = {
    "high-altitude": "High Altitude",
    "underwater": "underwater",
    "low-altitude": "low_altitude",
    "indoor": "IN",
}
CANONICAL = list(RAW_SCENARIOS)
COLORS = ["red", "green", "blue", "yellow", "white"]
REPO_ROOT = Path(__file__).resolve().parents[1]


def hf_rows(split: str, n_per_task: int) -> dict[str, list[Any]]:
    """4 scenarios x steps 1..5 (int); step 5 is grounding: text answer + a box in ``bbox``."""
    cols: dict[str, list[Any]] = {
        k: []
        for k in ("image", "question", "answers", "question_id", "bbox", "scenario", "step", "task_type")
    }
    for scenario, raw in RAW_SCENARIOS.items():
        for step in range(1, 6):
            for i in range(n_per_task):
                grounding = step == 5
                cols["image"].append(Image.new("RGB", (8, 8), COLORS[step - 1]))
                cols["question"].append(
                    f"Where is the object? ({scenario})" if grounding else f"What colour is it? ({i})"
                )
                cols["answers"].append(
                    ["object"] if grounding else [COLORS[step - 1], f"{COLORS[step - 1]}ish"]
                )
                cols["question_id"].append(f"{split}-{scenario}-{step}-{i}")
                cols["bbox"].append([[0.0, 0.0, 0.5, 0.5]] if grounding else [])
                cols["scenario"].append(raw)
                cols["step"].append(step)
                cols["task_type"].append("grounding" if grounding else "vqa")
    return cols


def save_dict(path: Path, train: dict[str, list[Any]], test: dict[str, list[Any]]) -> Path:
    def ds(cols: dict[str, list[Any]]) -> datasets.Dataset:
        return datasets.Dataset.from_dict(cols).cast_column("image", datasets.Image())

    datasets.DatasetDict({"train": ds(train), "test": ds(test)}).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("msvqa_hf")
    return save_dict(root / "MSVQA", hf_rows("train", 2), hf_rows("test", 1))


QTYPES = ["counting", "category", "attribute", "existence", "grounding"]


def jsonl_rows(scenario: str, split: str, n: int = 2) -> list[dict[str, Any]]:
    """One scenario's rows: string tasks (question types), image paths, grounding answers as box text."""
    out = []
    for q in QTYPES:
        for i in range(n):
            out.append(
                {
                    "question_id": f"{scenario}-{split}-{q}-{i}",
                    "image": f"images/{q}.png",
                    "question": f"{q} question {i}?",
                    "answer": "[0.1, 0.2, 0.3, 0.4]" if q == "grounding" else str(i + 1),
                    "scenario": scenario,
                    "task": q,
                    "bbox": [0.1, 0.2, 0.3, 0.4] if q == "grounding" else None,
                }
            )
    return out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def jsonl_dir(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    for q in QTYPES:
        Image.new("RGB", (8, 8), "red").save(tmp_path / "images" / f"{q}.png")
    for split in ("train", "test"):
        rows = [r for s in ("HA", "Underwater", "low-altitude", "Indoor") for r in jsonl_rows(s, split)]
        write_jsonl(tmp_path / f"{split}.jsonl", rows)
    return tmp_path


def build(**options: Any) -> Benchmark:
    return BENCHMARKS.get("msvqa")(BenchmarkConfig(name="msvqa", **options))


def error_of(call: Any) -> str:
    with pytest.raises(DataError) as info:
        call()
    return str(info.value)


# ---------------------------------------------------------------- layout and protocol


def test_datasetdict_20_steps_blocked_with_scorers_and_box_references(hf_dir: Path) -> None:
    bench = build(path=str(hf_dir))
    assert bench.task_names == [f"{s}.{k}" for s in CANONICAL for k in range(1, 6)]
    t1, t5 = bench.tasks[0], bench.tasks[4]
    assert (t1.scenario, len(t1.train), len(t1.test)) == ("high-altitude", 2, 1)
    assert t1.scorers == ["vqa_score", "exact_match", "token_f1"] and t1.max_new_tokens == 16
    assert t5.scorers == ["box_f1"] and t5.meta["grounding_reason"] == "task type 'grounding'"
    # the grounding answer "object" holds no box: the bbox column becomes the reference
    assert t5.test[0].answers == ["[0, 0, 0.5, 0.5]"]
    s = t1.train[1]
    assert s.id == "train-high-altitude-1-1" and s.answers == ["red", "redish"]
    assert s.scenario == "high-altitude" and s.meta["scenario"] == "High Altitude"
    assert s.meta["boxes"] == [] and s.meta["task_value"] == "1"
    assert s.load_image().getpixel((0, 0)) == (255, 0, 0)


def test_interleaved_order_and_custom_scenario_order(hf_dir: Path) -> None:
    order = ["indoor", "underwater", "high-altitude", "low-altitude"]
    bench = build(path=str(hf_dir), interleave=True, scenario_order=order)
    assert bench.task_names[:5] == [
        "indoor.1",
        "underwater.1",
        "high-altitude.1",
        "low-altitude.1",
        "indoor.2",
    ]
    assert bench.task_names[-1] == "low-altitude.5" and len(bench.tasks) == 20
    blocked = build(path=str(hf_dir), scenario_order=order)
    assert blocked.task_names[:6] == [*(f"indoor.{k}" for k in range(1, 6)), "underwater.1"]


def test_five_steps_one_scenario_with_common_stream_options(hf_dir: Path) -> None:
    bench = build(path=str(hf_dir), steps=5, scenario="underwater")
    assert bench.task_names == [f"underwater.{k}" for k in range(1, 6)]
    capped = build(path=str(hf_dir), steps=5, scenario="underwater", tasks=2, train_per_task=1)
    assert capped.task_names == ["underwater.1", "underwater.2"] and len(capped.tasks[0].train) == 1


def test_jsonl_files_with_image_paths(jsonl_dir: Path) -> None:
    bench = build(train=str(jsonl_dir / "train.jsonl"), test=str(jsonl_dir / "test.jsonl"), steps=5)
    # string task values sort naturally (alphabetically here) unless task_order is given
    assert bench.task_names == [f"high-altitude.{q}" for q in sorted(QTYPES)]
    ordered = build(
        train=str(jsonl_dir / "train.jsonl"), test=str(jsonl_dir / "test.jsonl"), steps=5, task_order=QTYPES
    )
    assert ordered.task_names == [f"high-altitude.{q}" for q in QTYPES]
    grounding = ordered.tasks[-1]
    assert grounding.scorers == ["box_f1"]
    assert grounding.meta["grounding_reason"] == "task value says grounding"
    assert grounding.test[0].answers == ["[0.1, 0.2, 0.3, 0.4]"]  # already a box: kept
    assert ordered.tasks[0].train[0].image == str(jsonl_dir / "images" / "counting.png")


def test_one_file_per_scenario_and_aliases(jsonl_dir: Path) -> None:
    files = {}
    for split in ("train", "test"):
        files[split] = []
        for raw in ("Scene-A", "Scene-B", "Scene-C", "Scene-D", "junk"):
            files[split].append(
                str(write_jsonl(jsonl_dir / f"{raw}-{split}.jsonl", jsonl_rows(raw, split, 1)))
            )
    aliases = {
        "scene a": "high-altitude",
        "Scene_B": "underwater",
        "SCENE-C": "low-altitude",
        "scene-d": "indoor",
    }
    bench = build(train=files["train"], test=files["test"], scenario_aliases={**aliases, "junk": None})
    assert len(bench.tasks) == 20 and bench.tasks[0].name == "high-altitude.attribute"
    report = validate_msvqa({"train": files["train"], "test": files["test"], "scenario_aliases": aliases})
    assert report.unmapped == {"junk": 10}
    msg = "\n".join(map(str, report.problems))
    assert (
        "junk-train.jsonl, line 1, field 'scenario': scenario value 'junk' (5 row(s), first at line 1)" in msg
    )


def test_scenario_mapping_and_boxes() -> None:
    for raw in ("High Altitude", "high_altitude", "HA", "high-altitude", " HIGH altitude "):
        assert map_scenario(raw) == (True, "high-altitude"), raw
    assert map_scenario("UW") == (True, "underwater") and map_scenario("in") == (True, "indoor")
    assert map_scenario("Mars") == (False, None)
    assert map_scenario("Mars", {"mars": "indoor"}) == (True, "indoor")
    assert map_scenario("HA", {"ha": None}) == (True, None)  # user aliases win; null drops
    assert read_boxes([1, 2, 3, 4]) == ([[1.0, 2.0, 3.0, 4.0]], None)
    assert read_boxes([[1, 2, 3, 4], [5, 6, 7, 8]])[0] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert read_boxes([10, 20, 5, 5], "xywh")[0] == [[10, 20, 15, 25]]
    assert read_boxes("[1, 2, 3, 4]")[0] == [[1, 2, 3, 4]]
    assert read_boxes(None) == ([], None) and read_boxes([]) == ([], None)
    assert "must be [x1, y1, x2, y2]" in str(read_boxes([1, 2, 3])[1])


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="give path"):
        build(train="x.jsonl")
    with pytest.raises(ConfigError, match="scenario_order must list each"):
        build(path="x", scenario_order=["indoor"])
    with pytest.raises(ConfigError, match="unknown option 'interleaved'"):
        build(path="x", interleaved=True)
    with pytest.raises(ConfigError, match="scenario_aliases"):
        build(path="x", scenario_aliases={"HA": "sky"})


# ---------------------------------------------------------------- bad input


def test_bad_jsonl_rows_are_all_reported_with_file_line_and_field(jsonl_dir: Path) -> None:
    rows = [r for s in ("HA", "Underwater", "low-altitude", "Indoor") for r in jsonl_rows(s, "train")]
    del rows[0]["question"]  # line 1: missing field
    rows[1]["scenario"] = "Mars"  # line 2: unknown scenario value
    rows[2]["image"] = "images/nope.png"  # line 3: missing image file
    rows[3]["bbox"] = [1, 2, 3]  # line 4: a malformed box
    train = write_jsonl(jsonl_dir / "bad.jsonl", rows)
    test = str(jsonl_dir / "test.jsonl")
    msg = error_of(lambda: build(train=str(train), test=test))
    assert f"{train}, line 1, field 'question': missing required field" in msg, msg
    assert f"{train}, line 2, field 'scenario': scenario value 'Mars' (1 row(s), first at line 2)" in msg
    assert "scenario_aliases" in msg
    assert f"{train}, line 4, field 'bbox': must be [x1, y1, x2, y2]" in msg
    # images are checked once the rows are valid; the validation report has everything at once
    report = validate_msvqa({"train": str(train), "test": test})
    text = report.render()
    assert not report.ok and report.unmapped == {"Mars": 1}
    assert (
        f"{train}, line 3, field 'image': image file not found: {jsonl_dir / 'images' / 'nope.png'}" in text
    )
    assert f"{train}, line 1, field 'question': missing required field" in text
    assert "unmapped scenario values (rows): 'Mars' (1)" in text
    counting = next(t for t in report.tasks if t.name == "high-altitude.counting")
    assert (counting.train, counting.test, counting.missing_images) == (0, 2, 0)  # both train rows rejected
    category = next(t for t in report.tasks if t.name == "high-altitude.category")
    assert (category.train, category.missing_images) == (1, 1)  # line 4 rejected (bad box)
    assert "NOT OK" in text


def test_missing_image_fails_the_build(jsonl_dir: Path) -> None:
    (jsonl_dir / "images" / "attribute.png").unlink()
    msg = error_of(lambda: build(train=str(jsonl_dir / "train.jsonl"), test=str(jsonl_dir / "test.jsonl")))
    assert f"{jsonl_dir / 'train.jsonl'}, line 5, field 'image': image file not found" in msg, msg


def test_missing_column_unknown_scenario_and_wrong_task_count(tmp_path: Path) -> None:
    train, test = hf_rows("train", 1), hf_rows("test", 2)
    del train["scenario"]
    test["scenario"][0] = "Mars"
    bad = save_dict(tmp_path / "bad", train, test)
    report = validate_msvqa({"path": str(bad)})
    text = "\n".join(map(str, report.problems))
    assert (
        f"{bad} (split 'train'): missing column 'scenario' (fields.scenario); present columns: image" in text
    )
    assert f"{bad} (split 'test'), item 0, field 'scenario': scenario value 'Mars'" in text
    assert "steps=20 needs 5 tasks in scenario" not in text  # test split still has every task
    assert "task 'high-altitude.1' has no train samples" in text
    # a scenario with 4 tasks cannot form the protocol
    train, test = hf_rows("train", 1), hf_rows("test", 1)
    keep = [
        i
        for i, (s, k) in enumerate(zip(train["scenario"], train["step"], strict=True))
        if not (s == "IN" and k == 5)
    ]
    four = save_dict(
        tmp_path / "four",
        {c: [v[i] for i in keep] for c, v in train.items()},
        {c: [v[i] for i in keep] for c, v in test.items()},
    )
    msg = error_of(lambda: build(path=str(four)))
    assert "steps=20 needs 5 tasks in scenario 'indoor'; found 4: 1, 2, 3, 4" in msg
    assert len(build(path=str(four), steps=5, scenario="underwater").tasks) == 5


def test_no_task_column_is_named(tmp_path: Path) -> None:
    train = hf_rows("train", 1)
    del train["step"]
    path = save_dict(tmp_path / "notask", train, train)
    msg = error_of(lambda: build(path=str(path)))
    assert "no task column: looked for 'task', 'step'; present columns:" in msg
    assert "(set fields.task)" in msg


# ---------------------------------------------------------------- report, CLI, example config


def test_validation_report_counts(hf_dir: Path) -> None:
    report = validate_msvqa({"path": str(hf_dir)})
    assert report.ok, report.render()
    assert [t.step for t in report.tasks] == list(range(1, 21))
    g = report.tasks[4]
    assert (g.name, g.train, g.test, g.boxes_train, g.boxes_test, g.missing_images) == (
        "high-altitude.5",
        2,
        1,
        2,
        1,
        0,
    )
    assert g.grounding and g.answers_from_boxes == 3
    assert report.scenario_totals()["indoor"] == {
        "tasks": 5,
        "train": 10,
        "test": 5,
        "boxes": 3,
        "missing_images": 0,
    }
    text = report.render()
    assert "answer='answers', id='question_id', boxes='bbox', scenario='scenario', task='step'" in text
    assert "OK: the data fits the protocol." in text
    five = validate_msvqa({"path": str(hf_dir), "steps": 5, "scenario": "indoor"}, check_images=False)
    assert [t.step for t in five.tasks[:6]] == [1, 2, 3, 4, 5, None]
    assert "missing images (not checked)" in five.render()


def test_cli_validate_data(hf_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"benchmark:\n  name: msvqa\n  path: {hf_dir}\n  steps: 5\n")
    result = CliRunner().invoke(app, ["validate-data", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "MSVQA data check" in result.output and "high-altitude" in result.output
    result = CliRunner().invoke(
        app, ["validate-data", str(cfg), "--set", f"benchmark.path={tmp_path / 'nope'}"]
    )
    assert result.exit_code == 1 and "dataset directory not found" in result.output


def test_example_config_builds_with_a_path_override(hf_dir: Path) -> None:
    cfg = load_config([REPO_ROOT / "configs" / "msvqa-real.yaml"], [f"benchmark.path={hf_dir}"])
    assert cfg.benchmark.name == "msvqa"
    bench = build_benchmark(cfg)
    assert len(bench.tasks) == 20 and bench.tasks[0].name == "high-altitude.1"


def test_cli_dry_run_prints_the_plan(hf_dir: Path, tmp_path: Path) -> None:
    config = REPO_ROOT / "configs" / "msvqa-real.yaml"
    sets = [f"benchmark.path={hf_dir}", "benchmark.steps=5", "model.preset=tiny-llava", "model.path=null"]
    args = ["run", str(config), "--dry-run", "--output", str(tmp_path / "run")]
    result = CliRunner().invoke(app, [*args, *(x for s in sets for x in ("--set", s))])
    assert result.exit_code == 0, result.output
    assert "high-altitude.5" in result.output and "box_f1" in result.output
    assert "dry run: config, data and model are valid" in result.output
