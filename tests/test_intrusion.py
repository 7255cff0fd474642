"""The intrusion tracks: how often later tasks' answers, or answer forms, replace an earlier task's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmcl.cli import app
from mmcl.report.results import load_results
from mmcl.rescore import answer_shape, intrusion_run

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


def make_run(root: Path, rows: int = 3, stages: list[str] | None = None, tasks: list[str] = TASKS,
             gold: dict[str, list[list[str]]] = GOLD, predictions: dict[str, dict[str, list[str]]] = PREDICTIONS,
             primary: list[list[float]] = PRIMARY) -> Path:
    run = root / "run"
    for stage, by_task in predictions.items():
        for task in tasks:
            lines = [
                {"question_id": f"{task}-{i}", "prediction": pred, "answers": gold[task][i], "scores": {"vqa_score": 0.0}}
                for i, pred in enumerate(by_task[task])
            ]
            path = run / "predictions" / stage / f"{task}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    results = {
        "mmcl_version": "0.1.0", "name": "toy", "benchmark": "toy-bench", "method": "lora-ft", "seed": 0,
        "tasks": tasks, "scorers": {t: ["vqa_score"] for t in tasks},
        "matrix": {"primary": primary[:rows]}, "zero_shot": {"primary": [0.0] * len(tasks)}, "metrics": {},
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
    printed = json.loads(ok.output)
    assert printed["intrusion"]["last"] == pytest.approx(0.75)
    assert printed["intrusion_form"]["last"] == pytest.approx(0.0)  # every intruder there is a word for a word
    both = cli.invoke(app, ["rescore", str(run), "--intrusion", "--scorer", "exact_match"])
    assert both.exit_code == 2 and "exactly one of --scorer NAME and --intrusion" in both.output
    neither = cli.invoke(app, ["rescore", str(run)])
    assert neither.exit_code == 2 and "exactly one" in neither.output
    task = cli.invoke(app, ["rescore", str(run), "--intrusion", "--task", "colour"])
    assert task.exit_code == 2 and "--task applies to --scorer only" in task.output


@pytest.mark.parametrize(("answer", "shape"), [
    ("[0.12, 0.30, 0.45, 0.60]", "[9.9, 9.9, 9.9, 9.9]"),
    ("0.12,", "9.9,"),  # a box cut short
    ("[0.00,", "[9.9,"),
    ("3", "9"),
    ("storage-tank", "a-a"),
    ("  Yes. ", "a"),
    ("(B)", "(A)"),  # a choice letter is not a word
    ("", ""),
])
def test_answer_shape(answer: str, shape: str) -> None:
    assert answer_shape(answer) == shape


# Answer forms: count "9", kind "a" / "a-a", box "[9.9, 9.9, 9.9, 9.9]", choice "A" / "(A)".
FORM_TASKS = ["count", "kind", "box", "choice"]
FORM_GOLD = {
    "count": [["3"], ["4"]], "kind": [["cat"], ["storage-tank"]],
    "box": [["[0.10, 0.20, 0.30, 0.40]"], ["[0.50, 0.50, 0.90, 0.90]"]], "choice": [["B"], ["(C)"]],
}
FORM_PREDICTIONS = {
    "zero-shot": {"count": ["1", "1"], "kind": ["1", "1"], "box": ["1", "1"], "choice": ["1", "1"]},
    "stage-01": {"count": ["3", "4"], "kind": ["3", "3"], "box": ["3", "3"], "choice": ["3", "3"]},
    # after kind: count gets a word (kind's form, not one of its answers): form 0.5, whole 0
    "stage-02": {"count": ["dog", "5"], "kind": ["cat", "cat"], "box": ["cat", "cat"], "choice": ["cat", "cat"]},
    # after box: count gets a box cut short, kind a box's opening and "Cat." (its own form): 0.5 each
    "stage-03": {"count": ["0.12,", "7"], "kind": ["[0.00,", "Cat."], "box": ["[0.1, 0.2, 0.3, 0.4]", "9"],
                 "choice": ["9", "9"]},
    # after choice: "(B)" and "B" are choice's form (and "b" its answer); "" has no form; box keeps
    # to its own form ("9" is part of a box): form 0.5, 0.5, 0.0
    "stage-04": {"count": ["(B)", ""], "kind": ["B", "dog"], "box": ["9", "[0.5, 0.5, 0.9, 0.9]"],
                 "choice": ["B", "C"]},
}
FORM_EXPECTED = [[None] * 4, [0.5, None, None, None], [0.5, 0.5, None, None], [0.5, 0.5, 0.0, None]]


def test_intrusion_form_matrix_worked_by_hand(tmp_path: Path) -> None:
    run = make_run(tmp_path, rows=4, tasks=FORM_TASKS, gold=FORM_GOLD, predictions=FORM_PREDICTIONS,
                   primary=[[0.5] * 4] * 4)
    results = intrusion_run(run)
    assert results["matrix"]["intrusion_form"] == FORM_EXPECTED
    # Whole answers see only the choice letters of the last stage: the words and boxes are forms.
    assert results["matrix"]["intrusion"] == [[None] * 4, [0.0, None, None, None], [0.0, 0.0, None, None],
                                              [0.5, 0.5, 0.0, None]]
    metrics = results["metrics"]["intrusion_form"]
    assert metrics["last"] == pytest.approx(1 / 3)
    assert metrics["average"] == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    assert metrics["bwt"] is None
    on_disk = load_results(run)
    assert on_disk["matrix"]["intrusion_form"] == FORM_EXPECTED
    assert "intrusion_form,4,0.5,0.5,0.0," in (run / "matrix.csv").read_text()
