"""The wheel ships what an installed mmcl needs: the configs (so `mmcl run configs/quick.yaml` works from
any folder) and the model presets. Building it takes ~15 s, so it is marked slow."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_configs_and_presets(tmp_path: Path) -> None:
    # built from a clean copy: a build/ folder left by an earlier build would hide missing package data
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "runs", "results", "test-artifacts", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(tree),
                    "-w", str(tmp_path)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("mmcl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in (ROOT / "configs").rglob("*.yaml"):
        assert f"mmcl/configs/{config.relative_to(ROOT / 'configs').as_posix()}" in names, config
    for preset in ("tiny-llava", "tiny-llava-generalist", "tiny-janus", "image-judge"):
        assert any(n.startswith(f"mmcl/assets/{preset}/") and n.endswith(".safetensors") for n in names), preset
