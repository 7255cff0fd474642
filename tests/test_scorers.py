"""Scorers on real-looking answers, with exact expected values."""

from __future__ import annotations

import pytest

import mmcl.benchmarks.builtin  # noqa: F401  registers the benchmarks' scorers (mllmcl_*, cnext_*)
from mmcl.eval.scorers import (
    SCORERS,
    box_f1,
    contains,
    exact_match,
    get_scorer,
    normalize_answer,
    parse_number,
    relaxed_numeric,
    score,
    token_f1,
    vqa_normalize,
    vqa_score,
)
from mmcl.registry import UnknownNameError
from mmcl.synth.boxes import iou, parse_boxes

VQA_REFS = ["2", "2", "two", "2", "2", "3", "2", "2", "2", "2"]


# --- registry ----------------------------------------------------------------


def test_all_scorers_registered() -> None:
    core = ["exact_match", "vqa_score", "token_f1", "box_f1", "relaxed_numeric", "contains"]
    core += ["vqa_score_normalized", "chartqa_relaxed"]
    mllm_cl = ["mllmcl_ai2d", "mllmcl_pvqa", "mllmcl_fin", "mllmcl_sci", "mllmcl_ocr", "mllmcl_cvbench"]
    mllm_cl += ["mllmcl_ocr_strict", "mllmcl_cvbench_strict"]
    cnext = ["cnext_text", "cnext_ocrvqa", "cnext_grounding"]  # mmcl.benchmarks.continual_next.scorers
    cnext += ["cnext_text_lenient", "cnext_ocrvqa_lenient", "cnext_grounding_lenient"]
    cnext += ["cnext_t2i", "cnext_edit"]  # mmcl.benchmarks.continual_next.image_scorers
    assert SCORERS.names() == sorted(core + mllm_cl + cnext)  # mllmcl_*: mmcl.benchmarks.mllm_cl.scorers
    assert get_scorer("vqa_score") is vqa_score
    assert score("exact_match", "Paris.", ["paris"]) == 1.0


def test_unknown_scorer_suggests_name() -> None:
    with pytest.raises(UnknownNameError, match="exact_match"):
        get_scorer("exact_mach")


def test_empty_references_is_an_error() -> None:
    for name in SCORERS:
        with pytest.raises(ValueError, match="at least one reference"):
            score(name, "yes", [])


def test_bare_string_reference_is_one_reference() -> None:
    # Not iterated character by character: "yes" is not matched by "y".
    assert exact_match("y", "yes") == 0.0
    assert exact_match("Yes", "yes") == 1.0


# --- exact_match ---------------------------------------------------------------


def test_normalize_answer() -> None:
    assert normalize_answer('  "The  Eiffel Tower."  ') == "eiffel tower"
    assert normalize_answer("**Yes**!") == "yes"
    assert normalize_answer("(A)") == "a"  # an option letter is not dropped as an article
    assert normalize_answer(".5") == ".5"
    assert normalize_answer("-3") == "-3"


def test_exact_match() -> None:
    assert exact_match("A red apple.", ["red apple", "apple"]) == 1.0
    assert exact_match("red", ["red apple", "apple"]) == 0.0
    assert exact_match("B", ["A"]) == 0.0
    assert exact_match("", ["A"]) == 0.0


def test_exact_match_is_strict_about_numbers() -> None:
    assert exact_match("3", ["3.0"]) == 0.0
    assert exact_match("1,000", ["1000"]) == 0.0
    assert exact_match("3.", ["3"]) == 1.0  # a trailing period is sentence punctuation


# --- vqa_score -----------------------------------------------------------------


def test_vqa_normalize_follows_official_script() -> None:
    assert vqa_normalize("Two") == "2"
    assert vqa_normalize("None") == "0"
    assert vqa_normalize("Yes.") == "yes"
    assert vqa_normalize("2.5") == "2.5"  # a period before a digit stays
    assert vqa_normalize("dont") == "don't"
    assert vqa_normalize("a dog") == "dog"
    assert vqa_normalize("yes/no") == "yes no"  # punctuation not touching a space -> space
    assert vqa_normalize("yes / no") == "yes no"  # touching a space -> deleted
    assert vqa_normalize("1,000") == "1000"  # digit,digit -> commas deleted
    assert vqa_normalize("red,blue") == "red blue"
    assert vqa_normalize("eleven") == "eleven"  # the number map stops at ten


