"""Continual-NExT scorers, error classes (HAL / IUF / OTH) and cross-modal transfer, on hand-made data."""

from __future__ import annotations

import pytest

from mmcl.benchmarks.continual_next.cross_modal import cross_modal_transfer, format_cross_modal
from mmcl.benchmarks.continual_next.scorers import (
    cnext_grounding_lenient,
    cnext_normalize,
    cnext_ocrvqa_lenient,
    cnext_text_lenient,
)
from mmcl.data.sample import Sample
from mmcl.eval.outputs import (
    Expectation,
    Output,
    average_error_rates,
    classify_error,
    classify_sample,
    error_rates_by_stage,
    hallucinated_names,
    has_repeated_ngram,
    has_word_repeat,
    instruction_unfollowing_reason,
    stage_error_rates,
)
from mmcl.eval.scorers import SCORERS, score

# --- scorers -------------------------------------------------------------------


def test_cnext_scorers_registered() -> None:
    for name in ("cnext_text", "cnext_ocrvqa", "cnext_grounding"):
        assert name in SCORERS
        assert f"{name}_lenient" in SCORERS
    assert score("cnext_text", "It is red.", ["red"]) == 1.0
    assert score("cnext_grounding_lenient", "[0, 0, 10, 10]", ["[0, 0, 10, 10]"]) == 1.0
    # The official rules themselves are tested in tests/test_official_scorers.py.


# The lenient variants keep mmcl's earlier rules (what cnext_* did before they became official).


def test_cnext_normalize_lowercases_strips_and_drops_special_tokens() -> None:
    assert cnext_normalize("  <s>The Circle.</s>\n") == "the circle."


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        ("A red circle.", ["red"], 1.0),  # gt in pred
        ("red", ["dark red"], 1.0),  # pred in gt
        ("Red", ["red"], 1.0),  # case-insensitive equality
        ("  <s> Circle </s>", ["circle"], 1.0),  # special tokens and whitespace removed
        ("reddish", ["red"], 1.0),  # plain substring, as the paper's code (not token-aligned)
        ("blue", ["red"], 0.0),
        ("blue", ["green", "blue"], 1.0),  # max over references
        ("red red", ["red"], 1.0),  # a word twice is allowed
        ("red red red", ["red"], 0.0),  # more than twice: wrong even though it contains "red"
        ("red, red, red", ["red"], 0.0),  # punctuation does not hide the repetition
        ("the cat sat on the mat by the door", ["cat"], 0.0),  # "the" x3: the paper's strict rule
        ("the red circle is left of the square", ["red circle"], 1.0),  # "the" x2 only
        ("", ["red"], 0.0),  # empty: would match everything by "pred in gt"
        ("   ", ["red"], 0.0),
    ],
)
def test_cnext_text_lenient(prediction: str, references: list[str], expected: float) -> None:
    assert cnext_text_lenient(prediction, references) == expected


def test_cnext_text_lenient_needs_a_reference() -> None:
    with pytest.raises(ValueError, match="reference"):
        cnext_text_lenient("red", [])


def test_cnext_ocrvqa_lenient_unanswerable_is_wrong() -> None:
    assert cnext_ocrvqa_lenient("Harry Potter", ["harry potter"]) == 1.0
    assert cnext_ocrvqa_lenient("Unanswerable", ["Unanswerable"]) == 0.0
    assert cnext_ocrvqa_lenient("Harry Potter. Unanswerable", ["harry potter"]) == 0.0
    assert cnext_ocrvqa_lenient("potter potter potter", ["harry potter"]) == 0.0


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        # IoU exactly 0.5: intersection 10x5 = 50, union 100 + 50 - 50 = 100 -> 0.5, not > 0.5.
        ("[0, 0, 10, 10]", "[0, 0, 10, 5]", 0.0),
        # IoU 0.6: intersection 60, union 100 + 60 - 60 = 100.
        ("[0, 0, 10, 10]", "[0, 0, 10, 6]", 1.0),
        ("The box is <box>[0.0, 0.0, 0.5, 0.5]</box>", "[0, 0, 0.5, 0.5]", 1.0),
        ("(0,0),(10,10)", "[0, 0, 10, 10]", 1.0),
        ("the circle on the left", "[0, 0, 10, 10]", 0.0),  # no box
        ("[50, 50, 60, 60] [0, 0, 10, 10]", "[0, 0, 10, 10]", 0.0),  # only the first box counts
    ],
)
def test_cnext_grounding_lenient(prediction: str, reference: str, expected: float) -> None:
    assert cnext_grounding_lenient(prediction, [reference]) == expected


