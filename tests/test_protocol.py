"""The MSVQA protocol summary (per scenario and overall), its report section and `mmcl compare --protocol`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import mmcl.benchmarks.builtin  # noqa: F401  registers the protocols
from mmcl.benchmarks.msvqa.protocol import compare_protocol, msvqa_summary, render_msvqa_markdown
from mmcl.cli import app
from mmcl.registry import UnknownNameError
from mmcl.report.markdown import render_report
from mmcl.report.protocols import PROTOCOLS

# Five tasks: two per scenario in high-altitude and underwater (QA then grounding), and one
# indoor task that declares neither vqa_score nor an F1 scorer (exact_match only).
TASKS = ["ha.qa", "ha.ground", "uw.qa", "uw.ground", "in.em"]
SCENARIOS = {
    "ha.qa": "high-altitude",
    "ha.ground": "high-altitude",
    "uw.qa": "underwater",
    "uw.ground": "underwater",
    "in.em": "indoor",
}
QA = ["vqa_score", "exact_match", "token_f1"]
SCORERS = {
    "ha.qa": QA,
    "ha.ground": ["box_f1"],
    "uw.qa": QA,
    "uw.ground": ["box_f1"],
    "in.em": ["exact_match"],
}
_ = None
VQA = [
    [0.8, _, 0.1, _, _],
    [0.6, _, 0.2, _, _],
    [0.5, _, 0.9, _, _],
    [0.4, _, 0.7, _, _],
    [0.4, _, 0.6, _, _],
]
TOKEN_F1 = [
    [0.9, _, 0.2, _, _],
    [0.7, _, 0.2, _, _],
    [0.6, _, 1.0, _, _],
    [0.5, _, 0.8, _, _],
    [0.5, _, 0.8, _, _],
]
BOX_F1 = [
    [_, 0.0, _, 0.0, _],
    [_, 0.6, _, 0.1, _],
    [_, 0.4, _, 0.1, _],
    [_, 0.3, _, 0.8, _],
    [_, 0.2, _, 0.6, _],
]
EM_COL = [0.0, 0.0, 0.0, 0.0, 0.5]


def make_results(vqa: list[list[float | None]] | None = None, **changes: Any) -> dict[str, Any]:
    vqa = vqa or VQA
    primary = [[v[0], b[1], v[2], b[3], em] for v, b, em in zip(vqa, BOX_F1, EM_COL, strict=True)]
    exact = [[_, _, _, _, em] for em in EM_COL]
    results: dict[str, Any] = {
        "mmcl_version": "0.1.0",
        "name": "msvqa-toy",
        "benchmark": "msvqa",
        "method": "lora-ft",
        "seed": 0,
        "tasks": TASKS,
        "scorers": SCORERS,
        "scenarios": SCENARIOS,
        "matrix": {
            "primary": primary,
            "vqa_score": vqa,
            "exact_match": exact,
            "token_f1": TOKEN_F1,
            "box_f1": BOX_F1,
        },
        "zero_shot": None,
        "metrics": {},
        "stages_complete": 5,
    }
    results.update(changes)
    return results


# Hand-computed (see the matrices above; T = 5, final row = stage 4):
EXPECTED = {
    "overall": {
        # VQA: columns 0, 2. last (0.4+0.6)/2; average over stages of seen means
        # 0.8, 0.6, (0.5+0.9)/2, (0.4+0.7)/2, 0.5; forgetting (0.8-0.4 + 0.9-0.6)/2.
        "last_vqa": 0.5,
        "average_vqa": (0.8 + 0.6 + 0.7 + 0.55 + 0.5) / 5,
        "forgetting_vqa": 0.35,
        # F1: token_f1 for columns 0, 2 and box_f1 for 1, 3. last (0.5+0.2+0.8+0.6)/4; seen means
        # 0.9, (0.7+0.6)/2, (0.6+0.4+1.0)/3, (0.5+0.3+0.8+0.8)/4, 0.525; forgetting (0.4+0.4+0.2+0.2)/4.
        "last_f1": 0.525,
        "average_f1": (0.9 + 0.65 + 2.0 / 3 + 0.6 + 0.525) / 5,
        "forgetting_f1": 0.3,
        "vqa_tasks": 2,
        "f1_tasks": 4,
    },
    "high-altitude": {
        "last_vqa": 0.4,
        "average_vqa": (0.8 + 0.6 + 0.5 + 0.4 + 0.4) / 5,
        "forgetting_vqa": 0.4,
        "last_f1": 0.35,
        "average_f1": (0.9 + 0.65 + 0.5 + 0.4 + 0.35) / 5,
        "forgetting_f1": 0.4,
        "vqa_tasks": 1,
        "f1_tasks": 2,
    },
    "underwater": {
        # stages before the scenario's first task (2) are skipped by "average"
        "last_vqa": 0.6,
        "average_vqa": (0.9 + 0.7 + 0.6) / 3,
        "forgetting_vqa": 0.3,
        "last_f1": 0.7,
        "average_f1": (1.0 + 0.8 + 0.7) / 3,
        "forgetting_f1": 0.2,
        "vqa_tasks": 1,
        "f1_tasks": 2,
    },
    "indoor": {  # its only task declares neither scorer
        "last_vqa": None,
        "average_vqa": None,
        "forgetting_vqa": None,
        "last_f1": None,
        "average_f1": None,
        "forgetting_f1": None,
        "vqa_tasks": 0,
        "f1_tasks": 0,
    },
}


def check(summary: dict[str, Any]) -> None:
    assert list(summary["scopes"]) == ["overall", "high-altitude", "underwater", "indoor"]
    for scope, expected in EXPECTED.items():
        got = summary["scopes"][scope]
        for key, value in expected.items():
            assert got[key] == (None if value is None else pytest.approx(value)), (scope, key)


def test_summary_per_scenario_and_overall() -> None:
    summary = msvqa_summary(make_results())
    check(summary)
    assert summary["scopes"]["underwater"]["tasks"] == ["uw.qa", "uw.ground"]
    assert summary["f1_source"] == {
        "ha.qa": "token_f1",
        "ha.ground": "box_f1",
        "uw.qa": "token_f1",
        "uw.ground": "box_f1",
        "in.em": None,
    }


def test_without_declared_scorers_the_non_null_columns_decide() -> None:
    results = make_results()
    del results["scorers"]
    check(msvqa_summary(results))


def test_declared_scorers_win_over_stray_cells() -> None:
    # A token_f1 cell on a grounding task is ignored: that task declares box_f1.
    results = make_results()
    results["matrix"]["token_f1"] = copy.deepcopy(TOKEN_F1)
    for row in results["matrix"]["token_f1"]:
        row[1] = 1.0
    check(msvqa_summary(results))


def test_one_row_run_has_only_last() -> None:
    # joint training: one evaluated row (the final one of the matrices above)
    results = make_results(stages=["after joint training"])
    results["matrix"] = {track: rows[-1:] for track, rows in results["matrix"].items()}
    overall = msvqa_summary(results)["scopes"]["overall"]
    assert overall["last_vqa"] == pytest.approx(0.5)
    assert overall["last_f1"] == pytest.approx(0.525)
    assert overall["average_vqa"] is None and overall["forgetting_f1"] is None


def test_report_section_only_with_scenarios(tmp_path: Path) -> None:
    md = render_report(tmp_path, make_results(), heatmaps=False)
    assert "## MSVQA protocol" in md
    assert "| overall | 5 | 2 / 4 | 50.0 | 52.5 | 63.0 | 66.8 | 35.0 | 30.0 |" in md
    assert "| indoor | 1 | 0 / 0 | – | – | – | – | – | – |" in md
    assert md.index("## Metrics") < md.index("## MSVQA protocol") < md.index("## Tasks")
    no_scenarios = make_results(scenarios={t: None for t in TASKS})
    assert "MSVQA protocol" not in render_report(tmp_path, no_scenarios, heatmaps=False)
    section = render_msvqa_markdown(msvqa_summary(make_results()))
    assert "F1 from `box_f1` for 2 task(s)" in section


def write_run(root: Path, dirname: str, seed: int, vqa: list[list[float | None]]) -> Path:
    run = root / dirname
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(make_results(vqa=vqa, seed=seed)))
    return run


# seed 1 differs in the final VQA row only: last VQA 0.7 (vs 0.5), forgetting VQA
# ((0.8-0.6) + (0.9-0.8))/2 = 0.15 (vs 0.35).
VQA_SEED1 = [*VQA[:4], [0.6, _, 0.8, _, _]]


def test_compare_protocol_mean_and_std_over_seeds(tmp_path: Path) -> None:
    runs = [write_run(tmp_path, "s0", 0, VQA), write_run(tmp_path, "s1", 1, VQA_SEED1)]
    cmp = compare_protocol(runs)
    (group,) = cmp.groups
    assert group.seeds == [0, 1] and list(group.scopes) == [
        "overall",
        "high-altitude",
        "underwater",
        "indoor",
    ]
    overall = group.scopes["overall"]
    assert overall["last_vqa"].mean == pytest.approx(0.6)
    assert overall["last_vqa"].std == pytest.approx(0.1 * 2**0.5)
    assert overall["forgetting_vqa"].mean == pytest.approx(0.25)
    assert overall["last_f1"].mean == pytest.approx(0.525) and overall["last_f1"].std == 0.0
    assert group.scopes["indoor"]["last_vqa"].mean is None
    with pytest.raises(UnknownNameError, match="unknown protocol 'msvq'. Did you mean 'msvqa'"):
        PROTOCOLS.get("msvq")


def test_cli_compare_protocol(tmp_path: Path) -> None:
    runs = [write_run(tmp_path, "s0", 0, VQA), write_run(tmp_path, "s1", 1, VQA_SEED1)]
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["compare", *map(str, runs), "--protocol", "msvqa", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "Comparison (msvqa protocol)" in result.output
    md = (out / "protocol-msvqa.md").read_text()
    assert (
        "| name | method | seeds | scope | last VQA | last F1 | average VQA | average F1 | forgetting VQA | forgetting F1 |"
        in md
    )
    assert (
        "| msvqa-toy | lora-ft | 2 | overall | 60.0 ± 14.1 | 52.5 ± 0.0 | 65.0 ± 2.8 | 66.8 ± 0.0 | 25.0 ± 14.1 | 30.0 ± 0.0 |"
        in md
    )
    assert "| msvqa-toy | lora-ft | 2 | indoor | – | – | – | – | – | – |" in md
    data = json.loads((out / "protocol-msvqa.json").read_text())
    assert data["groups"][0]["scopes"]["underwater"]["last_vqa"]["mean"] == pytest.approx(0.7)
    bad = CliRunner().invoke(app, ["compare", str(runs[0]), "--protocol", "coin"])
    assert bad.exit_code == 2 and "unknown protocol" in bad.output
