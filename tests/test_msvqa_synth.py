"""msvqa-synth: determinism, task order, answers consistent with ground truth, option errors.

Also writes one contact sheet per scenario (and one of the pre-training captions) to
``test-artifacts/`` for a person to look at.
"""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from mmcl.benchmarks import BENCHMARKS
from mmcl.benchmarks.msvqa.synth import (
    QTYPES,
    SCENARIO_SPECS,
    SCENARIOS,
    UNITS,
    answer_vocabulary,
    build,
    category_marking,
    make_task,
    marking_box,
    tokenizer_corpus,
)
from mmcl.config import BenchmarkConfig
from mmcl.pretrain.data import MARK_NAMES, caption_samples, say_samples
from mmcl.synth.boxes import boxes_overlap, format_box, format_boxes, parse_formatted_boxes
from mmcl.synth.draw import COLOUR_NAMES, GLYPHS, PALETTE, draw_glyph
from mmcl.synth.shapes import SHAPES

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ALL_TASKS = [f"{s}.{q}" for s in SCENARIOS for q in QTYPES]


def small(**options: object) -> BenchmarkConfig:
    return BenchmarkConfig(train_size=12, test_size=6, **options)


def image_bytes(sample) -> bytes:
    return sample.load_image().tobytes()


@pytest.fixture(scope="module")
def tasks() -> dict[str, object]:
    return {n: make_task(n, seed=3, train_size=40, test_size=20) for n in ALL_TASKS}


# ---------------------------------------------------------------- registry, order, options


def test_registered_and_default_order() -> None:
    assert BENCHMARKS.get("msvqa-synth") is build
    bench = build(small())
    assert bench.name == "msvqa-synth"
    assert bench.task_names == ALL_TASKS
    assert bench.task_names[:5] == [
        "high-altitude.counting", "high-altitude.category", "high-altitude.attribute",
        "high-altitude.existence", "high-altitude.grounding",
    ]
    t = bench.tasks[0]
    assert len(t.train) == 12 and len(t.test) == 6
    assert t.description == "High-altitude aerial scenes: count airplanes, storage-tanks, vehicles, ships"


def test_steps_5_is_one_scenario() -> None:
    assert build(small(steps=5)).task_names == [f"high-altitude.{q}" for q in QTYPES]
    assert build(small(steps=5, scenario="indoor")).task_names == [f"indoor.{q}" for q in QTYPES]


def test_interleaved_and_custom_orders() -> None:
    names = build(small(interleave=True)).task_names
    assert names[:4] == [f"{s}.counting" for s in SCENARIOS]
    for i, n in enumerate(names):  # step i: qtype i // 4, scenario i % 4
        assert n == f"{SCENARIOS[i % 4]}.{QTYPES[i // 4]}"
    order = ["indoor", "underwater", "high-altitude", "low-altitude"]
    qorder = ["grounding", "counting", "category", "attribute", "existence"]
    names = build(small(scenario_order=order, qtype_order=qorder)).task_names
    assert names == [f"{s}.{q}" for s in order for q in qorder]


