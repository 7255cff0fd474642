"""Generic visual instruction data for the generalist tiny LLaVA (``mmcl pretrain --recipe generalist``).

What a real MLLM saw before any continual stream: clear, canonical pictures of everyday
objects, asked every question form the built-in streams ask. Here:

- objects: the 16 categories of ``msvqa-synth`` (airplane ... cup) and five generic shapes
  (circle, square, triangle, diamond, ring), drawn with the shared glyphs and markings of
  :mod:`mmcl.synth.draw` / :mod:`mmcl.benchmarks.msvqa.synth`, **large** (a single
  object's long side is 7-11 of 16 box units, against 2-7 in the streams), upright (never the
  nadir view's rotation), on a **plain** background (:class:`~mmcl.benchmarks.msvqa.synth.SceneRenderer`
  in its canonical mode: no field, water, street or room, no tint, no blur);
- questions: the streams' own templates and answer forms: counts ("How many <plural> are in the
  image?" -> "1".."6"), category names ("What kind of object is in the image?"), colours ("What
  colour is the <category>?"), yes/no ("Is there a <category> in the image?", negatives are
  another category or an empty picture) and boxes ("Where is the <category>? Answer with a box."
  -> ``[x1, y1, x2, y2]`` on the same 1/16 grid);
- every scene shows one category, like the streams' scenes, so an answer is carried by every
  object in the picture.

The streams then ask the same questions about visually shifted scenarios (small dense objects
seen from above, tinted and blurred water, an oblique street, a room), so that a stream is a
shift of something the base can already do. Nothing here draws a scenario background, and
``tests/test_instruct_data.py`` checks that no generated image equals a stream's test image.

Each sample is drawn from its own generator seeded by (seed, question type, split, index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmcl.benchmarks.msvqa.synth import (
    QTYPES,
    SCENARIO_SPECS,
    UNITS,
    SceneObject,
    SceneRenderer,
    question_text,
)
from mmcl.data.sample import Sample
from mmcl.synth.boxes import format_box
from mmcl.synth.draw import COLOUR_NAMES, Colour

INSTRUCT_TASK = "generalist"
GENERIC_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "ring")

CATEGORY_SETS: dict[str, tuple[str, ...]] = {
    **{name: tuple(spec.categories) for name, spec in SCENARIO_SPECS.items()},
    "shapes": GENERIC_SHAPES,
}
"""Groups of categories that share a picture type (a "no" of an existence question shows another
category of the same group). The group names are labels only: no scenario is ever rendered."""

PLAIN_BACKGROUNDS: tuple[Colour, ...] = (
    (255, 255, 255), (0, 0, 0), (128, 128, 128), (232, 224, 204), (36, 40, 60), (200, 214, 228), (214, 232, 210),
)
"""Plain, evenly lit backgrounds (the caption pre-training's five plus a pale blue and a pale green)."""

_SPLIT_CODE = {"train": 1, "test": 2}
_TAG = 23  # keeps these generators apart from every other seeded stream


def _aspect(category: str) -> tuple[int, int]:
    """The category's (width, height) proportions: its largest size in the streams; 1:1 for shapes."""
    for spec in SCENARIO_SPECS.values():
        if category in spec.categories:
            w, h = max(spec.categories[category].sizes, key=lambda s: s[0] * s[1])
            return w, h
    return (1, 1)


def _flips(category: str) -> bool:
    for spec in SCENARIO_SPECS.values():
        if category in spec.categories:
            return spec.categories[category].flip
    return False


def _long_side(n: int) -> tuple[int, int]:
    """Range (inclusive) of an object's long side in units, by the number of objects shown."""
    return {1: (7, 11), 2: (5, 8), 3: (4, 6), 4: (4, 6)}.get(n, (3, 5))


def _place(rng: np.random.Generator, wanted: list[tuple[str, str]], grounding: bool = False) -> tuple[SceneObject, ...] | None:
    """Place (category, colour) objects anywhere on the unit grid, one unit apart; None if they do not fit."""
    placed: list[SceneObject] = []
    n = len(wanted)
    lo, hi = (4, 11) if grounding else _long_side(n)
    for cat, colour in wanted:
        aw, ah = _aspect(cat)
        for _ in range(80):
            long = int(rng.integers(lo, hi + 1))
            scale = long / max(aw, ah)
            w, h = max(2, round(aw * scale)), max(2, round(ah * scale))
            x, y = int(rng.integers(0, UNITS - w + 1)), int(rng.integers(0, UNITS - h + 1))
            box = (x, y, x + w, y + h)
            if any(not (box[2] + 1 <= o.box[0] or o.box[2] + 1 <= box[0] or box[3] + 1 <= o.box[1]
                        or o.box[3] + 1 <= box[1]) for o in placed):
                continue
            flip = bool(_flips(cat) and rng.integers(2))
            placed.append(SceneObject(cat, colour, box, False, flip))
            break
        else:
            return None
    return tuple(sorted(placed, key=lambda o: (o.box[1], o.box[0])))


@dataclass(frozen=True)
class InstructScene:
    question: str
    answer: str
    group: str
    category: str | None
    objects: tuple[SceneObject, ...]
    background: Colour


def instruct_scene(rng: np.random.Generator, qtype: str) -> InstructScene:
    """One canonical scene and its question of type ``qtype`` (one of msvqa-synth's five)."""
    groups = list(CATEGORY_SETS)
    for _ in range(100):
        group = groups[int(rng.integers(len(groups)))]
        cats = CATEGORY_SETS[group]
        category = cats[int(rng.integers(len(cats)))]
        shown, colour = category, None
        if qtype == "counting":
            n = int(rng.integers(1, 7))
            answer = str(n)
        elif qtype == "category":
            n = int(rng.integers(1, 4))
            answer = category
        elif qtype == "attribute":
            n = int(rng.integers(1, 4))
            colour = answer = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        elif qtype == "existence":
            n = int(rng.integers(1, 4))
            exists = bool(rng.integers(2))
            if not exists:
                shown = [c for c in cats if c != category][int(rng.integers(len(cats) - 1))]
                n = 0 if rng.integers(2) else n
            answer = "yes" if exists else "no"
        elif qtype == "grounding":
            n, answer = 1, ""
        else:
            raise ValueError(f"unknown question type {qtype!r}; types: {QTYPES}")
        question = question_text(qtype, category, n)  # the streams' own templates
        wanted = [(shown, colour or COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]) for _ in range(n)]
        objects = _place(rng, wanted, grounding=qtype == "grounding")
        if objects is None:
            continue
        if qtype == "grounding":
            answer = format_box(objects[0].norm_box)
        background = PLAIN_BACKGROUNDS[int(rng.integers(len(PLAIN_BACKGROUNDS)))]
        return InstructScene(question, answer, group, category, objects, background)
    raise RuntimeError(f"could not place a canonical {qtype} scene")  # pragma: no cover