def test_cnext_grounding_lenient_reference_without_box_is_an_error() -> None:
    with pytest.raises(ValueError, match="no box"):
        cnext_grounding_lenient("[0, 0, 1, 1]", ["circle"])


def test_repetition_helpers() -> None:
    assert has_word_repeat("red red red red")
    assert not has_word_repeat("red red")
    assert has_word_repeat("[0, 0, 0, 10]")
    assert not has_word_repeat("[0, 0, 0, 10]", numbers=False)
    assert has_repeated_ngram("a red circle a red circle")
    assert not has_repeated_ngram("a red circle and a blue square")
    assert not has_repeated_ngram("red red")  # single words are the word rule's business


# --- error classes -------------------------------------------------------------

VOCAB = {
    "objects": {"circle", "square", "triangle"},
    "colours": {"red", "green", "blue", "yellow"},
}
# Ground truth of the scene: a red circle and a blue square.
SCENE = {"objects": {"circle", "square"}, "colours": {"red", "blue"}}

VQA = Expectation(modality="text", format="free", vocabulary=VOCAB)
CLS = Expectation(modality="text", format="short", vocabulary=VOCAB, max_words=5)
GROUND = Expectation(modality="text", format="box", vocabulary=VOCAB)
T2I = Expectation(modality="image", vocabulary=VOCAB)


@pytest.mark.parametrize(
    ("prediction", "expected", "correct", "cls"),
    [
        # wrong output modality
        (Output(text="a red circle on a blue square", image=False), T2I, False, "instruction_unfollowing"),
        (Output(text=None, image=True), VQA, False, "instruction_unfollowing"),  # image where text asked
        (Output(text="red", image=True), VQA, False, "instruction_unfollowing"),  # an unrequested image
        (Output(text=None, image=False), T2I, False, "instruction_unfollowing"),  # nothing at all
        (None, VQA, False, "instruction_unfollowing"),
        ("   ", VQA, False, "instruction_unfollowing"),
        # wrong format
        ("the circle on the left", GROUND, False, "instruction_unfollowing"),  # grounding without a box
        ("I think the answer is most probably a triangle", CLS, False, "instruction_unfollowing"),
        # degenerate repetition
        ("red red red red", VQA, False, "instruction_unfollowing"),
        ("a red circle a red circle", VQA, False, "instruction_unfollowing"),
        # right modality and format, names something absent from the scene
        ("green", VQA, False, "hallucination"),  # a colour absent from the scene
        ("a yellow circle", VQA, False, "hallucination"),
        ("two triangles", VQA, False, "hallucination"),  # plural of an absent object class
        ("the green circle at [0, 0, 10, 10]", GROUND, False, "hallucination"),
        # right modality and format, wrong, but only names things that are there
        ("blue", VQA, False, "other"),  # a wrong but present colour
        ("3", VQA, False, "other"),
        ("[0, 0, 0, 10]", GROUND, False, "other"),  # repeated coordinates are not degenerate
        (Output(text=None, image=True), T2I, False, "other"),  # an image, judge found nothing absent
        # correct: the scorer's verdict wins
        ("red", VQA, True, "correct"),
        (Output(text=None, image=True), T2I, True, "correct"),
    ],
)
def test_classify_error(
    prediction: Output | str | None, expected: Expectation, correct: bool, cls: str
) -> None:
    assert classify_error(prediction, SCENE, expected, correct=correct) == cls


def test_hallucination_in_a_generated_image_uses_the_judge() -> None:
    # Prompt: "a red circle"; the judge sees a red circle and a green triangle in the output.
    prompt_truth = {"objects": {"circle"}, "colours": {"red"}}
    out = Output(
        text=None, image=True, image_content={"objects": {"circle", "triangle"}, "colours": {"red", "green"}}
    )
    assert hallucinated_names(out, prompt_truth, T2I) == {"objects": {"triangle"}, "colours": {"green"}}
    assert classify_error(out, prompt_truth, T2I, correct=False) == "hallucination"
    faithful = Output(image=True, image_content={"objects": {"circle"}, "colours": {"red"}})
    assert classify_error(faithful, prompt_truth, T2I, correct=False) == "other"


