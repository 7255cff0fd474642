"""What a dual (text + image) model's answer is when it is wrong: instruction unfollowing,
hallucination or other (Continual-NExT's "metrics beyond forgetting", Avg.HAL / Avg.IUF / Avg.OTH).

Generic for any task that declares ``meta["expect"]`` (an :class:`Expectation`); the evaluator
classes every answer of such a task (:func:`mmcl.eval.evaluator.add_error_classes`). The paper
names the classes without a definition; this rule-based version is ours
(``docs/continual-next-metrics.md``). A wrong answer is:

1. ``instruction_unfollowing`` when the output has the wrong modality (text or nothing where
   an image was asked; an image, or nothing, where text was asked), the wrong format (no
   parsable box for a ``box`` task; more than ``max_words`` words for a ``short`` task), or
   degenerates (a word repeated more than twice, or a sequence of two or more words repeated
   back to back: "red circle red circle");
2. ``hallucination`` when it has the right modality and format but names something of the
   task's known vocabulary (an object class, a colour...) that the synthetic ground truth says
   is absent from the image (for an image output: something the judge finds in the generated
   image that the prompt / target does not have, when :attr:`Output.image_content` is given;
   :func:`judged_content` asks the image judge);
3. ``other`` otherwise.

Whether an answer is correct comes from the task's scorer (``correct=``); the classifier
never re-scores. :func:`stage_error_rates` / :func:`error_rates_by_stage` turn the classes
into per-stage rates, :func:`average_error_rates` into the run's Avg.HAL / Avg.IUF / Avg.OTH.

Words (:func:`words`): lower-cased runs of letters and digits, numbers keeping their inner
``.``/``,``, after removing special tokens written ``<...>`` without spaces
(:func:`strip_special_tokens`).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

from mmcl.data.sample import Sample
from mmcl.models.image_judge import default_judge_dir, load_judge
from mmcl.synth.boxes import parse_boxes

# ---------------------------------------------------------------------------
# Words and the repetition rule
# ---------------------------------------------------------------------------

MAX_WORD_REPEATS = 2
"""A word may occur at most this many times; more makes the answer wrong (``has_word_repeat``)."""

_SPECIAL_TOKEN_RE = re.compile(r"<[^<>\s]*>")
# A word: a number with its inner separators ("0.5", "1,000") or a run of letters/digits.
_WORD_RE = re.compile(r"\d+(?:[.,]\d+)*|[^\W_]+")
_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")


def strip_special_tokens(text: str) -> str:
    """Remove special tokens written as ``<...>`` (``<img>``, ``</s>``, ``<box>``...), as the paper's code does."""
    return _SPECIAL_TOKEN_RE.sub("", text)


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


# ---------------------------------------------------------------------------
# The image judge: what a generated image shows
# ---------------------------------------------------------------------------

JUDGE_ENV = "MMCL_IMAGE_JUDGE"
JUDGE_CATEGORIES = {"shape": "shapes", "colour": "colours", "background": "backgrounds"}
"""Judge attribute -> the ``meta["present"]`` category it fills (for hallucination in image answers)."""


@lru_cache(maxsize=4)
def _load(path: str) -> Any:
    if not (Path(path) / "judge.json").is_file():
        raise FileNotFoundError(
            f"no image judge at {path} (judge.json missing); train one with mmcl.pretrain.judge.train_judge "
            f"or set ${JUDGE_ENV} to its directory"
        )
    return load_judge(path)


def get_judge() -> Any:
    """The image judge (cached): ``$MMCL_IMAGE_JUDGE`` or the shipped one (:mod:`mmcl.models.image_judge`)."""
    # torch and transformers: imported only once an image is judged
    return _load(str(os.environ.get(JUDGE_ENV) or default_judge_dir()))


def judged_content(image: Any) -> dict[str, list[str]]:
    """What the judge sees in ``image``, as ``{category: [name]}`` in ``meta["present"]`` categories."""
    got = get_judge()([image])[0]
    return {cat: [got[attr]] for attr, cat in JUDGE_CATEGORIES.items() if attr in got}
