"""scripts/stream_table.sh: runs a (method, seed) table resumably and keeps finished runs in KEEP_DIR."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _script(*args: str, keep: Path | None, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra_env)
    env.pop("KEEP_DIR", None)
    if keep is not None:
        env["KEEP_DIR"] = str(keep)
    done = subprocess.run(["bash", "scripts/stream_table.sh", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _table(out: Path, keep: Path | None, config: Path, seeds: str = "0 1") -> subprocess.CompletedProcess[str]:
    return _script(str(out), "zero-shot", seeds, str(config), keep=keep)


@pytest.fixture
def small_config(tiny_llava_dir: Path, tmp_path: Path) -> Path:
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({
        "name": "small",
        "benchmark": {"name": "msvqa-synth", "tasks": 2, "train_per_task": 8, "test_per_task": 4},
        "model": {"preset": None, "path": str(tiny_llava_dir)},
        "eval": {"max_new_tokens": 4},
        "output": {"report": False},
    }))
    return config


@pytest.mark.slow  # ~18 s: the table script across two sessions
def test_a_table_across_sessions(small_config: Path, tmp_path: Path) -> None:
    """Session 1 parks an unkept run; session 2 unpacks and keeps it and runs the rest; session 3 reruns nothing."""
    out, keep = tmp_path / "runs", tmp_path / "results"
    _table(out, None, small_config, seeds="0")  # finished in OUT_DIR, not kept
    parked = _script("--park", str(out), keep=keep)
    pack = keep / "partial" / "zero-shot-s0.tar.gz"
    assert f"parked {out}/zero-shot-s0" in parked.stdout
    with tarfile.open(pack) as tar:
        names = tar.getnames()
    assert "zero-shot-s0/checkpoint/manifest.json" in names and "zero-shot-s0/config.yaml" in names
    assert not [n for n in names if "/report" in n or "/heatmap-" in n]

    # Session 2: no run folder. Seed 0 is unpacked, found complete and kept without running the
    # model again (no log), its pack deleted; seed 1 is run and kept; the table is made from KEEP_DIR.
    shutil.rmtree(out)
    _table(out, keep, small_config)
    assert not (out / "zero-shot-s0.log").exists() and (out / "zero-shot-s1.log").exists()
    assert not pack.exists()
    for seed in (0, 1):
        kept = keep / f"zero-shot-s{seed}"
        assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "matrix.csv", "results.json"]
        assert json.loads((kept / "results.json").read_text())["tasks"]
        assert yaml.safe_load((kept / "config.yaml").read_text())["seed"] == seed
    assert (keep / "compare" / "compare.md").is_file()

    # Session 3: the run folder is gone again, the kept runs are not; nothing is run again.
    shutil.rmtree(out)
    before = (keep / "zero-shot-s1" / "results.json").stat().st_mtime_ns
    _table(out, keep, small_config)
    assert not list(out.glob("*-s*")), "a kept run was run again"
    assert (keep / "zero-shot-s1" / "results.json").stat().st_mtime_ns == before


@pytest.mark.slow  # ~25 s: one short sequential run and one zero-shot run
def test_intrusion_is_added_before_a_run_is_kept(small_config: Path, tmp_path: Path) -> None:
    out, keep = tmp_path / "runs", tmp_path / "results"
    _script(str(out), "lora-ft zero-shot", "0", str(small_config), keep=keep, INTRUSION="1", JOBS="1",
            ALSO="vqa_score exact_match:average")
    lora = json.loads((keep / "lora-ft-s0" / "results.json").read_text())
    for track in ("intrusion", "intrusion_form"):
        assert len(lora["matrix"][track]) == 2 and lora["metrics"][track]["last"] is not None
    assert "intrusion" not in json.loads((keep / "zero-shot-s0" / "results.json").read_text())["matrix"]
    table = (keep / "compare" / "compare.md").read_text()
    # ALSO's columns, then the intrusion tracks
    assert "| vqa_score last | exact_match average | intrusion last | intrusion_form last |" in table


@pytest.mark.parametrize("jobs", ["0", "two", "-1"])
def test_jobs_must_be_a_whole_number(jobs: str, tmp_path: Path) -> None:
    """JOBS (runs side by side) is checked before any run folder is made."""
    env = dict(os.environ, JOBS=jobs)
    done = subprocess.run(["bash", "scripts/stream_table.sh", str(tmp_path / "runs"), "zero-shot", "0"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"JOBS must be a whole number >= 1, got '{jobs}'" in done.stderr
    assert not (tmp_path / "runs").exists()