def test_unfollowing_reasons() -> None:
    assert instruction_unfollowing_reason(Output(text="a cat"), T2I) == "text where an image was asked"
    assert instruction_unfollowing_reason(Output(image=True), VQA) == "image where text was asked"
    assert instruction_unfollowing_reason("circle", GROUND) == "no parsable box"
    assert instruction_unfollowing_reason("red red red red", VQA) == "degenerate repetition"
    assert instruction_unfollowing_reason("blue", VQA) is None


def test_classify_sample_reads_meta_present() -> None:
    s = Sample(id="0", question="What colour is the circle?", answers=["red"], meta={"present": SCENE})
    assert classify_sample("green", s, VQA, correct=False) == "hallucination"
    assert classify_sample("blue", s, VQA, correct=False) == "other"
    # no ground truth: nothing can be called absent, so no hallucination
    bare = Sample(id="1", question="?", answers=["red"])
    assert classify_sample("green", bare, VQA, correct=False) == "other"
    # an empty collection under the key means "no colour at all": any colour named is absent
    assert classify_error("green", {"colours": set()}, VQA, correct=False) == "hallucination"


def test_expectation_validates() -> None:
    with pytest.raises(ValueError, match="modality"):
        Expectation(modality="audio")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="format"):
        Expectation(format="json")  # type: ignore[arg-type]


# --- rates per stage -----------------------------------------------------------

C, H, I, O = "correct", "hallucination", "instruction_unfollowing", "other"  # noqa: E741


def test_stage_error_rates_scope_and_pooling() -> None:
    # After stage 1: task 0 has one of each class, task 1 two correct, task 2 (future) four "other".
    row = [[C, H, O, I], [C, C], [O, O, O, O], None]
    seen = stage_error_rates(row, 1)
    # seen tasks 0 and 1, 6 samples: 3 correct, 1 HAL, 1 IUF, 1 OTH.
    assert seen == {"ACC": 0.5, "HAL": 1 / 6, "IUF": 1 / 6, "OTH": 1 / 6, "n": 6, "tasks": 2}
    macro = stage_error_rates(row, 1, pooling="tasks")
    # task 0: 0.25 each; task 1: ACC 1 -> means ACC 0.625, HAL = IUF = OTH = 0.125.
    assert macro == {"ACC": 0.625, "HAL": 0.125, "IUF": 0.125, "OTH": 0.125, "n": 6, "tasks": 2}
    everything = stage_error_rates(row, 1, scope="all")
    # 10 samples: 3 correct, 1 HAL, 1 IUF, 5 OTH.
    assert everything == {"ACC": 0.3, "HAL": 0.1, "IUF": 0.1, "OTH": 0.5, "n": 10, "tasks": 3}
    # counts instead of labels give the same
    counted = [{C: 1, H: 1, O: 1, I: 1}, {C: 2}, {O: 4}, None]
    assert stage_error_rates(counted, 1) == seen


def test_error_rates_by_stage_and_average() -> None:
    classes = [
        [[C, C, C, H], None],  # stage 0: HAL 0.25
        [[C, I, C, H], [O, O, C, C]],  # stage 1: 8 samples, ACC 4/8, HAL 1/8, IUF 1/8, OTH 2/8
    ]
    per_stage = error_rates_by_stage(classes)
    assert per_stage[0] == {"ACC": 0.75, "HAL": 0.25, "IUF": 0.0, "OTH": 0.0, "n": 4, "tasks": 1}
    assert per_stage[1] == {"ACC": 0.5, "HAL": 0.125, "IUF": 0.125, "OTH": 0.25, "n": 8, "tasks": 2}
    avg = average_error_rates(per_stage)
    # Avg.HAL = (0.25 + 0.125) / 2, Avg.IUF = (0 + 0.125) / 2, Avg.OTH = (0 + 0.25) / 2.
    assert avg == {"Avg.ACC": 0.625, "Avg.HAL": 0.1875, "Avg.IUF": 0.0625, "Avg.OTH": 0.125}
    assert average_error_rates([None]) == {"Avg.ACC": None, "Avg.HAL": None, "Avg.IUF": None, "Avg.OTH": None}


def test_error_rates_reject_unknown_class() -> None:
    with pytest.raises(ValueError, match="unknown error classes"):
        stage_error_rates([["wrong"]], 0)  # type: ignore[list-item]


# --- cross-modal transfer ------------------------------------------------------