def instruct_samples(n: int, seed: int, split: str = "train", image_size: int = 64,
                     qtypes: tuple[str, ...] = QTYPES) -> list[Sample]:
    """``n`` instruction samples, the question types in turn; sample ``i`` depends only on (seed, split, i)."""
    out = []
    for i in range(n):
        qtype = qtypes[i % len(qtypes)]
        rng = np.random.default_rng([seed % 2**64, _TAG, _SPLIT_CODE[split], i])
        sc = instruct_scene(rng, qtype)
        out.append(
            Sample(
                id=f"{INSTRUCT_TASK}.{qtype}-{split}-{seed}-{i:05d}",
                question=sc.question,
                answers=[sc.answer],
                image=SceneRenderer(sc.group, image_size, sc.objects, int(rng.integers(2**63)), background=sc.background),
                task=f"{INSTRUCT_TASK}.{qtype}",
                meta={
                    "qtype": qtype,
                    "group": sc.group,
                    "category": sc.category,
                    "background": list(sc.background),
                    "boxes": [o.norm_box for o in sc.objects],
                    # the vision warm-up's per-patch labels (see mmcl.pretrain.llava._patch_labels)
                    "objects": [{"shape": o.category, "colour": o.colour, "mark": None, "box": o.norm_box}
                                for o in sc.objects],
                },
            )
        )
    return out


ALL_CATEGORIES: tuple[str, ...] = tuple(c for cats in CATEGORY_SETS.values() for c in cats)
