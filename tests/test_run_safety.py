"""Run safety, through the real CLI: every path stays inside the run directory, one writer per run,
no silent overwrite of a foreign directory, no resume on changed data, and bad data refused by
``--dry-run`` as strictly as by the run, with an ``error:`` line instead of a traceback.

Each test is one probe of issue 27 (a hostile but realistic user); the messages they see are the
ones listed in docs/troubleshooting.md ("Run directories, paths and data changes").
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import yaml
from conftest import quick_overrides
from PIL import Image
from test_bad_input import (
    ONE_THREAD,
    check_data,
    invoke,
    llava_config,
    png,
    run_args,
    sets,
    snapshot,
    test_item,
    train_item,
    write_json,
    write_jsonl,
)

import mmcl.checkpoint
from mmcl.checkpoint import read_manifest
from mmcl.rundir import DISPLACED_PREFIX, LOCK_FILE


def escaped_files(root: Path) -> list[Path]:
    """Anything named ESCAPED* under ``root`` (where a path escape would have written)."""
    return [p for p in root.rglob("*") if "ESCAPED" in p.name]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Two valid llava-json tasks: data/t1/{train,test}.json, data/t2/{train,test}.json, data/images/a.png."""
    root = tmp_path / "data"
    png(root / "images" / "a.png")
    for t in ("t1", "t2"):
        write_json(root / t / "train.json", [train_item(i, "../images/a.png") for i in range(4)])
        write_json(root / t / "test.json", [test_item(i, "../images/a.png") for i in range(3)])
    return root


def two_tasks(data: Path, path: Path) -> Path:
    return llava_config(path, [(t, data / t / "train.json", data / t / "test.json") for t in ("t1", "t2")])


def llava_run(model_dir: Path, cfg: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(cfg), "--output", str(out), *extra,
            *sets(f"model.path={model_dir}", ONE_THREAD, "train.max_steps=2", "train.batch_size=4", "eval.batch_size=4")]


def interrupt_at(monkeypatch: pytest.MonkeyPatch, event: str, stage: int, index: int) -> None:
    """Stop the run (an OSError, as a full disk would) right after the given point (see kill_if_asked)."""
    def stop(e: str, s: int, i: int) -> None:
        if (e, s, i) == (event, stage, index):
            raise OSError(f"interrupted at {event}:{stage}:{index}")

    monkeypatch.setattr(mmcl.checkpoint, "kill_if_asked", stop)


# ---------------------------------------------------------------------- names that would leave the run
def test_task_column_naming_a_path_is_refused(tiny_llava_dir: Path, tmp_path: Path) -> None:
    """hf-dataset: a task column value became predictions/<stage>/<task>.jsonl unchecked."""
    import datasets

    bad = "../../../../ESCAPED"
    rows = {"question_id": ["0", "1"], "question": ["What?", "Why?"], "answer": ["a", "b"], "task": ["ok", bad]}
    ds = datasets.Dataset.from_dict(rows)
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "ds"))
    cfg = tmp_path / "hf.yaml"
    cfg.write_text(yaml.safe_dump({"benchmark": {"name": "hf-dataset", "path": str(tmp_path / "ds"),
                                                 "fields": {"image": None, "task": "task"}}}))
    out = tmp_path / "a" / "b" / "run"
    code, text = invoke(["run", str(cfg), "--output", str(out), *sets(f"model.path={tiny_llava_dir}", ONE_THREAD)],
                        "task name from a column")
    assert code == 2
    assert (f"benchmark 'hf-dataset': task name '{bad}' cannot be used as a file name: it contains '/' "
            "(names become files in the run directory") in text
    assert not out.exists() and not escaped_files(tmp_path)


@pytest.mark.parametrize("bad", ["../../ESCAPED", "..", ".hidden", "a\\b", "a\x00b", "t\n1"])
def test_tasks_spec_name_that_is_not_a_file_name(tiny_llava_dir: Path, data: Path, tmp_path: Path, bad: str) -> None:
    cfg = llava_config(tmp_path / "run.yaml", [(bad, data / "t1" / "train.json", data / "t1" / "test.json")])
    code, text = invoke(["run", str(cfg), "--output", str(tmp_path / "run"),
                         *sets(f"model.path={tiny_llava_dir}", ONE_THREAD)], f"tasks_spec name {bad!r}")
    assert code == 2 and f"benchmark 'llava-json': task name {bad!r} cannot be used as a file name: it " in text
    assert not (tmp_path / "run").exists() and not escaped_files(tmp_path)


