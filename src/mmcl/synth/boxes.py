"""Boxes, in one place: their geometry and their text, for drawing, loading and scoring.

A box is ``(x1, y1, x2, y2)``. Two forms are used: pixel boxes (integers, ``x2``/``y2``
exclusive, the box a glyph of :mod:`mmcl.synth.draw` is drawn in) and normalised boxes (pixel
box / image size, floats in [0, 1], what the synthetic benchmarks write in their answers).

Text, one name per grammar:

- writing: :func:`format_box` / :func:`format_boxes` (two decimals, the synthetic answers),
  :func:`format_boxes_as_written` (numbers as given, the real MSVQA loader's references);
- reading: :func:`parse_boxes` reads boxes in any common form from free text (what the scorers
  and the MSVQA loader use; ``docs/scorers.md``), :func:`parse_formatted_boxes` reads exactly the
  ``[x1, y1, x2, y2]`` form that :func:`format_boxes` writes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Box = tuple[float, float, float, float]
PixelBox = tuple[int, int, int, int]


# ---------------------------------------------------------------- geometry


def box_to_pixels(box: Box, size: int) -> PixelBox:
    """Normalised box -> pixel box (exclusive right/bottom) on a ``size`` x ``size`` image."""
    x1, y1, x2, y2 = (round(v * size) for v in box)
    return (x1, y1, x2, y2)


def pixels_to_box(px: PixelBox, size: int) -> Box:
    """Pixel box (exclusive right/bottom) -> normalised box."""
    return (px[0] / size, px[1] / size, px[2] / size, px[3] / size)


def boxes_overlap(a: Sequence[float], b: Sequence[float], gap: float = 0.0) -> bool:
    """True when boxes ``a`` and ``b`` come closer than ``gap`` (0: when they share any area)."""
    return not (
        a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]
    )


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes; 0.0 when the union is empty.

    A box with x2 < x1 or y2 < y1 has zero area.
    """
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    area_a = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1)
    area_b = max(0.0, bx2 - bx1) * max(0.0, by2 - by1)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


# ---------------------------------------------------------------- writing


def format_box(box: Sequence[float]) -> str:
    """``[x1, y1, x2, y2]`` with two decimals, e.g. ``[0.12, 0.50, 0.31, 0.69]``."""
    return "[" + ", ".join(f"{float(v):.2f}" for v in box) + "]"


def format_boxes(boxes: Sequence[Sequence[float]]) -> str:
    """Several boxes as :func:`format_box` writes them, joined with ``"; "``."""
    return "; ".join(format_box(b) for b in boxes)


def format_boxes_as_written(boxes: Sequence[Sequence[float]]) -> str:
    """Boxes as reference text: ``[x1, y1, x2, y2]`` joined with ``"; "``, numbers as given (``:g``)."""
    return "; ".join("[" + ", ".join(f"{v:g}" for v in b) + "]" for b in boxes)


# ---------------------------------------------------------------- reading

_FORMATTED_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_FORMATTED_BOX_RE = re.compile(r"\[" + ",".join([_FORMATTED_NUM] * 4) + r"\]")


def parse_formatted_boxes(text: str) -> list[Box]:
    """Every ``[x1, y1, x2, y2]`` found in ``text``: the inverse of :func:`format_boxes`.

    Strict: square brackets and commas only (free text is read by :func:`parse_boxes`).
    """
    return [(float(a), float(b), float(c), float(d)) for a, b, c, d in _FORMATTED_BOX_RE.findall(text)]


# A number not glued to a word or to another number ("x1" and "3rd" yield nothing
# for the "1"/"3"; in "10-20" the "-" is a separator, not a sign).
_NUM_RE = re.compile(r"(?<![\w.])-?(?:\d+(?:\.\d*)?|\.\d+)(?![\w])")
_SEP_CHARS = " \t\r\n,;[](){}"
_SEP_ONLY_RE = re.compile(r"[\s,;\[\](){}]*")
_INNER_GROUP_RE = re.compile(r"[\[({]([^\[\](){}]*)[\])}]")


def _bracket_groups(text: str) -> list[Box]:
    """Boxes from innermost bracket groups: ``[x1,y1,x2,y2]`` or two points ``(x1,y1),(x2,y2)``."""
    boxes: list[Box] = []
    pending_point: tuple[float, float] | None = None
    for group in _INNER_GROUP_RE.finditer(text):
        nums = [float(m.group()) for m in _NUM_RE.finditer(group.group(1))]
        if len(nums) == 4:
            boxes.append((nums[0], nums[1], nums[2], nums[3]))
            pending_point = None
        elif len(nums) == 2:
            if pending_point is None:
                pending_point = (nums[0], nums[1])
            else:
                boxes.append((*pending_point, nums[0], nums[1]))
                pending_point = None
        else:
            pending_point = None
    return boxes


def parse_boxes(text: str) -> list[Box]:
    """Every box ``(x1, y1, x2, y2)`` written in ``text``, in order of appearance (the scorers' reader).

    Numbers separated only by spaces, ``,``, ``;`` and brackets form a run; a
    run of 4k numbers gives k boxes, so "[1, 2, 3, 4]", "(1,2),(3,4)",
    "1 2 3 4; 5 6 7 8" and "[[1,2,3,4],[5,6,7,8]]" all parse. A run whose
    length is not a multiple of 4 (e.g. "box 1 [10, 20, 30, 40]") is read by
    its innermost brackets: a group of 4 numbers is a box, two consecutive
    groups of 2 numbers are two corners. Text such as "no box" gives ``[]``.
    Coordinates are returned as written (no rescaling between pixel and
    normalised coordinates).
    """
    boxes: list[Box] = []
    matches = list(_NUM_RE.finditer(text))
    runs: list[list[re.Match[str]]] = []
    for m in matches:
        if runs and _SEP_ONLY_RE.fullmatch(text, runs[-1][-1].end(), m.start()):
            runs[-1].append(m)
        else:
            runs.append([m])
    for run in runs:
        if len(run) % 4 == 0:
            nums = [float(m.group()) for m in run]
            boxes.extend((nums[i], nums[i + 1], nums[i + 2], nums[i + 3]) for i in range(0, len(nums), 4))
            continue
        start, end = run[0].start(), run[-1].end()
        while start > 0 and text[start - 1] in _SEP_CHARS:
            start -= 1
        while end < len(text) and text[end] in _SEP_CHARS:
            end += 1
        boxes.extend(_bracket_groups(text[start:end]))
    return boxes
