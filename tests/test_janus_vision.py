"""The understanding-encoder warm-up of the tiny Janus (``mmcl.pretrain.janus_vision``)."""

from __future__ import annotations

from pathlib import Path

import torch

from mmcl.models import tiny_janus as tj
from mmcl.pretrain.janus_vision import warm_up_vision


def test_warm_up_trains_only_the_vision_tower_and_reports_held_out_accuracy(tiny_janus_dir: Path) -> None:
    model, processor = tj.load_tiny_janus(tiny_janus_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    quiet = warm_up_vision(model, processor, steps=0, n_images=120, log=lambda *_: None)
    res = warm_up_vision(model, processor, steps=80, n_images=120, batch_size=32, lr=3e-3, log=lambda *_: None)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("model.vision_model.") for n in changed)
    for k in ("shape", "colour", "position", "background"):
        assert 0.0 <= res[f"vision_heldout_{k}"] <= 1.0
    # the backgrounds are three flat colours: read from the mean patch feature after a short warm-up
    assert res["vision_heldout_background"] > max(0.6, quiet["vision_heldout_background"])
