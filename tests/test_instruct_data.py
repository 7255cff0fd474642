"""The generalist base: its instruction data never shows a stream's scenario rendering or test item; the preset loads."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from mmcl.benchmarks.msvqa.synth import QTYPES, SCENARIO_SPECS, UNITS, SceneObject, SceneRenderer
from mmcl.config import BenchmarkConfig, ModelConfig, RunConfig
from mmcl.pretrain.instruct import ALL_CATEGORIES, PLAIN_BACKGROUNDS, instruct_samples
from mmcl.synth.boxes import parse_formatted_boxes


def _hash(img) -> str:  # noqa: ANN001
    return hashlib.sha256(img.tobytes()).hexdigest()


def test_instruct_samples_are_deterministic_and_cover_every_form() -> None:
    a, b = instruct_samples(50, seed=3), instruct_samples(50, seed=3)
    assert [s.question for s in a] == [s.question for s in b]
    assert _hash(a[7].load_image()) == _hash(b[7].load_image())
    assert Counter(s.meta["qtype"] for s in a) == dict.fromkeys(QTYPES, 10)
    by_type = {s.meta["qtype"]: s for s in a}
    assert by_type["counting"].answers[0] in {str(k) for k in range(1, 7)}
    assert by_type["existence"].answers[0] in {"yes", "no"}
    assert by_type["category"].answers[0] in ALL_CATEGORIES
    [box] = parse_formatted_boxes(by_type["grounding"].answers[0])
    assert box == pytest.approx(tuple(by_type["grounding"].meta["boxes"][0]), abs=0.005)
    # the train and test splits differ
    test = instruct_samples(50, seed=3, split="test")
    assert {s.question + str(s.meta["boxes"]) for s in test} != {s.question + str(s.meta["boxes"]) for s in a}


def test_canonical_rendering_is_a_plain_background_with_the_stream_glyphs() -> None:
    obj = SceneObject("fish", "red", (2, 2, 12, 8))
    plain = np.asarray(SceneRenderer("underwater", 64, (obj,), seed=1, background=(255, 255, 255))())
    scene = np.asarray(SceneRenderer("underwater", 64, (obj,), seed=1)())
    assert (plain[60:, :] == 255).all() and (plain[:, 56:] == 255).all()  # nothing but the background outside the box
    assert (plain[8:32, 8:48] != 255).any()  # the fish is drawn
    assert not np.array_equal(plain, scene)  # the scenario rendering (water, tint, blur) is another picture


def test_instruction_data_never_shows_a_stream_scene_or_test_item() -> None:
    """Scene parameters and pixels: canonical backgrounds only, large objects, no stream test image."""
    from mmcl.benchmarks.builtin import build_benchmark

    stream_hashes: set[str] = set()
    for name in ("msvqa-synth", "mllm-dcl-synth", "mllm-acl-synth"):
        bench = build_benchmark(RunConfig(benchmark=BenchmarkConfig(name=name, train_per_task=1)))
        stream_hashes |= {_hash(s.load_image()) for t in bench.tasks for s in t.test}
    assert len(stream_hashes) > 1000
    smallest_stream_side = min(min(w, h) for spec in SCENARIO_SPECS.values() for c in spec.categories.values()
                               for w, h in c.sizes + c.far_sizes)
    for split in ("train", "test"):
        for s in instruct_samples(1500, seed=0, split=split):
            r = s.image
            assert isinstance(r, SceneRenderer) and r.background in PLAIN_BACKGROUNDS, s.id  # never a scenario background
            assert all(not o.transpose for o in r.objects)  # never the nadir view's rotation
            img = s.load_image()
            assert _hash(img) not in stream_hashes, s.id
            arr = np.asarray(img)
            # every pixel outside the objects' boxes is the plain background: no field, water, street or room
            mask = np.ones(arr.shape[:2], bool)
            for o in r.objects:
                x1, y1, x2, y2 = (v * 64 // UNITS for v in o.box)
                mask[max(0, y1 - 2):y2 + 2, max(0, x1 - 2):x2 + 2] = False  # thick outlines may overrun by a pixel
                assert max(o.box[2] - o.box[0], o.box[3] - o.box[1]) >= 3
                assert max(o.box[2] - o.box[0], o.box[3] - o.box[1]) > smallest_stream_side
            assert (arr[mask] == np.array(r.background, np.uint8)).all(), s.id


def test_generalist_preset_loads_with_its_card() -> None:
    from mmcl.models.loader import load_model, preset_dir

    bundle = load_model(ModelConfig(preset="tiny-llava-generalist"))
    assert type(bundle.model).__name__ == "LlavaForConditionalGeneration"
    assert bundle.source == "preset:tiny-llava-generalist"
    card = json.loads((preset_dir("tiny-llava-generalist") / "pretrain.json").read_text())
    assert set(card["held_out_generic"]) >= set(QTYPES)
    assert set(card["zero_shot"]["msvqa-synth"]["per_type"]) == set(QTYPES)


@pytest.mark.slow
def test_generalist_recipe_end_to_end_writes_its_card(tiny_llava_dir, tmp_path) -> None:  # noqa: ANN001
    """``pretrain_generalist`` on a small caption base: trains, saves a loadable model and the card."""
    from mmcl.models.loader import load_model
    from mmcl.pretrain.generalist import GeneralistRecipe, pretrain_generalist

    recipe = GeneralistRecipe(n_instruct=60, n_captions=8, n_say=4, vision_steps=30, max_steps=3, n_held_out=10,
                              card_test_per_task=2, card_streams=("msvqa-synth",))
    record = pretrain_generalist(tmp_path / "g", recipe, caption_base=tiny_llava_dir)
    assert record["train_steps"] == 3
    card = json.loads((tmp_path / "g" / "pretrain.json").read_text())
    assert set(card["held_out_generic"]) == {*QTYPES, "all_types"}
    assert len(card["zero_shot"]["msvqa-synth"]["per_task"]) == 20
    assert set(card["zero_shot"]["msvqa-synth"]["per_scenario"]) == set(SCENARIO_SPECS)
    load_model(ModelConfig(preset=None, path=str(tmp_path / "g")))
