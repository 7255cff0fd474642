"""Bad input, through the real CLI: each case gives a clear message naming the file, line or
item and field, exits non-zero, and loses nothing already written.

Every test drives ``mmcl run`` (typer's CliRunner on ``mmcl.cli.app``, or a subprocess where a
process must die) on data files written here and the tiny test checkpoint. The messages these
tests see are the ones listed in docs/troubleshooting.md. Set ``MMCL_BAD_INPUT_DUMP=FILE`` to
append every message seen to FILE (how that page's table was filled).
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import quick_overrides
from PIL import Image
from typer.testing import CliRunner

from mmcl.checkpoint import KILL_ENV, read_manifest
from mmcl.cli import app
from mmcl.config import load_config, to_yaml

cli = CliRunner()
ONE_THREAD = "train.num_threads=1"


# ---------------------------------------------------------------------- helpers
def invoke(args: list[str], case: str = "") -> tuple[int, str]:
    """Run the CLI in-process; return (exit code, output with whitespace collapsed)."""
    res = cli.invoke(app, args)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"traceback instead of a message: {res.exception!r}\n{res.output}") from res.exception
    text = " ".join(res.output.split())
    dump = os.environ.get("MMCL_BAD_INPUT_DUMP")
    if dump and res.exit_code != 0:
        with open(dump, "a", encoding="utf-8") as f:
            f.write(json.dumps({"case": case, "args": args, "code": res.exit_code, "output": res.output}) + "\n")
    return res.exit_code, text


def sets(*overrides: str) -> list[str]:
    out: list[str] = []
    for o in overrides:
        out += ["--set", o]
    return out


def png(path: Path, color: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


def noisy_bytes(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def train_item(i: Any, image: str | None = "images/a.png", q: str = "<image>\nWhat colour is it?") -> dict:
    item: dict[str, Any] = {"id": i, "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": "red"}]}
    if image is not None:
        item["image"] = image
    return item


def test_item(i: Any, image: str | None = "images/a.png", text: str = "What colour is it?", answer: Any = "red") -> dict:
    item: dict[str, Any] = {"question_id": i, "text": text, "answer": answer}
    if image is not None:
        item["image"] = image
    return item


test_item.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def write_json(path: Path, items: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, indent=1))
    return path


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A valid llava-json task: data/train.json (4 items), data/test.json (3 items), data/images/a.png."""
    root = tmp_path / "data"
    png(root / "images" / "a.png")
    write_json(root / "train.json", [train_item(i) for i in range(4)])
    write_json(root / "test.json", [test_item(i) for i in range(3)])
    return root


def llava_config(path: Path, tasks: list[tuple[str, Path, Path]], **bench: Any) -> Path:
    """A run config (YAML) for the llava-json benchmark over ``(name, train, test)`` tasks."""
    spec = [{"name": n, "train": str(tr), "test": str(te)} for n, tr, te in tasks]
    path.write_text(yaml.safe_dump({"benchmark": {"name": "llava-json", "tasks_spec": spec, **bench}}))
    return path


def dry_run(model_dir: Path, cfg: Path, *overrides: str, case: str = "") -> tuple[int, str]:
    return invoke(["run", str(cfg), "--dry-run", *sets(f"model.path={model_dir}", *overrides)], case)


def check_data(model_dir: Path, data: Path, train: Path, test: Path, *overrides: str, case: str = "", **bench: Any):
    cfg = llava_config(data.parent / "run.yaml", [("t1", train, test)], **bench)
    return dry_run(model_dir, cfg, *overrides, case=case)


def run_args(model_dir: Path, out: Path, *extra: str, resume: bool = False) -> list[str]:
    return ["run", "--output", str(out), *(["--resume"] if resume else []),
            *sets(*quick_overrides(model_dir, ONE_THREAD, *extra))]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------- data files
