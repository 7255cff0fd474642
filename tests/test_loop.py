"""The shared training loop: gradient accumulation really accumulates."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import build_test_method, train_stage


def _lora_after_one_update(model_dir: Path, batch: int, accum: int) -> tuple[dict[str, torch.Tensor], int]:
    method = build_test_method(
        model_dir, "lora-ft", f"train.batch_size={batch}", f"train.grad_accum={accum}", "train.max_steps=1",
        "train.warmup_ratio=0", "train.num_threads=1",
    )
    stats = train_stage(method, 0)
    lora = {n: p.detach().clone() for n, p in method.model.named_parameters() if "lora_" in n}
    return lora, stats.samples


def test_two_accumulated_batches_make_one_update_like_one_double_batch(tiny_llava_dir: Path) -> None:
    accumulated, seen = _lora_after_one_update(tiny_llava_dir, batch=4, accum=2)
    assert seen == 8, "one update with grad_accum=2 must read two batches"
    single, _ = _lora_after_one_update(tiny_llava_dir, batch=8, accum=1)
    half, _ = _lora_after_one_update(tiny_llava_dir, batch=4, accum=1)
    # AdamW's first update is lr * g / (|g| + eps): equal wherever the two gradients agree in sign.
    diff_acc = sum(float((accumulated[n] - single[n]).abs().sum()) for n in single)
    diff_half = sum(float((half[n] - single[n]).abs().sum()) for n in single)
    assert diff_acc < 0.05 * diff_half, (diff_acc, diff_half)