def test_run_name_with_a_path_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--set name=a/../../../escaped`` without --output put the run outside runs/."""
    monkeypatch.chdir(tmp_path)
    code, text = invoke(["run", *sets("name=a/../../../ESCAPED")], "run name with a path")
    assert code == 2
    assert ("error: --set name=a/../../../ESCAPED: name: the run name contains '/'; it becomes a folder "
            "name under runs/ (no '/', '\\', '..', NUL or control characters, no leading '.') "
            "(got 'a/../../../ESCAPED')") in text
    assert not (tmp_path / "runs").exists() and not escaped_files(tmp_path.parent)


# ---------------------------------------------------------------------- crafted results.json
def _crafted_run(tmp_path: Path, markup_task: bool = False) -> Path:
    """A finished run whose results.json was edited: a script as its seed, markup as its name."""
    from test_html_report import make_run

    from mmcl.benchmarks.builtin import build_benchmark
    from mmcl.config import load_config, to_yaml

    cfg = load_config(overrides=quick_overrides(tmp_path / "unused-model"))
    run = make_run(tmp_path, "run", build_benchmark(cfg), to_yaml(cfg), "lora-ft", 0,
                   [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], {})
    results = json.loads((run / "results.json").read_text())
    results["seed"] = "<script>alert(1)</script>"
    results["name"] = "<img src=x onerror=alert(2)>"
    if markup_task:  # a task name with markup (a valid file name: no '/')
        old, new = results["tasks"][2], "<b onmouseover=alert(3)>t`x"
        results["tasks"][2] = new
        for key in ("scorers", "scenarios"):
            results[key][new] = results[key].pop(old)
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_crafted_results_are_escaped_in_html_and_markdown(tmp_path: Path) -> None:
    run = _crafted_run(tmp_path, markup_task=True)
    code, text = invoke(["report", "--html", str(tmp_path / "page.html"), str(run)])
    assert code == 0, text
    page = (tmp_path / "page.html").read_text()
    assert "<script" not in page and "<img src=x" not in page and "<b onmouseover" not in page
    assert "&lt;b onmouseover=alert(3)&gt;t`x" in page
    assert "(seed &lt;script&gt;alert(1)&lt;/script&gt;)" in page
    code, text = invoke(["report", str(run)])
    assert code == 0, text
    md = (run / "report.md").read_text()
    outside_code = re.sub(r"(`+).*?\1", "", md)  # a code span shows its text literally
    assert not re.findall(r"(?<!\\)<", outside_code)  # every other '<' is backslash-escaped
    assert "| T3 | ``<b onmouseover=alert(3)>t`x`` |" in md  # a code span: shown literally
    assert md.startswith(r"# \<img src=x onerror=alert\(2\)\>: `lora-ft` on `msvqa-synth` (seed \<script\>alert\(1\)\</script\>)")


def test_rescore_refuses_task_names_that_leave_the_run(tmp_path: Path) -> None:
    """rescore rewrote predictions/<stage>/<task>.jsonl for every task named in results.json."""
    run = _crafted_run(tmp_path)
    results = json.loads((run / "results.json").read_text())
    results["tasks"][0] = "../../../ESCAPED"
    (run / "results.json").write_text(json.dumps(results))
    before = snapshot(run)
    code, text = invoke(["rescore", str(run), "--scorer", "token_f1"], "rescore, task name with a path")
    assert code == 2
    assert f"{run / 'results.json'}: task name '../../../ESCAPED' cannot be used as a file name: it contains '/'" in text
    assert snapshot(run) == before and not escaped_files(tmp_path)


def test_rescore_refuses_a_symlink_out_of_the_run(tmp_path: Path) -> None:
    """A predictions folder that is a link to elsewhere: rescore would rewrite files outside the run."""
    run = _crafted_run(tmp_path)
    results = json.loads((run / "results.json").read_text())
    results["zero_shot"] = None  # no zero-shot predictions in this fake run
    (run / "results.json").write_text(json.dumps(results))
    elsewhere = tmp_path / "elsewhere"
    (run / "predictions" / "stage-01").rename(elsewhere)
    (run / "predictions" / "stage-01").symlink_to(elsewhere)
    code, text = invoke(["rescore", str(run), "--scorer", "token_f1"], "rescore through a symlink")
    assert code == 2 and "refusing to use" in text and f"outside the run directory {run}" in text


# ---------------------------------------------------------------------- one writer per run
def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the first run ended (rc {proc.returncode}) before the check: {proc.stderr.read()[-3000:]}")
        if time.time() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.mark.slow
def test_second_writer_is_refused_while_a_run_holds_the_directory(tiny_llava_dir: Path, tmp_path: Path) -> None:
    """Two real processes race on one --output: the first (a subprocess) takes the lock; a plain run and
    a --resume from this process are refused naming it; the first finishes intact and leaves no lock."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    first = subprocess.Popen([sys.executable, "-m", "mmcl.cli", *run_args(tiny_llava_dir, out, "train.max_steps=30")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / LOCK_FILE).is_file() and (out / LOCK_FILE).read_text().strip(), first)
        holder = json.loads((out / LOCK_FILE).read_text())
        assert holder["pid"] == first.pid and holder["command"] == "mmcl run"
        code, text = invoke(run_args(tiny_llava_dir, out, "train.max_steps=30"), "second plain run on a running dir")
        assert code == 2
        assert (f"{out} is in use by mmcl run (pid {first.pid} on {holder['host']}, started {holder['started']}), "
                f"which holds {out / LOCK_FILE}; wait for it to finish (or stop it), or use another --output") in text
        _wait_for(lambda: (out / "config.yaml").is_file(), first)
        code, text = invoke(run_args(tiny_llava_dir, out, "train.max_steps=30", resume=True), "--resume on a running dir")
        assert code == 2 and f"is in use by mmcl run (pid {first.pid}" in text
        assert first.poll() is None, "the first run ended before the second writers were tried"
        _, err = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["stages_complete"] == 3 and read_manifest(out)["complete"] is True
    assert len(list((out / "stages").glob("stage-*.json"))) == 3 and not (out / LOCK_FILE).exists()
    assert "is in use" not in err  # the first run saw nothing of the refused ones