def test_malformed_json_names_file_line_and_column(tiny_llava_dir: Path, data: Path) -> None:
    bad = data / "train.json"
    bad.write_text('[\n {"id": 0,\n  "image": "images/a.png"\n  "conversations": []}\n]\n')
    code, text = check_data(tiny_llava_dir, data, bad, data / "test.json", case="malformed JSON")
    assert code == 2
    assert f"{bad}: not valid JSON: Expecting ',' delimiter (line 4, column 3)" in text


def test_json_lines_in_a_json_file_get_a_hint(tiny_llava_dir: Path, data: Path) -> None:
    bad = write_jsonl(data / "train.json", [json.dumps(train_item(i)) for i in range(2)])
    code, text = check_data(tiny_llava_dir, data, bad, data / "test.json", case="JSONL named .json")
    assert code == 2 and "Extra data (line 2, column 1)" in text and "name the file .jsonl" in text


def test_malformed_jsonl_line_names_the_line(tiny_llava_dir: Path, data: Path) -> None:
    lines = [json.dumps(test_item(0)), '{"question_id": 1, "text": "What?"', json.dumps(test_item(2)), "{not json"]
    bad = write_jsonl(data / "test.jsonl", lines)
    code, text = check_data(tiny_llava_dir, data, data / "train.json", bad, case="malformed JSONL line")
    assert code == 2
    assert "2 data problem(s)" in text  # every bad line, not only the first
    assert f"{bad}, line 2: not valid JSON: Expecting ',' delimiter (column 35)" in text
    assert f"{bad}, line 4: not valid JSON: Expecting property name enclosed in double quotes (column 2)" in text


def test_missing_required_field(tiny_llava_dir: Path, data: Path) -> None:
    items = [train_item(0), {"id": 1, "image": "images/a.png"}, train_item(2)]
    del items[2]["id"]
    bad = write_json(data / "train.json", items)
    code, text = check_data(tiny_llava_dir, data, bad, data / "test.json", case="missing field")
    assert code == 2
    assert f"{bad}, item 1, field 'conversations': missing required field" in text
    assert f"{bad}, item 2, field 'id': missing required field" in text


def test_wrong_types_are_all_reported_together(tiny_llava_dir: Path, data: Path) -> None:
    items = [test_item([0]), test_item(1, text=7), test_item(2, answer=5), test_item(3, image=3)]
    bad = write_json(data / "test.json", items)
    code, text = check_data(tiny_llava_dir, data, data / "train.json", bad, case="wrong types")
    assert code == 2 and "4 data problem(s)" in text
    assert f"{bad}, item 0, field 'question_id': must be a string or an integer, got an array" in text
    assert f"{bad}, item 1, field 'text': must be a string, got a number" in text
    assert f"{bad}, item 2, field 'answer': must be a string or a list of strings, got a number 5" in text
    assert f"{bad}, item 3, field 'image': must be a string path, got a number" in text


def test_values_that_look_like_markup_are_shown_as_written(tiny_llava_dir: Path, data: Path) -> None:
    """A data value is printed literally: '[/red]' once crashed the error printer (rich markup)."""
    bad = write_json(data / "test.json", [test_item(0, answer={"[/red]": "[bold]x"})])
    code, text = check_data(tiny_llava_dir, data, data / "train.json", bad, case="markup-like value")
    assert code == 2
    assert "field 'answer': must be a string or a list of strings, got an object {'[/red]': '[bold]x'}" in text


def test_config_value_of_the_wrong_type(tiny_llava_dir: Path, data: Path) -> None:
    cfg = llava_config(data.parent / "run.yaml", [("t1", data / "train.json", data / "test.json")])
    cfg.write_text(cfg.read_text() + "train:\n  epochs: four\n")
    code, text = dry_run(tiny_llava_dir, cfg, "eval.batch_size=[8]", case="config wrong type")
    assert code == 2
    assert f"train.epochs ({cfg}, line " in text and "Input should be a valid number" in text and "(got 'four')" in text
    assert "eval.batch_size (--set eval.batch_size=[8]): Input should be a valid integer (got [8])" in text


