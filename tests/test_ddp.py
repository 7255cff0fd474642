"""Runs under 2 processes (DDP, CPU, gloo) match the single-process runs.

One ``accelerate launch --config_file configs/accelerate/ddp-cpu.yaml`` starts this file as a
script on 2 processes; it runs ``mmcl run`` (the CLI, in-process) for lora-ft, ewc and replay
one after another, so that the processes start once. The same configs then run on one process
in pytest. Every process uses one thread (``train.num_threads=1``, ``OMP_NUM_THREADS=1``): the
same float reductions in both.

What must agree, and why:

* **Evaluation of identical weights is identical.** The zero-shot row evaluates the base model:
  every prediction file and score must be byte-for-byte the same. Each process generates whole
  batches cut exactly as one process cuts them, so every prompt sees the same padding.
* **Training with the same global batch agrees within float rounding.** ``train.batch_size`` is
  per process, so the 2-process runs use 4 (2 x 4 = 8 samples per update, the same 8 samples of
  the same shuffled order as one process with 8). What still differs: each process averages the
  loss over its own answer tokens and DDP averages the two means, where one process averages over
  all tokens (equal only when both halves hold as many answer tokens; here they almost always do:
  one-word, yes/no and fixed-format box answers), and the order of float additions. Measured on
  this config (lora-ft and ewc, 3 stages x 3 steps): logged losses differ by at most 5e-7, all 72
  predictions and so all metrics are identical. Asserted: losses within 1e-4; at least 90 % of the
  predictions identical; every matrix cell and metric within 1/6 (one of the 6 test answers of a
  task). The loss check also covers the LR schedule: accelerate's prepared scheduler steps
  ``num_processes`` times per update, which made the 2-process losses differ from step 2 on.
* **Replay** draws 4 memory samples into each later stage (20 samples): 20 is not a multiple of
  the 8-sample global batch, and the DataLoader pads the last 2-process batch with samples from
  the start of the order (``even_batches``) where one process trains on a short last batch. So
  its stages after the first see other samples: only stage 1 is compared tightly.

A run with the *same* config on 2 processes (8 per process, 16 per update) sees twice the samples
per update: measured on this lora-ft config, its losses differ from one process by up to 0.02
(0.4 %) and 59 of 72 predictions are identical; that is a different training run, not tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import quick_overrides

ROOT = Path(__file__).resolve().parent.parent
DDP_CPU = ROOT / "configs" / "accelerate" / "ddp-cpu.yaml"
ONE_THREAD = "train.num_threads=1"
METHODS = ("lora-ft", "ewc", "replay")
LOSS_TOL = 1e-4
SCORE_TOL = 1 / 6 + 1e-9
# the configs shipped in configs/accelerate/ and the distributed type each must give
ACCELERATE_CONFIGS = {
    "ddp-cpu.yaml": "MULTI_GPU",  # torchrun's launcher; mmcl runs on the CPU (gloo) without CUDA
    "ddp-gpu.yaml": "MULTI_GPU",
    "fsdp.yaml": "FSDP",
    "zero2.yaml": "DEEPSPEED",
    "zero3.yaml": "DEEPSPEED",
}


def _overrides(model_dir: Path, method: str, batch_size: int) -> list[str]:
    return quick_overrides(model_dir, f"method.name={method}", f"train.batch_size={batch_size}", ONE_THREAD)


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _predictions(out: Path) -> dict[str, list[str]]:
    return {
        str(p.relative_to(out)): [json.loads(line)["prediction"] for line in p.read_text().splitlines()]
        for p in sorted((out / "predictions").rglob("*.jsonl"))
    }


@pytest.fixture(scope="module")
def two_process(tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Run directories of the 2-process runs (one per method) and the launcher's output."""
    base = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CPU),
           __file__, str(base), str(tiny_llava_dir)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return base, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def one_process(tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Single-process runs of lora-ft and ewc with the 2-process runs' global batch (8)."""
    from mmcl.config import load_config
    from mmcl.runner import Runner

    base = tmp_path_factory.mktemp("single")
    for method in ("lora-ft", "ewc"):
        Runner(load_config(overrides=_overrides(tiny_llava_dir, method, 8)), output_dir=base / method).run()
    return base


@pytest.mark.slow
def test_two_processes_ran_and_only_the_main_one_wrote(two_process: tuple[Path, str]) -> None:
    base, log = two_process
    for method in METHODS:
        out = base / method
        res = _results(out)
        assert res["method"] == method and res["cost"]["num_processes"] == 2, "launched as one process"
        assert len(res["cost"]["peak_memory_mb_per_process"]) == 2
        assert len(res["matrix"]["primary"]) == 3 and res["stages_complete"] == 3
        names = {p.name for p in out.rglob("*") if p.is_file()}
        assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")], names  # no stray temp files
        assert (out / "checkpoint" / "manifest.json").is_file() and json.loads(
            (out / "checkpoint" / "manifest.json").read_text()
        )["complete"]
    assert log.count("done: last") == len(METHODS), "only the main process reports"


@pytest.mark.slow
def test_evaluation_of_identical_weights_is_identical(two_process: tuple[Path, str], one_process: Path) -> None:
    base, _ = two_process
    for method in ("lora-ft", "ewc"):
        two, one = base / method, one_process / method
        assert _results(two)["zero_shot"] == _results(one)["zero_shot"]
        for task in _results(one)["tasks"]:
            rel = Path("predictions") / "zero-shot" / f"{task}.jsonl"
            assert (two / rel).read_bytes() == (one / rel).read_bytes(), rel


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora-ft", "ewc"])
def test_training_agrees_with_one_process_at_the_same_global_batch(
    method: str, two_process: tuple[Path, str], one_process: Path
) -> None:
    two, one = _results(two_process[0] / method), _results(one_process / method)
    for s2, s1 in zip(two["stage_stats"], one["stage_stats"], strict=True):
        assert s2["steps"] == s1["steps"] == 3 and s2["train_samples"] == s1["train_samples"]
        assert s2["tokens"] == s1["tokens"]  # the same samples, split over the processes
        for key in ("final_loss", "mean_loss"):
            assert abs(s2[key] - s1[key]) <= LOSS_TOL, (method, s2["stage"], key, s2[key], s1[key])
    p2, p1 = _predictions(two_process[0] / method), _predictions(one_process / method)
    assert p2.keys() == p1.keys()
    pairs = [(a, b) for k in p1 for a, b in zip(p2[k], p1[k], strict=True)]
    same = sum(a == b for a, b in pairs)
    assert same >= 0.9 * len(pairs), f"{same}/{len(pairs)} predictions identical"
    for track, rows in one["matrix"].items():
        for r2, r1 in zip(two["matrix"][track], rows, strict=True):
            for a, b in zip(r2, r1, strict=True):
                assert (a is None) == (b is None) and (a is None or abs(a - b) <= SCORE_TOL), (track, a, b)
    for name, value in one["metrics"]["primary"].items():
        other = two["metrics"]["primary"][name]
        assert (value is None) == (other is None) and (value is None or abs(value - other) <= SCORE_TOL)


@pytest.mark.slow
def test_replay_runs_under_ddp(two_process: tuple[Path, str], one_process: Path) -> None:
    res = _results(two_process[0] / "replay")
    assert [s["train_samples"] for s in res["stage_stats"]] == [16, 20, 20]  # 4 replayed samples per stage
    assert res["cost"]["memory_samples"] == 3 * 16  # memory_per_task=20 > 16: every sample kept
    first = _results(one_process / "lora-ft")["stage_stats"][0]  # no memory yet: replay's stage 1 is lora-ft's
    assert abs(res["stage_stats"][0]["final_loss"] - first["final_loss"]) <= LOSS_TOL


def test_sharded_generation_equals_one_process(tiny_llava_dir: Path) -> None:
    """Two shards whose answers are gathered give exactly the unsharded answers, in order."""
    from conftest import build_test_method

    from mmcl.eval.generate import Shard, generate_answers, plan_batches
    from mmcl.train.encode import Encoder

    method = build_test_method(tiny_llava_dir, "lora-ft", ONE_THREAD, "benchmark.test_per_task=7")
    tok = method.ctx.bundle.tokenizer
    task = method.ctx.benchmark.tasks[2]
    encoded = Encoder(method.ctx.bundle.processor).encode(task.test, with_answer=False)
    kw = {"batch_size": 3, "max_new_tokens": 4}
    assert [len(b) for b in plan_batches(encoded, 3)] == [3, 3, 1]
    whole = generate_answers(method.model, tok, encoded, **kw)
    sent: list = []  # what process 1 contributes; its own result (filled with blanks here) is not checked
    blanks = [(i, "") for i in range(len(encoded))]
    generate_answers(method.model, tok, encoded, **kw, shard=Shard(1, 2, lambda mine: sent.extend(mine) or blanks))
    assert sorted(i for i, _ in sent) == sorted(plan_batches(encoded, 3)[1])  # process 1: the 2nd batch only
    halves = generate_answers(method.model, tok, encoded, **kw, shard=Shard(0, 2, lambda mine: mine + sent))
    assert halves == whole and any(whole)


@pytest.mark.parametrize("name", sorted(ACCELERATE_CONFIGS))
def test_accelerate_configs_are_valid_for_the_installed_accelerate(name: str) -> None:
    """Each file loads as accelerate's config and passes ``accelerate launch``'s own validation.

    Only ddp-cpu.yaml is run here (the tests above); the GPU, FSDP and ZeRO files are untested
    (no GPU, no deepspeed): this checks their keys, not that the runs work.
    """
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = DDP_CPU.parent / name
    cfg = load_config_from_file(str(path))  # an unknown top-level key raises TypeError
    assert cfg.distributed_type.value == ACCELERATE_CONFIGS[name] and cfg.num_processes == 2
    parser = launch_command_parser()
    dests = {a.dest for a in parser._actions}
    nested = {**(cfg.fsdp_config or {}), **(cfg.deepspeed_config or {})}
    assert not [k for k in nested if k not in dests], "keys accelerate launch does not know"
    args, _, _ = _validate_launch_command(parser.parse_args(["--config_file", str(path), "train.py"]))
    assert args.use_fsdp == (name == "fsdp.yaml") and args.use_deepspeed == name.startswith("zero")
    if name.startswith("zero"):
        assert int(cfg.deepspeed_config["zero_stage"]) == int(name[4])


def _driver(base: Path, model_dir: Path) -> None:
    """Under the launcher: each method's ``mmcl run`` in this process group, one after another."""
    from mmcl.cli import app

    for method in METHODS:
        args = ["run", "--output", str(base / method)]
        for o in _overrides(model_dir, method, 4):
            args += ["--set", o]
        app(args, standalone_mode=False)


if __name__ == "__main__":
    _driver(Path(sys.argv[1]), Path(sys.argv[2]))