PAIRS = ["image+text->text", "image+text->text", "text->image", "image+text->text"]
A = [
    [60.0, 10.0, 5.0, 20.0],
    [50.0, 70.0, 6.0, 22.0],
    [40.0, 65.0, 80.0, 25.0],
    [58.0, 60.0, 70.0, 90.0],
]
# delta(t, j) = A[t][j] - A[t-1][j] for j < t:
#   t=1 (IT->T): j=0 (IT->T, same)  50 - 60 = -10
#   t=2 (T->I):  j=0 (IT->T, diff)  40 - 50 = -10;  j=1 (IT->T, diff) 65 - 70 = -5
#   t=3 (IT->T): j=0 (same) 58 - 40 = +18;  j=1 (same) 60 - 65 = -5;  j=2 (T->I, diff) 70 - 80 = -10
# same pair: (-10 + 18 - 5) / 3 = 1.0;  different pair: (-10 - 5 - 10) / 3 = -25/3
# per pair: (IT->T, IT->T) 1.0 over 3;  (T->I, IT->T) (-10 - 5) / 2 = -7.5 over 2;  (IT->T, T->I) -10 over 1
# New.ACC = (60 + 70 + 80 + 90) / 4 = 75;  Avg.ACC = (58 + 60 + 70 + 90) / 4 = 69.5
# Forgetting: j=0 max(60, 50, 40) - 58 = 2;  j=1 max(70, 65) - 60 = 10;  j=2 80 - 70 = 10 -> 22/3


def test_cross_modal_transfer_hand_computed() -> None:
    r = cross_modal_transfer(A, PAIRS)
    assert [(d.stage, d.task, d.delta, d.same_pair) for d in r.deltas] == [
        (1, 0, -10.0, True),
        (2, 0, -10.0, False),
        (2, 1, -5.0, False),
        (3, 0, 18.0, True),
        (3, 1, -5.0, True),
        (3, 2, -10.0, False),
    ]
    assert r.same_pair_mean == 1.0 and r.same_pair_n == 3
    assert r.different_pair_mean == pytest.approx(-25 / 3) and r.different_pair_n == 3
    assert r.per_pair == {
        ("image+text->text", "image+text->text"): (1.0, 3),
        ("text->image", "image+text->text"): (-7.5, 2),
        ("image+text->text", "text->image"): (-10.0, 1),
    }
    assert r.new_acc == 75.0
    assert r.avg_acc == 69.5
    assert r.forgetting == pytest.approx(22 / 3)
    assert r.missing == []
    d = r.to_dict()
    assert d["New.ACC"] == 75.0 and d["transfer_same_pair"] == 1.0 and len(d["deltas"]) == 6
    md = format_cross_modal(r)
    assert "| 75.00 | 69.50 | 7.33 | 1.00 (3) | -8.33 (3) |" in md
    assert "| text->image | image+text->text | -7.50 | 2 |" in md


def test_cross_modal_transfer_none_cells() -> None:
    # Future tasks not evaluated (seen-only evaluation): same results.
    upper_none = [[v if j <= t else None for j, v in enumerate(row)] for t, row in enumerate(A)]
    r = cross_modal_transfer(upper_none, PAIRS)
    assert (r.same_pair_mean, r.new_acc, r.avg_acc) == (1.0, 75.0, 69.5)
    assert r.forgetting == pytest.approx(22 / 3)
    # A missing seen cell: its two deltas are skipped and the classic metrics are None.
    holed = [list(row) for row in A]
    holed[2][0] = None
    r2 = cross_modal_transfer(holed, PAIRS)
    # left: (1,0) -10 same; (2,1) -5 diff; (3,1) -5 same; (3,2) -10 diff
    assert r2.same_pair_mean == -7.5 and r2.different_pair_mean == -7.5
    assert r2.missing == [(2, 0)]
    assert (r2.new_acc, r2.avg_acc, r2.forgetting) == (None, None, None)


def test_cross_modal_pairs_normalised_and_validated() -> None:
    r = cross_modal_transfer(
        A, ["text+image->text", "Image + Text -> Text", "text->image", "image+text->text"]
    )
    assert r.same_pair_mean == 1.0
    with pytest.raises(ValueError, match="one modality pair per task"):
        cross_modal_transfer(A, PAIRS[:3])
    with pytest.raises(ValueError, match="inputs->output"):
        cross_modal_transfer(A, ["vqa", *PAIRS[1:]])
    with pytest.raises(ValueError, match="square"):
        cross_modal_transfer([row[:3] for row in A], PAIRS)
