"""The embedded stream is good for science (quick variant, the shipped caption-only base).

`configs/msvqa-quick-science.yaml` (one task from each scenario; two of them ask the same
question in different scenarios) trained with the caption-only tiny base (`configs/caption.yaml`, the default before issue 23) must show the three properties the Foundation issue
asks for: jointly trained the model learns every task; zero-shot it is poor; trained
sequentially with plain LoRA it forgets. The thresholds leave a margin under the figures
measured on 2 CPU cores and stated in docs/results-msvqa-synth.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import science_runs

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "msvqa-quick-science.yaml"
CAPTION = CONFIG.parent / "caption.yaml"  # the caption-only base these figures were measured on

pytestmark = pytest.mark.slow  # three ~2-minute runs of the shipped model: CI runs them, the inner loop does not

# Measured (seed 0, 2 CPU cores, 2026-11-23): zero-shot 0.00 on all 4 tasks; joint
# 0.96 / 0.81 / 0.60 / 0.90 (mean 0.82); lora-ft MFT 0.78, last 0.19, BWT -0.79.
ZERO_SHOT_MAX = 0.10
JOINT_MEAN_MIN = 0.70
JOINT_TASK_MIN = 0.45
SEQ_MFT_MIN = 0.60
SEQ_BWT_MAX = -0.40


joint, sequential = science_runs(CONFIG, CAPTION)


def test_zero_shot_is_poor(sequential: dict) -> None:
    zero_shot = sequential["zero_shot"]["primary"]
    assert len(zero_shot) == 4
    assert max(zero_shot) <= ZERO_SHOT_MAX, zero_shot


def test_joint_learns_every_task(joint: dict) -> None:
    row = joint["matrix"]["primary"][-1]
    assert sum(row) / len(row) >= JOINT_MEAN_MIN, row
    assert min(row) >= JOINT_TASK_MIN, row


def test_sequential_lora_learns_then_forgets(sequential: dict) -> None:
    metrics = sequential["metrics"]["primary"]
    assert metrics["mft"] >= SEQ_MFT_MIN, metrics  # each task is learned when it is trained...
    assert metrics["bwt"] <= SEQ_BWT_MAX, metrics  # ...and clearly forgotten afterwards
    assert metrics["last"] < metrics["mft"]


def test_joint_beats_sequential(joint: dict, sequential: dict) -> None:
    assert joint["metrics"]["primary"]["last"] - sequential["metrics"]["primary"]["last"] >= 0.4
