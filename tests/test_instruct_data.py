"""The generalist base: its instruction data never shows a stream's scenario rendering or test item; the preset loads."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from mmcl.benchmarks.mllm_cl.synth import INKS, OCR_WORDS, PAPERS
from mmcl.benchmarks.msvqa.synth import QTYPES, SCENARIO_SPECS, SCENARIOS, UNITS, SceneObject, SceneRenderer
from mmcl.config import BenchmarkConfig, ModelConfig, RunConfig
from mmcl.pretrain.instruct import (
    ALL_CATEGORIES,
    DEFAULT_WEIGHTS,
    DIGITS,
    INSTRUCT_QTYPES,
    LETTERS,
    PLAIN_BACKGROUNDS,
    READING_WORDS,
    SIDES,
    TEXTURES,
    InstructRenderer,
    instruct_samples,
    qtype_pattern,
)
from mmcl.synth.boxes import format_box, parse_formatted_boxes
from mmcl.synth.draw import COLOUR_NAMES, PALETTE

SMOOTH = 12  # the largest step between neighbouring pixels of a generic backdrop (measured: 9); scenarios: 43+


def _hash(img) -> str:  # noqa: ANN001
    return hashlib.sha256(img.tobytes()).hexdigest()


def _step(img) -> int:  # noqa: ANN001
    """The largest difference between two neighbouring pixels (any channel)."""
    a = np.asarray(img).astype(int)
    return int(max(np.abs(np.diff(a, axis=0)).max(), np.abs(np.diff(a, axis=1)).max()))


def test_instruct_samples_are_deterministic_and_cover_every_form() -> None:
    a, b = instruct_samples(60, seed=3), instruct_samples(60, seed=3)
    assert [s.question for s in a] == [s.question for s in b]
    assert _hash(a[7].load_image()) == _hash(b[7].load_image())
    assert _hash(a[20].load_image()) == _hash(b[20].load_image())
    assert Counter(s.meta["qtype"] for s in a) == dict.fromkeys(INSTRUCT_QTYPES, 4)  # unweighted: in turn
    by_type = {s.meta["qtype"]: s for s in a}
    assert by_type["counting"].answers[0] in {str(k) for k in range(1, 7)}
    assert by_type["existence"].answers[0] in {"yes", "no"}
    assert by_type["category"].answers[0] in ALL_CATEGORIES
    [box] = parse_formatted_boxes(by_type["grounding"].answers[0])
    assert box == pytest.approx(tuple(by_type["grounding"].meta["boxes"][0]), abs=0.005)
    # the train and test splits differ
    test = instruct_samples(60, seed=3, split="test")
    assert {s.question + str(s.meta["boxes"]) for s in test} != {s.question + str(s.meta["boxes"]) for s in a}
    # weights: msvqa-synth's five 3 per round, the new forms 2
    pattern = qtype_pattern(DEFAULT_WEIGHTS)
    assert Counter(pattern) == DEFAULT_WEIGHTS and len(pattern) == 35
    weighted = instruct_samples(70, seed=3, weights=DEFAULT_WEIGHTS)
    assert Counter(s.meta["qtype"] for s in weighted) == {q: 2 * w for q, w in DEFAULT_WEIGHTS.items()}
    with pytest.raises(ValueError, match="weights"):
        qtype_pattern({q: 0 for q in INSTRUCT_QTYPES})


def _by_type(n: int = 2100) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in instruct_samples(n, seed=5, weights=DEFAULT_WEIGHTS):
        out.setdefault(s.meta["qtype"], []).append(s)
    return out


def test_every_new_form_has_its_answer_set_and_the_right_answer() -> None:
    """Each new form's answers are its whole answer set, and each answer is what the picture shows."""
    forms = _by_type()
    answers = {q: {s.answers[0] for s in v} for q, v in forms.items()}
    assert answers["digit"] == set(DIGITS)
    assert answers["word"] <= set(READING_WORDS) and len(answers["word"]) >= 20
    assert set(OCR_WORDS) <= set(READING_WORDS)  # the mllm-acl-synth OCR answers are generic words here
    assert answers["side"] == set(SIDES)
    assert answers["relation"] == answers["verify"] == {"yes", "no"}
    assert answers["ordinal"] == {"1", "2", "3", "4"}
    assert answers["choice"] == set(LETTERS)
    assert answers["largest"] == set(COLOUR_NAMES)
    for s in forms["digit"] + forms["word"]:
        [t] = s.image.texts
        assert t.text == s.answers[0] and not s.image.objects
    for s in forms["side"]:
        [o] = s.image.objects
        x1, y1, x2, y2 = o.box
        half = {"left": x2 <= 8, "right": x1 >= 8, "top": y2 <= 8, "bottom": y1 >= 8}
        across = y1 < 8 < y2 if s.answers[0] in ("left", "right") else x1 < 8 < x2
        assert half[s.answers[0]] and across and sum(half.values()) == 1, s.question
    for s in forms["relation"]:
        q = s.question.removeprefix("Is the ").removesuffix("?")
        rel = next(r for r in ("left of", "right of", "above", "below") if f" {r} the " in q)
        a_name, b_name = q.split(f" {rel} the ")
        a, b = (next(o for o in s.image.objects if o.category == n) for n in (a_name, b_name))
        truth = {"left of": a.box[2] <= b.box[0], "right of": a.box[0] >= b.box[2],
                 "above": a.box[3] <= b.box[1], "below": a.box[1] >= b.box[3]}[rel]
        assert s.answers[0] == ("yes" if truth else "no"), s.question
    for s in forms["ordinal"]:
        objs, k = s.image.objects, int(s.answers[0]) - 1
        if "highest" in s.question:
            line = sorted(objs, key=lambda o: o.box[0])
            assert line[k].box[1] < min(o.box[1] for i, o in enumerate(line) if i != k)
        else:
            line = sorted(objs, key=lambda o: o.box[1] if "top one" in s.question else o.box[0])
            colour = s.question.split(" is ")[1].split("?")[0]
            assert [o.colour for o in line].count(colour) == 1 and line[k].colour == colour, s.question
    for s in forms["largest"]:
        area = {o.colour: (o.box[2] - o.box[0]) * (o.box[3] - o.box[1]) for o in s.image.objects}
        assert max(area, key=area.get) == s.answers[0] and len(area) == len(s.image.objects) >= 2
    for s in forms["colour-box"]:
        colour = s.question.removeprefix("Where is the ").split(" ")[0]
        [o] = [o for o in s.image.objects if o.colour == colour]
        assert s.answers[0] == format_box(o.norm_box)
    for s in forms["verify"]:
        cat = s.meta["category"]
        if s.question.startswith("Are there"):
            truth = any(o.category == cat for o in s.image.objects)
        else:
            asked = s.question.removesuffix("?").split(" ")[-1]
            truth = all(o.colour == asked for o in s.image.objects)
        assert s.answers[0] == ("yes" if truth else "no"), s.question
    for s in forms["choice"]:
        opts = _options(s.question)
        o = s.image.objects[0]
        assert opts[s.answers[0]] == (o.category if "kind of object" in s.question else o.colour), s.question
        assert list(opts) == list(LETTERS[: len(opts)]) and len(opts) in (3, 4)
    for s in forms["phrase"]:
        [o] = s.image.objects
        assert s.answers[0] == f"{'an' if o.colour[0] in 'aeiou' else 'a'} {o.colour} {o.category}"


