"""results.json loading, per-track metrics with null columns, matrix.csv, report.md and heatmaps."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mmcl.report.markdown import plot_heatmap, write_report
from mmcl.report.results import (
    ResultsError,
    compute_track_metrics,
    load_results,
    track_metrics,
    write_matrix_csv,
)

TASKS = ["count", "chart", "ocr"]
PRIMARY = [[0.5, 0.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.5, 1.0]]
PRIMARY_ZS = [0.0, 0.0, 0.5]
# Only 'chart' declares relaxed_numeric: the other columns are null.
RELAXED = [[None, 0.5, None], [None, 1.0, None], [None, 1.0, None]]


def make_results(**changes: Any) -> dict[str, Any]:
    results: dict[str, Any] = {
        "mmcl_version": "0.1.0",
        "name": "toy",
        "benchmark": "toy-bench",
        "method": "lora-ft",
        "seed": 7,
        "tasks": TASKS,
        "scorers": {
            "count": ["exact_match"],
            "chart": ["exact_match", "relaxed_numeric"],
            "ocr": ["exact_match"],
        },
        "matrix": {"primary": PRIMARY, "relaxed_numeric": RELAXED},
        "zero_shot": {"primary": PRIMARY_ZS, "relaxed_numeric": [None, 0.5, None]},
        "metrics": {},
        "cost": {
            "trainable_params": 1234567,
            "train_seconds": 3725.0,
            "eval_seconds": 12.25,
            "peak_memory_mb": 2048.0,
        },
        "stages_complete": 3,
    }
    results.update(changes)
    return results


def write_run(root: Path, results: dict[str, Any]) -> Path:
    run = root / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_track_metrics_full_and_null_columns() -> None:
    results = make_results()
    primary = track_metrics(results, "primary")
    assert primary == pytest.approx(
        {"last": 0.5, "average": 0.5, "mft": 2 / 3, "bwt": -0.25, "fwt": 0.0, "forgetting": 0.25}
    )
    # relaxed_numeric: only 'chart' (column 1) is scored; all stages are kept:
    # last = A[2][1], bwt = A[2][1] - A[1][1], fwt = A[0][1] - z[1].
    relaxed = track_metrics(results, "relaxed_numeric")
    assert relaxed == pytest.approx(
        {"last": 1.0, "average": 1.0, "mft": 1.0, "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0}
    )


def test_joint_run_has_one_row_and_only_last(tmp_path: Path) -> None:
    joint = [[0.9, 0.8, 0.7]]
    results = make_results(
        matrix={"primary": joint, "relaxed_numeric": [[None, 0.6, None]]},
        stages=["after joint training"],
        stages_complete=1,
    )
    assert track_metrics(results, "primary") == pytest.approx(
        {"last": 0.8, "average": None, "mft": None, "bwt": None, "fwt": None, "forgetting": None}
    )
    assert track_metrics(results, "relaxed_numeric")["last"] == pytest.approx(0.6)
    run = write_run(tmp_path, results)
    text = write_report(run, results).read_text()
    assert "| after joint training | 90.0 | 80.0 | 70.0 |" in text
    assert "| `primary` | 3/3 | 80.0 | – | – | – | – | – |" in text
    assert (run / "heatmap-primary.png").stat().st_size > 0


def test_compute_track_metrics_on_bare_matrices() -> None:
    assert compute_track_metrics(PRIMARY, PRIMARY_ZS)["bwt"] == pytest.approx(-0.25)
    assert compute_track_metrics(RELAXED)["last"] == pytest.approx(1.0)
    # Trailing all-null rows (stages not evaluated) are ignored; nothing scored -> all None.
    assert compute_track_metrics([[None, None], [None, None]]) == dict.fromkeys(
        ["last", "average", "mft", "bwt", "fwt", "forgetting"]
    )


def test_track_metrics_seen_only_matrix_has_no_fwt() -> None:
    seen_only = [[0.5, None, None], [0.5, 0.5, None], [0.0, 0.5, 1.0]]
    m = track_metrics(make_results(matrix={"primary": seen_only}), "primary")
    assert m["last"] == pytest.approx(0.5)
    assert m["fwt"] is None


def test_matrix_csv_blocks(tmp_path: Path) -> None:
    path = write_matrix_csv(tmp_path, make_results())
    blocks = path.read_text().split("\n\n")
    assert blocks[0].splitlines() == [
        "scorer,stage,count,chart,ocr",
        "primary,zero-shot,0.0,0.0,0.5",
        "primary,1,0.5,0.0,0.0",
        "primary,2,0.5,0.5,0.5",
        "primary,3,0.0,0.5,1.0",
    ]
    assert blocks[1].splitlines()[1:3] == ["relaxed_numeric,zero-shot,,0.5,", "relaxed_numeric,1,,0.5,"]


def test_report_has_metric_table_matrices_cost_and_heatmaps(tmp_path: Path) -> None:
    run = write_run(tmp_path, make_results())
    path = write_report(run, load_results(run))
    text = path.read_text()
    assert path == run / "report.md"
    assert text.startswith("# toy: `lora-ft` on `toy-bench` (seed 7)")
    assert "| track | tasks | last | average | MFT | BWT | FWT | forgetting |" in text
    assert "| `primary` | 3/3 | 50.0 | 50.0 | 66.7 | -25.0 | 0.0 | 25.0 |" in text
    assert "| `relaxed_numeric` | 1/3 | 100.0 | 100.0 | 100.0 | 0.0 | 0.0 | 0.0 |" in text
    # Matrix with short column labels, a legend, zero-shot row and blanks for undeclared cells.
    assert "|  | T1 | T2 | T3 |" in text
    assert "| T2 | `chart` | exact_match, relaxed_numeric |" in text
    assert "| zero-shot | 0.0 | 0.0 | 50.0 |" in text
    assert "| after ocr | 0.0 | 50.0 | 100.0 |" in text
    assert "| after count | – | 50.0 | – |" in text
    assert "| trainable parameters | 1,234,567 |" in text
    assert "| training time | 3725.0 s (1:02:05) |" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == ["heatmap-primary.png", "heatmap-relaxed_numeric.png"]
    for link in links:
        png = run / link
        assert png.stat().st_size > 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heatmap_scales_with_task_count(tmp_path: Path) -> None:
    small = plot_heatmap(PRIMARY, TASKS, tmp_path / "small.png", "3 tasks")
    n = 20
    big_matrix = [[None if j == 5 else (t + j) % 10 / 10 for j in range(n)] for t in range(n)]
    big = plot_heatmap(
        big_matrix, [f"task-{j}" for j in range(n)], tmp_path / "big.png", "20 tasks", zero_shot=[0.1] * n
    )
    with Image.open(small) as a, Image.open(big) as b:
        assert b.width > 2 * a.width and b.height > 2 * a.height


def test_load_results_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="does not exist"):
        load_results(tmp_path / "missing")
    with pytest.raises(ResultsError, match=r"results\.json not found"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ResultsError, match=r"results\.json: not valid JSON \(line 1"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"name": "x", "tasks": ["a"]}))
    with pytest.raises(ResultsError, match="missing key.*benchmark"):
        load_results(tmp_path)
    bad = make_results(matrix={"primary": [[0.5, 0.5]]})
    (tmp_path / "results.json").write_text(json.dumps(bad))
    with pytest.raises(ResultsError, match="row 1 must have 3 cells"):
        load_results(tmp_path)


def test_unknown_track_lists_tracks() -> None:
    with pytest.raises(ResultsError, match="tracks: primary, relaxed_numeric"):
        track_metrics(make_results(), "vqa_score")
