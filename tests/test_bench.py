"""``mmcl bench --quick`` through the CLI: it runs and writes what it promises (never a speed assertion)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmcl.cli import app


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.mark.slow  # ~20 s: a real bench; the inner loop stays under 3 minutes
def test_quick_bench_writes_the_promised_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # one thread: a quick run that stays quick on a busy CI machine
    result = CliRunner().invoke(app, ["bench", "--quick", "--threads", "1", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "ratio mmcl / plain" in result.stdout  # the table
    res = json.loads(out.read_text())

    assert res["meta"]["quick"] is True and res["meta"]["torch_threads"] == 1
    tr, ev, ro, sc = res["train"], res["eval"], res["routing"], res["scaling"]
    for value in (
        tr["ratio_vs_plain"], tr["mfu"], tr["samples_per_s"], tr["samples_per_s_plain"], tr["flops_per_step"],
        tr["flops_6N"], tr["peak_flops"], tr["achieved_flops"],
        ev["ratio_vs_per_sample"], ev["samples_per_s"], ev["samples_per_s_per_sample"],
        ro["moelora"]["ratio_vs_lora"], ro["unifier"]["ratio_vs_lora"], ro["lora-ft"]["samples_per_s"],
        tr["ratio_cached_vs_uncached"], tr["samples_per_s_uncached"], tr["mfu_uncached"], tr["flops_per_rep_cached"],
        ev["ratio_cached_vs_uncached"], ev["samples_per_s_uncached"], ro["slowest_vs_lora"],
        res["run"]["default_seconds"], res["run"]["default_seconds_uncached"],
    ):
        assert _positive(value), value
    assert "6 * N_text" in tr["flops_6N_formula"] and "FlopCounterMode" in tr["flops_method"]
    # counted FLOPs: LoRA's frozen weights get no weight gradients, so fewer than the 6N estimate
    assert tr["flops_per_rep"] < tr["flops_6N"]
    assert 0.0 <= tr["profile"]["matmul_share"] <= 1.0
    assert set(ev["per_task"]) == {"high-altitude.counting", "indoor.grounding"}
    assert 0.0 <= ev["answers_agree"] <= 1.0

    for name in ("lora-ft", "o-lora"):
        points = sc[name]["points"]
        assert [p["T"] for p in points] == sc["tasks"]
        assert all(_positive(p["stage_seconds"]) and _positive(p["param_bytes"]) for p in points)
    assert sc["lora-ft"]["held_bytes_per_task"] == 0  # one adapter, nothing held per task
    olora = sc["o-lora"]
    # one frozen adapter more per task: its bytes are the slope
    adapter_bytes = olora["points"][0]["params_added_per_task"] * 4
    assert olora["held_bytes_per_task"] == adapter_bytes
    assert olora["param_bytes_per_task"] == adapter_bytes

    # the cache: the first epoch computes each image's features, later epochs read them; the model's own loop
    # without it computes as much as the plain loop
    assert tr["feature_cache"]["hits"] > 0 and tr["feature_cache"]["misses"] == tr["distinct_samples"]
    assert tr["flops_per_rep_cached"] < tr["flops_per_rep"]
    assert ro["unifier"]["feature_cache"]["bypassed"] and ro["moelora"]["feature_cache"]["hits"] > 0
    mx = res["matrix"]
    assert [p["T"] for p in mx["points"]] == [2, 3]
    assert all(p["items_sampled"] < p["items_full"] and _positive(p["ratio_full_vs_sampled"]) for p in mx["points"])
    run = res["run"]
    assert run["measured"]["feature_cache"]["hits"] > 0 and run["measured_uncached"]["feature_cache"] is None
    from mmcl.benchmarks.msvqa.synth import MSVQASynthOptions
    from mmcl.config import RunConfig

    opts, cfg = MSVQASynthOptions(), RunConfig()
    assert run["default"] == {"tasks": 20, "train_per_task": opts.train_size, "test_per_task": opts.test_size,
                              "epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size}
    assert run["default_steps"] == 20 * 38 * 4 and run["default_eval_items"] == 20 * 50 * 21
    assert set(res["targets"]) == {"train.ratio_vs_plain", "train.mfu", "eval.ratio_vs_per_sample",
                                   "run.default_seconds", "routing.slowest_vs_lora"}
    assert all(isinstance(t["met"], bool) and isinstance(t["within_noise"], bool) for t in res["targets"].values())
    assert res["notes"] and all(isinstance(n, str) for n in res["notes"])