def _options(question: str) -> dict[str, str]:
    """"... A. fish B. crab C. ship Answer with the letter." -> {"A": "fish", ...}."""
    words = question.split("? ", 1)[1].removesuffix(" Answer with the letter.").split(" ")
    return {words[i].rstrip("."): words[i + 1] for i in range(0, len(words), 2)}


def test_canonical_rendering_is_a_plain_background_with_the_stream_glyphs() -> None:
    obj = SceneObject("fish", "red", (2, 2, 12, 8))
    plain = np.asarray(SceneRenderer("underwater", 64, (obj,), seed=1, background=(255, 255, 255))())
    scene = np.asarray(SceneRenderer("underwater", 64, (obj,), seed=1)())
    assert (plain[60:, :] == 255).all() and (plain[:, 56:] == 255).all()  # nothing but the background outside the box
    assert (plain[8:32, 8:48] != 255).any()  # the fish is drawn
    assert not np.array_equal(plain, scene)  # the scenario rendering (water, tint, blur) is another picture


def test_generic_backdrops_are_smooth_and_scenario_backgrounds_are_not() -> None:
    """A gradient or soft noise has no edge and no fine texture; every scenario background (empty scene) has both."""
    kinds = Counter()
    for s in instruct_samples(400, seed=1, textured=1.0):
        kinds[s.image.backdrop.kind] += 1
        assert _step(s.image.background()) <= SMOOTH, s.id
    assert set(kinds) == {"gradient", "noise"}
    for scenario in SCENARIOS:
        assert min(_step(SceneRenderer(scenario, 64, (), seed)()) for seed in range(40)) > 3 * SMOOTH, scenario