@pytest.mark.slow
def test_two_plain_runs_started_together_on_one_output(tiny_llava_dir: Path, tmp_path: Path) -> None:
    """The probe as found: two plain runs started at once on one new --output. One runs to the end;
    the other is refused (by the lock, or, when it starts late, because the directory holds a run)."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, "-m", "mmcl.cli", *run_args(tiny_llava_dir, out, "train.max_steps=10")]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], errs
    loser = " ".join(errs[codes.index(2)].split())
    assert f"error: {out} is in use by mmcl run (pid {procs[codes.index(0)].pid} on " in loser or (
        f"error: {out} already holds a run (config.yaml); use --resume to continue it" in loser), loser
    assert json.loads((out / "results.json").read_text())["stages_complete"] == 3
    assert read_manifest(out)["complete"] is True and not (out / LOCK_FILE).exists()


def test_lock_names_the_holder_and_is_released_with_the_process(tmp_path: Path) -> None:
    """The lock is the kernel's: a holder that dies (even by SIGKILL) no longer blocks anyone."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from mmcl.rundir import RunLock; RunLock(sys.argv[1], 'mmcl run').acquire(); "
        "print('locked', flush=True); time.sleep(600)"), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        from mmcl.rundir import RunLock, RunLockedError

        with pytest.raises(RunLockedError, match=rf"is in use by mmcl run \(pid {holder.pid} on "):
            RunLock(out).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(out):  # the kernel released it
        pass
    assert not (out / LOCK_FILE).exists()