def test_vqa_score_ten_references() -> None:
    # "Two" -> "2"; "two" in the refs -> "2": 9 of 10 refs match, every
    # leave-one-out subset has >= 8 matches -> min(8/3, 1) = 1.
    assert vqa_score("Two", VQA_REFS) == 1.0
    # One matching ref ("3"): the subset without it has 0 matches, the other 9
    # subsets have 1 -> (9 * 1/3 + 0) / 10 = 0.3.
    assert vqa_score("3", VQA_REFS) == pytest.approx(0.3)
    # Two matches: 2 subsets (each leaving a match out) have 1 -> 1/3, 8 have 2
    # -> 2/3; (2/3 + 16/3) / 10 = 0.6.
    refs = ["cat", "cat", "dog", "dog", "dog", "dog", "dog", "dog", "dog", "dog"]
    assert vqa_score("Cat", refs) == pytest.approx(0.6)
    # Three matches: 3 subsets have 2 -> 2/3, 7 have 3 -> 1; (2 + 7) / 10 = 0.9.
    refs = ["cat", "cat", "cat", "dog", "dog", "dog", "dog", "dog", "dog", "dog"]
    assert vqa_score("a cat", refs) == pytest.approx(0.9)
    assert vqa_score("horse", refs) == 0.0


def test_vqa_score_contractions_and_numbers() -> None:
    assert vqa_score("dont", ["don't"]) == 1.0
    assert vqa_score("Don't.", ["dont"]) == 1.0
    assert vqa_score("1,000", ["1000"]) == 1.0
    assert vqa_score("zero", ["0"]) == 1.0
    assert vqa_score("3.0", ["3"]) == 0.0  # VQA normalisation does not equate these


def test_vqa_score_few_references() -> None:
    # N <= 3: #matches / N.
    assert vqa_score("yes", ["yes"]) == 1.0
    assert vqa_score("yes", ["yes", "no"]) == 0.5
    assert vqa_score("yes", ["yes", "yes", "no"]) == pytest.approx(2 / 3)
    assert vqa_score("yes", ["yes", "yes", "yes"]) == 1.0
    # N = 4: official rule; 1 match -> 3 subsets with 1 match -> (3 * 1/3) / 4.
    assert vqa_score("yes", ["yes", "no", "no", "no"]) == pytest.approx(0.25)


# --- token_f1 ------------------------------------------------------------------


def test_token_f1_partial_overlap() -> None:
    # pred tokens: red car parked (3); ref: red car parked on street (5, "a"/"the" dropped)
    # common 3 -> P = 3/3, R = 3/5, F1 = 2 * 1 * 0.6 / 1.6 = 0.75
    assert token_f1("Red car, parked.", ["a red car parked on the street"]) == pytest.approx(0.75)
    # pred: the cat sat on mat -> cat sat on mat (4); ref: cat on sofa (3); common cat, on = 2
    # P = 2/4, R = 2/3, F1 = 2 * (1/2) * (2/3) / (1/2 + 2/3) = (2/3) / (7/6) = 4/7
    assert token_f1("The cat sat on the mat", ["cat on sofa", "dog"]) == pytest.approx(4 / 7)


def test_token_f1_edges() -> None:
    assert token_f1("blue", ["red"]) == 0.0
    assert token_f1("", [""]) == 1.0
    assert token_f1("", ["red"]) == 0.0
    assert token_f1("A", ["B"]) == 0.0  # single-article answers are kept, not emptied
    assert token_f1("yes yes", ["yes"]) == pytest.approx(2 / 3)  # multiset: P = 1/2, R = 1


# --- box_f1 --------------------------------------------------------------------


def test_iou() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 6)) == pytest.approx(0.6)
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[0.1, 0.2, 0.3, 0.4]", [(0.1, 0.2, 0.3, 0.4)]),
        ("The dog is at [12,34,56,78].", [(12, 34, 56, 78)]),
        ("<box>(12,34),(56,78)</box>", [(12, 34, 56, 78)]),
        ("<|box_start|>(12,34),(56,78)<|box_end|>", [(12, 34, 56, 78)]),
        ("[[1, 2, 3, 4], [5, 6, 7, 8]]", [(1, 2, 3, 4), (5, 6, 7, 8)]),
        ("0.1 0.2 0.3 0.4; 0.5 0.6 0.7 0.8", [(0.1, 0.2, 0.3, 0.4), (0.5, 0.6, 0.7, 0.8)]),
        ("[1,2,3,4] and [5,6,7,8]", [(1, 2, 3, 4), (5, 6, 7, 8)]),
        ("box 1 [10, 20, 30, 40]", [(10, 20, 30, 40)]),  # run of 5 numbers -> read by brackets
        ("There are 2 cars: [10, 20, 30, 40]", [(10, 20, 30, 40)]),
        ("no box", []),
        ("", []),
    ],
)
def test_parse_boxes(text: str, expected: list[tuple[float, float, float, float]]) -> None:
    assert parse_boxes(text) == [tuple(map(float, b)) for b in expected]