def test_common_stream_options_apply() -> None:
    bench = build(small(tasks=3, test_per_task=4))
    assert bench.task_names == ALL_TASKS[:3]
    assert all(len(t.test) == 4 for t in bench.tasks)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"image_sise": 64}, "image_sise"),
        ({"steps": 7}, "steps"),
        ({"scenario": "space"}, "scenario"),
        ({"scenario_order": ["indoor", "underwater"]}, "scenario_order"),
        ({"qtype_order": ["counting"] * 5}, "qtype_order"),
        ({"image_size": 60}, "multiple of 16"),
        ({"test_size": 0}, "test_size"),
    ],
)
def test_option_errors(options: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as e:
        build(BenchmarkConfig(**options))
    if "image_sise" in options:
        assert "image_size" in str(e.value) and "train_size" in str(e.value)  # valid options listed


# ---------------------------------------------------------------- determinism, independence


def test_same_seed_same_data_different_seed_different() -> None:
    a = make_task("underwater.grounding", seed=1, train_size=5, test_size=5)
    b = make_task("underwater.grounding", seed=1, train_size=5, test_size=5)
    c = make_task("underwater.grounding", seed=2, train_size=5, test_size=5)
    for x, y in zip(a.train + a.test, b.train + b.test, strict=True):
        assert (x.id, x.question, x.answers, x.meta) == (y.id, y.question, y.answers, y.meta)
        assert image_bytes(x) == image_bytes(y)
    assert [s.answers for s in a.test] != [s.answers for s in c.test]
    assert all(image_bytes(x) != image_bytes(y) for x, y in zip(a.test, c.test, strict=True))


def test_task_data_independent_of_order_and_subset() -> None:
    full = build(BenchmarkConfig(seed=5, train_size=4, test_size=3))
    sub = build(BenchmarkConfig(seed=5, train_size=4, test_size=3, interleave=True, tasks=["indoor.counting"]))
    assert sub.task_names == ["indoor.counting"]
    x, y = full.task("indoor.counting"), sub.tasks[0]
    assert [s.question for s in x.test] == [s.question for s in y.test]
    assert [image_bytes(s) for s in x.test] == [image_bytes(s) for s in y.test]


def test_growing_a_split_keeps_its_prefix() -> None:
    a = make_task("indoor.existence", train_size=6, test_size=4)
    b = make_task("indoor.existence", train_size=10, test_size=8)
    assert [s.meta for s in a.test] == [s.meta for s in b.test[:4]]
    assert [s.meta for s in a.train] == [s.meta for s in b.train[:6]]


def test_train_and_test_disjoint(tasks) -> None:
    for t in tasks.values():
        train = {(s.question, str(s.meta["objects"])) for s in t.train if s.meta["objects"]}
        assert not any((s.question, str(s.meta["objects"])) in train for s in t.test)
        assert len({s.id for s in t.train + t.test}) == len(t.train) + len(t.test)
    for name in ("high-altitude.counting", "underwater.existence"):  # empty scenes differ by background
        t = tasks[name]
        train_images = {image_bytes(s) for s in t.train}
        assert not any(image_bytes(s) in train_images for s in t.test)


def test_image_factory_is_picklable() -> None:
    s = make_task("low-altitude.category", train_size=0, test_size=1).test[0]
    clone = pickle.loads(pickle.dumps(s))
    assert image_bytes(clone) == image_bytes(s)
    img = s.load_image()
    assert img.size == (64, 64) and img.mode == "RGB"
    big = make_task("low-altitude.category", train_size=0, test_size=1, image_size=128).test[0]
    assert big.load_image().size == (128, 128)
    assert big.answers == s.answers


# ---------------------------------------------------------------- answers vs ground truth


def test_answers_match_meta(tasks) -> None:
    for name, t in tasks.items():
        scenario, qtype = name.split(".")
        cats = set(SCENARIO_SPECS[scenario].categories)
        for s in t.train + t.test:
            objs = s.meta["objects"]
            assert s.meta["qtype"] == qtype and s.task == name and s.scenario == scenario
            assert len(s.answers) == 1
            assert {o["category"] for o in objs} <= cats
            assert {o["colour"] for o in objs} <= set(COLOUR_NAMES)
            assert s.meta["boxes"] == [o["box"] for o in objs]
            cat, col, ans = s.meta["category"], s.meta["colour"], s.answers[0]
            shown = {o["category"] for o in objs}
            assert len(shown) == 1 or (qtype == "existence" and ans == "no" and not objs), (
                "every scene shows one category (an existence 'no' scene may be empty)"
            )
            if qtype == "counting":
                assert shown == {cat} and ans == str(len(objs))
                assert 1 <= int(ans) <= SCENARIO_SPECS[scenario].max_count
            elif qtype == "category":
                assert shown == {cat} and ans == cat and s.question == "What kind of object is in the image?"
            elif qtype == "attribute":
                assert shown == {cat} and {o["colour"] for o in objs} == {col} and ans == col
            elif qtype == "existence":
                assert ans == ("yes" if shown == {cat} else "no")
            else:
                assert len(objs) == 1 and shown == {cat} and ans == format_box(objs[0]["box"])
                assert parse_formatted_boxes(ans) == [pytest.approx(tuple(objs[0]["box"]), abs=0.006)]
                assert s.question == f"Where is the {cat}? Answer with a box."


def test_existence_balanced_and_answers_spread(tasks) -> None:
    for s in SCENARIOS:
        t = tasks[f"{s}.existence"]
        for split in (t.train, t.test):
            assert Counter(x.answers[0] for x in split) == {"yes": len(split) // 2, "no": len(split) // 2}
        no = [x for x in t.train if x.answers[0] == "no"]
        empty = sum(not x.meta["objects"] for x in no)
        assert 0.4 * len(no) <= empty <= 0.6 * len(no), "default 'mixed': about half the 'no' scenes are empty"
        assert len({x.answers[0] for x in tasks[f"{s}.attribute"].train}) == 6
        assert len({x.answers[0] for x in tasks[f"{s}.category"].train}) == 4


@pytest.mark.parametrize("negatives", ["other", "empty"])
def test_existence_negatives_option(negatives: str) -> None:
    t = make_task("indoor.existence", train_size=40, test_size=10, existence_negatives=negatives)
    for x in t.train + t.test:
        shown = {o["category"] for o in x.meta["objects"]}
        if x.answers[0] == "yes":
            assert shown == {x.meta["category"]}
        elif negatives == "empty":
            assert not shown
        else:
            assert len(shown) == 1 and x.meta["category"] not in shown
    # the "yes" samples do not depend on the option
    mixed = make_task("indoor.existence", train_size=40, test_size=10)
    yes = [x for x in t.train if x.answers[0] == "yes"]
    assert [x.meta for x in yes] == [x.meta for x in mixed.train if x.answers[0] == "yes"]


def test_boxes_on_grid_and_apart(tasks) -> None:
    gap = 1 / UNITS
    for t in tasks.values():
        for s in t.test + t.train:
            boxes = s.meta["boxes"]
            for i, b in enumerate(boxes):
                assert 0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1
                assert (b[0] * 8) % 1 == 0 and (b[1] * 8) % 1 == 0  # corners on the 8 x 8 cell grid
                assert (b[2] * 16) % 1 == 0 and (b[3] * 16) % 1 == 0  # sizes in 1/16 units
                for c in boxes[i + 1:]:
                    assert not boxes_overlap(b, c, gap=gap - 1e-9)


def test_low_altitude_perspective(tasks) -> None:
    areas: dict[str, list[tuple[float, float]]] = {}
    for s in tasks["low-altitude.counting"].train:
        for o in s.meta["objects"]:
            b = o["box"]
            areas.setdefault(o["category"], []).append((b[1], (b[2] - b[0]) * (b[3] - b[1])))
    for cat, rows in areas.items():
        far = [a for y, a in rows if y < 0.5]
        near = [a for y, a in rows if y >= 0.5]
        assert far and near and max(far) < min(near), cat


def test_task_scorers_and_lengths(tasks) -> None:
    for name, t in tasks.items():
        if name.endswith("grounding"):
            assert t.scorers == ["box_f1"] and t.max_new_tokens == 24
        else:
            longest = max(len(s.answers[0].split()) for s in t.train + t.test)
            assert longest <= t.max_new_tokens == 4
            assert t.scorers[:3] == ["vqa_score", "exact_match", "token_f1"]
            assert ("relaxed_numeric" in t.scorers) == name.endswith("counting")


def test_tokenizer_corpus_covers_texts(tasks) -> None:
    corpus = set(tokenizer_corpus(0))
    assert 2000 <= len(list(tokenizer_corpus(0))) <= 5000
    assert list(tokenizer_corpus(0)) == list(tokenizer_corpus(0))
    for t in tasks.values():
        for s in t.test:
            assert s.question in corpus
            if not t.name.endswith("grounding"):
                assert s.answers[0] in corpus


# ---------------------------------------------------------------- drawing primitives


def test_format_box() -> None:
    assert format_box([0.12, 0.5, 0.3125, 0.69]) == "[0.12, 0.50, 0.31, 0.69]"
    assert format_boxes([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]) == "[0.00, 0.00, 0.50, 0.50]; [0.50, 0.50, 1.00, 1.00]"
    assert parse_formatted_boxes("[0.00, 0.00, 0.50, 0.50]; [0.5,0.5,1,1]") == [(0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1)]


@pytest.mark.parametrize("name", sorted(GLYPHS))
def test_glyphs_fill_their_box(name: str) -> None:
    for w, h in [(4, 4), (8, 4), (8, 8), (12, 8), (8, 16), (16, 12), (20, 12)]:
        for transpose in (False, True):
            for flip in (False, True):
                img = Image.new("RGB", (40, 40), (0, 0, 0))
                box = (5, 7, 5 + w, 7 + h)
                draw_glyph(img, name, PALETTE["blue"], box, transpose=transpose, flip=flip)
                assert img.getbbox() == box, (name, w, h, transpose, flip)


# ---------------------------------------------------------------- pre-training captions


def test_caption_samples() -> None:
    a, b = caption_samples(30, seed=4), caption_samples(30, seed=4)
    assert [s.answers for s in a] == [s.answers for s in b]
    assert image_bytes(a[0]) == image_bytes(b[0])
    assert [s.answers for s in a] != [s.answers for s in caption_samples(30, seed=5)]
    categories = {c for spec in SCENARIO_SPECS.values() for c in spec.categories}
    for s in a:
        assert s.question == "Describe the image."
        text = s.answers[0]
        assert text.endswith(".") and text.startswith(("a ", "an "))
        assert not any(c in text.split() for c in categories)
        assert 1 <= len(s.meta["objects"]) <= 2
        for o in s.meta["objects"]:
            marked = f" with a {o['mark']} mark" if o["mark"] else ""
            assert o["shape"] in SHAPES and f"{o['colour']} {o['shape']}{marked} {o['region']}" in text
            x1, y1, x2, y2 = o["box"]
            assert x2 - x1 >= 0.2  # large objects: the answer is carried by many image tokens
        assert len({o["region"] for o in s.meta["objects"]}) == len(s.meta["objects"])
    assert all(len(s.load_image().getcolors()) >= 2 for s in a)  # shapes drawn on the plain background
    assert {o["mark"] for s in a for o in s.meta["objects"]} == {None, *MARK_NAMES}


def test_say_samples_cover_the_answer_words_without_images() -> None:
    vocab = answer_vocabulary(0)
    for t in ("fish", "yes", "no", "3", "red", "storage-tank", "[0.25, 0.50, 0.50, 0.75]"):
        assert t in vocab or t.startswith("[")
    assert any(v.startswith("[") for v in vocab)
    says = say_samples(vocab, 50, seed=0)
    assert all(s.image is None and s.question == f"Say {s.answers[0]}." for s in says)
    assert [s.question for s in says] == [s.question for s in say_samples(vocab, 50, seed=0)]


def test_each_category_carries_its_marking(tasks) -> None:
    for name, t in tasks.items():
        scenario = name.split(".")[0]
        for s in t.test[:4]:
            img = s.load_image() if scenario != "underwater" else None
            if img is None:  # underwater scenes are tinted and blurred: the marking colour shifts
                continue
            for o in s.meta["objects"]:
                box = [round(v * 64) for v in o["box"]]
                x1, y1, x2, y2 = marking_box(tuple(box))
                assert img.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)) == category_marking(scenario, o["category"])
    markings = {category_marking(sc, c) for sc in SCENARIOS for c in SCENARIO_SPECS[sc].categories}
    assert len(markings) == 4 and not markings & set(PALETTE.values())


