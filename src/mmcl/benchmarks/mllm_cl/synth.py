"""``mllm-dcl-synth`` and ``mllm-acl-synth``: procedurally drawn stand-ins for MLLM-CL (Zhao et al. 2025).

MLLM-CL has two streams: *domain* continual learning (RS -> Med -> AD -> Sci -> Fin, test drawn
from the same distribution as train) and *ability* continual learning (OCR -> Math -> VP -> GUI,
non-IID: the test split of each ability comes from other sources than its train split). These
streams mimic that structure with 64 x 64 drawings a tiny model can learn on a CPU; they mimic
the domains and abilities, not the pixels.

Every answer is a word the embedded tiny base already writes (digits, yes/no, colour, shape and
place names, box strings), and every answer is carried by a large part of the image (the tiny
model learns to read what covers many 8 px patches, not a few-pixel detail: docs/learnability.md).
Each task mixes two question types; the k-th sample of a type takes its answer from a shuffled
cycle over the type's answers, so answers are balanced in every split.

Domain stream (``mllm-dcl-synth``), test IID:

- ``RS`` remote sensing, aerial fields. ``presence``: "Are there storage tanks in the image?" ->
  yes/no (2-4 white discs of 14-16 px, or none); ``water``: "Which side of the image is the water
  on?" -> left/right/top/bottom (water covers about that half). Counting 1-3 tanks was tried
  first and stayed at chance (0.25) after joint training on the quick config.
- ``Med`` pathology, cells on a pink stain. ``abnormal``: "Is the tissue abnormal?" -> yes/no
  (abnormal: fewer, larger, darker cells with large black nuclei); ``cells``: "What kind of cells
  are in the image?" -> circle (round), ring (signet-ring: hollow with a nucleus at the side) or
  diamond (spindle); each kind takes up the stain in its own tone.
- ``AD`` driving, a 2 x 3 mosaic of camera views. ``camera``: "Which camera shows the car?" ->
  1-6 (row-major); ``light``: "What colour is the traffic light?" -> red/yellow/green (a large
  light in camera 2, the front view).
- ``Sci`` diagrams and maps. ``map``: "Which region of the map is the largest? Answer with its
  colour." -> red/green/blue/yellow (three regions, the largest over half the map); ``cycle``:
  "What follows the circle in the cycle?" -> square/triangle/diamond (three shapes clockwise on
  a triangle of arrows, the circle at the top; each shape always has its own colour, as in a
  legend). With the circle at any of the three places the tiny model stayed at chance (0.30).
- ``Fin`` candlestick charts of six days. ``trend``: "Is the trend going up?" -> yes/no; ``highest``:
  "Which day was highest?" -> 1-6 (one day's high is far above all others).

Ability stream (``mllm-acl-synth``), test NON-IID (``shifted_test: false`` makes it IID). The
shift per task (train -> test), recorded in every sample's ``meta["style"]``:

- ``OCR``: ``digit``: "What number is written in the image?" -> 1-4 (a bold digit ~40 px tall);
  ``word``: "What word is written in the image?" -> no/red/blue/purple (written in dark ink;
  2-6 letters, so the word's length is a cue too). Shift: ink black/navy -> dark red/dark green,
  paper white/cream -> light grey/pale blue, font 0.9x (60/18 px -> 54/16 px).
- ``Math``: ``line``: "Is the line going up?" -> yes/no (a five-point plot); ``sum``: "What is
  the sum of the two bars?" -> 2-4 (bars of 1-2 ticks of 12 px; 1-3 ticks of 8 px, answers 2-6,
  gave 0.40). Shift: line blue 3 px on white -> red 2 px on a light grey grid; bars blue/green on
  white -> purple/orange on a grid, at other x positions. (Narrower test bars, 9-10 px instead
  of 12-15, were tried first: the sum fell to 0.50 under joint training, since the model reads
  the bars' total area.)
- ``VP``: ``count``: "How many circles are in the image?" -> 1-4 (circles of 16-18 px);
  ``relation``: "Is the square left of the circle?" -> yes/no (a black square and a coloured
  circle in opposite halves). Shift: circles red/blue/green on white -> orange/purple/yellow on
  slate blue-grey. (Smaller test circles and a dark background were tried first: count 0.55; a
  square of a palette colour left the relation at chance even in training.)
- ``GUI``: ``which``: "Which button is red? Answer 1 for the top one." -> 1-4 (four stacked
  buttons, one red); ``box``: "Where is the <colour> button? Answer with a box." -> the box of
  the only coloured button (blue/green/purple), e.g. ``[0.12, 0.31, 0.88, 0.50]``. Shift: square
  buttons with labels on the left -> rounded buttons with labels on the right, on the same light
  page. (Tried first: a dark theme gave 0.80-0.85 under joint training but 0.55 at its own stage
  under sequential LoRA; a blue-tinted page, and rounded buttons without their outline, gave 1.00
  under sequential LoRA but 0.30-0.35 under joint training, which reads the same buttons at 1.00
  on an IID test.) The button slots do not move, so box answers keep their strings; GUI is
  scored by exact match (a box scores only when exactly right, which implies ``box_f1`` = 1),
  since one task mixes box and word answers.

Data: each sample is drawn from its own generator seeded by (seed, task name, split, index), so a
task's data depends only on the seed, its name and the benchmark, never on the order or subset of
tasks. Test scenes are drawn first; a training scene equal to a test scene is redrawn. Images are
rendered on demand by :class:`SynthImage`, a small picklable callable.

Measured with the shipped tiny base (seed 0, 2 CPU cores, ``OMP_NUM_THREADS=1``; primary score,
exact match), ``mmcl run configs/mllm-{dcl,acl}-quick.yaml --set method.name={joint,lora-ft}``:

- domain, ``configs/mllm-dcl-quick.yaml`` (300 train / 40 test per task, 4 epochs = 76 steps per
  task; ~2.5 min a run): zero-shot 0.00 on every task; joint 1.00 / 0.88 / 1.00 / 1.00 / 0.97
  (mean 0.97); lora-ft diagonal 1.00 / 0.88 / 0.95 / 1.00 / 0.85, last row 0.00 / 0.00 / 0.07 /
  0.00 / 0.85: MFT 0.94, last 0.19, BWT -0.94.
- ability, ``configs/mllm-acl-quick.yaml`` (same sizes; ~2 min a run): zero-shot 0.05 / 0.00 /
  0.00 / 0.00; joint (shifted test) 0.60 / 0.95 / 0.80 / 1.00 (mean 0.84; with ``benchmark.shifted_test=false``,
  i.e. an IID test, 0.78 / 0.95 / 0.80 / 1.00); lora-ft diagonal 0.42 / 0.97 / 0.88
  / 1.00, last row 0.03 / 0.03 / 0.10 / 1.00: MFT 0.82, last 0.29, BWT -0.71.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mmcl.benchmarks import BENCHMARKS
from mmcl.benchmarks.mllm_cl.draw import BAR_UNIT, CYCLE_SLOTS, DRAWERS
from mmcl.benchmarks.stream import apply_stream_options, parse_options
from mmcl.config import BenchmarkConfig
from mmcl.data.sample import Benchmark, Sample, Task
from mmcl.synth.boxes import format_box

DCL_NAME = "mllm-dcl-synth"
ACL_NAME = "mllm-acl-synth"
SHORT_SCORERS = ["exact_match", "contains"]
SHORT_MAX_NEW_TOKENS = 4
BOX_MAX_NEW_TOKENS = 24
UNITS = 16  # box coordinates are multiples of 1/UNITS

Scene = tuple[str, str, dict[str, Any], dict[str, Any]]  # question, drawer kind, drawer params, style
Maker = Callable[[np.random.Generator, str, bool], Scene]


@dataclass(frozen=True)
class QType:
    """One question type: its answers and a function drawing a scene for a given answer."""

    name: str
    answers: tuple[str, ...]
    make: Maker  # (rng, answer, shifted) -> scene
    box: bool = False  # answers are box strings (``answers`` then lists them all)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    domain: str
    description: str
    qtypes: tuple[QType, ...]
    shift: str = ""  # what differs in the shifted test split ("" = IID)


# ---------------------------------------------------------------- helpers


def _pick(rng: np.random.Generator, items: tuple[Any, ...] | list[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _freeze(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v


def _spread(rng: np.random.Generator, n: int, radius: float, lo: float, hi: float, gap: float) -> list[tuple]:
    """``n`` centres in [lo, hi]^2 keeping ``2 * radius + gap`` apart (rejection sampling)."""
    for _ in range(200):
        pts: list[tuple[float, float]] = []
        for _ in range(400):
            if len(pts) == n:
                break
            x, y = (round(float(v), 1) for v in rng.uniform(lo, hi, 2))
            if all((x - a) ** 2 + (y - b) ** 2 >= (2 * radius + gap) ** 2 for a, b in pts):
                pts.append((x, y))
        if len(pts) == n:
            return pts
    raise RuntimeError(f"cannot place {n} objects of radius {radius}")  # pragma: no cover


# ---------------------------------------------------------------- DCL scenes


def _fields(rng: np.random.Generator) -> dict[str, Any]:
    """The field layout under an aerial scene: ground colour, three patches, one road."""
    patches = []
    for _ in range(3):
        x, y = (int(v) for v in rng.integers(0, 48, 2))
        w, h = (int(v) for v in rng.integers(12, 28, 2))
        patches.append((x, y, w, h, int(rng.integers(4))))
    return {
        "ground": int(rng.integers(4)),
        "patches": patches,
        "road": (int(rng.integers(2)), int(rng.integers(8, 56))),
    }


def _rs_presence(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    n = int(rng.integers(2, 5)) if answer == "yes" else 0
    r = _pick(rng, (7, 8))
    tanks = [(x, y, r) for x, y in _spread(rng, n, r, r + 2, 62 - r, 4)] if n else []
    return "Are there storage tanks in the image?", "rs", {"tanks": tanks, **_fields(rng)}, {}


def _rs_water(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    extent = int(rng.integers(26, 33))
    land = {"left": (extent, 0, 64, 64), "right": (0, 0, 64 - extent, 64), "top": (0, extent, 64, 64),
            "bottom": (0, 0, 64, 64 - extent)}[answer]  # fmt: skip
    x0, y0, x1, y1 = land
    tanks = [(round(float(rng.uniform(x0 + 6, x1 - 6)), 1), round(float(rng.uniform(y0 + 6, y1 - 6)), 1), 5)
             for _ in range(int(rng.integers(0, 2)))]  # fmt: skip
    params = {"water": answer, "extent": extent, "tanks": tanks, **_fields(rng)}
    return "Which side of the image is the water on?", "rs", params, {}


def _med(abnormal: bool, shape: str, rng: np.random.Generator) -> dict[str, Any]:
    if abnormal:
        n, r = int(rng.integers(4, 7)), 8
    else:
        n, r = int(rng.integers(7, 11)), 5
    cells = [(x, y, r) for x, y in _spread(rng, n, r, r + 1, 63 - r, 2)]
    return {"abnormal": abnormal, "shape": shape, "cells": cells}


def _med_abnormal(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    params = _med(answer == "yes", _pick(rng, ("circle", "ring", "diamond")), rng)
    return "Is the tissue abnormal?", "med", params, {}


def _med_cells(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    params = _med(bool(rng.integers(2)), answer, rng)
    return "What kind of cells are in the image?", "med", params, {}


def _car_shift(rng: np.random.Generator) -> tuple[int, int]:
    return (int(rng.integers(-2, 3)), int(rng.integers(-2, 2)))


def _skies(rng: np.random.Generator) -> list[int]:
    return [int(v) for v in rng.integers(150, 200, 6)]


def _ad_camera(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    params = {"car": int(answer), "car_colour": _pick(rng, ("blue", "purple")), "car_shift": _car_shift(rng),
              "skies": _skies(rng)}  # fmt: skip
    return "Which camera shows the car?", "ad", params, {}


def _ad_light(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    params: dict[str, Any] = {"light": answer, "light_shift": int(rng.integers(-3, 4)), "skies": _skies(rng)}
    if rng.integers(2):
        params.update(
            car=_pick(rng, (1, 3, 4, 5, 6)),
            car_colour=_pick(rng, ("blue", "purple")),
            car_shift=_car_shift(rng),
        )
    return "What colour is the traffic light?", "ad", params, {}


MAP_COLOURS = ("red", "green", "blue", "yellow")


def _sci_map(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    a = int(rng.integers(36, 46))  # the big region's width (of 64)
    b = int(rng.integers(20, 44))  # where the rest is cut
    big, r1, r2 = (0, 0, a, 64), (a, 0, 64, b), (a, b, 64, 64)
    boxes = [big, r1, r2]
    if rng.integers(2):  # mirror left-right
        boxes = [(64 - x1, y0, 64 - x0, y1) for x0, y0, x1, y1 in boxes]
    if rng.integers(2):  # transpose: big region on top or bottom
        boxes = [(y0, x0, y1, x1) for x0, y0, x1, y1 in boxes]
    others = [c for c in MAP_COLOURS if c != answer]
    rng.shuffle(others)
    regions = list(zip([answer, *others[:2]], boxes, strict=True))
    return "Which region of the map is the largest? Answer with its colour.", "map", {"regions": regions}, {}


CYCLE_SHAPES = ("square", "triangle", "diamond")


def _sci_cycle(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    n = len(CYCLE_SLOTS)
    shapes = [
        "circle",
        answer,
        _pick(rng, [s for s in CYCLE_SHAPES if s != answer]),
    ]  # the circle starts, at the top
    jitter = [(int(v), int(w)) for v, w in rng.integers(-3, 4, (n, 2))]
    return "What follows the circle in the cycle?", "cycle", {"shapes": shapes, "jitter": jitter}, {}


def _candle(rng: np.random.Generator, o: float, c: float) -> tuple[int, int, int, int]:
    lo = max(o, c) + float(rng.uniform(2, 5))
    hi = min(o, c) - float(rng.uniform(2, 5))
    return (round(o), round(c), round(min(lo, 62)), round(max(hi, 2)))


def _fin_trend(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    up = answer == "yes"
    start, end = (50.0, 14.0) if up else (14.0, 50.0)
    start += float(rng.uniform(-3, 3))
    end += float(rng.uniform(-3, 3))
    levels = [start + (end - start) * i / 6 + float(rng.uniform(-3, 3)) for i in range(7)]
    candles = [_candle(rng, levels[i], levels[i + 1]) for i in range(6)]
    return "Is the trend going up?", "candles", {"candles": candles}, {}


def _fin_highest(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    k = int(answer) - 1
    candles = []
    for i in range(6):
        if i == k:
            o = float(rng.uniform(30, 36))
            c = float(rng.uniform(10, 14))
            if rng.integers(2):
                o, c = c, o
        else:
            o, c = (float(v) for v in rng.uniform(34, 54, 2))
        candles.append(_candle(rng, o, c))
    return "Which day was highest?", "candles", {"candles": candles}, {}


# ---------------------------------------------------------------- ACL scenes

OCR_WORDS = ("no", "red", "blue", "purple")  # 2 to 6 letters: the word length is a cue too
INKS = {"black": (20, 20, 20), "navy": (20, 30, 110), "dark red": (140, 20, 20), "dark green": (20, 100, 40)}
PAPERS = {
    "white": (250, 250, 250),
    "cream": (245, 238, 215),
    "light grey": (205, 205, 205),
    "pale blue": (205, 225, 245),
}


def _ocr(
    rng: np.random.Generator, text: str, font: int, shifted: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    ink = _pick(rng, ("dark red", "dark green") if shifted else ("black", "navy"))
    paper = _pick(rng, ("light grey", "pale blue") if shifted else ("white", "cream"))
    jitter = 4
    font = round(font * 0.9) if shifted else font
    at = tuple(round(32 + float(v)) for v in rng.uniform(-jitter, jitter, 2))
    stroke = 3 if len(text) == 1 else 1  # bold strokes: more ink per 8 px patch
    params = {
        "text": text,
        "ink": INKS[ink],
        "paper": PAPERS[paper],
        "font": font,
        "at": at,
        "stroke": stroke,
    }
    return params, {"ink": ink, "paper": paper, "font": font, "jitter": jitter}


def _ocr_digit(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    params, style = _ocr(rng, answer, 60, shifted)
    return "What number is written in the image?", "text", params, style


def _ocr_word(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    params, style = _ocr(rng, answer, 18, shifted)
    return "What word is written in the image?", "text", params, style


def _math_line(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    up = answer == "yes"
    start, end = (50.0, 12.0) if up else (12.0, 50.0)
    xs = (10, 22, 34, 46, 58)
    pts = [(x, round(start + (end - start) * i / 4 + float(rng.uniform(-4, 4)))) for i, x in enumerate(xs)]
    if shifted:
        style = {"ink": "red", "width": 2, "paper": "light grey", "grid": True}
    else:
        style = {"ink": "blue", "width": 3, "paper": "white", "grid": False}
    params = {"points": pts, "ink": style["ink"], "width": style["width"], "paper": PAPERS[style["paper"]],
              "grid": style["grid"]}  # fmt: skip
    return "Is the line going up?", "line", params, style


def _math_sum(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    total = int(answer)
    pairs = [(a, total - a) for a in range(1, 3) if 1 <= total - a <= 2]
    heights = _pick(rng, pairs)
    if shifted:
        slots, inks, paper, grid = ((20, 10), (44, 10)), ("purple", "orange"), "light grey", True
    else:
        slots, inks, paper, grid = ((14, 14), (38, 14)), ("blue", "green"), "white", False
    widths = (12, 16)
    slots = tuple((x + int(rng.integers(-3, 4)), int(rng.integers(*widths))) for x, _ in slots)
    if rng.integers(2):
        inks = inks[::-1]
    params = {"heights": heights, "slots": slots, "inks": inks, "paper": PAPERS[paper], "grid": grid}
    style = {
        "bar_width": [widths[0], widths[1] - 1],
        "inks": sorted(inks),
        "paper": paper,
        "grid": grid,
        "unit": BAR_UNIT,
    }
    return "What is the sum of the two bars?", "bars", params, style


def _vp_style(shifted: bool) -> tuple[tuple[str, ...], str, tuple[int, int]]:
    if shifted:
        return ("orange", "purple", "yellow"), "slate", (16, 18)
    return ("red", "blue", "green"), "white", (16, 18)


VP_PAPERS = {"white": (250, 250, 250), "slate": (150, 160, 185)}
ANCHOR = (20, 20, 24)  # the square of a relation question: black in both splits


def _vp_count(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    colours, paper, (lo, hi) = _vp_style(shifted)
    d = int(rng.integers(lo, hi + 1))
    r = d / 2
    objects = [("circle", _pick(rng, colours), (round(x - r), round(y - r), round(x - r) + d, round(y - r) + d))
               for x, y in _spread(rng, int(answer), r, r + 1, 63 - r, 3)]  # fmt: skip
    style = {"colours": list(colours), "paper": paper, "size": [lo, hi]}
    return (
        "How many circles are in the image?",
        "shapes",
        {"objects": objects, "paper": VP_PAPERS[paper]},
        style,
    )


def _vp_relation(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    colours, paper, (lo, hi) = _vp_style(shifted)
    d = int(rng.integers(lo, hi + 1))
    left_x = int(rng.integers(2, 30 - d))
    right_x = int(rng.integers(34, 63 - d))
    ys = [int(v) for v in rng.integers(2, 63 - d, 2)]
    sq_x, ci_x = (left_x, right_x) if answer == "yes" else (right_x, left_x)
    c2 = _pick(rng, colours)
    objects = [
        ("square", ANCHOR, (sq_x, ys[0], sq_x + d, ys[0] + d)),
        ("circle", c2, (ci_x, ys[1], ci_x + d, ys[1] + d)),
    ]
    style = {"colours": list(colours), "paper": paper, "size": [lo, hi]}
    return (
        "Is the square left of the circle?",
        "shapes",
        {"objects": objects, "paper": VP_PAPERS[paper]},
        style,
    )


GUI_SLOTS = 4
GUI_X = (2, 14)  # button x range in units


def gui_slot_box(k: int) -> tuple[int, int, int, int]:
    """Button slot ``k`` (0 = top) in units: x 2..14, y 4k+1..4k+4."""
    return (GUI_X[0], 4 * k + 1, GUI_X[1], 4 * k + 4)


GUI_BOXES = tuple(format_box([v / UNITS for v in gui_slot_box(k)]) for k in range(GUI_SLOTS))


def _gui(
    rng: np.random.Generator, target: int, fill: str, shifted: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    grey = (205, 205, 210)
    buttons = []
    for k in range(GUI_SLOTS):
        box = tuple(v * 4 for v in gui_slot_box(k))
        buttons.append((fill if k == target else grey, box))
    theme = "light"
    labels = [int(v) for v in rng.integers(6, 24, GUI_SLOTS)]
    params = {
        "buttons": buttons,
        "theme": theme,
        "rounded": shifted,
        "labels": labels,
        "labels_right": shifted,
    }
    return params, {"theme": theme, "rounded": shifted, "labels_right": shifted}


def _gui_which(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    params, style = _gui(rng, int(answer) - 1, "red", shifted)
    return "Which button is red? Answer 1 for the top one.", "gui", params, style


def _gui_box(rng: np.random.Generator, answer: str, shifted: bool) -> Scene:
    fill = _pick(rng, ("blue", "green", "purple"))
    params, style = _gui(rng, GUI_BOXES.index(answer), fill, shifted)
    return f"Where is the {fill} button? Answer with a box.", "gui", params, style


# ---------------------------------------------------------------- the streams

DIGITS = tuple(str(i) for i in range(1, 7))
YES_NO = ("yes", "no")

DCL_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(
        "RS",
        "remote sensing",
        "Remote sensing: aerial fields, storage tanks, water.",
        (
            QType("presence", YES_NO, _rs_presence),
            QType("water", ("left", "right", "top", "bottom"), _rs_water),
        ),
    ),
    TaskSpec(
        "Med",
        "medical pathology",
        "Medical: stained tissue cells, abnormal or not.",
        (QType("abnormal", YES_NO, _med_abnormal), QType("cells", ("circle", "ring", "diamond"), _med_cells)),
    ),
    TaskSpec(
        "AD",
        "autonomous driving",
        "Driving: six camera views, cars, traffic lights.",
        (QType("camera", DIGITS, _ad_camera), QType("light", ("red", "yellow", "green"), _ad_light)),
    ),
    TaskSpec(
        "Sci",
        "science diagrams",
        "Science: maps and cycle diagrams.",
        (QType("map", MAP_COLOURS, _sci_map), QType("cycle", CYCLE_SHAPES, _sci_cycle)),
    ),
    TaskSpec(
        "Fin",
        "finance",
        "Finance: candlestick charts, trends, highest day.",
        (QType("trend", YES_NO, _fin_trend), QType("highest", DIGITS, _fin_highest)),
    ),
)

ACL_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(
        "OCR",
        "text recognition",
        "OCR: read written numbers and words.",
        (QType("digit", ("1", "2", "3", "4"), _ocr_digit), QType("word", OCR_WORDS, _ocr_word)),
        shift="ink black/navy -> dark red/green, paper white/cream -> grey/pale blue, font 0.9x",
    ),
    TaskSpec(
        "Math",
        "math reasoning",
        "Math: function plots and bar sums.",
        (QType("line", YES_NO, _math_line), QType("sum", ("2", "3", "4"), _math_sum)),
        shift="line blue 3 px on white -> red 2 px on a grey grid; bars blue/green -> purple/orange on a grid, moved",
    ),
    TaskSpec(
        "VP",
        "vision-centric perception",
        "Perception: count circles, spatial relations.",
        (QType("count", ("1", "2", "3", "4"), _vp_count), QType("relation", YES_NO, _vp_relation)),
        shift="circles red/blue/green on white -> orange/purple/yellow on slate blue-grey",
    ),
    TaskSpec(
        "GUI",
        "GUI agent",
        "GUI: app screens, buttons and their boxes.",
        (QType("which", ("1", "2", "3", "4"), _gui_which), QType("box", GUI_BOXES, _gui_box, box=True)),
        shift="square buttons, labels on the left -> rounded buttons, labels on the right (same page, same slots)",
    ),
)

STREAMS: dict[str, tuple[TaskSpec, ...]] = {DCL_NAME: DCL_TASKS, ACL_NAME: ACL_TASKS}


# ---------------------------------------------------------------- samples


@dataclass(frozen=True)
class SynthImage:
    """Zero-argument callable drawing one scene; deterministic, cheap to keep, picklable."""

    kind: str
    params: tuple[tuple[str, Any], ...]
    image_size: int
    seed: int

    def __call__(self) -> Image.Image:
        return DRAWERS[self.kind](np.random.default_rng(self.seed), self.image_size, dict(self.params))


def _key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


_SPLIT_CODE = {"train": 1, "test": 2}
_BLOCK_TAG = 5


def _make_split(
    bench: str, spec: TaskSpec, split: str, n: int, seed: int, image_size: int, shifted: bool,
    avoid: set[tuple[object, ...]],
) -> list[Sample]:  # fmt: skip
    base = [seed % 2**64, _key(f"{bench}/{spec.name}"), _SPLIT_CODE[split]]
    nq = len(spec.qtypes)
    out: list[Sample] = []
    for i in range(n):
        qi, k = i % nq, i // nq
        qtype = spec.qtypes[qi]
        m = len(qtype.answers)
        perm = np.random.default_rng([*base, _BLOCK_TAG, qi, k // m]).permutation(m)
        answer = qtype.answers[int(perm[k % m])]
        rng = np.random.default_rng([*base, i])
        for _ in range(1000):
            question, kind, params, style = qtype.make(rng, answer, shifted)
            frozen = _freeze(params)
            sig = (question, answer, kind, frozen)
            if sig not in avoid:
                break
        else:  # pragma: no cover - every type has far more scenes than any split
            raise RuntimeError(f"{bench} {spec.name}.{qtype.name}: cannot draw a new scene for {answer!r}")
        avoid.add(sig)
        out.append(
            Sample(
                id=f"{spec.name}-{split}-{i:05d}",
                question=question,
                answers=[answer],
                image=SynthImage(kind, frozen, image_size, int(rng.integers(2**63))),
                task=spec.name,
                scenario=spec.domain,
                meta={"qtype": qtype.name, "split": split, "shifted": shifted, "style": _json_style(style)},
            )
        )
    return out


def _json_style(style: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in style.items()}


def make_task(
    benchmark: str, name: str, seed: int = 0, train_size: int = 300, test_size: int = 40,
    image_size: int = 64, shifted_test: bool = True,
) -> Task:  # fmt: skip
    """Build one task of ``benchmark``; its data depends only on (seed, benchmark, name, sizes).

    ``shifted_test`` matters only for tasks with a declared shift (the ability stream).
    """
    specs = {s.name: s for s in STREAMS[benchmark]}
    if name not in specs:
        raise ValueError(f"unknown {benchmark} task {name!r}; tasks: {', '.join(specs)}")
    spec = specs[name]
    shifted = bool(spec.shift) and shifted_test
    seen: set[tuple[object, ...]] = set()
    test = _make_split(benchmark, spec, "test", test_size, seed, image_size, shifted, seen)
    train = _make_split(benchmark, spec, "train", train_size, seed, image_size, False, seen)
    has_box = any(q.box for q in spec.qtypes)
    return Task(
        name=name,
        train=train,
        test=test,
        scorers=list(SHORT_SCORERS),
        scenario=spec.domain,
        max_new_tokens=BOX_MAX_NEW_TOKENS if has_box else SHORT_MAX_NEW_TOKENS,
        description=spec.description,
        meta={
            "domain": spec.domain,
            "qtypes": [q.name for q in spec.qtypes],
            "answers": {q.name: list(q.answers) for q in spec.qtypes},
            "test_shift": spec.shift if shifted else "",
            "image_size": image_size,
        },
    )


# ---------------------------------------------------------------- options and factories


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(64, ge=32, description="image side in pixels; a multiple of 16")
    train_size: int = Field(300, ge=0, description="training samples per task")
    test_size: int = Field(40, ge=1, description="test samples per task")

    @field_validator("image_size")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % UNITS:
            raise ValueError(f"image_size must be a multiple of {UNITS}, got {v}")
        return v


class DCLOptions(_Options):
    """``mllm-dcl-synth`` options (extra keys of the ``benchmark`` config section)."""


class ACLOptions(_Options):
    """``mllm-acl-synth`` options; ``shifted_test: false`` draws each test split like its train split."""

    shifted_test: bool = Field(True, description="draw each test split from the shifted distribution")


def _build(name: str, opts: _Options, cfg: BenchmarkConfig, description: str) -> Benchmark:
    seed = cfg.seed if cfg.seed is not None else 0
    shifted = getattr(opts, "shifted_test", False)
    tasks = [
        make_task(name, s.name, seed, opts.train_size, opts.test_size, opts.image_size, shifted)
        for s in STREAMS[name]
    ]
    return Benchmark(name=name, tasks=apply_stream_options(tasks, cfg, seed), description=description)


@BENCHMARKS.register(DCL_NAME)
def build_dcl(cfg: BenchmarkConfig) -> Benchmark:
    """The ``mllm-dcl-synth`` stream (RS, Med, AD, Sci, Fin; IID test)."""
    opts = parse_options(DCLOptions, cfg.options(), DCL_NAME)
    return _build(
        DCL_NAME, opts, cfg, "Synthetic MLLM-CL domain continual learning (RS, Med, AD, Sci, Fin; IID test)"
    )


@BENCHMARKS.register(ACL_NAME)
def build_acl(cfg: BenchmarkConfig) -> Benchmark:
    """The ``mllm-acl-synth`` stream (OCR, Math, VP, GUI; shifted test unless ``shifted_test: false``)."""
    opts = parse_options(ACLOptions, cfg.options(), ACL_NAME)
    kind = "shifted" if opts.shifted_test else "IID"
    return _build(
        ACL_NAME, opts, cfg, f"Synthetic MLLM-CL ability continual learning (OCR, Math, VP, GUI; {kind} test)"
    )


def answer_vocabulary(benchmark: str) -> list[str]:
    """Every answer ``benchmark`` can produce."""
    return sorted({a for s in STREAMS[benchmark] for q in s.qtypes for a in q.answers})
