"""Scorers named after an official evaluation script give what that script gives, quirks included.

Each table row is (prediction, references, what the official code gives). The cases were written
by hand from the scripts' logic (GT-Vision-Lab/VQA vqaEval.py at a013f00; MLLM-CL
ETrain/Eval/LLaVA/CoIN/eval_*.py at 80bf389; MAGE infer/eval_comp.py + merge_*.py at e239549;
pix2struct metrics.py relaxed_correctness at 945f27e). Next to each: what mmcl's own variant
gives, where it differs, so the departure is visible.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmcl.data.errors import DataError
from mmcl.data.sample import Sample, Task
from mmcl.eval.evaluator import score_predictions
from mmcl.eval.scorers import get_scorer, needs_sample, sample_context, score
from mmcl.rescore import rescore_run

YES10 = ["yes"] * 10

# --- vqa_score (vqaEval.py), 10 answers -----------------------------------------------------

# (prediction, references, official vqa_score, vqa_score_normalized)
VQA_CASES = [
    # All 10 answers identical: the official code normalises neither side.
    ("yes", YES10, 1.0, 1.0),
    ("Yes", YES10, 0.0, 1.0),
    ("yes.", YES10, 0.0, 1.0),
    ("two", ["2"] * 10, 0.0, 1.0),
    ("a dog", ["dog"] * 10, 0.0, 1.0),
    ("dont", ["don't"] * 10, 0.0, 1.0),
    (" yes\n", YES10, 1.0, 1.0),  # tabs/newlines -> spaces and strip() still happen
    ("yes\tsir", ["yes sir"] * 10, 1.0, 1.0),
    # Not all identical: both sides normalised.
    ("Yes", ["yes"] * 9 + ["yeah"], 1.0, 1.0),
    ("two", ["2"] * 9 + ["3"], 1.0, 1.0),
    ("a dog", ["dog"] * 9 + ["puppy"], 1.0, 1.0),
    ("Yes.", ["yes"] * 2 + ["no"] * 8, sum([1 / 3] * 2 + [2 / 3] * 8) / 10, sum([1 / 3] * 2 + [2 / 3] * 8) / 10),
    ("no", ["yes"] * 9 + ["no"], sum([1 / 3] * 9 + [0.0]) / 10, sum([1 / 3] * 9 + [0.0]) / 10),
    # At most 32 periods are removed (re.UNICODE = 32 passed as the count).
    ("yes" + "." * 32, ["yes"] * 9 + ["no"], 1.0, 1.0),
    ("yes" + "." * 33, ["yes"] * 9 + ["no"], 0.0, 1.0),
    ("." * 32 + "yes" + ".", ["yes"] * 9 + ["no"], 0.0, 1.0),  # the 33rd period, after "yes", stays
    # Python 2's "\d" is ASCII: a period before an Arabic-Indic digit is removed.
    ("\u0663.\u0665", ["\u0663\u0665"] * 9 + ["x"], 1.0, 1.0),
    ("horse", ["cat"] * 5 + ["dog"] * 5, 0.0, 0.0),
    # 4 answers: the official leave-one-out path too.
    ("yes", ["yes", "no", "no", "no"], 0.25, 0.25),
    ("Yes", ["yes"] * 4, 0.0, 1.0),
]


@pytest.mark.parametrize(("prediction", "references", "official", "normalized"), VQA_CASES)
def test_vqa_score_is_official_with_ten_answers(
    prediction: str, references: list[str], official: float, normalized: float
) -> None:
    assert score("vqa_score", prediction, references) == official  # exact, not approx
    assert score("vqa_score_normalized", prediction, references) == normalized


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        # 1-3 answers: mmcl's #matches / N on purpose (the official code gives 0 to every
        # question with one answer, since each leave-one-out subset is empty).
        ("Yes", ["yes"], 1.0),
        ("two", ["2"], 1.0),
        ("no", ["yes"], 0.0),
        ("yes", ["yes", "no"], 0.5),
        ("yes", ["yes", "yes", "no"], 2 / 3),
    ],
)
def test_vqa_score_departs_from_the_official_code_with_few_answers(
    prediction: str, references: list[str], expected: float
) -> None:
    assert score("vqa_score", prediction, references) == expected
    assert score("vqa_score_normalized", prediction, references) == expected


# --- MLLM-CL: eval_ocr.py and eval_sat.py have no "Unanswerable" rule ----------------------


def ocr_sample(category: str = "Regular Text Recognition") -> Sample:
    return Sample(id="1", question="what is written?", answers=["x"], meta={"answer_type": category})


@pytest.mark.parametrize(
    ("name", "prediction", "references", "official", "strict"),
    [
        ("mllmcl_ocr", "The word is Unanswerable hello", ["hello"], 1.0, 0.0),
        ("mllmcl_ocr", "Unanswerable", ["Unanswerable"], 1.0, 0.0),
        ("mllmcl_ocr", "HELLO world", ["hello"], 1.0, 1.0),
        ("mllmcl_ocr", "unanswerable", ["hello"], 0.0, 0.0),
        ("mllmcl_cvbench", "Unanswerable", ["Unanswerable"], 1.0, 0.0),
        ("mllmcl_cvbench", "(B) 3. Unanswerable", ["(b)"], 1.0, 0.0),
        ("mllmcl_cvbench", "(A) 2", ["(B)"], 0.0, 0.0),
    ],
)
def test_mllmcl_ocr_and_cvbench_have_no_refusal_rule(
    name: str, prediction: str, references: list[str], official: float, strict: float
) -> None:
    s = ocr_sample()
    assert score(name, prediction, references, s) == official
    assert score(f"{name}_strict", prediction, references, s) == strict


def test_mllmcl_ocr_strict_keeps_the_handwritten_math_rule() -> None:
    s = ocr_sample("Handwritten Mathematical Expression Recognition")
    assert score("mllmcl_ocr_strict", "A + b", ["A+b"], s) == 1.0
    assert score("mllmcl_ocr_strict", "a + b", ["A+b"], s) == 0.0  # case kept
    with pytest.raises(ValueError, match="sample"):
        score("mllmcl_ocr_strict", "a", ["a"])


# --- Continual-NExT text rules (eval_comp.py + merge_vqav2/imn/ocrvqa.py) --------------------

# (prediction, references, official cnext_text, cnext_text_lenient)
CNEXT_TEXT_CASES = [
    ("It is red.", ["red"], 1.0, 1.0),
    ("golden", ["golden retriever"], 1.0, 1.0),  # pred in gt (ImageNet's either-way containment)
    # The repeat rule counts case-sensitive whitespace tokens.
    ("red, red, red", ["red"], 1.0, 0.0),  # "red," twice, "red" once
    ("red red red", ["red"], 0.0, 0.0),
    ("Red red RED red", ["red"], 1.0, 0.0),  # "red" twice only
    ("cat - dog - bird - fish", ["cat"], 0.0, 1.0),  # "-" three times
    ("the cat sat on the mat by the door", ["cat"], 0.0, 0.0),
    # An empty or blank prediction is correct ('' in gt).
    ("", ["red"], 1.0, 0.0),
    ("   ", ["red"], 1.0, 0.0),
    ("<img></img>", ["red"], 1.0, 0.0),
    # Special tokens: '<[^>]*>' (may span spaces), removed from the prediction only.
    ("<s>Red</s>", ["red"], 1.0, 1.0),
    ("<a a a> red", ["red"], 1.0, 0.0),  # lenient: "<a a a>" is not a token, "a" repeats
    ("red circle", ["red <x>circle"], 0.0, 1.0),  # the reference keeps its "<x>"
    # upper(): "STRASSE" vs "straße" match ("ß".upper() == "SS").
    ("STRASSE", ["straße"], 1.0, 0.0),
    ("blue", ["red"], 0.0, 0.0),
    ("blue", ["green", "blue"], 1.0, 1.0),
]


@pytest.mark.parametrize(("prediction", "references", "official", "lenient"), CNEXT_TEXT_CASES)
def test_cnext_text_is_official(prediction: str, references: list[str], official: float, lenient: float) -> None:
    assert score("cnext_text", prediction, references) == official
    assert score("cnext_text_lenient", prediction, references) == lenient


# (prediction, references, official cnext_ocrvqa, cnext_ocrvqa_lenient)
CNEXT_OCR_CASES = [
    ("Harry Potter", ["harry potter"], 1.0, 1.0),
    ("Unanswerable", ["Unanswerable"], 0.0, 0.0),
    ("unanswerable", ["unanswerable"], 1.0, 1.0),  # the check is case-sensitive
    ("Unan<x>swerable", ["x"], 0.0, 0.0),  # checked after the special tokens are removed
    ("potter, potter, potter", ["potter"], 1.0, 0.0),  # "potter," twice, "potter" once
    ("by - and - or - the", ["the"], 0.0, 1.0),
    ("", ["harry potter"], 1.0, 0.0),
    ("STRASSE", ["straße"], 0.0, 0.0),  # lower(): "strasse" vs "straße" differ
    ("STRASSE", ["strasse"], 1.0, 1.0),
]


@pytest.mark.parametrize(("prediction", "references", "official", "lenient"), CNEXT_OCR_CASES)
def test_cnext_ocrvqa_is_official(prediction: str, references: list[str], official: float, lenient: float) -> None:
    assert score("cnext_ocrvqa", prediction, references) == official
    assert score("cnext_ocrvqa_lenient", prediction, references) == lenient


# --- Continual-NExT grounding (merge_grounding.py) -------------------------------------------

GT = "[0.1, 0.2, 0.3, 0.4]"


def box_sample(size: tuple[int, int] = (640, 480), answer: str = GT) -> Sample:
    return Sample(id="g", question="Give the box.", answers=[answer], meta={"size": list(size)})


# (prediction, official cnext_grounding with a 640x480 image, cnext_grounding_lenient)
GROUNDING_CASES = [
    # strip "[]()", then the first and last character are dropped before splitting on ",".
    ("[0.10, 0.20, 0.30, 0.40]", 1.0, 1.0),  # ".10, 0.20, 0.30, 0.4": the lost characters were 0s
    ("[0.1, 0.2, 0.3, 0.4]", 0.0, 1.0),  # ".1, 0.2, 0.3, 0." -> y2 = 0
    ("{0.1, 0.2, 0.3, 0.4}", 1.0, 1.0),  # here the braces are what gets dropped
    ("((0.10, 0.20), (0.30, 0.40))", 1.0, 1.0),
    ("<box>[0.10, 0.20, 0.30, 0.40]</box>", 1.0, 1.0),
    ("The box is [0.10, 0.20, 0.30, 0.40].", 0.0, 1.0),
    ("[0.10 0.20 0.30 0.40]", 0.0, 1.0),
    ("[a b c d]", 0.0, 0.0),
    ("[0.10, 0.20, 0.30, 0.40] [0.50, 0.50, 0.60, 0.60]", 0.0, 1.0),  # two boxes
    ("[0.10, 0.20, 0.30]", 0.0, 0.0),
    ("[0.50, 0.50, 0.90, 0.90]", 0.0, 0.0),
    # IoU exactly 0.5 after scaling by 640 (0.5000000000000001 unscaled): not > 0.5.
    ("[0.10, 0.20, 0.20, 0.40]", 0.0, 1.0),
]


@pytest.mark.parametrize(("prediction", "official", "lenient"), GROUNDING_CASES)
def test_cnext_grounding_is_official(prediction: str, official: float, lenient: float) -> None:
    assert score("cnext_grounding", prediction, [GT], box_sample()) == official
    assert score("cnext_grounding_lenient", prediction, [GT]) == lenient


def test_cnext_grounding_scales_by_the_longest_side() -> None:
    # The same half-width box: IoU 0.5000000000000001 unscaled, 0.5 scaled by 640.
    pred = "[0.10, 0.20, 0.20, 0.40]"
    assert score("cnext_grounding", pred, [GT], box_sample((1, 1))) == 1.0
    assert score("cnext_grounding", pred, [GT], box_sample((640, 480))) == 0.0
    assert score("cnext_grounding", pred, [GT], box_sample((480, 640))) == 0.0  # max(w, h)


def test_cnext_grounding_reads_the_size_from_the_image_and_needs_a_sample() -> None:
    from PIL import Image

    s = Sample(id="g", question="q", answers=[GT], image=Image.new("RGB", (640, 320)))
    assert score("cnext_grounding", "[0.10, 0.20, 0.20, 0.40]", [GT], s) == 0.0
    assert sample_context(s)["size"] == [640, 320]
    assert needs_sample(get_scorer("cnext_grounding"))
    with pytest.raises(ValueError, match="image size"):
        score("cnext_grounding", "[0.10, 0.20, 0.30, 0.40]", [GT])
    with pytest.raises(ValueError, match="not a box"):
        score("cnext_grounding", "[0.10, 0.20, 0.30, 0.40]", ["circle"], box_sample(answer="circle"))


# --- chartqa_relaxed (pix2struct relaxed_correctness) ----------------------------------------

# (prediction, references, chartqa_relaxed, relaxed_numeric)
CHARTQA_CASES = [
    ("104", ["100"], 1.0, 1.0),
    ("105", ["100"], 1.0, 1.0),  # |5| / 100 = 0.05 <= 0.05
    ("106", ["100"], 0.0, 0.0),
    ("-95", ["-100"], 1.0, 1.0),
    ("45%", ["0.45"], 1.0, 0.0),  # "%" -> / 100
    ("45%", ["45"], 0.0, 1.0),
    ("5%%", ["0.05"], 1.0, 0.0),  # every trailing "%" goes, one division
    ("1,000", ["1000"], 0.0, 1.0),  # no comma handling: string test
    ("0.0", ["0"], 0.0, 1.0),  # target 0 falls to the string test
    ("0", ["0"], 1.0, 1.0),
    ("1000", ["1e3"], 1.0, 1.0),
    ("1_000", ["1000"], 1.0, 0.0),  # Python's float() reads "1_000"
    ("inf", ["inf"], 0.0, 1.0),  # inf - inf is nan (mmcl: not a number, equal strings)
    ("nan", ["nan"], 0.0, 1.0),
    ("two", ["2"], 0.0, 1.0),
    ("Yes", ["yes"], 1.0, 1.0),  # lower-cased string test
    ("yes ", ["yes"], 0.0, 1.0),  # no strip in the string test
    (" 12 ", ["12"], 1.0, 1.0),  # but float() ignores spaces
    ("3", ["5", "3.1"], 1.0, 1.0),  # max over references
]


@pytest.mark.parametrize(("prediction", "references", "official", "mmcl"), CHARTQA_CASES)
def test_chartqa_relaxed_is_pix2struct(prediction: str, references: list[str], official: float, mmcl: float) -> None:
    assert score("chartqa_relaxed", prediction, references) == official
    assert score("relaxed_numeric", prediction, references) == mmcl


# --- saved sample context: rescore with sample-aware scorers ---------------------------------


def _write_run(root: Path, rows: list[dict]) -> Path:
    run = root / "run"
    path = run / "predictions" / "stage-01" / "g.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {
        "mmcl_version": "0.1.0",
        "name": "toy",
        "benchmark": "toy",
        "method": "lora-ft",
        "seed": 0,
        "tasks": ["g"],
        "scorers": {"g": ["cnext_grounding_lenient"]},
        "matrix": {"primary": [[1.0]], "cnext_grounding_lenient": [[1.0]]},
        "metrics": {},
        "cost": {},
        "stages_complete": 1,
    }
    (run / "results.json").write_text(json.dumps(results))
    (run / "config.yaml").write_text("name: toy\n")
    return run


def test_rescore_uses_the_saved_sample_context(tmp_path: Path) -> None:
    task = Task(name="g", train=[], test=[box_sample(), box_sample()], scorers=["cnext_grounding_lenient"])
    preds = ["[0.10, 0.20, 0.20, 0.40]", "[0.10, 0.20, 0.30, 0.40]"]
    _, rows = score_predictions(task, preds)
    assert rows[0]["sample_meta"] == {"size": [640, 480]}
    run = _write_run(tmp_path, rows)
    out = rescore_run(run, "cnext_grounding")
    assert out["matrix"]["cnext_grounding"] == [[0.5]]  # the tie at 0.5 is wrong, the exact box right
    ocr = rescore_run(run, "mllmcl_ocr")  # sample-aware with no category saved: the regular rule
    assert ocr["matrix"]["mllmcl_ocr"] == [[0.0]]


def test_rescore_without_saved_context_names_file_and_field(tmp_path: Path) -> None:
    row = {"question_id": "g", "question": "q", "prediction": "[0.1, 0.2, 0.3, 0.4]", "answers": [GT], "scores": {}}
    run = _write_run(tmp_path, [row])
    before = (run / "results.json").read_text()
    with pytest.raises(DataError) as err:
        rescore_run(run, "cnext_grounding")
    msg = str(err.value)
    assert "g.jsonl" in msg and "sample_meta" in msg and "cnext_grounding" in msg
    assert (run / "results.json").read_text() == before
    assert rescore_run(run, "cnext_grounding_lenient")["matrix"]["cnext_grounding_lenient"] == [[1.0]]


def test_rescore_only_the_tasks_a_scorer_applies_to(tmp_path: Path) -> None:
    box_rows = score_predictions(
        Task(name="g", train=[], test=[box_sample()], scorers=["cnext_grounding_lenient"]), ["[0.10, 0.20, 0.30, 0.40]"]
    )[1]
    run = _write_run(tmp_path, box_rows)
    qa_rows = score_predictions(Task(name="qa", train=[], test=[Sample(id="q", question="q", answers=["red"])],
                                     scorers=["exact_match"]), ["red"])[1]  # fmt: skip
    assert qa_rows[0]["sample_meta"] == {}  # saved even when empty: the run is new enough to rescore
    (run / "predictions" / "stage-01" / "qa.jsonl").write_text(json.dumps(qa_rows[0]) + "\n")
    results = json.loads((run / "results.json").read_text())
    results["tasks"] = ["g", "qa"]
    results["matrix"] = {"primary": [[1.0, 1.0]]}
    (run / "results.json").write_text(json.dumps(results))
    before = (run / "results.json").read_text()
    with pytest.raises(ValueError, match="cannot score task 'qa'.*--task"):
        rescore_run(run, "cnext_grounding")
    assert (run / "results.json").read_text() == before
    assert "\"cnext_grounding\"" not in (run / "predictions" / "stage-01" / "g.jsonl").read_text()  # nothing written
    out = rescore_run(run, "cnext_grounding", tasks=["g"])
    assert out["matrix"]["cnext_grounding"] == [[1.0, None]]
    with pytest.raises(ValueError, match="unknown task"):
        rescore_run(run, "cnext_grounding", tasks=["nope"])
