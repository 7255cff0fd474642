"""The intrusion track: how often later tasks' answers replace an earlier task's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmcl.cli import app
from mmcl.report.results import load_results
from mmcl.rescore import intrusion_run

TASKS = ["colour", "animal", "yesno"]
# Gold answers per test question. 'animal' also accepts "red" for its second question, so
# "red" is never a later task's intrusion into 'colour'.
GOLD = {"colour": [["red"], ["blue"]], "animal": [["cat"], ["dog", "red"]], "yesno": [["yes"], ["no"]]}
PREDICTIONS = {
    "zero-shot": {"colour": ["cat", "cat"], "animal": ["yes", "no"], "yesno": ["red", "red"]},
    # after colour: no task was learned before it, the row is null whatever the answers
    "stage-01": {"colour": ["red", "blue"], "animal": ["red", "cat"], "yesno": ["blue", "Yes"]},
    # after animal: colour gets "Cat." (normalised: cat) once (0.5); yesno, not learned yet, is null
    "stage-02": {"colour": ["Cat.", "red"], "animal": ["cat", "dog"], "yesno": ["dog", "no"]},
    # after yesno: colour gets "NO" (yesno's) and "cat" (animal's, also learned after colour): 1.0;
    # animal gets "blue" (colour's, learned before animal: not counted) and "yes": 0.5
    "stage-03": {"colour": ["NO", "cat"], "animal": ["blue", "yes"], "yesno": ["yes", "no"]},
}
EXPECTED = [[None, None, None], [0.5, None, None], [1.0, 0.5, None]]
PRIMARY = [[1.0, 0.5, 0.5], [0.5, 1.0, 0.5], [0.0, 0.5, 1.0]]  # not re-read: any numbers do


def make_run(root: Path, rows: int = 3, stages: list[str] | None = None) -> Path:
    run = root / "run"
    for stage, by_task in PREDICTIONS.items():
        for task in TASKS:
            lines = [
                {"question_id": f"{task}-{i}", "prediction": pred, "answers": GOLD[task][i], "scores": {"vqa_score": 0.0}}
                for i, pred in enumerate(by_task[task])
            ]
            path = run / "predictions" / stage / f"{task}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    results = {
        "mmcl_version": "0.1.0", "name": "toy", "benchmark": "toy-bench", "method": "lora-ft", "seed": 0,
        "tasks": TASKS, "scorers": {t: ["vqa_score"] for t in TASKS},
        "matrix": {"primary": PRIMARY[:rows]}, "zero_shot": {"primary": [0.0, 0.0, 0.0]}, "metrics": {},
        "cost": {"trainable_params": 1, "train_seconds": 1.0, "eval_seconds": 1.0, "peak_memory_mb": 1.0},
        "stages_complete": rows,
    }
    if stages is not None:
        results["stages"] = stages
    (run / "results.json").write_text(json.dumps(results))
    (run / "config.yaml").write_text("name: toy\nseed: 0\nbenchmark:\n  name: toy-bench\nmethod:\n  name: lora-ft\n")
    return run


def test_intrusion_matrix_worked_by_hand(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    results = intrusion_run(run)
    assert results["matrix"]["intrusion"] == EXPECTED
    assert "intrusion" not in results["zero_shot"]
    assert results["metrics"]["intrusion"]["last"] == pytest.approx(0.75)  # after the last stage: (1.0 + 0.5) / 2
    assert results["metrics"]["intrusion"]["average"] == pytest.approx((0.5 + 0.75) / 2)  # rows 2 and 3 (row 1 is null)
    assert results["metrics"]["intrusion"]["forgetting"] is None
    on_disk = load_results(run)
    assert on_disk["matrix"]["intrusion"] == EXPECTED
    assert on_disk["matrix"]["primary"] == PRIMARY
    assert "intrusion,3,1.0,0.5," in (run / "matrix.csv").read_text()
    assert "`intrusion`" in (run / "report.md").read_text()
    # Prediction files are read, not rewritten.
    line = json.loads((run / "predictions" / "stage-03" / "colour.jsonl").read_text().splitlines()[0])
    assert line["scores"] == {"vqa_score": 0.0}


def test_rows_without_a_learned_task_are_null_and_a_joint_run_is_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path, rows=1, stages=["after joint training"])
    before = (run / "results.json").read_text()
    with pytest.raises(ValueError, match="sequential run"):
        intrusion_run(run)
    assert (run / "results.json").read_text() == before


def test_bad_prediction_line_names_file_and_writes_nothing(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    bad = run / "predictions" / "stage-02" / "yesno.jsonl"
    bad.write_text(bad.read_text() + '{"prediction": 3, "answers": ["no"]}\n')
    before = (run / "results.json").read_text()
    with pytest.raises(ValueError, match=r"stage-02/yesno\.jsonl.*line 3"):
        intrusion_run(run)
    assert (run / "results.json").read_text() == before
    assert not (run / "matrix.csv").exists()


def test_cli_intrusion_and_its_errors(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    cli = CliRunner()
    ok = cli.invoke(app, ["rescore", str(run), "--intrusion"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["intrusion"]["last"] == pytest.approx(0.75)
    both = cli.invoke(app, ["rescore", str(run), "--intrusion", "--scorer", "exact_match"])
    assert both.exit_code == 2 and "exactly one of --scorer NAME and --intrusion" in both.output
    neither = cli.invoke(app, ["rescore", str(run)])
    assert neither.exit_code == 2 and "exactly one" in neither.output
    task = cli.invoke(app, ["rescore", str(run), "--intrusion", "--task", "colour"])
    assert task.exit_code == 2 and "--task applies to --scorer only" in task.output
