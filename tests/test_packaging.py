"""The wheel ships what an installed mmcl needs: the configs (so `mmcl run configs/quick.yaml` works from
any folder) and the model presets, and the installed wheel runs. Building it takes ~15 s, so it is marked slow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # built from a clean copy: a build/ folder left by an earlier build would hide missing package data
    tmp_path = tmp_path_factory.mktemp("wheel")
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "runs", "results", "test-artifacts", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(tree),
                    "-w", str(tmp_path)], check=True, capture_output=True)
    (found,) = tmp_path.glob("mmcl-*.whl")
    return found


@pytest.mark.slow
def test_wheel_ships_configs_and_presets(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in (ROOT / "configs").rglob("*.yaml"):
        assert f"mmcl/configs/{config.relative_to(ROOT / 'configs').as_posix()}" in names, config
    for preset in ("tiny-llava", "tiny-llava-generalist", "tiny-janus", "tiny-janus-generalist", "image-judge"):
        assert any(n.startswith(f"mmcl/assets/{preset}/") and n.endswith(".safetensors") for n in names), preset


@pytest.mark.slow
def test_installed_wheel_runs_the_quick_config(wheel: Path, tmp_path: Path) -> None:
    """A fresh venv with only the wheel installed (its dependencies read from this environment's
    site-packages by a .pth path line, which does not load this checkout's editable install) runs
    `mmcl run configs/quick.yaml` from an empty folder, with the config and preset from the wheel."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site) / "deps.pth").write_text("\n".join(deps) + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([str(py), "-c", "import mmcl; print(mmcl.__file__)"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert where.startswith(site), where  # the wheel's copy, not this checkout
    run = subprocess.run([str(venv / "bin" / "mmcl"), "run", "configs/quick.yaml", "--set", "train.num_threads=1",
                          "--output", "out"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = json.loads((work / "out" / "results.json").read_text())
    assert len(results["matrix"]["primary"]) == len(results["tasks"])
