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


def test_a_finished_stage_frees_its_optimizer_without_a_gc_pass(tiny_llava_dir: Path, monkeypatch) -> None:
    """train_on releases accelerate's references without gc.collect() on the CPU (see release_stage):
    that is only sound if nothing of a stage sits in a reference cycle, so the optimizer must die
    by reference counting alone."""
    import gc
    import weakref

    created: weakref.WeakSet = weakref.WeakSet()
    count = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            created.add(self)
            count.append(1)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    method = build_test_method(tiny_llava_dir, "lora-ft", "train.max_steps=2", "train.num_threads=1")
    gc.collect()
    gc.disable()
    try:
        train_stage(method, 0)
        assert count == [1]
        assert len(created) == 0, "the stage's optimizer outlived train_on without a gc pass"
    finally:
        gc.enable()