def test_instruction_data_never_shows_a_stream_scene_or_test_item() -> None:
    """Scene parameters and pixels: generic backdrops only, large objects, no OCR stand-in style, no stream test image."""
    from mmcl.benchmarks.builtin import build_benchmark

    stream_hashes: set[str] = set()
    for name in ("msvqa-synth", "mllm-dcl-synth", "mllm-acl-synth"):
        bench = build_benchmark(RunConfig(benchmark=BenchmarkConfig(name=name, train_per_task=1)))
        stream_hashes |= {_hash(s.load_image()) for t in bench.tasks for s in t.test}
    assert len(stream_hashes) > 1000
    smallest_stream_side = min(min(w, h) for spec in SCENARIO_SPECS.values() for c in spec.categories.values()
                               for w, h in c.sizes + c.far_sizes)
    ocr_inks, ocr_papers = set(INKS.values()), set(PAPERS.values())
    seen_types, seen_kinds = Counter(), Counter()
    for split in ("train", "test"):
        for s in instruct_samples(1500, seed=0, split=split, weights=DEFAULT_WEIGHTS):
            seen_types[s.meta["qtype"]] += 1
            r = s.image
            assert isinstance(r, InstructRenderer), s.id
            seen_kinds[r.backdrop.kind] += 1
            assert r.backdrop.kind in TEXTURES and set(r.backdrop.colours) <= set(PLAIN_BACKGROUNDS), s.id
            assert all(not o.transpose for o in r.objects)  # never the nadir view's rotation
            for t in r.texts:  # palette inks only: never the OCR stand-in's inks or papers
                assert t.ink in PALETTE and PALETTE[t.ink] not in ocr_inks, s.id
                assert not set(r.backdrop.colours) & ocr_papers, s.id
            img = s.load_image()
            assert _hash(img) not in stream_hashes, s.id
            arr, back = np.asarray(img), np.asarray(r.background())
            assert _step(back) <= SMOOTH, s.id  # no field, water, street or room: no edge, no texture
            # every pixel outside the objects' and the text's boxes is the generic backdrop
            mask = np.ones(arr.shape[:2], bool)
            for o in r.objects:
                x1, y1, x2, y2 = (v * 64 // UNITS for v in o.box)
                mask[max(0, y1 - 2):y2 + 2, max(0, x1 - 2):x2 + 2] = False  # thick outlines may overrun by a pixel
                assert max(o.box[2] - o.box[0], o.box[3] - o.box[1]) >= 3
                assert max(o.box[2] - o.box[0], o.box[3] - o.box[1]) > smallest_stream_side
            for t in r.texts:
                x1, y1, x2, y2 = t.pixel_box(64)
                assert min(x1, y1) >= 0 and max(x2, y2) <= 64, s.id  # the whole text is in the picture
                mask[max(0, y1 - 1):y2 + 1, max(0, x1 - 1):x2 + 1] = False
            assert (arr[mask] == back[mask]).all(), s.id
            assert (arr[~mask] != back[~mask]).any() or not (r.objects or r.texts), s.id  # something is drawn
    assert set(seen_types) == set(INSTRUCT_QTYPES)
    assert set(seen_kinds) == set(TEXTURES) and seen_kinds["plain"] > seen_kinds["gradient"] + seen_kinds["noise"]


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

    recipe = GeneralistRecipe(n_instruct=70, n_captions=8, n_say=4, vision_steps=30, max_steps=3, n_held_out=30,
                              card_test_per_task=2, card_streams=("msvqa-synth", "mllm-acl-synth"))
    record = pretrain_generalist(tmp_path / "g", recipe, caption_base=tiny_llava_dir)
    assert record["train_steps"] == 3
    assert record["instruction_stage"]["mix"]["per_qtype"] == {q: 2 * w for q, w in DEFAULT_WEIGHTS.items()}
    card = json.loads((tmp_path / "g" / "pretrain.json").read_text())
    assert set(card["held_out_generic"]) == {*INSTRUCT_QTYPES, "all_types"}
    assert len(card["zero_shot"]["msvqa-synth"]["per_task"]) == 20
    assert set(card["zero_shot"]["msvqa-synth"]["per_scenario"]) == set(SCENARIO_SPECS)
    per_qtype = set(card["zero_shot"]["mllm-acl-synth"]["per_qtype"])  # of the (random) test samples kept
    assert per_qtype <= {"OCR.digit", "OCR.word", "Math.line", "Math.sum", "VP.count", "VP.relation", "GUI.which",
                         "GUI.box"}
    assert {k.split(".")[0] for k in per_qtype} == {"OCR", "Math", "VP", "GUI"}
    load_model(ModelConfig(preset=None, path=str(tmp_path / "g")))
