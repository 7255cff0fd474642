"""scripts/stream_table.sh: runs a (method, seed) table resumably and keeps finished runs in KEEP_DIR."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _table(out: Path, keep: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KEEP_DIR=str(keep), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        ["bash", "scripts/stream_table.sh", str(out), "zero-shot", "0 1", str(config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


def test_kept_runs_survive_a_wiped_run_folder(tiny_llava_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({
        "name": "small",
        "benchmark": {"name": "msvqa-synth", "tasks": 2, "train_per_task": 8, "test_per_task": 4},
        "model": {"preset": None, "path": str(tiny_llava_dir)},
        "eval": {"max_new_tokens": 4},
        "output": {"report": False},
    }))
    out, keep = tmp_path / "runs", tmp_path / "results"
    first = _table(out, keep, config)
    assert first.returncode == 0, first.stdout + first.stderr
    for seed in (0, 1):
        kept = keep / f"zero-shot-s{seed}"
        assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "matrix.csv", "results.json"]
        assert json.loads((kept / "results.json").read_text())["tasks"]
        assert yaml.safe_load((kept / "config.yaml").read_text())["seed"] == seed
    assert (keep / "compare" / "compare.md").is_file()  # the table is made from the kept runs

    # A later session: the run folder is gone, the kept runs are not; nothing is run again.
    shutil.rmtree(out)
    before = (keep / "zero-shot-s0" / "results.json").stat().st_mtime_ns
    again = _table(out, keep, config)
    assert again.returncode == 0, again.stdout + again.stderr
    assert not list(out.glob("*-s*")), "a kept run was run again"
    assert (keep / "zero-shot-s0" / "results.json").stat().st_mtime_ns == before
