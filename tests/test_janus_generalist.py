"""The generalist tiny Janus: its generic mix covers every stream form on canonical scenes and never
shows a stream picture or test item; the recipe runs end to end (slow) and writes its card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mmcl.benchmarks.continual_next.synth import OCR_WORDS, TASK_NAMES, make_task
from mmcl.pretrain.janus import heldout_split
from mmcl.pretrain.janus_generalist import (
    GENERIC_EDITS,
    GENERIC_WORDS,
    JanusGeneralistRecipe,
    caption_samples,
    generic_tasks,
    pretrain_janus_generalist,
)


def _hash(img) -> str:  # noqa: ANN001
    return hashlib.sha256(img.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def generic():  # noqa: ANN201
    return generic_tasks(seed=0, train_size=120, test_size=24)


def test_every_stream_form_is_in_the_generic_mix(generic) -> None:  # noqa: ANN001
    assert [t.name for t in generic] == list(TASK_NAMES)
    by = {t.name: t for t in generic}
    assert {s.answers[0] for s in by["ocr-vqa"].train} <= set(GENERIC_WORDS)
    assert set(OCR_WORDS) - set(GENERIC_WORDS) == {"cat", "sun", "box", "tree"}  # words only the stream writes
    assert {s.meta["edit"]["attribute"] for s in by["editing"].train} == set(GENERIC_EDITS)
    trained = {s.caption() for s in heldout_split(0)[0]}
    assert {s.answers[0] for s in by["t2i"].train} <= trained  # the base's held-out combinations stay held out
    assert all(s.meta["style"] == "canonical" for t in generic for s in t.train + t.test)
    caps = caption_samples(20, seed=0)
    assert all(c.answers[0] in trained for c in caps) and _hash(caps[3].load_image()) == _hash(caption_samples(20, 0)[3].load_image())


def test_the_generic_mix_never_shows_a_stream_picture_or_test_item(generic) -> None:  # noqa: ANN001
    """No input picture of the generic mix is a test picture of the generalist's stream (the shifted
    style, seeds 0-2), and no generic (question, answer, picture) is one of its test items. (The
    canonical style draws from the same finite world of one- and two-object scenes the base was
    pre-trained on, by design: that is the old base's stream.)"""
    stream_pictures, stream_items = set(), set()
    for seed in (0, 1, 2):
        for style in ("shifted",):
            for name in TASK_NAMES:
                for s in make_task(name, seed, 1, 24, style=style).test:
                    if s.image is not None:
                        stream_pictures.add(_hash(s.load_image()))
                    stream_items.add((s.question, s.answers[0], s.image))
    assert len(stream_pictures) == 3 * 5 * 24  # every input picture of every test set
    for t in generic:
        for s in t.train + t.test:
            if s.image is not None:
                assert _hash(s.load_image()) not in stream_pictures, s.id
                assert (s.question, s.answers[0], s.image) not in stream_items, s.id


@pytest.mark.slow
def test_the_recipe_runs_end_to_end_and_writes_its_card(tmp_path: Path) -> None:
    recipe = JanusGeneralistRecipe(per_form=24, captions=16, max_steps=6, held_out_per_form=4, card_test_size=3)
    card = pretrain_janus_generalist(tmp_path / "g", recipe, log=lambda *_: None)
    saved = json.loads((tmp_path / "g" / "pretrain_janus.json").read_text())
    assert saved["train_steps"] == 6 and saved["trainable_params"] < saved["params"]  # the VQ stays frozen
    for key in ("held_out_generic", "zero_shot_shifted", "zero_shot_canonical"):
        assert set(saved[key]) == {*TASK_NAMES, "mean"} and saved[key] == card[key]
    assert (tmp_path / "g" / "model.safetensors").is_file()


def test_the_shipped_preset_loads_with_its_card() -> None:
    from mmcl.config import ModelConfig
    from mmcl.models.loader import ASSETS_DIR, load_model

    bundle = load_model(ModelConfig(preset="tiny-janus-generalist", dtype="float32"))
    assert type(bundle.model).__name__ == "JanusForConditionalGeneration"
    card = json.loads((ASSETS_DIR / "tiny-janus-generalist" / "pretrain_janus.json").read_text())
    assert card["train_steps"] > 0 and card["trainable_params"] < card["params"]
    for style in ("shaded", "shifted", "canonical"):
        zs = card[f"zero_shot_{style}"]
        assert set(zs) == {*TASK_NAMES, "mean"} and zs["mean"] == pytest.approx(sum(zs[t] for t in TASK_NAMES) / 6, abs=0.06)
