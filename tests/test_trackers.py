"""logging.trackers: TensorBoard event files from a quick run, read back; refusals of unknown or missing trackers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import quick_overrides, run_quick

from mmcl.config import ConfigError, load_config

T = 3  # tasks in the quick stream; train.max_steps=3 per task


def _events(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_no_trackers_no_event_files(tiny_llava_dir: Path, tmp_path: Path) -> None:
    loaded_before = "torch.utils.tensorboard" in sys.modules
    run_quick(
        tiny_llava_dir,
        tmp_path,
        "benchmark.order=[underwater.existence]",
        "eval.zero_shot=false",
        "output.report=false",
    )
    assert _events(tmp_path) == [] and not (tmp_path / "tensorboard").exists()
    if not loaded_before:
        assert "torch.utils.tensorboard" not in sys.modules, "a run without trackers imported tensorboard"


@pytest.mark.slow
def test_tensorboard_scalars(tiny_llava_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="pip install 'mmcl[logging]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = run_quick(
        tiny_llava_dir,
        tmp_path,
        "logging.trackers=[tensorboard]",
        "logging.log_every=1",
        "output.report=false",
        "name=tb",
    )
    log_dir = tmp_path / "tensorboard" / "tb"  # <run dir>/tensorboard/<name>/
    assert [p for p in _events(tmp_path) if p.parent == log_dir], _events(tmp_path)
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])

    def steps(tag: str) -> list[int]:
        assert tag in tags, sorted(tags)
        return [e.step for e in acc.Scalars(tag)]

    total = sum(s["steps"] for s in res["stage_stats"])
    assert total == 3 * T
    assert steps("train/loss") == list(range(1, total + 1))  # one global counter across the stages
    assert steps("train/lr") == list(range(1, total + 1))
    assert all(e.value > 0 for e in acc.Scalars("train/loss"))
    assert steps("eval/all_mean") == list(range(0, T + 1))  # 0 = zero-shot, then stage 1..T
    assert steps("eval/seen_mean") == list(range(1, T + 1))
    prim = res["matrix"]["primary"]
    for j, task in enumerate(res["tasks"]):
        primary = res["scorers"][task][0]
        logged = acc.Scalars(f"eval/{task}/{primary}")
        assert [e.step for e in logged] == list(range(0, T + 1))
        assert [e.value for e in logged[1:]] == pytest.approx([prim[i][j] for i in range(T)], abs=1e-6)
    last = [e.value for e in acc.Scalars("eval/all_mean")][-1]
    assert last == pytest.approx(sum(prim[-1]) / T, abs=1e-6)


def test_unknown_tracker_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown tracker 'mlflow'; valid trackers: tensorboard, wandb"):
        load_config(overrides=["logging.trackers=[tensorboard, mlflow]"])
    assert load_config(overrides=["logging.trackers=tensorboard"]).logging.trackers == ["tensorboard"]
    with pytest.raises(ConfigError, match=r"logging\.log_every"):
        load_config(overrides=["logging.log_every=0"])


@pytest.mark.parametrize("tracker", ["wandb", "tensorboard"])
def test_missing_tracker_package_fails_early(
    tracker: str, tiny_llava_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmcl.runner import Runner

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == tracker else real(name, *a)
    )
    cfg = load_config(overrides=quick_overrides(tiny_llava_dir, f"logging.trackers=[{tracker}]"))
    out = tmp_path / "run"
    with pytest.raises(
        ConfigError, match=rf"'{tracker}' needs the {tracker} package.*pip install {tracker}"
    ) as e:
        Runner(cfg, output_dir=out)
    if tracker == "wandb":
        assert "WANDB_MODE=offline" in str(e.value)
    assert not out.exists()
