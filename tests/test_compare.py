"""compare_runs: seeds of one configuration grouped into mean ± std; markdown, rich and files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from mmcl.report.compare import compare_runs, render_markdown, render_rich
from mmcl.report.results import ResultsError

# 2 tasks; the final row differs per seed so that last = 0.5, 0.6, 0.7 (mean 60.0, sample std 10.0).
FINAL_ROWS = {0: [0.4, 0.6], 1: [0.5, 0.7], 2: [0.6, 0.8]}


def make_run(
    root: Path,
    dirname: str,
    method: str,
    seed: int,
    final: list[float],
    train_seconds: float,
    lora_rank: int = 16,
) -> Path:
    run = root / dirname
    run.mkdir(parents=True)
    results: dict[str, Any] = {
        "mmcl_version": "0.1.0",
        "name": f"{method}-run",
        "benchmark": "toy-bench",
        "method": method,
        "seed": seed,
        "tasks": ["a", "b"],
        "scorers": {"a": ["exact_match"], "b": ["exact_match"]},
        "matrix": {"primary": [[0.8, 0.1], final]},
        "zero_shot": {"primary": [0.0, 0.1]},
        "metrics": {},
        "cost": {"trainable_params": 1000, "train_seconds": train_seconds},
        "stages_complete": 2,
    }
    (run / "results.json").write_text(json.dumps(results))
    (run / "config.yaml").write_text(
        f"name: {method}-run\nseed: {seed}\nbenchmark:\n  name: toy-bench\nmethod:\n  name: {method}\n"
        f"model:\n  lora_rank: {lora_rank}\noutput:\n  dir: {run}\n"
    )
    return run


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    dirs = [make_run(tmp_path, f"ft-s{s}", "lora-ft", s, FINAL_ROWS[s], 10.0 + 2 * s) for s in range(3)]
    dirs.append(make_run(tmp_path, "replay-s0", "replay", 0, [0.7, 0.7], 20.0))
    return dirs


def test_groups_seeds_and_summarises(runs: list[Path]) -> None:
    table = compare_runs(runs)
    assert [(r.method, r.n_seeds) for r in table.rows] == [("lora-ft", 3), ("replay", 1)]
    ft = table.rows[0]
    assert ft.seeds == [0, 1, 2]
    assert ft.metrics["last"].mean == pytest.approx(0.6)
    assert ft.metrics["last"].std == pytest.approx(0.1)
    assert ft.metrics["bwt"].mean == pytest.approx(-0.3)  # 0.4/0.5/0.6 - 0.8
    assert ft.train_seconds.mean == pytest.approx(12.0)
    assert ft.train_seconds.std == pytest.approx(2.0)
    assert table.notes == []

    md = render_markdown(table)
    assert (
        "| name | method | benchmark | seeds | last | average | MFT | BWT | FWT | forgetting "
        "| trainable params | train time (s) |" in md
    )
    assert "| lora-ft-run | lora-ft | toy-bench | 3 | 60.0 ± 10.0 |" in md
    assert "| -30.0 ± 10.0 |" in md
    assert "| 1,000 | 12.0 ± 2.0 |" in md
    # A single seed shows no ± (its std is not a measurement).
    assert "| replay-run | replay | toy-bench | 1 | 70.0 |" in md

    console = Console(record=True, width=250)
    console.print(render_rich(table))
    out = console.export_text()
    assert "60.0 ± 10.0" in out and "replay" in out


def test_writes_compare_md_and_json(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    table = compare_runs(runs, out_dir=out)
    assert (out / "compare.md").read_text() == render_markdown(table)
    data = json.loads((out / "compare.json").read_text())
    assert data["scorer"] == "primary"
    assert data["group_key"] == ["name", "method", "benchmark"]
    row = data["rows"][0]
    assert row["n_seeds"] == 3 and row["seeds"] == [0, 1, 2]
    assert row["metrics"]["last"]["mean"] == pytest.approx(0.6)
    assert row["metrics"]["last"]["std"] == pytest.approx(0.1)


def test_config_difference_within_a_group_is_noted(tmp_path: Path) -> None:
    a = make_run(tmp_path, "r16", "lora-ft", 0, [0.4, 0.6], 10.0, lora_rank=16)
    b = make_run(tmp_path, "r32", "lora-ft", 1, [0.5, 0.7], 10.0, lora_rank=32)
    table = compare_runs([a, b])
    assert len(table.rows) == 1
    assert any("model.lora_rank" in n for n in table.notes)
    assert "model.lora_rank" in render_markdown(table)


def test_bad_inputs(runs: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="does not exist"):
        compare_runs([*runs, tmp_path / "nope"])
    with pytest.raises(ResultsError, match="no 'vqa_score' track"):
        compare_runs(runs, scorer="vqa_score")
    with pytest.raises(ValueError, match="at least one"):
        compare_runs([])


def _add_track(run: Path, track: str, rows: list[list[float | None]]) -> None:
    path = run / "results.json"
    results = json.loads(path.read_text())
    results["matrix"][track] = rows
    path.write_text(json.dumps(results))


def test_also_adds_a_metric_of_another_track(runs: list[Path], tmp_path: Path) -> None:
    # Seeds 0 and 1 of lora-ft have a drift track (last row means 0.7 and 0.9); seed 2 and replay do not.
    _add_track(runs[0], "drift_probe", [[0.9, 0.9], [0.6, 0.8]])
    _add_track(runs[1], "drift_probe", [[0.9, 0.9], [0.8, 1.0]])
    table = compare_runs(runs, also=["drift_probe", "drift_probe:forgetting", "drift_probe"])
    assert [c.label for c in table.extra] == ["drift_probe last", "drift_probe forgetting"]
    ft, replay = table.rows
    assert ft.extra["drift_probe last"].mean == pytest.approx(0.8)
    assert ft.extra["drift_probe last"].std == pytest.approx(0.1414, abs=1e-3)
    assert ft.extra["drift_probe last"].n == 2
    assert ft.extra["drift_probe forgetting"].mean == pytest.approx(0.2)  # 0.9 - 0.6 and 0.9 - 0.8 on task a
    assert replay.extra["drift_probe last"].mean is None
    # The primary columns are unchanged by the extra ones.
    assert ft.metrics["last"].mean == pytest.approx(0.6)

    md = render_markdown(table)
    assert "| forgetting | drift_probe last | drift_probe forgetting | trainable params |" in md
    assert "| 80.0 ± 14.1 (n=2) | 20.0 ± 14.1 (n=2) | 1,000 |" in md
    assert "| – | – | 1,000 | 20.0 |" in md  # replay: no drift track
    assert "`drift_probe last` = the last of the `drift_probe` track" in md

    out = tmp_path / "cmp"
    compare_runs(runs, out_dir=out, also=["drift_probe"])
    data = json.loads((out / "compare.json").read_text())
    assert data["extra_columns"] == [{"track": "drift_probe", "metric": "last"}]
    assert data["rows"][0]["extra"]["drift_probe last"]["n"] == 2


def test_also_rejects_bad_specs_and_unknown_tracks(runs: list[Path]) -> None:
    for bad in ("drift_probe:best", ":last", ""):
        with pytest.raises(ValueError, match="TRACK or TRACK:METRIC"):
            compare_runs(runs, also=[bad])
    with pytest.raises(ValueError, match="none of the 4 runs has a 'intrusion' track"):
        compare_runs(runs, also=["intrusion"])
