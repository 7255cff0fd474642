"""Continual-NExT (arXiv 2602.18055) scoring rules and its error classes (HAL / IUF / OTH).

Scorers (registered in :data:`mmcl.eval.scorers.SCORERS`). The official names give exactly
what the MAGE code gives (``JingyangQiao/MAGE`` at e239549: ``infer/eval_comp.py`` removes
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
                             and "red, red, red" repeats "red" (:func:`has_word_repeat`).
``cnext_ocrvqa_lenient``     ``cnext_text_lenient`` + "Unanswerable" in the prediction is wrong.
``cnext_grounding_lenient``  boxes read with :func:`mmcl.eval.scorers.parse_boxes` (any common
                             format), first predicted box vs first reference box, IoU > 0.5,
                             compared in the coordinates they are written in (no image needed).

Error classes (:func:`classify_error`), for the "metrics beyond forgetting" (Avg.HAL,
Avg.IUF, Avg.OTH), which the paper names without a definition; this rule-based version is
ours. A wrong answer is:

1. ``instruction_unfollowing`` when the output has the wrong modality (text or nothing where
   an image was asked; an image, or nothing, where text was asked), the wrong format (no
   parsable box for a ``box`` task; more than ``max_words`` words for a ``short`` task), or
   degenerates (a word repeated more than twice, or a sequence of two or more words repeated
   back to back: "red circle red circle");
2. ``hallucination`` when it has the right modality and format but names something of the
   task's known vocabulary (an object class, a colour...) that the synthetic ground truth says
   is absent from the image (for an image output: something the judge finds in the generated
   image that the prompt / target does not have, when :attr:`Output.image_content` is given);
3. ``other`` otherwise.

Whether an answer is correct comes from the task's scorer (``correct=``); the classifier
never re-scores. :func:`stage_error_rates` / :func:`error_rates_by_stage` turn the classes
into per-stage rates, :func:`average_error_rates` into the run's Avg.HAL / Avg.IUF / Avg.OTH.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from PIL import Image

from mmcl.data.errors import DataError
from mmcl.eval.scorers import SCORERS, _as_refs, iou, parse_boxes, sample_aware

if TYPE_CHECKING:
    from mmcl.data.sample import Sample

# ---------------------------------------------------------------------------
# Text normalisation and the repetition rule
# ---------------------------------------------------------------------------

GROUNDING_IOU_THRESHOLD = 0.5
"""``cnext_grounding`` needs IoU strictly above this (the paper's code: ``iou > 0.5``)."""

MAX_WORD_REPEATS = 2
"""A word may occur at most this many times; more makes the answer wrong (``has_word_repeat``)."""

_SPECIAL_TOKEN_RE = re.compile(r"<[^<>\s]*>")
# A word: a number with its inner separators ("0.5", "1,000") or a run of letters/digits.
_WORD_RE = re.compile(r"\d+(?:[.,]\d+)*|[^\W_]+")
_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")


def strip_special_tokens(text: str) -> str:
    """Remove special tokens written as ``<...>`` (``<img>``, ``</s>``, ``<box>``...), as the paper's code does."""
    return _SPECIAL_TOKEN_RE.sub("", text)


def cnext_normalize(text: str) -> str:
    """The paper's answer normalisation: special tokens removed, ``lower()``, ``strip()``.

    Punctuation and inner whitespace are kept (the reference documents no other step).
    """
    return strip_special_tokens(text).lower().strip()


def words(text: str, *, numbers: bool = True) -> list[str]:
    """Lower-cased words of ``text`` (see the module docstring); ``numbers=False`` drops numeric words."""
    found = _WORD_RE.findall(strip_special_tokens(text).lower())
    return found if numbers else [w for w in found if not _NUMBER_RE.fullmatch(w)]


def has_word_repeat(text: str, max_repeats: int = MAX_WORD_REPEATS, *, numbers: bool = True) -> bool:
    """True when some word occurs more than ``max_repeats`` times (the paper's ``has_word_repeat``).

    ``numbers=False`` ignores numeric words (box coordinates legitimately repeat).
    """
    counts = Counter(words(text, numbers=numbers))
    return any(c > max_repeats for c in counts.values())


def has_repeated_ngram(text: str, min_n: int = 2, *, numbers: bool = True) -> bool:
    """True when a sequence of ``n >= min_n`` words is immediately repeated ("red circle red circle")."""
    w = words(text, numbers=numbers)
    for n in range(min_n, len(w) // 2 + 1):
        if any(w[i : i + n] == w[i + n : i + 2 * n] for i in range(len(w) - 2 * n + 1)):
            return True
    return False


def is_degenerate(text: str, *, numbers: bool = True) -> bool:
    """Degenerate repetition: :func:`has_word_repeat` or :func:`has_repeated_ngram`."""
    return has_word_repeat(text, numbers=numbers) or has_repeated_ngram(text, numbers=numbers)


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
    refs = _as_refs(references)
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
    refs = _as_refs(references)
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
    refs = _as_refs(references)
    pred = cnext_normalize(prediction)
    if not pred or has_word_repeat(prediction):
        return 0.0
    return max(float(_text_match(pred, ref)) for ref in refs)


@SCORERS.register("cnext_ocrvqa_lenient")
def cnext_ocrvqa_lenient(prediction: str, references: Sequence[str]) -> float:
    """mmcl's OCR-VQA rule: :func:`cnext_text_lenient`, and ``"Unanswerable"`` in the prediction is wrong."""
    if "Unanswerable" in prediction:
        _as_refs(references)
        return 0.0
    return cnext_text_lenient(prediction, references)


@SCORERS.register("cnext_grounding_lenient")
def cnext_grounding_lenient(prediction: str, references: Sequence[str]) -> float:
    """mmcl's grounding rule: IoU(first predicted box, reference box) > 0.5 -> 1.0, else 0.0.

    Boxes are parsed with :func:`mmcl.eval.scorers.parse_boxes` after removing ``<...>`` tokens;
    the first box of the prediction is compared with the first box of each reference (max
    over references). No box in the prediction -> 0.0; a reference without a box is an error.
    """
    refs = _as_refs(references)
    pred_boxes = parse_boxes(strip_special_tokens(prediction))
    best = 0.0
    for ref in refs:
        ref_boxes = parse_boxes(strip_special_tokens(ref))
        if not ref_boxes:
            raise ValueError(f"cnext_grounding_lenient: reference {ref!r} holds no box")
        if pred_boxes and iou(pred_boxes[0], ref_boxes[0]) > GROUNDING_IOU_THRESHOLD:
            best = 1.0
    return best


# ---------------------------------------------------------------------------
# Error classes
# ---------------------------------------------------------------------------

ErrorClass = Literal["correct", "instruction_unfollowing", "hallucination", "other"]
ERROR_CLASSES: tuple[ErrorClass, ...] = get_args(ErrorClass)
"""The four classes, in this order."""

Modality = Literal["text", "image"]
Format = Literal["free", "box", "short"]

PRESENT_META_KEY = "present"
"""Key of ``Sample.meta`` holding the ground truth read by :func:`classify_sample`:
``{category: names present in the image}``, e.g. ``{"objects": ["circle"], "colours": ["red"]}``."""

DEFAULT_SHORT_MAX_WORDS = 5


@dataclass(frozen=True)
class Output:
    """What the model produced for one test sample.

    ``text``: the generated text (None when no text was produced). ``image``: whether an image
    was produced. ``image_content``: optionally, what an independent judge finds in the
    generated image, as ``{category: names}`` (used for hallucination in image outputs).
    """

    text: str | None = None
    image: bool = False
    image_content: Mapping[str, Collection[str]] | None = None

    @property
    def has_text(self) -> bool:
        return self.text is not None and bool(self.text.strip())


@dataclass(frozen=True)
class Expectation:
    """What a task asks for: output modality, answer format, and its known vocabulary.

    ``modality``: ``"text"`` or ``"image"``. ``format`` (text tasks): ``"free"`` (any text),
    ``"box"`` (a box must be parsable) or ``"short"`` (at most ``max_words`` words, e.g. a class
    label). ``vocabulary``: ``{category: every name of that category the task's world knows}``,
    e.g. ``{"objects": {"circle", "square"}, "colours": {"red", "blue"}}``; a name of it that a
    wrong answer mentions but the sample's ground truth lacks is a hallucination.
    """

    modality: Modality = "text"
    format: Format = "free"
    vocabulary: Mapping[str, Collection[str]] = field(default_factory=dict)
    max_words: int = DEFAULT_SHORT_MAX_WORDS

    def __post_init__(self) -> None:
        if self.modality not in ("text", "image"):
            raise ValueError(f"Expectation.modality must be 'text' or 'image', got {self.modality!r}")
        if self.format not in ("free", "box", "short"):
            raise ValueError(f"Expectation.format must be 'free', 'box' or 'short', got {self.format!r}")
        if self.max_words < 1:
            raise ValueError(f"Expectation.max_words must be >= 1, got {self.max_words}")


def _name_pattern(name: str) -> re.Pattern[str]:
    """A whole-word, case-insensitive pattern for ``name``; its last word may take a plural s/es."""
    parts = [re.escape(p) for p in name.lower().split()]
    if not parts:
        raise ValueError("an empty vocabulary name")
    parts[-1] += "(?:e?s)?"
    return re.compile(r"(?<![^\W_])" + r"\s+".join(parts) + r"(?![^\W_])")


def mentioned_names(text: str, vocabulary: Mapping[str, Collection[str]]) -> dict[str, set[str]]:
    """``{category: vocabulary names that occur in text}`` (whole words, case-insensitive, plural s/es allowed)."""
    t = strip_special_tokens(text).lower()
    out: dict[str, set[str]] = {}
    for cat, names in vocabulary.items():
        hits = {n for n in names if _name_pattern(n).search(t)}
        if hits:
            out[cat] = hits
    return out


def absent_names(
    mentioned: Mapping[str, Collection[str]],
    present: Mapping[str, Collection[str]],
    vocabulary: Mapping[str, Collection[str]],
) -> dict[str, set[str]]:
    """The names of ``mentioned`` that belong to ``vocabulary`` but not to ``present`` (case-insensitive).

    A category missing from ``present`` is unknown ground truth: nothing of it is called absent.
    (An empty collection under the key means "none of this category is in the image".)
    """
    out: dict[str, set[str]] = {}
    for cat, names in mentioned.items():
        if cat not in present:
            continue
        known = {n.lower() for n in vocabulary.get(cat, ())}
        here = {n.lower() for n in present.get(cat, ())}
        bad = {n for n in names if n.lower() in known and n.lower() not in here}
        if bad:
            out[cat] = bad
    return out


def _as_output(prediction: Output | str | None) -> Output:
    if isinstance(prediction, Output):
        return prediction
    if prediction is None or isinstance(prediction, str):
        return Output(text=prediction)
    raise TypeError(f"a prediction must be an Output, a str or None, got {type(prediction).__name__}")


def instruction_unfollowing_reason(prediction: Output | str | None, expected: Expectation) -> str | None:
    """Why the output does not follow the instruction (a short phrase), or None when it does.

    Checked in this order: modality, degenerate repetition, format.
    """
    out = _as_output(prediction)
    if expected.modality == "image":
        if not out.image:
            return "text where an image was asked" if out.has_text else "no output"
        return None
    if out.image:
        return "image where text was asked"
    if not out.has_text:
        return "no output"
    text = out.text or ""
    # Box coordinates repeat legitimately ("[0, 0, 10, 10]"), so numbers are ignored for boxes.
    if is_degenerate(text, numbers=expected.format != "box"):
        return "degenerate repetition"
    if expected.format == "box" and not parse_boxes(strip_special_tokens(text)):
        return "no parsable box"
    if expected.format == "short" and len(words(text)) > expected.max_words:
        return f"more than {expected.max_words} words where a short answer was asked"
    return None


def hallucinated_names(
    prediction: Output | str | None, present: Mapping[str, Collection[str]], expected: Expectation
) -> dict[str, set[str]]:
    """Names of the task's vocabulary that the output mentions (text) or shows (judged image) but ``present`` lacks."""
    out = _as_output(prediction)
    if expected.modality == "image":
        mentioned = {c: set(v) for c, v in (out.image_content or {}).items()}
    else:
        mentioned = mentioned_names(out.text or "", expected.vocabulary)
    return absent_names(mentioned, present, expected.vocabulary)


def classify_error(
    prediction: Output | str | None,
    present: Mapping[str, Collection[str]],
    expected: Expectation,
    *,
    correct: bool,
) -> ErrorClass:
    """The class of one test answer: ``correct``, ``instruction_unfollowing``, ``hallucination`` or ``other``.

    ``prediction``: the model output (a bare str is text only; None is no output).
    ``present``: the sample's ground truth, ``{category: names present in the image}`` (for
    generation, what the prompt / target image contains); a category it lacks is not checked.
    ``expected``: the task's
    :class:`Expectation`. ``correct``: the verdict of the task's scorer; when True the answer is
    ``correct`` and no other check runs. Otherwise: instruction unfollowing
    (:func:`instruction_unfollowing_reason`), then hallucination (:func:`hallucinated_names`),
    else ``other``.
    """
    if correct:
        return "correct"
    if instruction_unfollowing_reason(prediction, expected) is not None:
        return "instruction_unfollowing"
    if hallucinated_names(prediction, present, expected):
        return "hallucination"
    return "other"


def classify_sample(
    prediction: Output | str | None, sample: Sample, expected: Expectation, *, correct: bool
) -> ErrorClass:
    """:func:`classify_error` with the ground truth read from ``sample.meta["present"]`` (empty if missing)."""
    return classify_error(prediction, sample.meta.get(PRESENT_META_KEY, {}), expected, correct=correct)


# ---------------------------------------------------------------------------
# Rates per stage: Avg.HAL, Avg.IUF, Avg.OTH
# ---------------------------------------------------------------------------

RATE_KEYS = {"correct": "ACC", "hallucination": "HAL", "instruction_unfollowing": "IUF", "other": "OTH"}
"""Error class -> key of the rate dictionaries."""

ClassCell = Sequence[ErrorClass] | Mapping[str, int] | None
"""One task's classes at one stage: a label per test sample, or counts per class; None = not evaluated."""

Scope = Literal["seen", "all"]
Pooling = Literal["samples", "tasks"]


def _counts(cell: Sequence[ErrorClass] | Mapping[str, int], where: str) -> Counter[str]:
    if isinstance(cell, str | bytes):
        raise ValueError(f"{where}: expected a list of error classes or a mapping of counts, got a string")
    c: Counter[str] = Counter(dict(cell)) if isinstance(cell, Mapping) else Counter(cell)
    unknown = set(c) - set(ERROR_CLASSES)
    if unknown:
        raise ValueError(f"{where}: unknown error classes {sorted(unknown)}; valid: {list(ERROR_CLASSES)}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in c.values()):
        raise ValueError(f"{where}: counts must be non-negative integers, got {dict(c)}")
    return c


def _rates(c: Counter[str]) -> dict[str, float]:
    n = sum(c.values())
    return {RATE_KEYS[k]: c[k] / n for k in ERROR_CLASSES}


def stage_error_rates(
    row: Sequence[ClassCell], stage: int, *, scope: Scope = "seen", pooling: Pooling = "samples"
) -> dict[str, float | int] | None:
    """Rates of the four classes at one stage; keys ``ACC``, ``HAL``, ``IUF``, ``OTH`` (sum 1), ``n``, ``tasks``.

    ``row[j]``: the classes of task j's test samples evaluated after ``stage`` (None when not
    evaluated). ``scope="seen"`` (default) counts tasks ``j <= stage`` (the tasks learned so far:
    errors on them are what forgetting produces); ``"all"`` counts every evaluated task of the
    row, future ones included. ``pooling="samples"`` (default): the share of all counted test
    samples in each class; ``"tasks"``: the mean over counted tasks of each task's share. ``n``
    is the number of samples, ``tasks`` the number of tasks counted. None when nothing is counted.
    """
    if scope not in ("seen", "all"):
        raise ValueError(f"scope must be 'seen' or 'all', got {scope!r}")
    if pooling not in ("samples", "tasks"):
        raise ValueError(f"pooling must be 'samples' or 'tasks', got {pooling!r}")
    cells: list[Counter[str]] = []
    for j, cell in enumerate(row):
        if cell is None or (scope == "seen" and j > stage):
            continue
        c = _counts(cell, f"stage {stage}, task {j}")
        if sum(c.values()) > 0:
            cells.append(c)
    if not cells:
        return None
    if pooling == "samples":
        rates = _rates(sum(cells, Counter()))
    else:
        per_task = [_rates(c) for c in cells]
        rates = {k: math.fsum(r[k] for r in per_task) / len(per_task) for k in RATE_KEYS.values()}
    return {**rates, "n": sum(sum(c.values()) for c in cells), "tasks": len(cells)}


def error_rates_by_stage(
    classes: Sequence[Sequence[ClassCell]], *, scope: Scope = "seen", pooling: Pooling = "samples"
) -> list[dict[str, float | int] | None]:
    """:func:`stage_error_rates` for every row ``classes[t]`` (T rows, one per stage)."""
    return [stage_error_rates(row, t, scope=scope, pooling=pooling) for t, row in enumerate(classes)]


def average_error_rates(per_stage: Sequence[Mapping[str, float | int] | None]) -> dict[str, float | None]:
    """Avg.HAL, Avg.IUF, Avg.OTH (and Avg.ACC of the classified answers): means over stages with rates.

    Keys ``Avg.ACC``, ``Avg.HAL``, ``Avg.IUF``, ``Avg.OTH``; None when no stage has rates.
    """
    rows = [r for r in per_stage if r is not None]
    return {
        f"Avg.{k}": (math.fsum(float(r[k]) for r in rows) / len(rows) if rows else None)
        for k in RATE_KEYS.values()
    }
