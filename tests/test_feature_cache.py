"""train.feature_cache: frozen image features computed once, never read stale.

Each vision-side setting that can change the image features (a trainable vision parameter, a
hook on the vision tower, LoRA on the vision encoder, a trained projector, UNIFIER's branches,
mr-lora's projector copies, dropout in training) makes the cache bypass the call; a change of
the vision weights invalidates every entry. A quick run gives the same matrices, predictions
and training losses with and without the cache, bit for bit.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import build_test_method, quick_overrides

from mmcl.config import load_config
from mmcl.runner import Runner
from mmcl.train.encode import Encoder, collate_prompts, collate_train
from mmcl.train.feature_cache import FeatureCache, attach, inner_model, unsafe_reason


def _batch(method, n: int = 4) -> dict[str, torch.Tensor]:
    enc = Encoder(method.ctx.bundle.processor).encode(method.ctx.benchmark.tasks[0].train[:n], with_answer=True)
    return collate_train(enc, method.ctx.bundle.tokenizer.pad_token_id)


def _features(method, batch) -> torch.Tensor:
    out = method.model.get_base_model() if hasattr(method.model, "get_base_model") else method.model
    return torch.cat(list(out.get_image_features(pixel_values=batch["pixel_values"], return_dict=True).pooler_output))


def _uncached(method, batch) -> torch.Tensor:
    inner = inner_model(method.model)
    original = type(inner).__mro__[1] if hasattr(type(inner), "_mmcl_feature_cache") else type(inner)
    return torch.cat(list(original.get_image_features(inner, batch["pixel_values"], return_dict=True).pooler_output))


@pytest.fixture()
def lora(tiny_llava_dir: Path):
    torch.manual_seed(0)
    return build_test_method(tiny_llava_dir, "lora-ft")


def test_hits_equal_the_uncached_features(lora) -> None:
    cache = FeatureCache()
    assert cache.install(lora.model) is None
    batch = _batch(lora)
    lora.model.eval()
    first = _features(lora, batch)
    again = _features(lora, batch)
    assert cache.stats.misses == 4 and cache.stats.hits == 4 and not cache.stats.bypassed
    assert torch.equal(first, again) and torch.equal(again, _uncached(lora, batch))
    # through the model's forward and generate too
    lora.model(**batch)
    enc = Encoder(lora.ctx.bundle.processor).encode(lora.ctx.benchmark.tasks[0].test[:2], with_answer=False)
    lora.model.generate(**collate_prompts(enc, lora.ctx.bundle.tokenizer.pad_token_id), max_new_tokens=2)
    assert cache.stats.hits == 8 and cache.stats.misses == 6
    cache.close()
    assert not hasattr(type(inner_model(lora.model)), "_mmcl_feature_cache")


@pytest.mark.parametrize("change", ["requires_grad", "forward_hook", "pre_hook", "dropout"])
def test_each_vision_side_change_bypasses(lora, change: str) -> None:
    cache = FeatureCache()
    cache.install(lora.model)
    batch = _batch(lora)
    lora.model.eval()
    _features(lora, batch)
    inner = inner_model(lora.model)
    if change == "requires_grad":
        next(inner.multi_modal_projector.parameters()).requires_grad_(True)
    elif change == "forward_hook":
        inner.vision_tower.encoder.layers[0].register_forward_hook(lambda m, a, o: None)
    elif change == "pre_hook":
        inner.multi_modal_projector.register_forward_pre_hook(lambda m, a: None)
    else:
        lora.model.train()
        inner.vision_tower.encoder.layers[0].self_attn.dropout = 0.1
    assert unsafe_reason(inner) is not None
    hits = cache.stats.hits
    _features(lora, batch)
    assert cache.stats.hits == hits and sum(cache.stats.bypassed.values()) == 1


def test_changed_vision_weights_invalidate(lora) -> None:
    cache = FeatureCache()
    cache.install(lora.model)
    batch = _batch(lora)
    lora.model.eval()
    before = _features(lora, batch)
    with torch.no_grad():
        inner_model(lora.model).multi_modal_projector.linear_2.bias.add_(1.0)  # in place, no requires_grad
    after = _features(lora, batch)
    assert cache.stats.invalidations == 1 and cache.stats.misses == 8 and cache.stats.hits == 0
    assert not torch.equal(before, after) and torch.equal(after, _uncached(lora, batch))
    # a replaced tensor (load_state_dict(assign=True), .data =) is caught the same way
    proj = inner_model(lora.model).multi_modal_projector.linear_2
    proj.bias.data = proj.bias.data - 1.0
    assert torch.equal(_features(lora, batch), before) and cache.stats.invalidations == 2


def test_deep_copy_runs_on_its_own_weights(lora) -> None:
    cache = FeatureCache()
    cache.install(lora.model)
    batch = _batch(lora)
    lora.model.eval()
    mine = _features(lora, batch)
    twin = copy.deepcopy(lora)
    with torch.no_grad():
        inner_model(twin.model).multi_modal_projector.linear_2.bias.add_(1.0)
    theirs = _features(twin, batch)
    assert not torch.equal(mine, theirs) and torch.equal(theirs, _uncached(twin, batch))


def test_spills_past_the_limit(lora, tmp_path: Path) -> None:
    cache = FeatureCache(limit_mb=0, spill_dir=tmp_path / "spill")
    cache.install(lora.model)
    batch = _batch(lora)
    lora.model.eval()
    first = _features(lora, batch)
    assert cache.stats.spilled == 4 and cache.memory_bytes == 0 and len(list((tmp_path / "spill").glob("*.pt"))) == 4
    assert torch.equal(_features(lora, batch), first) and cache.stats.hits == 4
    cache.close()
    assert not (tmp_path / "spill").exists()


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("lora-ft", ["model.lora_vision=true"]),
        ("lora-ft", ["model.train_projector=true"]),
        ("unifier", []),
        ("mr-lora", []),
    ],
)
def test_methods_that_touch_the_vision_side_bypass(tiny_llava_dir: Path, method: str, extra: list[str]) -> None:
    torch.manual_seed(0)
    m = build_test_method(tiny_llava_dir, method, *extra)
    m.before_task(0, m.ctx.benchmark.tasks[0])
    cache, state = attach("auto", m.model, 64, None)
    assert cache is not None and state == "on"
    batch = _batch(m)
    m.model.train()
    for _ in range(2):
        m.model(**batch)
    m.model.eval()
    m.model(**batch)
    assert cache.stats.hits == 0 and cache.stats.misses == 0 and sum(cache.stats.bypassed.values()) >= 3, (
        cache.summary())
    cache.close()


def test_unsupported_model_and_modes(tiny_janus_dir: Path, lora) -> None:
    janus = build_test_method(tiny_janus_dir, "lora-ft")
    assert attach("auto", janus.model, 64, None)[0] is None
    with pytest.raises(ValueError, match="feature_cache=on"):
        attach("on", janus.model, 64, None)
    assert attach("off", lora.model, 64, None) == (None, "off")
    assert load_config(overrides=["train.feature_cache=off"]).train.feature_cache == "off"  # YAML's bare off


@pytest.mark.slow
def test_quick_run_identical_with_and_without_cache(tiny_llava_dir: Path, tmp_path: Path) -> None:
    """Matrices, zero-shot row, metrics, every prediction file and every stage's losses: equal, exactly."""
    runs = {}
    for mode in ("auto", "off"):
        out = Runner(load_config(overrides=quick_overrides(
            tiny_llava_dir, "train.num_threads=1", f"train.feature_cache={mode}")), output_dir=tmp_path / mode).run()
        runs[mode] = (out, json.loads((out / "results.json").read_text()))
    (a_dir, a), (b_dir, b) = runs["auto"], runs["off"]
    assert a["feature_cache"]["hits"] > 0 and not a["feature_cache"]["bypassed"]
    assert a["cost"]["feature_cache"] == "on" and b["cost"]["feature_cache"] == "off"
    assert a["matrix"] == b["matrix"] and a["zero_shot"] == b["zero_shot"] and a["metrics"] == b["metrics"]
    losses = [[(s["final_loss"], s["mean_loss"]) for s in r["stage_stats"]] for r in (a, b)]
    assert losses[0] == losses[1]
    for p in sorted((a_dir / "predictions").rglob("*.jsonl")):
        assert p.read_text() == (b_dir / p.relative_to(a_dir)).read_text(), p
    assert not (a_dir / "feature-cache").exists()


def test_config_feature_options_are_part_of_the_key(lora) -> None:
    cache = FeatureCache()
    cache.install(lora.model)
    batch = _batch(lora)
    lora.model.eval()
    default = _features(lora, batch)
    inner_model(lora.model).config.vision_feature_select_strategy = "full"  # keeps the CLS position
    full = _features(lora, batch)
    assert cache.stats.hits == 0 and full.shape[0] == default.shape[0] + 4
    assert torch.equal(full, _uncached(lora, batch))
    cache.close()
