"""The ``mllm-cl`` benchmark and the router/replay loader, on files written in the released layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mmcl.benchmarks import BENCHMARKS
from mmcl.benchmarks.builtin import benchmark_names
from mmcl.benchmarks.mllm_cl.loader import (
    ACL_TASKS,
    DCL_TASKS,
    ROUTER_LETTERS,
    load_replay_file,
    replay_file_path,
)
from mmcl.config import BenchmarkConfig, ConfigError
from mmcl.data.errors import DataError
from mmcl.eval.evaluator import score_predictions

DCL = ["RS", "Med", "AD", "Sci", "Fin"]
ACL = ["OCR", "Math", "VP", "GUI"]


def png(path: Path, color: str = "red") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)


def write_json(path: Path, items: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, indent=1))
    return path


def train_item(i: str, image: str, q: str, a: str) -> dict[str, Any]:
    return {
        "id": i,
        "image": image,
        "conversations": [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}],
    }


def test_item(i: str, image: str, text: str, answer: Any, **extra: Any) -> dict[str, Any]:
    return {"question_id": i, "image": image, "text": text, "answer": answer, **extra}


test_item.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


# question, answer and image file name of each DCL domain, as in the release
DCL_ROWS = {
    "RS": ("Is there a road?\nAnswer the question using a single word or phrase.", "yes", "rs_{}.png"),
    "Med": (
        "What is present?\nAnswer the question using a single word or phrase.",
        "hemorrhage",
        "image_{}.png",
    ),
    "AD": (
        "What is the moving status of object <c1,CAM_BACK,704.2,486.7>?",
        "Going ahead.",
        "drivelm_{}.png",
    ),
    "Sci": (
        "Which of these is a producer?\nA. grass\nB. fox\nAnswer with the option's letter.",
        "A",
        "AI2D_{}.png",
    ),
    "Fin": ("Will the price rise?\nA. Yes\nB. No", "A", "stock_{}.png"),
}


@pytest.fixture
def dcl_root(tmp_path: Path) -> Path:
    root = tmp_path / "domain"
    for t, (q, a, img) in DCL_ROWS.items():
        for k in range(3):
            png(root / t / "images" / img.format(k))
        write_json(
            root / t / "train.json",
            [train_item(f"{t}-{k}", f"images/{img.format(k % 3)}", q, a) for k in range(6)],
        )
        write_json(
            root / t / "test.json",
            [test_item(f"{t}-t{k}", f"images/{img.format(k % 3)}", q, a) for k in range(4)],
        )
    # Sci also has MapQA rows, scored by another rule
    png(root / "Sci" / "images" / "MapQA_7.png")
    rows = json.loads((root / "Sci" / "test.json").read_text())
    rows.append(
        test_item("Sci-map", "images/MapQA_7.png", "Which states have the highest value?", "Texas, Ohio")
    )
    write_json(root / "Sci" / "test.json", rows)
    return root


@pytest.fixture
def acl_root(tmp_path: Path) -> Path:
    root = tmp_path / "ability"
    for folder in ("OCR", "Math", "VP", "APP"):
        png(root / folder / "images" / "t0.png")
        png(root / f"{folder}_test" / "images" / "e0.png", "blue")
        write_json(
            root / folder / "train.json",
            [train_item(f"{folder}-{k}", "images/t0.png", "What does it say?", "STOP") for k in range(3)],
        )
    write_json(
        root / "OCR_test" / "test.json",
        [
            test_item(
                "ocr-0",
                "images/e0.png",
                "what is written in the image?",
                ["STOP", "stop sign"],
                answer_type="Regular Text Recognition",
            ),
            test_item(
                "ocr-1",
                "images/e0.png",
                "what is the formula?",
                "x^{2}",
                answer_type="Handwritten Mathematical Expression Recognition",
            ),
        ],
    )
    write_json(
        root / "Math_test" / "test.json", [test_item("testmini_1", "images/e0.png", "What is x?", "4")]
    )
    write_json(
        root / "VP_test" / "test.json",
        [
            test_item(
                "cv-0",
                "images/e0.png",
                "How many cars are in the image?\n(A) 2\n(B) 3",
                "(B)",
                type="2D",
                task="Count",
            )
        ],
    )
    write_json(root / "APP_test" / "test.json", [test_item("app-0", "images/e0.png", "Which button?", "C")])
    return root


def build(**kw: Any):
    return BENCHMARKS.get("mllm-cl")(BenchmarkConfig(name="mllm-cl", **kw))


# --- loading -------------------------------------------------------------------------------


def test_registered() -> None:
    assert "mllm-cl" in benchmark_names()


def test_dcl_order_scorers_descriptions_meta(dcl_root: Path) -> None:
    bench = build(data_root=str(dcl_root))
    assert bench.task_names == DCL
    assert [t.scorers for t in bench.tasks] == [
        ["mllmcl_ai2d"],
        ["mllmcl_pvqa"],
        ["mllmcl_ai2d"],
        ["mllmcl_sci"],
        ["mllmcl_fin"],
    ]
    assert bench.description == "MLLM-CL DCL (RS, Med, AD, Sci, Fin)"
    rs = bench.task("RS")
    assert rs.description.startswith("A remote sensing expert") and "area estimation" in rs.description
    assert "6 camera views" in bench.task("AD").description
    assert bench.task("Fin").description.startswith("A financial expert")
    assert [t.meta["router_letter"] for t in bench.tasks] == ["E", "C", "D", "B", "A"]
    assert rs.meta["official_eval"] == "eval_ai2d.py" and rs.meta["setting"] == "dcl"
    assert rs.meta["test_file"] == str(dcl_root / "RS" / "test.json")
    assert len(rs.train) == 6 and len(rs.test) == 4 and rs.max_new_tokens == 128
    s = rs.test[1]
    assert s.image == str(dcl_root / "RS" / "images" / "rs_1.png")
    assert s.meta == {"image_file": "rs_1.png"} and s.task == "RS" and s.answers == ["yes"]
    assert rs.train[0].meta["image_file"] == "rs_0.png"
    assert bench.task("Sci").test[-1].meta["image_file"] == "MapQA_7.png"


def test_dcl_loaded_sci_is_scored_by_the_official_rule(dcl_root: Path) -> None:
    sci = build(data_root=str(dcl_root), tasks=["Sci"]).task("Sci")
    preds = ["A", "a", "A.", "The answer is A", "Texas, Utah"]
    means, rows = score_predictions(sci, preds)
    assert [r["scores"]["mllmcl_sci"] for r in rows] == [1.0, 1.0, 0.0, 0.0, 0.5]
    assert means["mllmcl_sci"] == pytest.approx(2.5 / 5)


def test_acl_folders_scorers_and_meta(acl_root: Path) -> None:
    bench = build(data_root=str(acl_root), setting="ACL")
    assert bench.task_names == ACL
    assert [t.scorers for t in bench.tasks] == [
        ["mllmcl_ocr"],
        ["exact_match", "contains"],
        ["mllmcl_cvbench"],
        ["exact_match", "contains"],
    ]
    assert [t.meta["router_letter"] for t in bench.tasks] == ["A", "C", "B", "D"]
    ocr = bench.task("OCR")
    assert ocr.train[0].image == str(acl_root / "OCR" / "images" / "t0.png")
    assert ocr.test[0].image == str(acl_root / "OCR_test" / "images" / "e0.png")
    assert ocr.test[0].answers == ["STOP", "stop sign"]
    assert ocr.test[0].meta == {"answer_type": "Regular Text Recognition", "image_file": "e0.png"}
    assert ocr.description.startswith("This model excels in OCR tasks")
    gui = bench.task("GUI")
    assert (
        gui.meta["train_file"] == str(acl_root / "APP" / "train.json") and "GUI navigation" in gui.description
    )
    vp = bench.task("VP").test[0]
    assert vp.meta == {"type": "2D", "task": "Count", "image_file": "e0.png"} and vp.task == "VP"
    means, _ = score_predictions(ocr, ["It says stop.", "x ^ { 2 }"])
    assert means == {"mllmcl_ocr": 1.0}


def test_order_subset_caps_and_overrides(dcl_root: Path, tmp_path: Path) -> None:
    bench = build(
        data_root=str(dcl_root),
        order=["Fin", "Sci", "RS"],
        tasks=2,
        train_per_task=2,
        test_per_task=3,
        task_scorers={"Fin": ["exact_match", "mllmcl_fin"]},
        max_new_tokens=16,
        task_max_new_tokens={"Sci": 8},
    )
    assert bench.task_names == ["Fin", "Sci"]
    fin, sci = bench.tasks
    assert (
        fin.scorers == ["exact_match", "mllmcl_fin"] and fin.max_new_tokens == 16 and sci.max_new_tokens == 8
    )
    assert len(fin.train) == 2 and len(fin.test) == 3
    # same data seed -> same kept samples
    again = build(
        data_root=str(dcl_root), order=["Fin", "Sci", "RS"], tasks=2, train_per_task=2, test_per_task=3
    )
    assert [s.id for s in again.task("Fin").test] == [s.id for s in fin.test]

    # folder mapping: a string (both splits) or {train, test}
    moved = tmp_path / "moved"
    shutil.copytree(dcl_root / "Fin", moved / "FinVis")
    b2 = build(data_root=str(dcl_root), tasks=["Fin"], folders={"Fin": str(moved / "FinVis")})
    assert b2.task("Fin").test[0].image == str(moved / "FinVis" / "images" / "stock_0.png")
    b3 = build(data_root=str(dcl_root), tasks=["RS"], folders={"RS": {"train": "RS", "test": "Med"}})
    assert b3.task("RS").test[0].answers == ["hemorrhage"]


def test_caps_check_only_the_kept_images(dcl_root: Path) -> None:
    (dcl_root / "RS" / "images" / "rs_2.png").unlink()  # used by train items 2, 5 and test item 2
    with pytest.raises(DataError, match="rs_2.png"):
        build(data_root=str(dcl_root), tasks=["RS"])
    bench = build(data_root=str(dcl_root), tasks=["RS"], check_images=False)
    assert len(bench.task("RS").test) == 4


# --- bad input -----------------------------------------------------------------------------


def test_missing_test_json_names_the_file(dcl_root: Path) -> None:
    (dcl_root / "Med" / "test.json").unlink()
    with pytest.raises(DataError) as e:
        build(data_root=str(dcl_root))
    assert f"{dcl_root / 'Med' / 'test.json'}: file not found" in str(e.value)


def test_missing_field_names_file_item_and_field(dcl_root: Path) -> None:
    rows = json.loads((dcl_root / "AD" / "test.json").read_text())
    del rows[2]["answer"]
    write_json(dcl_root / "AD" / "test.json", rows)
    items = json.loads((dcl_root / "Fin" / "train.json").read_text())
    del items[1]["conversations"]
    write_json(dcl_root / "Fin" / "train.json", items)
    with pytest.raises(DataError) as e:
        build(data_root=str(dcl_root))
    msg = str(e.value)
    assert f"{dcl_root / 'AD' / 'test.json'}, item 2, field 'answer': missing required field" in msg
    assert f"{dcl_root / 'Fin' / 'train.json'}, item 1, field 'conversations'" in msg


def test_broken_image_names_file_item_and_field(dcl_root: Path) -> None:
    (dcl_root / "Sci" / "images" / "MapQA_7.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as e:
        build(data_root=str(dcl_root))
    msg = str(e.value)
    assert f"{dcl_root / 'Sci' / 'test.json'}, item 4, field 'image': image" in msg
    assert "unreadable" in msg


def test_missing_task_folder_lists_the_folders(acl_root: Path) -> None:
    (acl_root / "APP_test").rename(acl_root / "GUI_test")
    with pytest.raises(DataError) as e:
        build(data_root=str(acl_root), setting="acl")
    msg = str(e.value)
    assert f"{acl_root / 'APP_test'}: folder of task 'GUI' not found" in msg and "GUI_test" in msg
    assert "'folders' option" in msg
    ok = build(data_root=str(acl_root), setting="acl", folders={"GUI": {"train": "APP", "test": "GUI_test"}})
    assert ok.task("GUI").test[0].id == "app-0"


def test_bad_options(dcl_root: Path) -> None:
    with pytest.raises(ConfigError, match="unknown task.*OCR.*RS, Med, AD, Sci, Fin"):
        build(data_root=str(dcl_root), task_scorers={"OCR": ["exact_match"]})
    with pytest.raises(ConfigError, match="unknown scorer 'mllmcl_fn'.*Did you mean 'mllmcl_fin'"):
        build(data_root=str(dcl_root), task_scorers={"Fin": ["mllmcl_fn"]})
    with pytest.raises(ConfigError, match="setting"):
        build(data_root=str(dcl_root), setting="domain")
    with pytest.raises(ConfigError, match="data_root"):
        build()
    with pytest.raises(ConfigError, match="unknown option 'task_names'"):
        build(data_root=str(dcl_root), task_names=DCL)
    with pytest.raises(DataError, match="data_root is not a directory"):
        build(data_root=str(dcl_root / "nope"))


def test_task_tables() -> None:
    assert [t.name for t in DCL_TASKS] == DCL and [t.name for t in ACL_TASKS] == ACL
    assert ROUTER_LETTERS["dcl"] == {"A": "Fin", "B": "Sci", "C": "Med", "D": "AD", "E": "RS"}
    assert ROUTER_LETTERS["acl"] == {"A": "OCR", "B": "VP", "C": "Math", "D": "GUI"}


# --- router / replay files -----------------------------------------------------------------


@pytest.fixture
def replay_root(tmp_path: Path, dcl_root: Path) -> Path:
    root = tmp_path / "MLLM-CL-ReplayData"
    (root / "router_DCL").mkdir(parents=True)
    (root / "router_DCL" / "task1.json").write_text("[]")
    write_json(
        root / "router_DCL" / "task2.json",
        [
            train_item("rs-r0", "RS/images/rs_0.png", "Is there a road?", "E"),
            train_item("med-r0", "Med/images/image_1.png", "What is present?", "C"),
        ],
    )
    write_json(
        root / "replay_DCL" / "task2.json",
        [train_item("rs-0", "RS/images/rs_1.png", "Is there a road?", "yes")],
    )
    return root


def test_replay_file_path() -> None:
    assert replay_file_path("/r", "router", "dcl", 3) == Path("/r/router_DCL/task3.json")
    assert replay_file_path("/r", "replay", "ACL", 4) == Path("/r/replay_ACL/task4.json")
    with pytest.raises(ValueError, match=r"1\.\.4"):
        replay_file_path("/r", "replay", "acl", 5)
    with pytest.raises(ValueError, match="kind"):
        replay_file_path("/r", "buffer", "dcl", 2)  # type: ignore[arg-type]


def test_router_and_replay_files_load(replay_root: Path, dcl_root: Path) -> None:
    assert load_replay_file(replay_file_path(replay_root, "router", "dcl", 1), dcl_root) == []
    router = load_replay_file(replay_file_path(replay_root, "router", "dcl", 2), dcl_root, setting="dcl")
    assert [(s.id, s.task, s.answers) for s in router] == [("rs-r0", "RS", ["E"]), ("med-r0", "Med", ["C"])]
    assert router[1].image == str(dcl_root / "Med" / "images" / "image_1.png")
    assert router[1].meta == {"image_file": "image_1.png"}
    assert router[0].question == "Is there a road?"
    assert ROUTER_LETTERS["dcl"][router[1].answers[0]] == router[1].task
    replay = load_replay_file(replay_root / "replay_DCL" / "task2.json", str(dcl_root))
    assert [(s.task, s.answers) for s in replay] == [("RS", ["yes"])]


def test_acl_replay_maps_app_folder_to_gui(tmp_path: Path, acl_root: Path) -> None:
    path = write_json(
        tmp_path / "router_ACL" / "task4.json", [train_item("a", "APP/images/t0.png", "Tap where?", "D")]
    )
    assert load_replay_file(path, acl_root, setting="acl")[0].task == "GUI"
    assert load_replay_file(path, acl_root)[0].task == "APP"
    assert load_replay_file(path, acl_root, folders={"APP": "app"})[0].task == "app"


def test_replay_errors_name_file_item_and_field(tmp_path: Path, dcl_root: Path) -> None:
    path = write_json(
        tmp_path / "replay_DCL" / "task3.json",
        [
            train_item("ok", "RS/images/rs_0.png", "q?", "yes"),
            {"id": "no-conv", "image": "Med/images/image_0.png"},
            train_item("gone", "Med/images/missing.png", "q?", "no"),
        ],
    )
    with pytest.raises(DataError) as e:
        load_replay_file(path, dcl_root)
    msg = str(e.value)
    assert f"{path}, item 1, field 'conversations': missing required field" in msg
    assert f"{path}, item 2, field 'image': image file not found" in msg
    unchecked = write_json(tmp_path / "r.json", [train_item("g", "Med/images/missing.png", "q?", "no")])
    assert len(load_replay_file(unchecked, dcl_root, check_images=False)) == 1
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        load_replay_file(tmp_path / "bad.json", dcl_root)
