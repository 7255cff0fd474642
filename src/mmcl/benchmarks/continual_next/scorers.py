"""Continual-NExT (arXiv 2602.18055) scoring rules for text answers.

Scorers (registered in :data:`mmcl.eval.scorers.SCORERS` when this package is imported). The
official names give exactly what the MAGE code gives (``JingyangQiao/MAGE`` at e239549: ``infer/eval_comp.py`` removes
``<[^>]*>`` from the generated text, then ``infer/merge_*.py`` score it), quirks included:

``cnext_text``       VQAv2 / ImageNet (``merge_vqav2.py``, ``merge_imn.py``). ``pred`` = the
                     prediction without ``<...>`` tokens (:func:`official_strip_special_tokens`;
                     the reference keeps its own). Wrong when some whitespace token of ``pred``
                     occurs more than twice, case-sensitively (:func:`official_word_repeat`:
                     "red, red, red" is fine, "cat - dog - bird - fish" repeats "-"). Otherwise
                     correct when, after ``upper().strip()`` of both, ``pred == gt`` or
                     ``gt in pred`` or ``pred in gt``, so an empty or blank prediction is correct
                     (``'' in gt``). Max over references.
``cnext_ocrvqa``     OCR-VQA (``merge_ocrvqa.py``): "Unanswerable" (case-sensitive) in ``pred``
                     is wrong; then as ``cnext_text`` but with ``lower().strip()``.
``cnext_grounding``  RefCOCO (``merge_grounding.py``), sample-aware (it needs the image size).
                     The prediction (special tokens removed) is ``strip()``-ed, loses every
                     ``[ ] ( )``, then its **first and last character**, and is split on ``,``
                     into exactly 4 floats, else wrong: "[0.10, 0.20, 0.30, 0.40]" reads
                     (0.1, 0.2, 0.3, 0.4) only because the dropped characters are "0"s; "The box
                     is [..]." and "[a b c d]" are wrong, and so are two boxes. The reference
                     loses ``[ ]`` and is split on ``,``. Both are multiplied by the image's
                     longest side (``meta['size']`` = (w, h), else the image) and the answer is
                     correct when IoU > 0.5, with box areas not clamped at 0 (an inverted box has
                     a negative area). Max over references.

mmcl's own variants, better for judging a model, the rules as ``docs/continual-next-metrics.md``
describes them:

``cnext_text_lenient``       special tokens (``<...>`` without spaces) removed from both sides,
                             ``lower().strip()``, containment either way; an empty prediction
                             scores 0; the repetition rule counts lower-cased words (letters and
                             digits, numbers keep inner ``.``/``,``), so punctuation never repeats
                             and "red, red, red" repeats "red"
                             (:func:`mmcl.eval.outputs.has_word_repeat`).
``cnext_ocrvqa_lenient``     ``cnext_text_lenient`` + "Unanswerable" in the prediction is wrong.
``cnext_grounding_lenient``  boxes read with :func:`mmcl.synth.boxes.parse_boxes` (any common
                             format), first predicted box vs first reference box, IoU > 0.5,
                             compared in the coordinates they are written in (no image needed).

The error classes of wrong answers (HAL / IUF / OTH) are generic for dual outputs:
:mod:`mmcl.eval.outputs`, which also holds the word and repetition rules used here.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from mmcl.data.errors import DataError
from mmcl.data.sample import Sample
from mmcl.eval.outputs import MAX_WORD_REPEATS, has_word_repeat, strip_special_tokens
from mmcl.eval.scorers import SCORERS, as_refs, sample_aware
from mmcl.synth.boxes import iou, parse_boxes

# ---------------------------------------------------------------------------
# Constants and normalisation
# ---------------------------------------------------------------------------

GROUNDING_IOU_THRESHOLD = 0.5
"""``cnext_grounding`` needs IoU strictly above this (the paper's code: ``iou > 0.5``)."""


def cnext_normalize(text: str) -> str:
    """The paper's answer normalisation: special tokens removed, ``lower()``, ``strip()``.

    Punctuation and inner whitespace are kept (the reference documents no other step).
    """
    return strip_special_tokens(text).lower().strip()


# ---------------------------------------------------------------------------
# Scorers: the official rules (MAGE infer/merge_*.py at e239549)
# ---------------------------------------------------------------------------

_OFFICIAL_SPECIAL_TOKEN_RE = re.compile(r"<[^>]*>")
OFFICIAL_UNANSWERABLE = "Unanswerable"


def official_strip_special_tokens(text: str) -> str:
    """What ``infer/eval_comp.py`` does to the generated text: remove every ``<[^>]*>`` match.

    Unlike :func:`strip_special_tokens`, the match may span spaces and lines ("a <b c> d" ->
    "a  d"); a "<" with no ">" after it stays.
    """
    return _OFFICIAL_SPECIAL_TOKEN_RE.sub("", text)


def official_word_repeat(text: str) -> bool:
    """``has_word_repeat`` of the MAGE scripts: some ``text.split()`` token occurs more than twice.

    Tokens are whitespace-separated and case-sensitive, punctuation included: "red, red, red"
    has "red," twice and "red" once (no repeat); "a - b - c - d" repeats "-".
    """
    return any(c > MAX_WORD_REPEATS for c in Counter(text.split()).values())


def _official_contains_either_way(pred: str, gt: str, fold: Callable[[str], str]) -> bool:
    p, g = fold(pred).strip(), fold(gt).strip()
    return p == g or g in p or p in g


def _official_text(prediction: str, references: Sequence[str], fold: Callable[[str], str], refuse: bool) -> float:
    refs = as_refs(references)
    pred = official_strip_special_tokens(prediction)
    if refuse and OFFICIAL_UNANSWERABLE in pred:
        return 0.0
    if official_word_repeat(pred):
        return 0.0
    return max(float(_official_contains_either_way(pred, r, fold)) for r in refs)


@SCORERS.register("cnext_text")
def cnext_text(prediction: str, references: Sequence[str]) -> float:
    """Continual-NExT VQAv2 / ImageNet rule, as ``merge_vqav2.py`` / ``merge_imn.py`` give it.

    Special tokens removed from the prediction (:func:`official_strip_special_tokens`); 0.0 when
    a whitespace token repeats (:func:`official_word_repeat`); else 1.0 when, after
    ``upper().strip()``, ``pred == gt``, ``gt in pred`` or ``pred in gt`` for some reference.
    An empty or blank prediction scores 1.0 (``'' in gt``). See ``cnext_text_lenient``.
    """
    return _official_text(prediction, references, str.upper, refuse=False)


@SCORERS.register("cnext_ocrvqa")
def cnext_ocrvqa(prediction: str, references: Sequence[str]) -> float:
    """Continual-NExT OCR-VQA rule, as ``merge_ocrvqa.py`` gives it.

    As :func:`cnext_text` but "Unanswerable" (case-sensitive) in the prediction is wrong and the
    case folding is ``lower()``. See ``cnext_ocrvqa_lenient``.
    """
    return _official_text(prediction, references, str.lower, refuse=True)


def official_parse_prediction_box(text: str) -> list[float] | None:
    """The 4 numbers ``merge_grounding.py`` reads from a prediction, or None (scored wrong).

    ``strip()``, remove ``[ ] ( )``, drop the first and the last character, split on ``,``,
    ``float`` each; None when a part is not a float or there are not exactly 4.
    """
    t = text.strip()
    for ch in "[]()":
        t = t.replace(ch, "")
    try:
        nums = [float(x) for x in t[1:-1].split(",")]
    except ValueError:
        return None
    return nums if len(nums) == 4 else None


def official_parse_reference_box(text: str) -> list[float]:
    """The reference box as ``merge_grounding.py`` reads ``answer_bbox``: drop ``[ ]``, split on ``,``."""
    try:
        nums = [float(x) for x in text.replace("[", "").replace("]", "").split(",")]
    except ValueError:
        nums = []
    if len(nums) != 4:
        raise ValueError(f"cnext_grounding: reference {text!r} is not a box '[x1, y1, x2, y2]'")
    return nums


def official_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU as ``merge_grounding.py`` computes it: areas are not clamped, so an inverted box has a negative area."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    inter = max(0, min(ax2, bx2) - max(ax1, bx1)) * max(0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0


def image_size(sample: Sample) -> tuple[int, int] | None:
    """``(width, height)`` of a sample's image: ``meta['size']`` if given, else read from the image."""
    size = sample.meta.get("size")
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return (size[0], size[1])
    if sample.image is None:
        return None
    if isinstance(sample.image, (str, Path)):
        try:
            with Image.open(sample.image) as f:  # reads the header only
                return f.size
        except OSError:
            pass
    img = sample.load_image()
    return None if img is None else img.size


def _grounding_context(sample: Sample) -> dict[str, list[int]]:
    """The image size to save with a prediction; nothing when it cannot be read (never raises)."""
    try:
        size = image_size(sample)
    except (DataError, OSError):
        return {}
    return {} if size is None else {"size": [size[0], size[1]]}


@SCORERS.register("cnext_grounding")
@sample_aware(context=_grounding_context)
def cnext_grounding(prediction: str, references: Sequence[str], sample: Sample | None = None) -> float:
    """Continual-NExT RefCOCO rule, as ``merge_grounding.py`` gives it (see the module docstring).

    Needs ``sample`` for the image size (``meta['size']`` = (w, h), else its image): both boxes
    are multiplied by the longest side before the IoU, which moves ties at IoU = 0.5 by rounding.
    See ``cnext_grounding_lenient``.
    """
    refs = as_refs(references)
    if sample is None:
        raise ValueError(
            "scorer 'cnext_grounding' needs the sample (its image size, meta['size']) to scale the boxes "
            "as the official script does; score through mmcl.eval.evaluator.score_predictions or pass sample="
        )
    size = image_size(sample)
    if size is None:
        raise ValueError(f"cnext_grounding: sample {sample.id!r} has no image and no meta['size']")
    gts = [official_parse_reference_box(r) for r in refs]
    pred = official_parse_prediction_box(official_strip_special_tokens(prediction))
    if pred is None:
        return 0.0
    max_wh = max(size)
    pred_scaled = [x * max_wh for x in pred]
    return max(float(official_iou(pred_scaled, [x * max_wh for x in gt]) > GROUNDING_IOU_THRESHOLD) for gt in gts)


# ---------------------------------------------------------------------------
# Scorers: mmcl's lenient variants
# ---------------------------------------------------------------------------


def _text_match(pred: str, ref: str) -> bool:
    gt = cnext_normalize(ref)
    return pred == gt or gt in pred or pred in gt


@SCORERS.register("cnext_text_lenient")
def cnext_text_lenient(prediction: str, references: Sequence[str]) -> float:
    """mmcl's Continual-NExT text rule: containment either way after :func:`cnext_normalize`.

    ``pred`` and each reference go through :func:`cnext_normalize`; 1.0 when ``pred == gt``,
    ``gt in pred`` or ``pred in gt`` for some reference. 0.0 for an empty prediction and for
    a prediction where some word occurs more than twice (:func:`has_word_repeat`).
    """
    refs = as_refs(references)
    pred = cnext_normalize(prediction)
    if not pred or has_word_repeat(prediction):
        return 0.0
    return max(float(_text_match(pred, ref)) for ref in refs)


@SCORERS.register("cnext_ocrvqa_lenient")
def cnext_ocrvqa_lenient(prediction: str, references: Sequence[str]) -> float:
    """mmcl's OCR-VQA rule: :func:`cnext_text_lenient`, and ``"Unanswerable"`` in the prediction is wrong."""
    if "Unanswerable" in prediction:
        as_refs(references)
        return 0.0
    return cnext_text_lenient(prediction, references)


@SCORERS.register("cnext_grounding_lenient")
def cnext_grounding_lenient(prediction: str, references: Sequence[str]) -> float:
    """mmcl's grounding rule: IoU(first predicted box, reference box) > 0.5 -> 1.0, else 0.0.

    Boxes are parsed with :func:`mmcl.synth.boxes.parse_boxes` after removing ``<...>`` tokens;
    the first box of the prediction is compared with the first box of each reference (max
    over references). No box in the prediction -> 0.0; a reference without a box is an error.
    """
    refs = as_refs(references)
    pred_boxes = parse_boxes(strip_special_tokens(prediction))
    best = 0.0
    for ref in refs:
        ref_boxes = parse_boxes(strip_special_tokens(ref))
        if not ref_boxes:
            raise ValueError(f"cnext_grounding_lenient: reference {ref!r} holds no box")
        if pred_boxes and iou(pred_boxes[0], ref_boxes[0]) > GROUNDING_IOU_THRESHOLD:
            best = 1.0
    return best
