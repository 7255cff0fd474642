"""``mmcl run --resume``: a run killed (SIGKILL) mid-training and mid-evaluation, resumed, equals an uninterrupted one.

Each interrupted run is a real ``python -m mmcl.cli run`` subprocess that kills itself at a set
point through the ``MMCL_TEST_KILL_AT`` test hook (see mmcl.checkpoint). Equality is exact (CPU,
one thread): the results.json matrices, zero-shot row and metrics, every prediction file, the
stages' training losses, and the final checkpoint's tensors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import quick_overrides
from safetensors.torch import load_file
from typer.testing import CliRunner

from mmcl.checkpoint import (
    KILL_ENV,
    RunDirError,
    TrainableTracker,
    inspect_run_dir,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
)
from mmcl.cli import app
from mmcl.config import load_config, to_yaml
from mmcl.runner import Runner

pytestmark = pytest.mark.slow

cli = CliRunner()
ONE_THREAD = "train.num_threads=1"  # the same float reductions in the subprocesses and in pytest


def _args(model_dir: Path, out: Path, *extra: str, resume: bool = False) -> list[str]:
    args = ["run", "--output", str(out)] + (["--resume"] if resume else [])
    for o in quick_overrides(model_dir, ONE_THREAD, *extra):
        args += ["--set", o]
    return args


def _killed_run(model_dir: Path, out: Path, kill_at: str, *extra: str, resume: bool) -> None:
    """``mmcl run`` in a subprocess that must die by SIGKILL at ``kill_at``."""
    env = {**os.environ, KILL_ENV: kill_at, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(
        [sys.executable, "-m", "mmcl.cli", *_args(model_dir, out, *extra, resume=resume)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, f"not killed at {kill_at}:\n{proc.stderr[-3000:]}"


def _reference(model_dir: Path, out: Path, *extra: str) -> Path:
    return Runner(load_config(overrides=quick_overrides(model_dir, ONE_THREAD, *extra)), output_dir=out).run()


def _predictions(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): p.read_text() for p in sorted((run / "predictions").rglob("*.jsonl"))}


def _assert_same_run(ref: Path, resumed: Path) -> None:
    a = json.loads((ref / "results.json").read_text())
    b = json.loads((resumed / "results.json").read_text())
    assert b["matrix"] == a["matrix"]
    assert b["zero_shot"] == a["zero_shot"]
    assert b["metrics"] == a["metrics"]
    assert b["stages"] == a["stages"] and b["stages_complete"] == a["stages_complete"] == 3
    keep = ("steps", "train_samples", "tokens", "final_loss", "mean_loss", "trainable_params")
    assert [{k: s[k] for k in keep} for s in b["stage_stats"]] == [{k: s[k] for k in keep} for s in a["stage_stats"]]
    assert _predictions(resumed) == _predictions(ref)  # every generated answer, byte for byte
    wa = load_file(ref / "checkpoint" / "stage-03" / "model.safetensors")
    wb = load_file(resumed / "checkpoint" / "stage-03" / "model.safetensors")
    assert wa.keys() == wb.keys() and wa
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ewc: a method state (Fisher, anchors) through the checkpoint; mr-lora: adapters re-created on
# load, a second training pass per stage, extra matrix tracks reloaded from the saved cells;
# lora-ft: the plain case; mage: experts, gates and the PEMA average through the checkpoint
# (the last two run in CI's full suite, not in the `-m "not slow"` inner loop).
@pytest.mark.parametrize("method", ["ewc", "mr-lora", pytest.param("lora-ft", marks=pytest.mark.slow),
                                    pytest.param("mage", marks=pytest.mark.slow)])
def test_killed_twice_then_resumed_equals_uninterrupted(
    method: str, tiny_llava_dir: Path, tmp_path: Path
) -> None:
    extra = [f"method.name={method}"] + (["method.router_epochs=3"] if method == "mr-lora" else [])
    out = tmp_path / "resumed"
    # 1. killed in the middle of stage 2's training (stage 1 finished and checkpointed)
    _killed_run(tiny_llava_dir, out, "train:stage=2:step=2", *extra, resume=False)
    assert read_manifest(out)["stage"] == 1 and not (out / "stages" / "stage-02.json").exists()
    # 2. resumed: stage 2 trained again from its start, then killed after its 2nd evaluation cell
    _killed_run(tiny_llava_dir, out, "eval:stage=2:task=2", *extra, resume=True)
    assert read_manifest(out)["stage"] == 2 and not (out / "stages" / "stage-02.json").exists()
    assert len(list((out / "predictions" / "stage-02").glob("*.jsonl"))) == 2
    # 3. resumed in-process through the CLI: the 2 cells are reloaded, the rest evaluated and trained
    res = cli.invoke(app, _args(tiny_llava_dir, out, *extra, resume=True))
    assert res.exit_code == 0, res.output
    assert "1 stage(s) finished, stage 2 trained" in " ".join(res.output.split())
    _assert_same_run(_reference(tiny_llava_dir, tmp_path / "reference", *extra), out)
    if method == "ewc":  # the method's state went through the checkpoint: the Fisher is there
        state = torch.load(out / "checkpoint" / "stage-03" / "method.pt", weights_only=True)
        assert state["fishers"] and all(f.abs().sum() > 0 for f in state["fishers"][0].values())

    # a finished run resumed again does nothing and says so
    before = (out / "results.json").stat().st_mtime_ns
    res = cli.invoke(app, _args(tiny_llava_dir, out, *extra, resume=True))
    assert res.exit_code == 0, res.output
    assert "already complete" in " ".join(res.output.split())
    assert (out / "results.json").stat().st_mtime_ns == before


def _saved_config_dir(tmp_path: Path, model_dir: Path, *extra: str) -> Path:
    """A run directory as a started run leaves it: just its resolved config.yaml."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(to_yaml(load_config(overrides=quick_overrides(model_dir, ONE_THREAD, *extra))))
    return out