def test_image_file_missing(tiny_llava_dir: Path, data: Path) -> None:
    bad = write_json(data / "train.json", [train_item(0), train_item(1, "images/nope.png"), train_item(2)])
    code, text = check_data(tiny_llava_dir, data, bad, data / "test.json", case="image missing")
    assert code == 2
    assert f"{bad}, item 1, field 'image': image file not found: {data / 'images' / 'nope.png'}" in text


def test_unreadable_or_truncated_images(tiny_llava_dir: Path, data: Path) -> None:
    images = data / "images"
    (images / "garbage.png").write_bytes(b"this is not an image")
    png_bytes, jpg_bytes = noisy_bytes("PNG"), noisy_bytes("JPEG")
    (images / "cut.png").write_bytes(png_bytes[: len(png_bytes) * 3 // 4])
    (images / "cut.jpg").write_bytes(jpg_bytes[: len(jpg_bytes) * 3 // 4])  # passes PIL's verify(): fixed
    (images / "ok.jpg").write_bytes(jpg_bytes)
    items = [test_item(0, "images/garbage.png"), test_item(1, "images/cut.png"), test_item(2, "images/cut.jpg"),
             test_item(3, "images/ok.jpg")]
    bad = write_json(data / "test.json", items)
    code, text = check_data(tiny_llava_dir, data, data / "train.json", bad, case="broken images")
    assert code == 2 and "3 data problem(s)" in text
    assert (f"{bad}, item 0, field 'image': image {images / 'garbage.png'} is unreadable or truncated "
            "(UnidentifiedImageError: cannot identify image file") in text
    assert f"{bad}, item 1, field 'image': image {images / 'cut.png'} is unreadable or truncated (OSError: Truncated File Read)" in text
    assert f"{bad}, item 2, field 'image': image {images / 'cut.jpg'} is unreadable or truncated (OSError: image file is truncated" in text
    assert "item 3" not in text


def test_broken_image_with_checks_off_still_names_the_file(tiny_llava_dir: Path, data: Path) -> None:
    """``check_images: false`` skips the up-front check; the image then fails where it is read, by name."""
    jpg = noisy_bytes("JPEG")
    (data / "images" / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    bad = write_json(data / "train.json", [train_item(0, "images/cut.jpg"), train_item(1)])
    code, text = check_data(tiny_llava_dir, data, bad, data / "test.json", case="broken image, checks off",
                            check_images=False)
    assert code == 2
    assert "task 't1' (train): cannot encode a sample" in text
    assert (f"{data / 'images' / 'cut.jpg'}: image of sample '0' (task 't1') cannot be read "
            "(OSError: image file is truncated") in text


def test_empty_task_file(tiny_llava_dir: Path, data: Path) -> None:
    empty = write_json(data / "empty.json", [])
    code, text = check_data(tiny_llava_dir, data, empty, data / "test.json", case="zero-sample task file")
    assert code == 2 and f"{empty}: task 't1' has no samples" in text


def test_task_left_without_training_samples_is_refused_before_anything_is_written(
    tiny_llava_dir: Path, data: Path, tmp_path: Path
) -> None:
    cfg = llava_config(tmp_path / "run.yaml", [("t1", data / "train.json", data / "test.json")])
    out = tmp_path / "out"
    code, text = invoke(["run", str(cfg), "--output", str(out),
                         *sets(f"model.path={tiny_llava_dir}", "benchmark.train_per_task=0")], "zero training samples")
    assert code == 2
    assert "benchmark 'llava-json': task(s) 't1' have no training samples, and method 'lora-ft' trains on them" in text
    assert not out.exists()  # refused before the zero-shot evaluation, not after it
    code, text = dry_run(tiny_llava_dir, cfg, "benchmark.test_per_task=0", case="zero test samples")
    assert code == 2 and "benchmark 'llava-json': task 't1' has no test samples" in text


def test_hf_dataset_table_with_a_missing_column(tiny_llava_dir: Path, data: Path, tmp_path: Path) -> None:
    rows = [{"question_id": i, "image": "images/a.png", "question": "What colour?", "answer": "red"} for i in range(3)]
    good = write_jsonl(data / "test.jsonl", [json.dumps(r) for r in rows])
    del rows[1]["answer"]
    table = write_jsonl(data / "train.jsonl", [json.dumps(r) for r in rows])
    cfg = tmp_path / "hf.yaml"
    cfg.write_text(yaml.safe_dump({"benchmark": {"name": "hf-dataset", "tasks_spec": [
        {"name": "t1", "train": str(table), "test": str(good)}]}}))
    code, text = dry_run(tiny_llava_dir, cfg, case="hf-dataset missing column")
    assert code == 2 and f"1 data problem(s): - {table}, line 2, field 'answer': missing required field" in text


def test_duplicate_question_id(tiny_llava_dir: Path, data: Path) -> None:
    bad = write_json(data / "test.json", [test_item("q1"), test_item("q2"), test_item("q1")])
    code, text = check_data(tiny_llava_dir, data, data / "train.json", bad, case="duplicate question_id")
    assert code == 2
    assert f"{bad}, item 2, field 'question_id': duplicate question_id 'q1' (first at item 0)" in text


def test_image_token_count_must_match_the_images(tiny_llava_dir: Path, data: Path) -> None:
    train = write_json(data / "train.json", [
        train_item(0),
        train_item(1, q="<image>\n<image>\nWhat colour?"),  # two tokens, one image
        train_item(2, q="What colour?"),  # an image, no token
        train_item(3, image=None, q="<image>\nWhat colour?"),  # a token, no image
    ])
    test = write_json(data / "test.json", [test_item(0), test_item(1, text="<image> <image> What?")])
    code, text = check_data(tiny_llava_dir, data, train, test, case="<image> count")
    assert code == 2 and "4 data problem(s)" in text
    assert f"{train}, item 1, field 'conversations': 2 '<image>' tokens but the item has 1 image" in text
    assert (f"{train}, item 2, field 'conversations[0].value': the item has an image but no '<image>' token; "
            "put one in the first human turn") in text
    assert (f"{train}, item 3, field 'conversations[0].value': text-only item (no 'image' field) has 1 '<image>' "
            "token(s); expected none") in text
    assert f"{test}, item 1, field 'text': 2 '<image>' tokens but the item has 1 image" in text


def test_answer_missing_or_empty_in_test_data(tiny_llava_dir: Path, data: Path) -> None:
    items = [test_item(0), test_item(1, answer=""), test_item(2, answer=[]), test_item(3)]
    del items[3]["answer"]
    bad = write_json(data / "test.json", items)
    code, text = check_data(tiny_llava_dir, data, data / "train.json", bad, case="answer missing")
    assert code == 2 and "3 data problem(s)" in text
    assert f"{bad}, item 1, field 'answer': empty answer" in text
    assert f"{bad}, item 2, field 'answer': empty answer (an empty list)" in text
    assert f"{bad}, item 3, field 'answer': missing required field" in text


# ---------------------------------------------------------------------- names and keys
def _valid(kind: str) -> str:
    """The registered names of ``kind``, as the message lists them (sorted)."""
    from mmcl.benchmarks.builtin import benchmark_names
    from mmcl.eval.scorers import SCORERS
    from mmcl.methods import METHODS

    return ", ".join({"benchmark": benchmark_names, "method": METHODS.names, "scorer": SCORERS.names}[kind]())


@pytest.mark.parametrize(
    ("override", "expected", "kind"),
    [
        ("benchmark.name=llava-jsn", "unknown benchmark 'llava-jsn'. Did you mean 'llava-json'? Valid benchmarks: ",
         "benchmark"),
        ("method.name=lora_ft", "unknown method 'lora_ft'. Did you mean 'lora-ft'? Valid methods: ", "method"),
        ("benchmark.scorers=[exact]", "benchmark 'llava-json', task 'data': unknown scorer 'exact'. "
                                      "Did you mean 'exact_match'? Valid: ", "scorer"),
    ],
    ids=["benchmark", "method", "scorer"],
)
def test_unknown_names_list_the_valid_ones(
    override: str, expected: str, kind: str, tiny_llava_dir: Path, data: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"benchmark": {"name": "llava-json", "data_root": str(tmp_path), "task_names": ["data"]}}))
    code, text = dry_run(tiny_llava_dir, cfg, override, case=f"unknown name: {override}")
    assert code == 2 and expected + _valid(kind) in text


def test_unknown_scorer_when_rescoring(tiny_llava_dir: Path, tmp_path: Path) -> None:
    code, text = invoke(["rescore", str(tmp_path), "--scorer", "exact"], "rescore unknown scorer")
    assert code == 2
    assert "unknown scorer 'exact'. Did you mean 'exact_match'? Valid scorers: box_f1, chartqa_relaxed, cnext_edit, cnext_grounding" in text


def test_unknown_config_key_names_it_and_suggests(tiny_llava_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("name: demo\ntrain:\n  lr: 0.001\n  epoch: 3\n")
    code, text = invoke(["run", str(cfg), "--dry-run"], "unknown config key in a file")
    assert code == 2
    assert (f"{cfg}, line 4: unknown config key 'train.epoch'. Did you mean 'epochs'? "
            "Valid keys: epochs, max_steps, batch_size") in text
    code, text = invoke(["run", "--dry-run", "--set", "train.learning_rate=0.1"], "unknown config key, --set")
    assert code == 2
    assert "--set train.learning_rate=0.1: unknown config key 'train.learning_rate'. Did you mean 'lr'?" in text
    code, text = invoke(["run", "--dry-run", "--set", "trian.lr=0.1"], "unknown section")
    assert code == 2 and "unknown config key 'trian'. Did you mean 'train'? Valid keys: name, seed, benchmark" in text


def test_unknown_benchmark_and_method_options(tiny_llava_dir: Path, data: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"benchmark": {"name": "llava-json", "data_rot": str(tmp_path)}}))
    code, text = dry_run(tiny_llava_dir, cfg, case="unknown benchmark option")
    assert code == 2 and "unknown option 'data_rot'. Did you mean 'data_root'? Valid options: tasks_spec, data_root" in text
    code, text = invoke(["run", "--dry-run", *sets("method.name=replay", "method.memory_per_tsk=5")], "unknown method option")
    assert code == 2
    assert ("method 'replay': method.memory_per_tsk: Extra inputs are not permitted. Valid options: memory_per_task, "
            "memory_total, selection, ratio. Did you mean 'method.memory_per_task'?") in text
    code, text = invoke(["run", "--dry-run", *sets("method.rank=8")], "LoRA key under method")
    assert code == 2 and "Valid options: (none). Did you mean 'model.lora_rank'?" in text


def test_task_order_naming_an_unknown_task(tiny_llava_dir: Path) -> None:
    code, text = invoke(["run", "--dry-run", *sets(f"model.path={tiny_llava_dir}",
                                                    "benchmark.order=[indoor.countng, underwater.counting]")],
                        "unknown task in order")
    assert code == 2
    assert ("benchmark.order: unknown task 'indoor.countng'. Did you mean 'indoor.counting'? "
            "Valid: high-altitude.counting, high-altitude.category") in text


# ---------------------------------------------------------------------- the model
def test_model_dir_without_processor(tiny_llava_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "no-processor"
    d.mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(tiny_llava_dir / f, d / f)
    code, text = invoke(["run", "--dry-run", "--set", f"model.path={d}"], "model dir without processor")
    assert code == 2
    assert f"{d}: cannot load the processor (tokenizer + image processor)" in text
    assert "save them with processor.save_pretrained" in text


def test_hub_id_without_local_copy_is_not_downloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, text = invoke(["run", "--dry-run", "--set", "model.path=llava-hf/llava-1.5-7b-hf"], "hub id, offline")
    assert code == 2
    assert "'llava-hf/llava-1.5-7b-hf'" in text
    assert "no such local directory" in text or "not available locally" in text
    assert "never downloads" in text or "nothing is downloaded" in text
    assert "huggingface-cli download" in text  # and how to get a local copy


# ---------------------------------------------------------------------- the output directory
def test_output_dir_not_writable(tiny_llava_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "run"
    code, text = invoke(run_args(tiny_llava_dir, out), "output under a file")
    assert code == 2
    assert f"output directory {out} is not writable: [Errno 20] Not a directory" in text
    assert blocker.read_text() == "not a directory"


def test_output_dir_read_only(tiny_llava_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory the user may not write to. Root writes anyway, so the kernel's answer
    (EACCES) is simulated at the mkdir of the run directory; as another user, chmod is real."""
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    if os.geteuid() == 0:
        real_mkdir = Path.mkdir

        def mkdir(self: Path, *args: object, **kwargs: object) -> None:
            if self == parent / "run":
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Path, "mkdir", mkdir)
    try:
        code, text = invoke(run_args(tiny_llava_dir, parent / "run"), "read-only output")
    finally:
        parent.chmod(0o755)
    assert code == 2 and f"output directory {parent / 'run'} is not writable: [Errno 13] Permission denied" in text
    assert not (parent / "run").exists()


def _disk_full_at(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make fsync fail with ENOSPC while mmcl writes the file called ``name`` (atomic writes fsync a temp file)."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to tell which file is written")
@pytest.mark.parametrize(
    ("name", "finished"),
    [("results.json", 3), ("stage-02.json", 1)],
    ids=["writing-results", "writing-a-stage-marker"],
)
def test_disk_full_keeps_what_was_written_and_resume_finishes(
    name: str, finished: int, tiny_llava_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _disk_full_at(m, name)
        code, text = invoke(run_args(tiny_llava_dir, out), f"disk full at {name}")
    assert code == 2
    target = out / "results.json" if name == "results.json" else out / "stages" / name
    assert f"[Errno 28] No space left on device: '{target}'" in text
    assert f"Everything {out} holds so far is kept" in text and f"--resume --output {out}" in text
    # the earlier stages' files are whole: markers, their predictions, the checkpoint; no temp file left
    kept = snapshot(out)
    assert not target.exists() and not [k for k in kept if k.endswith(".tmp")]
    markers = sorted((out / "stages").glob("stage-*.json"))
    assert len(markers) == finished and all(json.loads(p.read_text())["scores"] for p in markers)
    for stage in range(1, finished + 1):
        assert len(list((out / "predictions" / f"stage-{stage:02d}").glob("*.jsonl"))) == 3
    assert read_manifest(out)["complete"] is False

    # space freed: the same command with --resume finishes, leaving what was there untouched
    code, text = invoke(run_args(tiny_llava_dir, out, resume=True), "")
    assert code == 0, text
    assert f"resuming {out}: {finished} stage(s) finished" in text
    assert (out / "results.json").is_file() and read_manifest(out)["complete"] is True
    after = snapshot(out)
    for k in kept:
        if k.startswith(("stages/", "predictions/")):
            assert after[k] == kept[k], k


def _saved_run_dir(tmp_path: Path, model_dir: Path, *extra: str) -> Path:
    """A run directory as an interrupted run leaves it: config.yaml, a stage marker, a prediction file."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(to_yaml(load_config(overrides=quick_overrides(model_dir, ONE_THREAD, *extra))))
    (out / "stages").mkdir()
    (out / "stages" / "stage-01.json").write_text('{"stage": 1}\n')
    (out / "predictions" / "stage-01").mkdir(parents=True)
    (out / "predictions" / "stage-01" / "t.jsonl").write_text('{"question_id": "0"}\n')
    return out


def test_resume_on_a_directory_from_another_config(tiny_llava_dir: Path, tmp_path: Path) -> None:
    out = _saved_run_dir(tmp_path, tiny_llava_dir, "seed=1")
    before = snapshot(out)
    code, text = invoke(run_args(tiny_llava_dir, out, "seed=2", "train.lr=0.01", resume=True), "resume, other config")
    assert code == 2
    assert (f"cannot resume {out}: it was written by a different config (seed: 1 in the saved config, 2 now; "
            "train.lr: 0.0005 in the saved config, 0.01 now); run with the same config, or use --output for a new run") in text
    assert "holds so far is kept" not in text  # nothing to continue: no resume hint
    assert snapshot(out) == before
    code, text = invoke(run_args(tiny_llava_dir, out, "seed=1"), "plain rerun into a run dir")
    assert code == 2 and f"{out} already holds a run (config.yaml); use --resume to continue it" in text
    assert snapshot(out) == before


# ---------------------------------------------------------------------- interrupted before any stage
def test_interrupted_before_anything_is_written(tiny_llava_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped while building the stream or loading the model: nothing is on disk, a rerun is a fresh start."""
    import mmcl.runner

    def interrupted(*a: Any, **k: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(mmcl.runner, "load_model", interrupted)
    out = tmp_path / "run"
    res = cli.invoke(app, run_args(tiny_llava_dir, out))
    assert res.exit_code != 0
    assert not out.exists()


@pytest.mark.slow
def test_interrupted_while_preparing_then_rerun(tiny_llava_dir: Path, tmp_path: Path) -> None:
    """Killed (SIGKILL) during the zero-shot evaluation, before any stage, while later test sets are not
    encoded yet: a plain rerun says to use --resume; --resume redoes only what is not complete, and the
    result equals an uninterrupted run. A leftover temp file and a cut-short predictions file are not
    taken for complete cells."""
    out = tmp_path / "run"
    env = {**os.environ, KILL_ENV: "eval:stage=0:task=1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, "-m", "mmcl.cli", *run_args(tiny_llava_dir, out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    zs = out / "predictions" / "zero-shot"
    assert sorted(p.name for p in zs.iterdir()) == ["high-altitude.attribute.jsonl"]
    assert read_manifest(out)["stage"] == 0 and not (out / "stages").exists()
    # what a kill during a write can leave (a temp file), and a predictions file cut short by hand
    (zs / ".underwater.existence.jsonl.abc123.tmp").write_text('{"question_id": "0", "predi')
    first = (zs / "high-altitude.attribute.jsonl").read_text().splitlines(keepends=True)
    (zs / "indoor.grounding.jsonl").write_text("".join(first[:2]))

    code, text = invoke(run_args(tiny_llava_dir, out), "rerun after an interrupted prepare")
    assert code == 2 and "already holds a run (config.yaml); use --resume to continue it" in text
    code, text = invoke(run_args(tiny_llava_dir, out, resume=True))
    assert code == 0, text
    ref = tmp_path / "reference"
    code, _ = invoke(run_args(tiny_llava_dir, ref))
    assert code == 0
    a, b = (json.loads((d / "results.json").read_text()) for d in (ref, out))
    assert b["matrix"] == a["matrix"] and b["zero_shot"] == a["zero_shot"] and b["metrics"] == a["metrics"]
    for p in sorted((ref / "predictions").rglob("*.jsonl")):
        assert (out / p.relative_to(ref)).read_text() == p.read_text(), p.name
