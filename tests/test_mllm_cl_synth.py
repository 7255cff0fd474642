"""mllm-dcl-synth and mllm-acl-synth: task order, determinism, answer vocabulary, test shift, options."""

from __future__ import annotations

import pickle

import pytest

from mmcl.benchmarks import BENCHMARKS
from mmcl.benchmarks.builtin import benchmark_names
from mmcl.benchmarks.mllm_cl.synth import (
    ACL_NAME,
    DCL_NAME,
    GUI_BOXES,
    answer_vocabulary,
    build_acl,
    build_dcl,
    make_task,
)
from mmcl.config import BenchmarkConfig, ConfigError
from mmcl.pretrain.data import MARK_NAMES
from mmcl.synth.boxes import parse_formatted_boxes
from mmcl.synth.draw import COLOUR_NAMES
from mmcl.synth.shapes import SHAPES

DCL_TASKS = ["RS", "Med", "AD", "Sci", "Fin"]
ACL_TASKS = ["OCR", "Math", "VP", "GUI"]
BUILDERS = {DCL_NAME: build_dcl, ACL_NAME: build_acl}

# Words the tiny base already writes (its captions and "Say <word>." pre-training).
KNOWN_WORDS = {
    *(str(i) for i in range(1, 7)), "yes", "no", *COLOUR_NAMES, *SHAPES, *MARK_NAMES,
    "left", "right", "top", "bottom", "center",
}  # fmt: skip


def small(name: str, **options: object) -> BenchmarkConfig:
    return BenchmarkConfig(name=name, train_size=24, test_size=12, **options)


def build(name: str, **options: object):
    return BUILDERS[name](small(name, **options))


def test_registered_with_default_order() -> None:
    assert DCL_NAME in benchmark_names() and ACL_NAME in benchmark_names()
    assert BENCHMARKS.get(DCL_NAME) is build_dcl and BENCHMARKS.get(ACL_NAME) is build_acl
    assert build(DCL_NAME).task_names == DCL_TASKS
    assert build(ACL_NAME).task_names == ACL_TASKS


@pytest.mark.parametrize("name", [DCL_NAME, ACL_NAME])
def test_tasks_declare_description_scorers_meta(name: str) -> None:
    bench = build(name)
    for t in bench.tasks:
        assert len(t.train) == 24 and len(t.test) == 12
        assert t.description and t.description[0].isupper()
        assert t.scorers[0] == "exact_match"
        assert t.meta["domain"] and 2 <= len(t.meta["qtypes"]) <= 3
        has_box = t.name == "GUI"
        assert t.max_new_tokens == (24 if has_box else 4)
        for s in t.train + t.test:
            assert s.task == t.name and s.meta["qtype"] in t.meta["qtypes"]
        # every question type appears in both splits, answers balanced within a type
        for split in (t.train, t.test):
            assert {s.meta["qtype"] for s in split} == set(t.meta["qtypes"])


@pytest.mark.parametrize("name", [DCL_NAME, ACL_NAME])
def test_answers_are_words_the_base_writes(name: str) -> None:
    for t in build(name).tasks:
        for s in t.train + t.test:
            (answer,) = s.answers
            if s.meta["qtype"] == "box":
                assert answer in GUI_BOXES
            else:
                assert answer in KNOWN_WORDS, (t.name, s.question, answer)
    assert set(answer_vocabulary(name)) - set(GUI_BOXES) <= KNOWN_WORDS


def test_answers_use_known_tokens() -> None:
    from transformers import AutoTokenizer

    from mmcl.models.loader import preset_dir

    tok = AutoTokenizer.from_pretrained(preset_dir("tiny-llava"))
    for name in (DCL_NAME, ACL_NAME):
        for word in answer_vocabulary(name):
            pieces = tok.tokenize(word)
            assert tok.unk_token not in pieces, word
            if not word.startswith("["):
                assert len(pieces) == 1, (word, pieces)


def test_box_answers_parse() -> None:
    gui = build(ACL_NAME).task("GUI")
    boxes = [s for s in gui.train + gui.test if s.meta["qtype"] == "box"]
    assert boxes
    for s in boxes:
        (box,) = parse_formatted_boxes(s.answers[0])
        x1, y1, x2, y2 = box
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
        assert "box" in s.question


