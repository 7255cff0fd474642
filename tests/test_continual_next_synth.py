"""continual-next-synth: task order and declarations, determinism, balance, t2i held-out scenes,
grounding boxes against the drawn pixels, editing targets, ground truth vs vocabulary, options."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest

from mmcl.benchmarks import BENCHMARKS
from mmcl.benchmarks.builtin import benchmark_names
from mmcl.benchmarks.continual_next.cross_modal import _normalize_pair
from mmcl.benchmarks.continual_next.synth import (
    BOX_MAX_NEW_TOKENS,
    MODALITY_PAIRS,
    NAME,
    OCR_WORDS,
    TASK_NAMES,
    build,
    task_modalities_pair,
)
from mmcl.config import BenchmarkConfig, ConfigError
from mmcl.data.sample import Benchmark
from mmcl.eval.outputs import PRESENT_META_KEY, Expectation
from mmcl.synth.boxes import parse_formatted_boxes
from mmcl.synth.draw import PALETTE
from mmcl.synth.janus_world import ATTRIBUTES, BACKGROUND_COLOURS, POSITION_NAMES, Scene, draw_scene

ORDER = ["vqa", "classification", "t2i", "ocr-vqa", "grounding", "editing"]
TRAIN, TEST = 72, 24


def make(seed: int | None = None, **options: object) -> Benchmark:
    options = {"train_size": TRAIN, "test_size": TEST, **options}
    return BENCHMARKS.get(NAME)(BenchmarkConfig(name=NAME, seed=seed, **options))


@pytest.fixture(scope="module")
def bench() -> Benchmark:
    return make()


def samples(task):
    return task.train + task.test


def test_registered_order_and_declarations(bench: Benchmark) -> None:
    assert NAME in benchmark_names() and BENCHMARKS.get(NAME) is build
    assert bench.task_names == ORDER == list(TASK_NAMES)
    # Primary: mmcl's lenient rule; second track: the official MAGE rule (docs/scorers.md).
    scorers = {"vqa": ["cnext_text_lenient", "cnext_text"], "classification": ["cnext_text_lenient", "cnext_text"],
               "t2i": ["cnext_t2i"], "ocr-vqa": ["cnext_ocrvqa_lenient", "cnext_ocrvqa"],
               "grounding": ["cnext_grounding_lenient", "cnext_grounding"], "editing": ["cnext_edit"]}  # fmt: skip
    for t in bench.tasks:
        assert len(t.train) == TRAIN and len(t.test) == TEST
        assert t.scorers == scorers[t.name]
        assert t.description and "\n" not in t.description
        image_out = t.name in ("t2i", "editing")
        ins = ["text"] if t.name == "t2i" else ["text", "image"]
        assert t.meta["modalities"] == {"in": ins, "out": ["image" if image_out else "text"]}
        pair = MODALITY_PAIRS[t.name]
        assert task_modalities_pair(t) == task_modalities_pair(t.name) == t.meta["modality_pair"] == pair
        assert _normalize_pair(pair) == "+".join(sorted(ins)) + "->" + t.meta["modalities"]["out"][0]
        exp = Expectation(**t.meta["expect"])
        assert exp.modality == ("image" if image_out else "text")
        assert exp.format == {"grounding": "box", "t2i": "free", "editing": "free"}.get(t.name, "short")
        assert all(list(v) == sorted(v) and v for v in exp.vocabulary.values())
        assert t.meta["correct_at"] == (0.9 if t.name == "editing" else 1.0)
        assert t.meta["warm_start"] is (t.name == "vqa")
        assert t.max_new_tokens == {"grounding": BOX_MAX_NEW_TOKENS}.get(t.name, 8)
    assert set(bench.task("ocr-vqa").meta["expect"]["vocabulary"]) == {"words"}
    assert set(bench.task("t2i").meta["expect"]["vocabulary"]) == {"shapes", "colours", "backgrounds"}
    with pytest.raises(KeyError):
        task_modalities_pair("nope")


def test_images_targets_and_ground_truth(bench: Benchmark) -> None:
    for t in bench.tasks:
        vocab = t.meta["expect"]["vocabulary"]
        for s in t.train[:10] + t.test[:10]:
            assert s.wants_image is (t.name in ("t2i", "editing"))
            assert (s.image is None) is (t.name == "t2i")
            for img in (s.load_image(), s.load_target_image()):
                assert img is None or (img.size == (64, 64) and img.mode == "RGB")
            present = s.meta[PRESENT_META_KEY]
            assert set(vocab) <= set(present), (t.name, present)
            for cat, names in present.items():
                if cat in vocab:
                    assert set(names) <= set(vocab[cat]), (t.name, cat, names)
            assert present["backgrounds"] and set(present["backgrounds"]) <= set(BACKGROUND_COLOURS)
            assert set(present["shapes"]) <= set(ATTRIBUTES["shape"])
            assert set(present["colours"]) <= set(ATTRIBUTES["colour"])


def test_deterministic_and_seeded(bench: Benchmark) -> None:
    again, other = make(), make(seed=1)

    def fingerprint(b: Benchmark) -> list[object]:
        out: list[object] = []
        for t in b.tasks:
            for s in t.train[:3] + t.test[:3]:
                img, tgt = s.load_image(), s.load_target_image()
                out.append((s.question, s.answers, img and img.tobytes(), tgt and tgt.tobytes()))
        return out

    assert fingerprint(bench) == fingerprint(again)
    assert [s.meta for t in bench.tasks for s in t.test] == [s.meta for t in again.tasks for s in t.test]
    a, b = fingerprint(bench), fingerprint(other)
    assert a != b
    for t, u in zip(bench.tasks, other.tasks, strict=True):  # every task depends on the seed
        assert [(s.question, s.answers) for s in t.train] != [(s.question, s.answers) for s in u.train]
    s = bench.task("editing").train[4]
    for fn in (s.image, s.target_image):
        assert pickle.loads(pickle.dumps(fn))().tobytes() == fn().tobytes()
    w = bench.task("ocr-vqa").test[0].image
    assert pickle.loads(pickle.dumps(w))().tobytes() == w().tobytes()


def test_balanced_per_question_type(bench: Benchmark) -> None:
    expected_values = {
        ("vqa", "colour"): ATTRIBUTES["colour"], ("vqa", "shape"): ATTRIBUTES["shape"],
        ("classification", "object"): ATTRIBUTES["shape"], ("ocr-vqa", "word"): OCR_WORDS,
        ("grounding", "box"): POSITION_NAMES, ("editing", "colour"): ATTRIBUTES["colour"],
        ("editing", "position"): POSITION_NAMES, ("editing", "background"): ATTRIBUTES["background"],
    }  # fmt: skip
    for t in bench.tasks:
        for split in (t.train, t.test):
            by_type: dict[str, Counter[str]] = {}
            for s in split:
                if "balanced" in s.meta:
                    by_type.setdefault(s.meta["qtype"], Counter())[s.meta["balanced"]] += 1
            if t.name == "t2i":
                assert not by_type
                continue
            assert set(by_type) == set(t.meta["qtypes"])
            for q, counts in by_type.items():
                values = expected_values[(t.name, q)]
                n = sum(counts.values())
                assert set(counts) == set(values) or n < len(values)
                assert max(counts.values()) - min(counts.values()) <= 1, (t.name, q, counts)
    for t in (bench.task("vqa"), bench.task("classification"), bench.task("ocr-vqa")):
        assert all(s.answers == [s.meta["balanced"]] for s in samples(t))


def test_vqa_and_classification_answers_match_the_scene(bench: Benchmark) -> None:
    for s in samples(bench.task("vqa")):
        a, b = s.meta["objects"]
        assert a["shape"] != b["shape"] and a["colour"] != b["colour"] and a["position"] != b["position"]
        if s.meta["qtype"] == "colour":
            (obj,) = [o for o in (a, b) if s.question == f"What colour is the {o['shape']}?"]
            assert s.answers == [obj["colour"]]
        else:
            (obj,) = [o for o in (a, b) if s.question == f"What shape is {o['position']}?"]
            assert s.answers == [obj["shape"]]
    for s in samples(bench.task("classification")):
        (obj,) = s.meta["objects"]
        assert s.answers == [obj["shape"]] and s.question == "What object is in the image?"


def test_t2i_test_scenes_unseen_in_training(bench: Benchmark) -> None:
    t = bench.task("t2i")
    key = lambda s: tuple(sorted(s.meta["attributes"].items()))  # noqa: E731
    assert not {key(s) for s in t.test} & {key(s) for s in t.train}
    big = make(tasks=["t2i"], train_size=600, test_size=100).task("t2i")
    assert not {key(s) for s in big.test} & {key(s) for s in big.train}
    for s in t.test[:8]:
        scene = Scene(**s.meta["attributes"])
        assert s.question == f"Generate an image: {scene.caption()}" and s.answers == [scene.caption()]
        assert s.load_target_image().tobytes() == draw_scene(scene).tobytes()


def test_grounding_box_is_the_drawn_extent(bench: Benchmark) -> None:
    for s in samples(bench.task("grounding"))[:40]:
        tgt = s.meta["target"]
        assert s.question == f"Give the box of the {tgt['colour']} {tgt['shape']}."
        arr = np.asarray(s.load_image())
        ys, xs = np.nonzero(np.all(arr == PALETTE[tgt["colour"]], axis=-1))
        drawn = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 64
        box = np.array(s.meta["box"])
        assert np.abs(box - drawn).max() <= 1 / 64 + 1e-9, (s.id, box * 64, drawn * 64)
        (parsed,) = parse_formatted_boxes(s.answers[0])
        assert np.abs(np.array(parsed) - box).max() <= 0.005 + 1e-9
        assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1


def test_editing_changes_exactly_the_edited_attribute(bench: Benchmark) -> None:
    seen = Counter()
    for s in samples(bench.task("editing")):
        src, new = s.meta["source_attributes"], s.meta["attributes"]
        attr = s.meta["edit"]["attribute"]
        seen[attr] += 1
        assert [k for k in new if new[k] != src[k]] == [attr] and new[attr] == s.meta["edit"]["value"]
        assert s.answers == [Scene(**new).caption()]
        assert s.meta[PRESENT_META_KEY] == {
            "shapes": [new["shape"]], "colours": [new["colour"]], "backgrounds": [new["background"]],
        }  # fmt: skip
        if attr == "colour":
            assert s.question == f"Make the {src['shape']} {new['colour']}."
        elif attr == "background":
            assert s.question == f"Change the background to {new['background']}."
        else:
            assert s.question.startswith(f"Move the {src['shape']} to the ") and new["position"].endswith(
                s.question.removeprefix(f"Move the {src['shape']} to the ").rstrip(".")
            )
    assert set(seen) == {"colour", "position", "background"}
    s = bench.task("editing").test[0]
    assert s.load_image().tobytes() == draw_scene(Scene(**s.meta["source_attributes"])).tobytes()
    assert s.load_target_image().tobytes() == draw_scene(Scene(**s.meta["attributes"])).tobytes()


def test_ocr_word_is_large_and_dark(bench: Benchmark) -> None:
    for s in bench.task("ocr-vqa").test[:12]:
        assert s.answers[0] in OCR_WORDS and s.meta[PRESENT_META_KEY]["words"] == s.answers
        arr = np.asarray(s.load_image()).astype(int)
        bg = np.array(BACKGROUND_COLOURS[s.meta["background"]])
        ink = np.abs(arr - bg).sum(-1) > 150
        ys, xs = np.nonzero(ink)
        # fitted to 80 % of the width or 50 % of the height of the 64 px image
        assert xs.max() - xs.min() >= 40 or ys.max() - ys.min() >= 28, (s.answers, np.ptp(xs), np.ptp(ys))
        assert arr[ink].mean() < bg.mean()  # dark on light


def test_options_and_stream_options() -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        make(shuffle=True)
    with pytest.raises(ConfigError, match="multiple of 16"):
        make(image_size=72)
    b = make(order=["t2i", "vqa"], train_per_task=5)
    assert b.task_names == ["t2i", "vqa"] and len(b.tasks[0].train) == 5
    s = make(tasks=["editing"], image_size=96, train_size=3, test_size=2).tasks[0].test[0]
    assert s.load_image().size == s.load_target_image().size == (96, 96)


def test_a_box_answer_fits_in_the_grounding_token_budget_of_the_shipped_tokenizer(bench: Benchmark) -> None:
    from transformers import PreTrainedTokenizerFast

    from mmcl.models.loader import preset_dir

    tok = PreTrainedTokenizerFast.from_pretrained(preset_dir("tiny-janus"))
    longest = max(len(tok(" " + s.answers[0])["input_ids"]) for s in samples(bench.task("grounding")))
    assert longest + 1 <= BOX_MAX_NEW_TOKENS  # + end of sequence


def test_the_alternating_order_alternates_the_declared_modalities() -> None:
    from mmcl.benchmarks.continual_next.synth import alternate_modalities

    alt = make(modality_order="alternating", train_size=4, test_size=2)
    assert alt.task_names == ["vqa", "t2i", "classification", "editing", "ocr-vqa", "grounding"]
    mods = [(tuple(t.meta["modalities"]["in"]), tuple(t.meta["modalities"]["out"])) for t in alt.tasks]
    # the first five alternate: every step changes the output modality (and t2i's input has no image)
    outs = [m[1] for m in mods]
    assert outs[:5] == [("text",), ("image",), ("text",), ("image",), ("text",)]
    assert all(a != b for a, b in zip(mods[:4], mods[1:5], strict=True))
    assert alt.tasks[0].meta["warm_start"] and not any(t.meta["warm_start"] for t in alt.tasks[1:])
    # the same tasks and data as the default order
    default = {t.name: t for t in make(train_size=4, test_size=2).tasks}
    for t in alt.tasks:
        assert [s.id for s in t.train] == [s.id for s in default[t.name].train]
    # a subset takes the first N of the alternating order; an explicit order conflicts
    assert make(modality_order="alternating", tasks=3, train_size=4, test_size=2).task_names == ["vqa", "t2i",
                                                                                                 "classification"]
    with pytest.raises(ConfigError, match="modality_order=alternating sets the task order"):
        make(modality_order="alternating", order=["t2i", "vqa"], train_size=4, test_size=2)
    with pytest.raises(ConfigError, match="modality_order"):
        make(modality_order="zigzag", train_size=4, test_size=2)
    # greedy on declared modalities: a stream with no differing neighbour keeps its order
    same = [t for t in make(train_size=4, test_size=2).tasks if t.meta["modalities"]["out"] == ["text"]]
    assert [t.name for t in alternate_modalities(same)] == [t.name for t in same]


# ---------------------------------------------------------------- the shifted style (the generalist base's stream)


@pytest.fixture(scope="module")
def shifted() -> Benchmark:
    return make(style="shifted")


def test_shifted_style_keeps_questions_and_answers_and_shifts_the_input_pictures(bench: Benchmark, shifted: Benchmark) -> None:
    """Same questions and answers as canonical, drawn from the same generators; only the input pictures
    change (jittered objects, shaded backgrounds); image targets stay canonical; deterministic."""
    for name in ORDER:
        c, s = bench.task(name), shifted.task(name)
        assert [x.question for x in c.test] == [x.question for x in s.test]
        assert s.meta["style"] == "shifted" and all(x.meta["style"] == "shifted" for x in s.test)
        for a, b in zip(c.test[:8], s.test[:8], strict=True):
            if b.image is not None:
                img = np.asarray(b.load_image())
                assert not np.array_equal(np.asarray(a.load_image()), img)
                assert img.tobytes() == np.asarray(make(style="shifted").task(name).test[c.test.index(a)].load_image()).tobytes()
            if b.target_image is not None:  # the VQ's canonical world
                assert b.load_target_image().tobytes() == a.load_target_image().tobytes()
    # an object keeps its grid cell but not its canonical size; the background is no longer plain
    s = shifted.task("classification").test[0]
    arr = np.asarray(s.load_image()).astype(int)
    obj = s.meta["objects"][0]
    ys, xs = np.nonzero(np.all(arr == PALETTE[obj["colour"]], axis=-1))
    canonical = np.asarray(draw_scene(Scene(obj["shape"], obj["colour"], obj["position"], s.meta["background"]))).astype(int)
    assert len(xs) and not np.array_equal(arr, canonical)
    bg = np.array(BACKGROUND_COLOURS[s.meta["background"]])
    assert np.abs(arr[:8, :8] - bg).max() > 0  # a shaded corner


def test_shifted_boxes_are_the_drawn_extent_and_objects_do_not_overlap(shifted: Benchmark) -> None:
    sides = []
    for s in shifted.task("grounding").test + shifted.task("grounding").train[:40]:
        tgt = s.meta["target"]
        arr = np.asarray(s.load_image())
        ys, xs = np.nonzero(np.all(arr == PALETTE[tgt["colour"]], axis=-1))
        drawn = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 64
        assert np.abs(np.array(s.meta["box"]) - drawn).max() <= 1 / 64 + 1e-9, s.id
        sides.append(round(64 * max(drawn[2] - drawn[0], drawn[3] - drawn[1])))
        other = next(o for o in s.meta["objects"] if o != tgt)
        oy, ox = np.nonzero(np.all(arr == PALETTE[other["colour"]], axis=-1))
        assert len(ox), f"{s.id}: the other object is hidden"
    assert min(sides) < 16 < max(sides)  # sizes vary around the canonical 16 px


def test_shifted_ocr_is_smaller(bench: Benchmark, shifted: Benchmark) -> None:
    def width(s) -> int:  # noqa: ANN001
        arr = np.asarray(s.load_image()).astype(int)
        ink = np.abs(arr - np.array(BACKGROUND_COLOURS[s.meta["background"]])).sum(-1) > 150
        return int(np.ptp(np.nonzero(ink)[1]))
    pairs = list(zip(bench.task("ocr-vqa").test, shifted.task("ocr-vqa").test, strict=True))
    assert all(a.answers == b.answers for a, b in pairs)
    assert sum(width(b) < width(a) for a, b in pairs) >= 0.9 * len(pairs)


def test_unknown_style_is_refused() -> None:
    with pytest.raises(ConfigError, match="style"):
        make(style="tilted")


def test_shaded_style_changes_only_the_background(bench: Benchmark) -> None:
    """``shaded`` (the generalist base's stream): the canonical objects, exactly, on a shaded and grained
    background; OCR words keep their size; image targets stay canonical."""
    shaded = make(style="shaded")
    for name in ORDER:
        for a, b in zip(bench.task(name).test[:6], shaded.task(name).test[:6], strict=True):
            assert (a.question, a.answers) == (b.question, b.answers)
            if b.target_image is not None:
                assert b.load_target_image().tobytes() == a.load_target_image().tobytes()
            if b.image is None:
                continue
            ca, sa = np.asarray(a.load_image()).astype(int), np.asarray(b.load_image()).astype(int)
            bg = np.array(BACKGROUND_COLOURS[a.meta.get("background") or a.meta["source_attributes"]["background"]])
            obj = np.any(ca != bg, axis=-1)
            if name != "ocr-vqa":  # glyph pixels are exact (anti-aliased text edges blend with the shading)
                assert np.array_equal(ca[obj], sa[obj]), b.id
            assert np.abs(sa[~obj] - ca[~obj]).mean() > 3, b.id  # the background is shaded
