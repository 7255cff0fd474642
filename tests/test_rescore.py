"""rescore_run: saved predictions re-scored with another scorer give an exact new matrix track."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmcl.data.errors import DataError
from mmcl.registry import UnknownNameError
from mmcl.report.results import ResultsError, load_results
from mmcl.rescore import rescore_run

TASKS = ["count", "chart", "ocr"]
ANSWERS = {"count": ["3", "5"], "chart": ["1000", "2.5"], "ocr": ["stop", "exit"]}
# Two test questions per task; each stage's predictions, in question order.
# "3.0" vs "3", "1,000" vs "1000" and "2.6" vs "2.5" (within 5 %) fail exact_match
# but pass relaxed_numeric.
PREDICTIONS = {
    "zero-shot": {"count": ["3.0", "7"], "chart": ["1,000", "0"], "ocr": ["go", "exit"]},
    "stage-01": {"count": ["3", "5.0"], "chart": ["1000.0", "0"], "ocr": ["go", "no"]},
    "stage-02": {"count": ["3", "6"], "chart": ["1000", "2.50"], "ocr": ["stop", "no"]},
    "stage-03": {"count": ["3.0", "6"], "chart": ["1000", "2.6"], "ocr": ["stop", "exit"]},
}
# Per-task means, worked out by hand from the table above.
EXACT = [[0.5, 0.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.5, 1.0]]
EXACT_ZS = [0.0, 0.0, 0.5]
RELAXED = [[1.0, 0.5, 0.0], [0.5, 1.0, 0.5], [0.5, 1.0, 1.0]]
RELAXED_ZS = [0.5, 0.5, 0.5]


def make_run(root: Path, zero_shot: bool = True) -> Path:
    """A finished 3-task run whose tasks declare exact_match first; 'chart' also declares relaxed_numeric."""
    run = root / "run"
    stages = [s for s in PREDICTIONS if zero_shot or s != "zero-shot"]
    for stage in stages:
        for task in TASKS:
            lines = [
                {
                    "question_id": f"{task}-{i}",
                    "question": f"question {i} of {task}?",
                    "prediction": pred,
                    "answers": [ANSWERS[task][i]],
                    "scores": {"exact_match": 0.0},  # deliberately stale; rescore overwrites its own key only
                }
                for i, pred in enumerate(PREDICTIONS[stage][task])
            ]
            path = run / "predictions" / stage / f"{task}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    chart_only = [[None, r[1], None] for r in RELAXED]
    results = {
        "mmcl_version": "0.1.0",
        "name": "toy",
        "benchmark": "toy-bench",
        "method": "lora-ft",
        "seed": 0,
        "tasks": TASKS,
        "scorers": {
            "count": ["exact_match"],
            "chart": ["exact_match", "relaxed_numeric"],
            "ocr": ["exact_match"],
        },
        "matrix": {"primary": EXACT, "exact_match": EXACT, "relaxed_numeric": chart_only},
        "metrics": {},
        "cost": {"trainable_params": 1234, "train_seconds": 1.5, "eval_seconds": 0.5, "peak_memory_mb": 10.0},
        "stages_complete": 3,
    }
    if zero_shot:
        results["zero_shot"] = {
            "primary": EXACT_ZS,
            "exact_match": EXACT_ZS,
            "relaxed_numeric": [None, 0.5, None],
        }
    (run / "results.json").write_text(json.dumps(results))
    (run / "config.yaml").write_text(
        "name: toy\nseed: 0\nbenchmark:\n  name: toy-bench\nmethod:\n  name: lora-ft\n"
    )
    return run


def test_rescore_relaxed_numeric_gives_exact_matrix_and_metrics(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    results = rescore_run(run, "relaxed_numeric")

    assert results["matrix"]["relaxed_numeric"] == RELAXED  # every task now, not only 'chart'
    assert results["zero_shot"]["relaxed_numeric"] == RELAXED_ZS
    m = results["metrics"]["relaxed_numeric"]
    assert m["last"] == pytest.approx(2.5 / 3)
    assert m["average"] == pytest.approx((1.0 + 0.75 + 2.5 / 3) / 3)
    assert m["mft"] == pytest.approx(1.0)
    assert m["bwt"] == pytest.approx(-0.25)  # count: 1.0 -> 0.5, chart: 1.0 -> 1.0
    assert m["fwt"] == pytest.approx(0.0)
    assert m["forgetting"] == pytest.approx(0.25)

    # Written to disk, other tracks kept.
    on_disk = load_results(run)
    assert on_disk["matrix"]["relaxed_numeric"] == RELAXED
    assert on_disk["matrix"]["primary"] == EXACT
    assert on_disk["matrix"]["exact_match"] == EXACT
    assert on_disk["metrics"]["relaxed_numeric"] == pytest.approx(m)

    # Per-line scores stored beside the old ones.
    line = json.loads((run / "predictions" / "stage-03" / "count.jsonl").read_text().splitlines()[0])
    assert line["prediction"] == "3.0"
    assert line["scores"] == {"exact_match": 0.0, "relaxed_numeric": 1.0}

    csv_text = (run / "matrix.csv").read_text()
    assert "relaxed_numeric,zero-shot,0.5,0.5,0.5" in csv_text
    assert "relaxed_numeric,3,0.5,1.0,1.0" in csv_text
    report = (run / "report.md").read_text()
    assert "| `relaxed_numeric` | 3/3 | 83.3 | 86.1 | 100.0 | -25.0 | 0.0 | 25.0 |" in report
    assert (run / "heatmap-relaxed_numeric.png").stat().st_size > 0


def test_rescore_exact_match_reproduces_primary(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    results = rescore_run(run, "exact_match")
    assert results["matrix"]["exact_match"] == EXACT
    assert results["zero_shot"]["exact_match"] == EXACT_ZS
    m = results["metrics"]["exact_match"]
    assert m["last"] == pytest.approx(0.5)
    assert m["mft"] == pytest.approx(2 / 3)
    assert m["bwt"] == pytest.approx(-0.25)


def test_rescore_without_zero_shot_has_no_fwt(tmp_path: Path) -> None:
    run = make_run(tmp_path, zero_shot=False)
    results = rescore_run(run, "relaxed_numeric")
    assert results["matrix"]["relaxed_numeric"] == RELAXED
    assert "relaxed_numeric" not in (results.get("zero_shot") or {})
    assert results["metrics"]["relaxed_numeric"]["fwt"] is None


def test_unknown_scorer_lists_valid_names(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    with pytest.raises(UnknownNameError) as err:
        rescore_run(run, "relaxed_numerc")
    assert "relaxed_numeric" in str(err.value) and "exact_match" in str(err.value)


def test_missing_predictions_name_stage_and_task(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    before = (run / "results.json").read_text()
    (run / "predictions" / "stage-02" / "ocr.jsonl").unlink()
    with pytest.raises(FileNotFoundError) as err:
        rescore_run(run, "relaxed_numeric")
    assert "stage-02" in str(err.value) and "ocr" in str(err.value)
    assert (run / "results.json").read_text() == before  # nothing written


def test_malformed_prediction_line_names_file_and_line(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    path = run / "predictions" / "stage-01" / "chart.jsonl"
    path.write_text(path.read_text() + '{"question_id": "x", "answers": ["1"]}\n')
    with pytest.raises(DataError) as err:
        rescore_run(run, "relaxed_numeric")
    msg = str(err.value)
    assert "chart.jsonl" in msg and "line 3" in msg and "prediction" in msg


def test_bad_run_dir(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="does not exist"):
        rescore_run(tmp_path / "nope", "exact_match")
    with pytest.raises(ResultsError, match="results.json"):
        rescore_run(tmp_path, "exact_match")


def test_rescore_zero_shot_only_run(tmp_path: Path) -> None:
    """A zero-shot-only run (method schedule 'none') has one row, read from predictions/zero-shot/."""
    run = make_run(tmp_path)
    for stage in ("stage-01", "stage-02", "stage-03"):
        for f in (run / "predictions" / stage).iterdir():
            f.unlink()
        (run / "predictions" / stage).rmdir()
    results = json.loads((run / "results.json").read_text())
    results["matrix"] = {"primary": [EXACT_ZS]}
    results["zero_shot"] = {"primary": EXACT_ZS}
    results["stages"] = ["zero-shot"]
    results["stages_complete"] = 0
    (run / "results.json").write_text(json.dumps(results))

    out = rescore_run(run, "relaxed_numeric")
    assert out["matrix"]["relaxed_numeric"] == [RELAXED_ZS]
    assert out["zero_shot"]["relaxed_numeric"] == RELAXED_ZS
    assert out["metrics"]["relaxed_numeric"]["last"] == pytest.approx(0.5)
    assert out["metrics"]["relaxed_numeric"]["bwt"] is None