@pytest.mark.parametrize("name", [DCL_NAME, ACL_NAME])
def test_deterministic_and_images_64_rgb(name: str) -> None:
    a, b = build(name), build(name)
    for ta, tb in zip(a.tasks, b.tasks, strict=True):
        for sa, sb in zip(ta.train[:6] + ta.test[:6], tb.train[:6] + tb.test[:6], strict=True):
            assert (sa.id, sa.question, sa.answers, sa.meta) == (sb.id, sb.question, sb.answers, sb.meta)
            img = sa.load_image()
            assert img.size == (64, 64) and img.mode == "RGB"
            assert img.tobytes() == sb.load_image().tobytes()
    other = BUILDERS[name](BenchmarkConfig(name=name, train_size=24, test_size=12, seed=1))
    assert [s.answers for s in other.tasks[0].train] != [s.answers for s in a.tasks[0].train] or [
        s.load_image().tobytes() for s in other.tasks[0].train[:4]
    ] != [s.load_image().tobytes() for s in a.tasks[0].train[:4]]


@pytest.mark.parametrize("name", [DCL_NAME, ACL_NAME])
def test_large_splits_have_enough_distinct_scenes(name: str) -> None:
    bench = BUILDERS[name](BenchmarkConfig(name=name, train_size=1200, test_size=100))
    for t in bench.tasks:
        assert len(t.train) == 1200 and len(t.test) == 100


def test_sizes_and_renderer_pickle() -> None:
    t = make_task(DCL_NAME, "AD", train_size=40, test_size=8, image_size=96)
    assert t.train[0].load_image().size == (96, 96)
    s = t.train[3]
    clone = pickle.loads(pickle.dumps(s.image))
    assert clone().tobytes() == s.load_image().tobytes()
    # the first samples do not change when the split grows
    bigger = make_task(DCL_NAME, "AD", train_size=80, test_size=8, image_size=96)
    assert [x.answers for x in bigger.train[:40]] == [x.answers for x in t.train]


@pytest.mark.parametrize("name", [DCL_NAME, ACL_NAME])
def test_train_never_repeats_a_test_scene(name: str) -> None:
    for t in build(name).tasks:
        test = {(s.question, s.answers[0], s.image.params) for s in t.test}
        assert not any((s.question, s.answers[0], s.image.params) in test for s in t.train)


def test_dcl_test_is_iid() -> None:
    for t in build(DCL_NAME).tasks:
        assert t.meta["test_shift"] == ""
        assert not any(s.meta["shifted"] for s in t.train + t.test)
        train_styles = {repr(s.meta["style"]) for s in t.train}
        assert {repr(s.meta["style"]) for s in t.test} <= train_styles


def test_acl_test_is_shifted() -> None:
    for t in build(ACL_NAME).tasks:
        assert t.meta["test_shift"], t.name
        assert not any(s.meta["shifted"] for s in t.train)
        assert all(s.meta["shifted"] for s in t.test)
        train_styles = {repr(s.meta["style"]) for s in t.train}
        assert not {repr(s.meta["style"]) for s in t.test} & train_styles, (
            t.name
        )  # no test style seen in training
        # the answer sets are the same in both splits (the shift is in the pixels, not the answers)
        assert {s.answers[0] for s in t.test} <= set(answer_vocabulary(ACL_NAME))


def test_acl_shift_can_be_switched_off() -> None:
    for t in build(ACL_NAME, shifted_test=False).tasks:
        assert t.meta["test_shift"] == ""
        train_styles = {repr(s.meta["style"]) for s in t.train}
        assert {repr(s.meta["style"]) for s in t.test} <= train_styles


def test_task_data_independent_of_order_and_subset() -> None:
    full = build(DCL_NAME)
    sub = build(DCL_NAME, order=["Fin", "RS"])
    assert sub.task_names == ["Fin", "RS"]
    for name in ("Fin", "RS"):
        a, b = full.task(name), sub.task(name)
        assert [s.answers for s in a.train] == [s.answers for s in b.train]
        assert a.train[5].load_image().tobytes() == b.train[5].load_image().tobytes()


def test_stream_options() -> None:
    assert build(ACL_NAME, tasks=2).task_names == ["OCR", "Math"]
    assert build(ACL_NAME, tasks=["GUI", "OCR"]).task_names == ["OCR", "GUI"]
    capped = build(DCL_NAME, train_per_task=5, test_per_task=3)
    assert all(len(t.train) == 5 and len(t.test) == 3 for t in capped.tasks)
    with pytest.raises(ConfigError, match="Valid: RS, Med, AD, Sci, Fin"):
        build(DCL_NAME, order=["RS", "Medical"])


def test_unknown_option_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown option 'train_sise'.*Did you mean 'train_size'"):
        build(DCL_NAME, train_sise=3)
    with pytest.raises(ConfigError, match="shifted_test"):
        build(DCL_NAME, shifted_test=False)  # the domain stream has no shift to switch
    with pytest.raises(ConfigError, match="multiple of 16"):
        build(ACL_NAME, image_size=40)
    with pytest.raises(ValueError, match="unknown mllm-acl-synth task 'Sci'"):
        make_task(ACL_NAME, "Sci")
