"""End-to-end runs on the test checkpoint: outputs, full matrix, determinism, schedules, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import quick_overrides
from typer.testing import CliRunner

from mmcl.cli import app
from mmcl.config import load_config
from mmcl.runner import Runner

cli = CliRunner()


def _run(tmp: Path, model_dir: Path, *extra: str) -> dict:
    cfg = load_config(overrides=quick_overrides(model_dir, *extra))
    out = Runner(cfg, output_dir=tmp).run()
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def lora_run(tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("lora-run")
    return out, _run(out, tiny_llava_dir, "seed=3")


def test_outputs_and_full_matrix(lora_run: tuple[Path, dict]) -> None:
    out, res = lora_run
    T = 3
    assert res["tasks"] == ["high-altitude.attribute", "underwater.existence", "indoor.grounding"]
    assert res["method"] == "lora-ft" and res["benchmark"] == "msvqa-synth"
    prim = res["matrix"]["primary"]
    assert len(prim) == T and all(len(r) == T for r in prim)
    assert all(v is not None and 0.0 <= v <= 1.0 for r in prim for v in r)  # future tasks evaluated too
    # box_f1 is declared by the grounding task only
    assert [v is None for v in res["matrix"]["box_f1"][0]] == [True, True, False]
    assert set(res["metrics"]["primary"]) == {"last", "average", "mft", "bwt", "fwt", "forgetting"}
    assert res["metrics"]["primary"]["fwt"] is not None  # zero-shot row present
    assert len(res["zero_shot"]["primary"]) == T
    cost = res["cost"]
    assert cost["trainable_params"] > 0 and cost["train_seconds"] > 0 and cost["peak_memory_mb"] > 0
    # the CPU is recorded (its kernels decide the last float bits), per stage too: a resume may change machine
    capability = torch.backends.cpu.get_cpu_capability()
    assert res["host"]["cpu_capability"] == capability and res["host"]["cpu"]
    assert all(capability in s["cpu"] and s["cpu"].endswith("threads") for s in res["stage_stats"])
    for stage in ("zero-shot", "stage-01", "stage-02", "stage-03"):
        for task in res["tasks"]:
            rows = [json.loads(x) for x in (out / "predictions" / stage / f"{task}.jsonl").read_text().splitlines()]
            assert len(rows) == 6
            assert set(rows[0]) >= {"question_id", "prediction", "answers", "scores"}
    assert (out / "matrix.csv").read_text().startswith("scorer,stage,")
    assert (out / "report.md").is_file() and (out / "heatmap-primary.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Accuracy matrices" in html and "http://" not in html
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["stage-01.json", "stage-02.json", "stage-03.json"]
    assert load_config([out / "config.yaml"]).seed == 3  # the resolved config round-trips


@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
def test_same_seed_same_matrix(lora_run: tuple[Path, dict], tiny_llava_dir: Path, tmp_path: Path) -> None:
    _, first = lora_run
    again = _run(tmp_path, tiny_llava_dir, "seed=3")
    assert again["matrix"] == first["matrix"]
    assert again["zero_shot"] == first["zero_shot"]


def test_training_changes_the_model_output(lora_run: tuple[Path, dict]) -> None:
    out, _ = lora_run
    before = (out / "predictions" / "zero-shot" / "high-altitude.attribute.jsonl").read_text()
    after = (out / "predictions" / "stage-01" / "high-altitude.attribute.jsonl").read_text()
    assert before != after


@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
def test_joint_and_zero_shot_schedules(tiny_llava_dir: Path, tmp_path: Path) -> None:
    joint = _run(tmp_path / "joint", tiny_llava_dir, "method.name=joint")
    assert len(joint["matrix"]["primary"]) == 1 and joint["stages"] == ["after joint training"]
    assert joint["stage_stats"][0]["train_samples"] == 3 * 16  # the union of all tasks
    assert joint["metrics"]["primary"]["last"] is not None and joint["metrics"]["primary"]["bwt"] is None
    zs = _run(tmp_path / "zs", tiny_llava_dir, "method.name=zero-shot")
    assert zs["matrix"]["primary"] == [zs["zero_shot"]["primary"]]
    assert zs["cost"]["train_seconds"] == 0
    assert zs["cost"]["trainable_params"] == 0 < zs["cost"]["total_params"]


def test_cli_dry_run_writes_nothing(tiny_llava_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "dry"
    args = ["run", "--dry-run", "--output", str(out)]
    for o in quick_overrides(tiny_llava_dir):
        args += ["--set", o]
    res = cli.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "high-altitude.attribute" in res.output and "trainable" in res.output
    assert not out.exists()


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    res = cli.invoke(app, ["run", "--set", "method.name=ewcc", "--dry-run"])
    assert res.exit_code == 2
    assert "unknown method 'ewcc'" in res.output and "lora-ft" in res.output
    res = cli.invoke(app, ["run", "--set", "benchmark.order=[nope]", "--dry-run"])
    assert res.exit_code == 2 and "nope" in res.output
    res = cli.invoke(app, ["run", "--set", "train.epoch=3"])
    assert res.exit_code == 2 and "Did you mean 'epochs'" in res.output


def test_cli_rescore_and_compare(lora_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = lora_run
    res = cli.invoke(app, ["rescore", str(out), "--scorer", "token_f1"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert all(v is not None for r in data["matrix"]["token_f1"] for v in r)  # every task rescored
    res = cli.invoke(app, ["compare", str(out), "--output", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cmp" / "compare.md").is_file()


def test_cli_intrusion_on_a_real_run(lora_run: tuple[Path, dict], tmp_path: Path) -> None:
    """The intrusion tracks from a real run's saved predictions: defined exactly below the diagonal."""
    out, _ = lora_run
    res = cli.invoke(app, ["rescore", str(out), "--intrusion"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    for track in ("intrusion", "intrusion_form"):
        matrix = data["matrix"][track]
        assert len(matrix) == len(data["tasks"]) == 3
        for t, row in enumerate(matrix):
            for j, v in enumerate(row):
                assert (v is None) == (j >= t), (track, t, j, v)
                assert v is None or 0.0 <= v <= 1.0
        assert data["metrics"][track]["mft"] is None  # not a score: last and average only
    res = cli.invoke(app, ["compare", str(out), "--scorer", "intrusion", "--output", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    # The same track as a column beside the primary metrics, and a track the run does not have.
    res = cli.invoke(app, ["compare", str(out), "--also", "intrusion", "--output", str(tmp_path / "cmp2")])
    assert res.exit_code == 0, res.output
    row = json.loads((tmp_path / "cmp2" / "compare.json").read_text())["rows"][0]
    assert row["extra"]["intrusion last"]["mean"] == pytest.approx(data["metrics"]["intrusion"]["last"])
    assert row["metrics"]["last"]["mean"] == pytest.approx(data["metrics"]["primary"]["last"])
    res = cli.invoke(app, ["compare", str(out), "--also", "drift_probe"])
    assert res.exit_code != 0 and "has a 'drift_probe' track" in res.output