# ---------------------------------------------------------------------- a directory that is not a run
@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
def test_foreign_directory_is_refused_and_force_moves_clashing_files_aside(tiny_llava_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("# my own notes\n")
    (out / "results.json").write_text('{"mine": true}\n')
    (out / "notes.txt").write_text("keep me\n")
    before = snapshot(out)
    code, text = invoke(run_args(tiny_llava_dir, out), "foreign output directory")
    assert code == 2
    assert (f"{out} is not empty and is not an mmcl run directory (it holds notes.txt, report.md, results.json); "
            "the run would overwrite report.md, results.json. Use a new or empty --output, or add --force") in text
    assert snapshot(out) == before
    code, text = invoke([*run_args(tiny_llava_dir, out), "--force"], "")
    assert code == 0, text
    moved = [p for p in out.iterdir() if p.name.startswith(DISPLACED_PREFIX)]
    assert len(moved) == 1
    assert f"--force: moved report.md, results.json (names the run writes) from {out} into {moved[0]}/; left in place: notes.txt" in text
    assert (moved[0] / "report.md").read_text() == "# my own notes\n"
    assert (moved[0] / "results.json").read_text() == '{"mine": true}\n'
    assert (out / "notes.txt").read_text() == "keep me\n"
    assert json.loads((out / "results.json").read_text())["stages_complete"] == 3


# ---------------------------------------------------------------------- data changed before --resume
def test_resume_refuses_changed_data(tiny_llava_dir: Path, data: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, out = two_tasks(data, tmp_path / "run.yaml"), tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_at(m, "eval", 0, 1)  # after the first zero-shot cell
        code, text = invoke(llava_run(tiny_llava_dir, cfg, out), "")
    assert code == 2 and "interrupted at eval:0:1" in text
    assert set(read_manifest(out)["data"]) == {str(data / t / f) for t in ("t1", "t2") for f in ("train.json", "test.json")}
    edited = data / "t2" / "test.json"
    write_json(edited, [test_item(i, "../images/a.png", text="What shape is it?") for i in range(3)])
    before = snapshot(out)
    code, text = invoke(llava_run(tiny_llava_dir, cfg, out, "--resume"), "data edited before --resume")
    assert code == 2
    assert (f"cannot resume {out}: the data changed since the run started, so its finished cells and the ones "
            f"still to evaluate would not be on the same data: - {edited}: changed (size ") in text
    assert "Put the data back as it was, or start a new run (another --output) on the new data." in text
    assert snapshot(out) == before


def test_verify_data_compares_contents(tiny_llava_dir: Path, data: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With --verify-data a file touched (or copied back) with the same content is accepted; a changed
    one of the same size is refused."""
    cfg, out = two_tasks(data, tmp_path / "run.yaml"), tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_at(m, "eval", 0, 1)
        code, _ = invoke(llava_run(tiny_llava_dir, cfg, out, "--verify-data"))
    assert code == 2 and all("sha256" in v for v in read_manifest(out)["data"].values())
    f = data / "t1" / "train.json"
    original = f.read_bytes()
    f.write_bytes(original.replace(b"What colour", b"What colors"))  # same size, other content
    code, text = invoke(llava_run(tiny_llava_dir, cfg, out, "--resume", "--verify-data"), "same size, other content")
    assert code == 2 and f"- {f}: content changed (SHA-256 differs; size {len(original)} -> {len(original)} bytes)" in text
    f.write_bytes(original)  # back as it was, with a new modification time
    code, text = invoke(llava_run(tiny_llava_dir, cfg, out, "--resume"))
    assert code == 0, text
    assert json.loads((out / "results.json").read_text())["stages_complete"] == 2


# ---------------------------------------------------------------------- damaged files: messages, not tracebacks
@pytest.mark.parametrize("name", ["model.safetensors", "method.pt"])
def test_truncated_checkpoint_on_resume(tiny_llava_dir: Path, data: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    cfg, out = two_tasks(data, tmp_path / "run.yaml"), tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_at(m, "eval", 1, 1)  # stage 1 trained and checkpointed
        code, _ = invoke(llava_run(tiny_llava_dir, cfg, out))
    assert code == 2
    f = out / "checkpoint" / "stage-01" / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    code, text = invoke(llava_run(tiny_llava_dir, cfg, out, "--resume"), f"truncated {name}")
    assert code == 2
    assert f"cannot resume {out}: checkpoint file {f} cannot be read (" in text
    assert "it is damaged or cut short (a full disk, a copy interrupted), so the trained state of stage 1 is lost" in text


def test_truncated_model_weights(tiny_llava_dir: Path, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "cut-model"
    shutil.copytree(tiny_llava_dir, d)
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, text = invoke(["run", "--dry-run", "--set", f"model.path={d}"], "truncated model weights")
    assert code == 2
    assert (f"{d}: cannot load the model weights: a weights file is damaged or cut short ({weights}; "
            "SafetensorError: ") in text and "copy the checkpoint again" in text


def test_deeply_nested_json(tiny_llava_dir: Path, data: Path) -> None:
    deep = data / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    lines = write_jsonl(data / "deep.jsonl", [json.dumps(test_item(0)), "[" * 100_000 + "]" * 100_000])
    code, text = check_data(tiny_llava_dir, data, deep, lines, case="deeply nested JSON")
    assert code == 2 and "2 data problem(s)" in text
    assert (f"{deep}: not readable: its JSON is nested too deeply (more levels of arrays/objects than Python "
            "can read)") in text
    assert f"{lines}, line 2: not readable: its JSON is nested too deeply" in text


# ---------------------------------------------------------------------- --dry-run as strict as the run
def test_lone_surrogates_are_refused_by_file_item_and_field(tiny_llava_dir: Path, data: Path) -> None:
    train = data / "train.json"
    items = [train_item(0, "images/a.png"), train_item(1, "images/a.png", q="<image>\nWhat \\ud800 colour?")]
    train.write_text(json.dumps(items).replace("\\\\ud800", "\\ud800"))
    test = data / "test.jsonl"
    write_jsonl(test, [json.dumps(test_item(0, "images/a.png")),
                       json.dumps(test_item(1, "images/a.png", answer=["red", "x\\udfff"])).replace("\\\\udfff", "\\udfff")])
    code, text = check_data(tiny_llava_dir, data, train, test, case="lone surrogate")
    assert code == 2 and "2 data problem(s)" in text
    assert (f"{train}, item 1, field 'conversations[0].value': holds a lone surrogate (an unpaired \\ud800-\\udfff "
            "escape): not valid Unicode text, which no tokenizer can encode; fix the escape or remove the character") in text
    assert f"{test}, line 2, field 'answer[1]': holds a lone surrogate" in text


@pytest.mark.parametrize(("question", "expected"), [
    ("What colour? " + "a" * 1_000_000, "the prompt is 1,000,0"),  # refused before it is tokenized
    ("What colour? " + "word " * 700, "the prompt is "),
], ids=["1MB", "700-words"])
def test_prompt_longer_than_the_context(tiny_llava_dir: Path, data: Path, tmp_path: Path,
                                        question: str, expected: str) -> None:
    test = write_json(data / "test.json", [test_item(0), test_item(1, text=question)])
    train = write_json(data / "train.json", [train_item(i) for i in range(2)])
    code, text = check_data(tiny_llava_dir, data, train, test, case=f"prompt too long ({len(question)} characters)")
    assert code == 2
    assert f"task 't1', sample '1', field 'question': {expected}" in text
    assert "more than the model's context of 512 positions" in text or "far more than the model's context of 512" in text
    assert f"(the question is {len(question.strip()):,} characters); shorten it or leave the item out" in text
    # the run refuses it too, before it writes anything
    cfg = llava_config(tmp_path / "run2.yaml", [("t1", train, test)])
    out = tmp_path / "out"
    code, text = invoke(["run", str(cfg), "--output", str(out), *sets(f"model.path={tiny_llava_dir}", ONE_THREAD)])
    assert code == 2 and f"task 't1', sample '1', field 'question': {expected}" in text
    assert not out.exists()


def _png_with_corrupt_zlib() -> bytes:
    """A PNG whose chunks all have valid CRCs but whose compressed pixel data is garbage
    (PIL's ``verify()`` checks only the CRCs)."""
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, "PNG")
    raw, out, pos = buf.getvalue(), bytearray(buf.getvalue()[:8]), 8
    while pos < len(raw):
        (n,) = struct.unpack(">I", raw[pos:pos + 4])
        kind, body = raw[pos + 4:pos + 8], raw[pos + 8:pos + 8 + n]
        if kind == b"IDAT":
            body = body[:2] + bytes(b ^ 0x5A for b in body[2:])
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        pos += 12 + n
    return bytes(out)


def test_image_that_verifies_but_does_not_decode(tiny_llava_dir: Path, data: Path) -> None:
    bad = data / "images" / "zlib.png"
    bad.write_bytes(_png_with_corrupt_zlib())
    with Image.open(bad) as im:
        im.verify()  # what --dry-run used to rely on
    test = write_json(data / "test.json", [test_item(0), test_item(1, "images/zlib.png")])
    code, text = check_data(tiny_llava_dir, data, write_json(data / "train.json", [train_item(i) for i in range(2)]),
                            test, case="PNG with corrupt zlib data")
    assert code == 2 and f"{test}, item 1, field 'image': image {bad} is unreadable or truncated (" in text


def test_huge_image_is_refused_by_the_pixel_limit(tiny_llava_dir: Path, data: Path) -> None:
    big = data / "images" / "big.png"
    Image.new("1", (10_000, 10_000)).save(big)  # 100 million pixels, a few kB on disk
    train = write_json(data / "train.json", [train_item(0), train_item(1, "images/big.png")])
    test = write_json(data / "test.json", [test_item(0)])
    limit = ("is 10000x10000 = 100,000,000 pixels, over the limit of 40,000,000 (benchmark.max_image_pixels; "
             "resize the image, or raise the limit)")
    code, text = check_data(tiny_llava_dir, data, train, test, case="10000x10000 image")
    assert code == 2 and f"{train}, item 1, field 'image': image {big} {limit}" in text
    # PIL's own warning (it warns past 89 M pixels) is silenced where mmcl opens images: its limit is in charge
    import warnings

    from mmcl.data.sample import open_image

    for opener, warned in ((Image.open, True), (open_image, False)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with opener(big) as im:
                assert im.size == (10_000, 10_000)
        assert any(issubclass(w.category, Image.DecompressionBombWarning) for w in seen) is warned
    # with the up-front image check off, the image is refused where it is loaded, before it is decoded
    code, text = check_data(tiny_llava_dir, data, write_json(data / "train2.json", [train_item(1, "images/big.png")]),
                            test, case="10000x10000 image, checks off", check_images=False)
    assert code == 2 and f"{big}: image of sample '1' (task 't1') cannot be read (ValueError: image {limit})" in text
    # the limit is an option
    code, text = check_data(tiny_llava_dir, data, data / "train.json", test, "benchmark.max_image_pixels=32",
                            case="pixel limit lowered")
    assert code == 2 and f"image {data / 'images' / 'a.png'} is 8x8 = 64 pixels, over the limit of 32 (benchmark.max_image_pixels" in text


def test_image_past_pils_own_bomb_guard_gets_the_same_message(tiny_llava_dir: Path, data: Path) -> None:
    """PIL refuses to open an image over 179 M pixels before mmcl sees its size: still one clear line."""
    huge = data / "images" / "huge.png"
    Image.new("1", (20_000, 10_000)).save(huge)  # 200 million pixels, a few kB on disk
    train = write_json(data / "train.json", [train_item(0), train_item(1, "images/huge.png")])
    test = write_json(data / "test.json", [test_item(0)])
    code, text = check_data(tiny_llava_dir, data, train, test, case="20000x10000 image")
    assert code == 2 and f"{train}, item 1, field 'image': image {huge} is unreadable or truncated (ValueError: image is " \
        "too large to open (Image size (200000000 pixels) exceeds limit" in text, text
    assert "benchmark.max_image_pixels is 40,000,000 pixels" in text
    code, text = check_data(tiny_llava_dir, data, write_json(data / "train2.json", [train_item(1, "images/huge.png")]),
                            test, case="20000x10000 image, checks off", check_images=False)
    assert code == 2 and f"{huge}: image of sample '1' (task 't1') cannot be read (ValueError: image is too large" in text


def test_valid_data_still_passes_the_dry_run(tiny_llava_dir: Path, data: Path) -> None:
    code, text = check_data(tiny_llava_dir, data / "t1", data / "t1" / "train.json", data / "t1" / "test.json")
    assert code == 0, text
    assert "dry run: config, data and model are valid" in text