# ---------------------------------------------------------------- contact sheets for people


def _sheet(rows: list[list[tuple[Image.Image, str]]], scale: int = 3) -> Image.Image:
    tile, label = 64 * scale, 36
    width = max(len(r) for r in rows) * tile
    sheet = Image.new("RGB", (width, len(rows) * (tile + label)), "white")
    d = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        for c, (img, text) in enumerate(row):
            x, y = c * tile, r * (tile + label)
            sheet.paste(img.resize((tile, tile), Image.NEAREST), (x, y))
            for line in range(3):
                d.text((x + 2, y + tile + 1 + 11 * line), text[34 * line:34 * (line + 1)], fill="black")
    return sheet


def test_write_contact_sheets() -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    for scenario in SCENARIOS:
        rows = []
        for q in QTYPES:
            t = make_task(f"{scenario}.{q}", seed=0, train_size=0, test_size=6)
            rows.append([(s.load_image(), f"{s.question} -> {s.answers[0]}") for s in t.test])
        path = ARTIFACTS / f"msvqa-synth-{scenario}.png"
        _sheet(rows).save(path)
        assert path.stat().st_size > 0
    caps = caption_samples(18, seed=0)
    _sheet([[(s.load_image(), s.answers[0]) for s in caps[i:i + 6]] for i in range(0, 18, 6)]).save(
        ARTIFACTS / "pretrain-captions.png"
    )