def test_box_f1_one_match_one_spurious() -> None:
    # pred box 1 vs ref: IoU 60/100 = 0.6 >= 0.5 -> match; pred box 2 is spurious.
    # P = 1/2, R = 1/1, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    pred = "[0, 0, 10, 6], [50, 50, 60, 60]"
    assert box_f1(pred, ["[0, 0, 10, 10]"]) == pytest.approx(2 / 3)


def test_box_f1_formats_and_threshold() -> None:
    assert box_f1("(0.1,0.1),(0.5,0.5)", ["[0.1, 0.1, 0.5, 0.5]"]) == 1.0
    assert box_f1("[0, 0, 10, 4]", ["[0, 0, 10, 10]"]) == 0.0  # IoU 0.4 < 0.5
    # Two reference boxes in one string, one found: P = 1, R = 1/2 -> F1 = 2/3.
    assert box_f1("[0,0,10,10]", ["[0,0,10,10]; [20,20,30,30]"]) == pytest.approx(2 / 3)
    # Max over alternative reference answers.
    assert box_f1("[0,0,10,10]", ["[20,20,30,30]", "[0,0,10,10]"]) == 1.0


def test_box_f1_one_to_one() -> None:
    # Two identical predictions cannot both match the one reference box.
    assert box_f1("[0,0,10,10] [0,0,10,10]", ["[0,0,10,10]"]) == pytest.approx(2 / 3)


def test_box_f1_matching_is_exact_not_greedy() -> None:
    # Height-1 strips. p1=[3,12] has IoU 7/12 with r1=[0,10] and 8/11 with r2=[4,14];
    # p2=[6,16] has IoU 8/12 with r2 and 4/16 with r1. Greedy by IoU would pair
    # p1-r2 (0.727) and leave p2 unmatched (F1 0.5); the maximum matching is
    # p1-r1, p2-r2 -> F1 1.0.
    # r2 is listed first so that a first-fit matching would also take p1-r2.
    pred = "[3,0,12,1] [6,0,16,1]"
    ref = "[4,0,14,1] [0,0,10,1]"
    assert box_f1(pred, [ref]) == 1.0


def test_box_f1_empty_cases() -> None:
    assert box_f1("There is no such object.", ["none"]) == 1.0
    assert box_f1("[0,0,1,1]", ["none"]) == 0.0
    assert box_f1("I cannot find it.", ["[0,0,1,1]"]) == 0.0


# --- relaxed_numeric -------------------------------------------------------------


def test_parse_number() -> None:
    assert parse_number("1,000") == 1000.0
    assert parse_number("12.5%") == 12.5
    assert parse_number("$1,234.50") == 1234.5
    assert parse_number("Seventeen.") == 17.0
    assert parse_number("-3") == -3.0
    assert parse_number("1,5") is None
    assert parse_number("3 apples") is None
    assert parse_number("nan") is None


def test_relaxed_numeric() -> None:
    assert relaxed_numeric("3", ["3.0"]) == 1.0
    assert relaxed_numeric("1,000", ["1000"]) == 1.0
    assert relaxed_numeric("twelve", ["12"]) == 1.0
    assert relaxed_numeric("45%", ["45"]) == 1.0
    assert relaxed_numeric("104.9", ["100"]) == 1.0  # within 5 %
    assert relaxed_numeric("105", ["100"]) == 1.0  # exactly 5 %: inclusive
    assert relaxed_numeric("105.1", ["100"]) == 0.0
    assert relaxed_numeric("-3", ["3"]) == 0.0
    assert relaxed_numeric("0.01", ["0"]) == 0.0  # a zero reference needs exactly 0
    assert relaxed_numeric("0", ["0.0"]) == 1.0


def test_relaxed_numeric_falls_back_to_exact_match() -> None:
    assert relaxed_numeric("The Netherlands", ["netherlands"]) == 1.0
    assert relaxed_numeric("Germany", ["netherlands", "3"]) == 0.0
    assert relaxed_numeric("3", ["three apples", "3.1"]) == 1.0  # 3 vs 3.1: within 5 %


# --- contains --------------------------------------------------------------------


def test_contains() -> None:
    assert contains("I think the answer is a black cat.", ["cat"]) == 1.0
    assert contains("It is a category.", ["cat"]) == 0.0
    assert contains("The value is 3.5.", ["3"]) == 0.0
    assert contains("The value is 3.5.", ["3.5"]) == 1.0
    assert contains("It shows the Eiffel Tower in Paris", ["eiffel tower"]) == 1.0
    assert contains("It shows the Tower, Eiffel", ["eiffel tower"]) == 0.0
    assert contains("no", ["yes", "no"]) == 1.0
    assert contains("", ["yes"]) == 0.0
