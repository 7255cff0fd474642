"""The official MLLM-CL scorers on real-looking answers, and the sample-aware scorer mechanism."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from mmcl.benchmarks.mllm_cl.scorers import (
    mllmcl_ai2d,
    mllmcl_cvbench,
    mllmcl_fin,
    mllmcl_ocr,
    mllmcl_pvqa,
    mllmcl_sci,
)
from mmcl.data.sample import Sample, Task
from mmcl.eval.evaluator import score_predictions
from mmcl.eval.scorers import SCORERS, call_scorer, get_scorer, needs_sample, sample_aware, score

MLLMCL = ["mllmcl_ai2d", "mllmcl_pvqa", "mllmcl_fin", "mllmcl_sci", "mllmcl_ocr", "mllmcl_cvbench"]


def sci(image: str, question: str = "Which of these is a producer?", answer: str = "grass") -> Sample:
    return Sample(
        id="sci-1",
        question=question,
        answers=[answer],
        image=f"/data/Sci/images/{image}",
        meta={"image_file": image},
    )


def ocr(category: str, answers: Sequence[str] = ("STOP",)) -> Sample:
    return Sample(
        id="ocr-1",
        question="what is written in the image?",
        answers=list(answers),
        meta={"answer_type": category},
    )


# --- registry ---------------------------------------------------------------------------


def test_registered_and_found_by_get_scorer() -> None:
    for name in MLLMCL:
        assert name in SCORERS
    assert get_scorer("mllmcl_ai2d") is mllmcl_ai2d
    assert [n for n in MLLMCL if needs_sample(get_scorer(n))] == ["mllmcl_sci", "mllmcl_ocr"]
    assert not needs_sample(get_scorer("exact_match"))


def test_empty_references_is_an_error_even_without_sample() -> None:
    for name in MLLMCL:
        with pytest.raises(ValueError, match="at least one reference"):
            score(name, "yes", [])


# --- Unanswerable --------------------------------------------------------------------------


REFUSING = ["mllmcl_ai2d", "mllmcl_pvqa", "mllmcl_fin", "mllmcl_sci", "mllmcl_ocr_strict", "mllmcl_cvbench_strict"]


@pytest.mark.parametrize("name", REFUSING)
def test_unanswerable_scores_zero(name: str) -> None:
    # The reference is in the prediction, yet the official scripts skip (count as wrong) it.
    sample = Sample(
        id="1",
        question="Is there a road?",
        answers=["yes"],
        image="x/MapQA_1.png",
        meta={"answer_type": "Regular Text Recognition"},
    )
    assert score(name, "yes. Unanswerable", ["yes"], sample) == 0.0
    # case-sensitive, as in the official check
    if name != "mllmcl_fin":
        assert score(name, "yes unanswerable", ["yes"], sample) == 1.0


# --- eval_ai2d.py (RS, AD) -----------------------------------------------------------------


def test_ai2d_yes_no_with_trailing_words() -> None:
    assert mllmcl_ai2d("Yes, there is.", ["yes"]) == 1.0  # "yes," occurs
    assert mllmcl_ai2d("Yes", ["yes"]) == 1.0
    assert mllmcl_ai2d("yes.", ["yes"]) == 1.0  # no space in pred: substring
    assert mllmcl_ai2d("No, there is not.", ["yes"]) == 0.0
    # "no" occurs only inside "know", followed by "w": none of " no", "no ", "no.", "no,"
    assert mllmcl_ai2d("I don't know", ["no"]) == 0.0


def test_ai2d_count_word_boundaries_keep_the_official_quirks() -> None:
    assert mllmcl_ai2d("There are 2 buildings.", ["2"]) == 1.0
    assert mllmcl_ai2d("There are 3 buildings.", ["2"]) == 0.0
    assert mllmcl_ai2d("12", ["2"]) == 1.0  # no space in pred: plain substring
    assert mllmcl_ai2d("There are 12 cars", ["2"]) == 1.0  # "2 " occurs in "12 cars"
    assert mllmcl_ai2d("There are 21 cars", ["2"]) == 1.0  # " 2" occurs in " 21"
    assert mllmcl_ai2d("There are 321 cars", ["2"]) == 0.0  # none of " 2", "2 ", "2.", "2," occurs
    assert mllmcl_ai2d("2", ["12"]) == 0.0


def test_ai2d_gt_with_spaces_is_a_substring_test() -> None:
    gt = ["between 100m2 and 1000m2"]
    assert mllmcl_ai2d("The area is between 100m2 and 1000m2.", gt) == 1.0
    assert mllmcl_ai2d("between 100m2 and 10000m2", gt) == 0.0
    assert mllmcl_ai2d("Go straight", ["go straight"]) == 1.0


def test_ai2d_period_stripped_from_single_word_gt() -> None:
    assert mllmcl_ai2d("the answer is c", ["C."]) == 1.0  # gt "c." -> "c"; " c" occurs
    assert mllmcl_ai2d("c", ["C."]) == 1.0


# --- eval_pvqa.py (Med) --------------------------------------------------------------------


def test_pvqa_substring() -> None:
    assert mllmcl_pvqa("Yes, the lesion is malignant.", ["yes"]) == 1.0
    assert mllmcl_pvqa("Hemorrhage", ["hemorrhage"]) == 1.0
    assert mllmcl_pvqa("no", ["yes"]) == 0.0
    assert mllmcl_pvqa("I know", ["no"]) == 1.0  # plain substring, as the official script


# --- eval_finvis.py (Fin) ------------------------------------------------------------------


def test_fin_exact_after_dropping_spaces_and_periods() -> None:
    assert mllmcl_fin("A.", ["a"]) == 1.0
    assert mllmcl_fin(" B ", ["B"]) == 1.0
    assert mllmcl_fin("A. Rise", ["A"]) == 0.0  # "arise" != "a"
    assert mllmcl_fin("True", ["true"]) == 1.0
    assert mllmcl_fin("a", ["A."]) == 0.0  # the gt itself is not stripped


# --- eval_sci.py (Sci) ---------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["AI2D", "TQA", "VQA", "SciVerse"])
def test_sci_exact_match_prefixes(prefix: str) -> None:
    s = sci(f"{prefix}_1234.png", answer="B")
    assert mllmcl_sci("B", ["B"], sample=s) == 1.0
    assert mllmcl_sci("b", ["B"], sample=s) == 1.0
    assert mllmcl_sci("B.", ["B"], sample=s) == 0.0  # exact match, no stripping
    assert mllmcl_sci("The answer is B", ["B"], sample=s) == 0.0


def test_sci_mapqa_which_states_partial_credit() -> None:
    q = "Which states have the highest value in the USA?"
    s = sci("MapQA_val_0042.png", q, "Texas, Ohio, Utah")
    assert mllmcl_sci("Texas, Ohio, Utah", ["Texas, Ohio, Utah"], sample=s) == 1.0
    assert mllmcl_sci("texas, utah", ["Texas, Ohio, Utah"], sample=s) == pytest.approx(2 / 3)
    # items are not stripped (official): "Ohio" vs " ohio"
    assert mllmcl_sci("Texas,Ohio", ["Texas, Ohio"], sample=s) == pytest.approx(1 / 2)
    assert mllmcl_sci("Nevada", ["Texas, Ohio"], sample=s) == 0.0


def test_sci_mapqa_other_questions_substring_and_image_name_fallback() -> None:
    s = sci("MapQA_val_7.png", "What is the value of Texas?", "Low")
    assert mllmcl_sci("The value is low.", ["Low"], sample=s) == 1.0
    # without meta['image_file'] the name of sample.image is used
    s2 = Sample(id="2", question="Which is a producer?", answers=["grass"], image="/d/Sci/images/AI2D_9.png")
    assert mllmcl_sci("grass", ["grass"], sample=s2) == 1.0
    assert mllmcl_sci("the grass", ["grass"], sample=s2) == 0.0


def test_sci_needs_the_sample() -> None:
    with pytest.raises(ValueError, match="needs the sample"):
        mllmcl_sci("grass", ["grass"])


# --- eval_ocr.py (OCRBench) ----------------------------------------------------------------


def test_ocr_list_gt_any_hit() -> None:
    s = ocr("Scene Text-centric VQA", ["Starbucks", "starbucks coffee"])
    assert mllmcl_ocr("The sign says STARBUCKS.", s.answers, sample=s) == 1.0
    assert mllmcl_ocr("Costa", s.answers, sample=s) == 0.0
    # newlines are removed, not turned into spaces
    assert mllmcl_ocr("line one\nstarbucks", ["one starbucks"], sample=s) == 0.0
    assert mllmcl_ocr("linestar\nbucks", ["starbucks"], sample=s) == 1.0


def test_ocr_handwritten_math_removes_spaces_and_keeps_case() -> None:
    s = ocr("Handwritten Mathematical Expression Recognition")
    assert mllmcl_ocr("x ^ { 2 } + y", ["x^{2}+y"], sample=s) == 1.0
    assert mllmcl_ocr("X^{2}+Y", ["x^{2}+y"], sample=s) == 0.0  # case kept
    regular = ocr("Regular Text Recognition")
    assert mllmcl_ocr("X^{2}+Y", ["x^{2}+y"], sample=regular) == 1.0
    assert mllmcl_ocr("x ^ { 2 } + y", ["x^{2}+y"], sample=regular) == 0.0  # spaces kept


def test_ocr_needs_the_sample_but_not_the_category() -> None:
    with pytest.raises(ValueError, match="answer_type"):
        mllmcl_ocr("STOP", ["stop"])
    assert mllmcl_ocr("STOP", ["stop"], sample=Sample(id="1", question="q", answers=["stop"])) == 1.0


# --- eval_sat.py (VP / CV-Bench) -----------------------------------------------------------


def test_cvbench_count() -> None:
    assert mllmcl_cvbench("(B) 3", ["(B)"]) == 1.0
    assert mllmcl_cvbench("There are 3 cars.", ["3"]) == 1.0
    assert mllmcl_cvbench("(A) 2", ["(b) 3"]) == 0.0
    assert mllmcl_cvbench("1\n3", ["13"]) == 1.0  # newlines and spaces removed on both sides


# --- the sample-aware mechanism ------------------------------------------------------------


def test_call_scorer_passes_the_sample_only_to_sample_aware_scorers() -> None:
    seen: list[Sample | None] = []

    @sample_aware
    def aware(prediction: str, references: Sequence[str], sample: Sample | None = None) -> float:
        seen.append(sample)
        return 1.0

    s = Sample(id="1", question="q", answers=["a"])
    assert call_scorer(aware, "a", ["a"], s) == 1.0 and seen == [s]
    assert call_scorer(get_scorer("exact_match"), "A.", ["a"], s) == 1.0  # called as (pred, refs)
    assert score("exact_match", "A.", ["a"]) == 1.0


def test_score_predictions_gives_the_sample_to_sci_and_ocr() -> None:
    q = "Which states have the highest value?"
    test = [
        sci("AI2D_1.png", answer="B"),
        sci("MapQA_2.png", q, "Texas, Ohio"),
        Sample(id="3", question="q", answers=["x"], image="/d/TQA_3.png", meta={"image_file": "TQA_3.png"}),
    ]
    task = Task(name="Sci", train=[], test=test, scorers=["mllmcl_sci", "exact_match"])
    means, rows = score_predictions(task, ["b", "Texas, Utah", "Unanswerable"])
    assert [r["scores"]["mllmcl_sci"] for r in rows] == [1.0, 0.5, 0.0]
    assert means["mllmcl_sci"] == pytest.approx(1.5 / 3)
    assert means["exact_match"] == pytest.approx(1 / 3)

    ocr_task = Task(
        name="OCR",
        train=[],
        test=[ocr("Handwritten Mathematical Expression Recognition", ["a+b"])],
        scorers=["mllmcl_ocr"],
    )
    assert score_predictions(ocr_task, ["a + b"])[0] == {"mllmcl_ocr": 1.0}
    empty = Task(name="E", train=[], test=[], scorers=["mllmcl_sci"])
    assert math.isnan(score_predictions(empty, [])[0]["mllmcl_sci"])
