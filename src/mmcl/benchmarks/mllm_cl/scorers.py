"""The official MLLM-CL scoring rules (github.com/bjzhb666/MLLM-CL, ``ETrain/Eval/LLaVA/CoIN/``).

Each scorer reproduces one official evaluation script, per sample (the official scripts sum
these per-sample scores and divide by the number of predictions). Registered in
:data:`mmcl.eval.scorers.SCORERS` when this package is imported:

========================  ==============  =====================================================
scorer                    official file   rule (pred = prediction, gt = reference)
========================  ==============  =====================================================
``mllmcl_ai2d``           eval_ai2d.py    RS and AD. Lowercase both. If gt contains a space:
                                          ``gt in pred``. Otherwise drop '.' from gt; if pred
                                          contains a space, correct when one of ``' '+gt``,
                                          ``gt+' '``, ``gt+'.'``, ``gt+','`` occurs in pred,
                                          else when ``gt in pred``.
``mllmcl_pvqa``           eval_pvqa.py    Med (PathVQA): ``gt.lower() in pred.lower()``.
``mllmcl_fin``            eval_finvis.py  Fin: ``pred.lower().replace(' ', '').replace('.', '')
                                          == gt.lower()`` (gt itself is not stripped).
``mllmcl_sci``            eval_sci.py     Sci, sample-aware. Rule picked by the image file
                                          name's prefix (text before the first '_'): AI2D, TQA,
                                          VQA, SciVerse -> ``pred.lower() == gt.lower()``. Any
                                          other prefix (MapQA): if the question contains
                                          "Which states", partial credit = fraction of the
                                          ``gt.split(',')`` items that are elements of
                                          ``pred.split(',')``; otherwise ``gt in pred``.
``mllmcl_ocr``            eval_ocr.py     OCRBench, sample-aware. Hit when any gt is a substring
                                          of pred, both ``.lower().strip()`` with newlines
                                          removed; for category ("answer_type") "Handwritten
                                          Mathematical Expression Recognition" all spaces and
                                          newlines are removed and case is kept.
``mllmcl_cvbench``        eval_sat.py     VP (CV-Bench): both ``.lower().strip()`` with spaces,
                                          newlines and '.' removed, then ``gt in pred``.
``mllmcl_ocr_strict``     (mmcl)          ``mllmcl_ocr`` + "Unanswerable" in pred scores 0.
``mllmcl_cvbench_strict`` (mmcl)          ``mllmcl_cvbench`` + "Unanswerable" in pred scores 0.
========================  ==============  =====================================================

Source: bjzhb666/MLLM-CL at commit 80bf389 (the same files are in MCITlib). Every registered
name above gives what its script gives, on every input.

- ``mllmcl_ai2d``, ``mllmcl_pvqa``, ``mllmcl_fin`` and ``mllmcl_sci``: a prediction containing
  ``"Unanswerable"`` (case-sensitive, as in the scripts) scores 0.0: the scripts ``continue``
  on it but still count it in the total.
- ``mllmcl_ocr`` and ``mllmcl_cvbench``: ``eval_ocr.py`` and ``eval_sat.py`` have **no** such
  check, so "The word is Unanswerable hello" vs "hello" scores 1, and "Unanswerable" vs
  "Unanswerable" scores 1. mmcl's ``mllmcl_ocr_strict`` and ``mllmcl_cvbench_strict`` add the
  refusal rule of the other four scripts, so that every task treats a refusal the same way
  (use them to judge a model; use the official names to compare with the paper).
- With several references the score is the max over them (the official test files hold
  one answer, except OCRBench whose list is handled by ``eval_ocr.py``'s "any gt" rule,
  which is the same max).
- No other normalisation: these are deliberately *not* the token-aware ``contains`` or
  ``exact_match`` of :mod:`mmcl.eval.scorers`. Their substring quirks are kept on purpose so
  that numbers match the paper, e.g. with ``mllmcl_ai2d`` the answer "2" is found in "12"
  (no space in pred) and in "there are 12 cars" (``"2 "`` occurs).
- In the MapQA "Which states" rule the items are *not* stripped, exactly as in the official
  code: gt "alabama, texas" vs pred "alabama, texas" scores 1.0, but vs pred
  "alabama,texas" it scores 0.5 (" texas" is not an element of ["alabama", "texas"]).

Sample-aware scorers (``mllmcl_sci``, ``mllmcl_ocr``, ``mllmcl_ocr_strict``) are marked with
:func:`mmcl.eval.scorers.sample_aware`; :func:`mmcl.eval.evaluator.score_predictions` passes
them the :class:`~mmcl.data.sample.Sample` as ``sample=``. They read ``sample.meta``:
``image_file`` (Sci; falls back to the file name of ``sample.image``) and ``answer_type``
(OCR; a missing category gets the regular, case-insensitive rule), and ``sample.question``
(Sci). Called without a sample they raise ValueError, since the rule cannot be chosen. The
evaluator saves ``image_file`` and ``answer_type`` with each prediction (``sample_meta``), so
``mmcl rescore`` can use these scorers on runs made since.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mmcl.data.sample import Sample
from mmcl.eval.scorers import SCORERS, as_refs, sample_aware

UNANSWERABLE = "Unanswerable"
"""A prediction containing this (case-sensitive) scores 0 with the MLLM-CL scorers whose script checks it
(all but ``mllmcl_ocr`` and ``mllmcl_cvbench``), and with the ``*_strict`` variants."""

SCI_EXACT_PREFIXES = ("AI2D", "TQA", "VQA", "SciVerse")
"""Sci image-name prefixes scored by exact match; any other prefix is MapQA."""

WHICH_STATES = "Which states"
OCR_HME = "Handwritten Mathematical Expression Recognition"


def _refused(prediction: str) -> bool:
    return UNANSWERABLE in prediction


# ---------------------------------------------------------------------------
# eval_ai2d.py: RS, AD
# ---------------------------------------------------------------------------


def _ai2d_single(pred: str, gt: str) -> bool:
    pred, gt = pred.lower(), gt.lower()
    if " " in gt:
        return gt in pred
    gt = gt.replace(".", "")
    if " " in pred:
        return any(x in pred for x in (" " + gt, gt + " ", gt + ".", gt + ","))
    return gt in pred


@SCORERS.register("mllmcl_ai2d")
def mllmcl_ai2d(prediction: str, references: Sequence[str]) -> float:
    """RS / AD rule of ``eval_ai2d.py`` (see the module docstring)."""
    refs = as_refs(references)
    if _refused(prediction):
        return 0.0
    return max(float(_ai2d_single(prediction, r)) for r in refs)


# ---------------------------------------------------------------------------
# eval_pvqa.py: Med
# ---------------------------------------------------------------------------


@SCORERS.register("mllmcl_pvqa")
def mllmcl_pvqa(prediction: str, references: Sequence[str]) -> float:
    """Med rule of ``eval_pvqa.py``: the lowercased reference is a substring of the lowercased prediction."""
    refs = as_refs(references)
    if _refused(prediction):
        return 0.0
    pred = prediction.lower()
    return max(float(r.lower() in pred) for r in refs)


# ---------------------------------------------------------------------------
# eval_finvis.py: Fin
# ---------------------------------------------------------------------------


@SCORERS.register("mllmcl_fin")
def mllmcl_fin(prediction: str, references: Sequence[str]) -> float:
    """Fin rule of ``eval_finvis.py``: prediction without spaces and '.' equals the lowercased reference."""
    refs = as_refs(references)
    if _refused(prediction):
        return 0.0
    pred = prediction.lower().replace(" ", "").replace(".", "")
    return max(float(pred == r.lower()) for r in refs)


# ---------------------------------------------------------------------------
# eval_sci.py: Sci (sample-aware)
# ---------------------------------------------------------------------------


def _need_sample(name: str, sample: Sample | None, what: str) -> Sample:
    if sample is None:
        raise ValueError(
            f"scorer {name!r} needs the sample ({what}) to pick its rule; "
            "score through mmcl.eval.evaluator.score_predictions or pass sample="
        )
    return sample


def sci_image_file(sample: Sample) -> str:
    """The image file name the Sci rule looks at: ``meta['image_file']``, else the name of ``sample.image``."""
    name = sample.meta.get("image_file")
    if isinstance(name, str) and name:
        return name.split("/")[-1]
    if isinstance(sample.image, (str, Path)):
        return Path(sample.image).name
    return ""


def sci_score_single(prediction: str, reference: str, image_file: str, question: str) -> float:
    """One (prediction, reference) pair under ``eval_sci.py`` (no "Unanswerable" check here)."""
    pred, gt = prediction.lower(), reference.lower()
    prefix = image_file.split("/")[-1].split("_")[0]
    if prefix in SCI_EXACT_PREFIXES:
        return float(gt == pred)
    if WHICH_STATES in question:  # MapQA list question: partial credit, items not stripped
        gt_items = gt.split(",")
        pred_items = pred.split(",")
        return sum(g in pred_items for g in gt_items) / len(gt_items)
    return float(gt in pred)


@SCORERS.register("mllmcl_sci")
@sample_aware(context=lambda s: {"image_file": sci_image_file(s)})
def mllmcl_sci(prediction: str, references: Sequence[str], sample: Sample | None = None) -> float:
    """Sci rule of ``eval_sci.py``: exact match for AI2D/TQA/VQA/SciVerse images, MapQA rules otherwise.

    Needs ``sample`` for the image file name (``meta['image_file']``) and the question.
    """
    refs = as_refs(references)
    s = _need_sample("mllmcl_sci", sample, "its image file name and question")
    if _refused(prediction):
        return 0.0
    image_file = sci_image_file(s)
    return max(sci_score_single(prediction, r, image_file, s.question) for r in refs)


# ---------------------------------------------------------------------------
# eval_ocr.py: OCRBench (sample-aware)
# ---------------------------------------------------------------------------


def ocr_category(sample: Sample) -> str:
    """The OCRBench category of a sample: ``meta['answer_type']`` (or ``meta['category']``), else ''."""
    for key in ("answer_type", "category"):
        value = sample.meta.get(key)
        if isinstance(value, str):
            return value
    return ""


def ocr_hit(prediction: str, references: Sequence[str], category: str) -> bool:
    """``eval_ocr.py``: any reference found in the prediction (HME: no spaces, case kept)."""
    if category == OCR_HME:
        pred = prediction.strip().replace(" ", "").replace("\n", "")
        return any(r.strip().replace(" ", "").replace("\n", "") in pred for r in references)
    pred = prediction.lower().strip().replace("\n", "")
    return any(r.lower().strip().replace("\n", "") in pred for r in references)


def _ocr_context(sample: Sample) -> dict[str, str]:
    return {"answer_type": ocr_category(sample)}


@SCORERS.register("mllmcl_ocr")
@sample_aware(context=_ocr_context)
def mllmcl_ocr(prediction: str, references: Sequence[str], sample: Sample | None = None) -> float:
    """OCRBench rule of ``eval_ocr.py``; needs ``sample`` for its category (``meta['answer_type']``).

    As the official script: no "Unanswerable" rule (see ``mllmcl_ocr_strict``).
    """
    refs = as_refs(references)
    s = _need_sample("mllmcl_ocr", sample, "its OCRBench category, meta['answer_type']")
    return float(ocr_hit(prediction, refs, ocr_category(s)))


@SCORERS.register("mllmcl_ocr_strict")
@sample_aware(context=_ocr_context)
def mllmcl_ocr_strict(prediction: str, references: Sequence[str], sample: Sample | None = None) -> float:
    """mmcl's variant of ``mllmcl_ocr``: a prediction containing "Unanswerable" scores 0."""
    refs = as_refs(references)
    s = _need_sample("mllmcl_ocr_strict", sample, "its OCRBench category, meta['answer_type']")
    if _refused(prediction):
        return 0.0
    return float(ocr_hit(prediction, refs, ocr_category(s)))


# ---------------------------------------------------------------------------
# eval_sat.py: VP (CV-Bench)
# ---------------------------------------------------------------------------


def _cvbench_norm(text: str) -> str:
    return text.lower().strip().replace(" ", "").replace("\n", "").replace(".", "")


@SCORERS.register("mllmcl_cvbench")
def mllmcl_cvbench(prediction: str, references: Sequence[str]) -> float:
    """VP (CV-Bench) rule of ``eval_sat.py``: drop spaces/newlines/'.', lowercase, reference in prediction.

    As the official script: no "Unanswerable" rule (see ``mllmcl_cvbench_strict``).
    """
    refs = as_refs(references)
    pred = _cvbench_norm(prediction)
    return max(float(_cvbench_norm(r) in pred) for r in refs)


@SCORERS.register("mllmcl_cvbench_strict")
def mllmcl_cvbench_strict(prediction: str, references: Sequence[str]) -> float:
    """mmcl's variant of ``mllmcl_cvbench``: a prediction containing "Unanswerable" scores 0."""
    refs = as_refs(references)
    if _refused(prediction):
        return 0.0
    return mllmcl_cvbench(prediction, refs)
