"""train.compile: the compiled training forward learns as the eager one (float tolerance: fused kernels round
differently), with the feature cache serving it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import build_test_method, train_stage

from mmcl.train.feature_cache import FeatureCache

pytestmark = pytest.mark.slow


def test_compiled_training_matches_eager(tiny_llava_dir: Path) -> None:
    torch.set_num_threads(1)
    losses = {}
    for on in (False, True):
        m = build_test_method(tiny_llava_dir, "lora-ft", f"train.compile={str(on).lower()}", "train.max_steps=2")
        cache = FeatureCache()
        cache.install(m.model)
        losses[on] = train_stage(m, 0).mean_loss
        assert cache.stats.hits + cache.stats.misses > 0 and not cache.stats.bypassed
        cache.close()
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