def test_resume_with_another_config_is_refused(tiny_llava_dir: Path, tmp_path: Path) -> None:
    out = _saved_config_dir(tmp_path, tiny_llava_dir, "seed=1")
    res = cli.invoke(app, _args(tiny_llava_dir, out, "seed=2", "train.lr=0.01", resume=True))
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "different config" in text and "seed: 1 in the saved config, 2 now" in text and "train.lr" in text
    assert not (out / "predictions").exists()  # nothing was mixed in


def test_a_key_added_since_the_run_started_keeps_its_default(tiny_llava_dir: Path, tmp_path: Path) -> None:
    """A run written by an earlier version (no `eval.drift_probe` in its config.yaml) resumes; the same
    key set away from its default now is a difference."""
    import yaml


    out = _saved_config_dir(tmp_path, tiny_llava_dir)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["eval"]["drift_probe"], saved["eval"]["drift_train_images"]
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = load_config(overrides=quick_overrides(tiny_llava_dir, ONE_THREAD))
    assert inspect_run_dir(out, cfg, resume=True) is not None
    changed = load_config(overrides=quick_overrides(tiny_llava_dir, ONE_THREAD, "eval.drift_probe=true"))
    with pytest.raises(RunDirError, match=r"eval.drift_probe: False in the saved config, True now"):
        inspect_run_dir(out, changed, resume=True)


def test_a_config_yaml_edited_after_the_checkpoint_is_refused(tiny_llava_dir: Path, tmp_path: Path) -> None:
    from mmcl.checkpoint import start_manifest

    out = _saved_config_dir(tmp_path, tiny_llava_dir, "seed=1")
    start_manifest(out, load_config(overrides=quick_overrides(tiny_llava_dir, ONE_THREAD, "seed=1")))
    edited = load_config(overrides=quick_overrides(tiny_llava_dir, ONE_THREAD, "seed=2"))
    (out / "config.yaml").write_text(to_yaml(edited))  # config.yaml now says seed 2, the manifest seed 1
    with pytest.raises(RunDirError, match="was config.yaml edited"):
        inspect_run_dir(out, edited, resume=True)


def test_plain_run_into_a_run_directory_is_refused(tiny_llava_dir: Path, tmp_path: Path) -> None:
    out = _saved_config_dir(tmp_path, tiny_llava_dir)
    res = cli.invoke(app, _args(tiny_llava_dir, out))
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "already holds a run" in text and "--resume" in text and "--output" in text
    res = cli.invoke(app, ["run", "--resume", "--set", f"model.path={tiny_llava_dir}"])  # where to?
    assert res.exit_code == 2 and "--output" in res.output


def test_olora_checkpoint_restores_frozen_adapters(tiny_llava_dir: Path, tmp_path: Path) -> None:
    """O-LoRA's frozen old adapter (not trainable, not in the base model) survives a save/restore."""
    from conftest import build_test_method, train_stage

    from mmcl.runner import seed_everything

    def fresh():
        seed_everything(0)
        method = build_test_method(tiny_llava_dir, "o-lora", setup=False)
        tracker = TrainableTracker(method.ctx.model)  # before setup, as the runner does
        seed_everything(method.ctx.seed)
        method.setup(method.ctx.model)
        return method, tracker

    trained, tracker = fresh()
    for t in range(2):
        train_stage(trained, t)
    save_checkpoint(tmp_path, trained.ctx.config, 2, "t", trained, tracker, {}, 0.0)
    saved = load_file(tmp_path / "checkpoint" / "stage-02" / "model.safetensors")
    assert any(".task_0." in k for k in saved) and any(".task_1." in k for k in saved)

    restored, tracker2 = fresh()
    assert load_checkpoint(tmp_path, read_manifest(tmp_path), restored, tracker2) == []
    want = dict(trained.model.named_parameters())
    got = dict(restored.model.named_parameters())
    assert want.keys() == got.keys()
    assert all(torch.equal(want[n], got[n]) and want[n].requires_grad == got[n].requires_grad for n in want)
    assert not any(p.requires_grad for n, p in got.items() if ".task_0." in n)  # the old adapter stays frozen
