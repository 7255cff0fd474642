"""Generic visual instruction data for the generalist tiny LLaVA (``mmcl pretrain --recipe generalist``).

What a real MLLM saw before any continual stream: clear, canonical pictures of everyday
objects, asked every question and answer form the built-in streams ask (docs/generalist-base.md).

- objects: the 16 categories of ``msvqa-synth`` and five generic shapes, drawn with the streams'
  glyphs and markings (:func:`mmcl.benchmarks.msvqa.synth.draw_objects`), **large** (long side
  >= 3 of 16 box units, a single object 7-11), upright (never the nadir view's rotation);
- backgrounds (:class:`Backdrop`): one of seven plain colours, or (``textured`` share) a smooth
  gradient between two of them or soft low-frequency noise on one: never a scenario background
  (field, water, street, room), never an edge or a texture finer than a few patches;
- text (reading forms): digits and short words in the palette inks, at varied sizes and places,
  never the ``mllm-acl-synth`` OCR styles (black or navy ink on white or cream paper, and their
  shifted inks and papers).

Question types (``INSTRUCT_QTYPES``). The five of ``msvqa-synth``, with its own templates
(:func:`~mmcl.benchmarks.msvqa.synth.question_text`): ``counting`` 1-6, ``category``,
``attribute`` (colour), ``existence`` (yes/no; negatives another category or an empty picture) and
``grounding`` (a box on the 1/16 grid). Then the forms the MLLM-CL stand-ins answer in
(:mod:`mmcl.benchmarks.mllm_cl.synth`), asked about the same canonical pictures:

- ``digit`` "What number is written in the image?" -> 1-6; ``word`` "What word is written in the
  image?" -> one of ``READING_WORDS`` (the stand-in's four among them);
- ``side`` "Which side of the image is the <c> on?" -> left/right/top/bottom;
- ``relation`` "Is the <a> left of / right of / above / below the <b>?" -> yes/no;
- ``ordinal`` "Which <c> is <colour>? Answer 1 for the top one." (a column; "... the left one." for
  a row) or "Which <c> is highest? Answer 1 for the left one." -> 1-4;
- ``largest`` "Which <c> is the largest? Answer with its colour." -> colour;
- ``colour-box`` "Where is the <colour> <c>? Answer with a box." (2-3 objects) -> box;
- ``verify`` "Is the <c> <colour>?" / "Are there <plural> in the image?" -> yes/no;
- ``choice`` "What kind of object is in the image? A. x B. y C. z Answer with the letter." (or the
  colour) -> A-D;
- ``phrase`` "Describe the object in a few words." -> "a red car".

Each sample is drawn from its own generator seeded by (seed, split, index); the index fixes its
question type (``qtype_pattern``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from mmcl.benchmarks.msvqa.synth import (
    QTYPES,
    SCENARIO_SPECS,
    UNITS,
    SceneObject,
    article,
    draw_objects,
    plural,
    question_text,
)
from mmcl.data.sample import Sample
from mmcl.synth.boxes import format_box
from mmcl.synth.draw import COLOUR_NAMES, PALETTE, Colour

INSTRUCT_TASK = "generalist"
GENERIC_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "ring")

CATEGORY_SETS: dict[str, tuple[str, ...]] = {
    **{name: tuple(spec.categories) for name, spec in SCENARIO_SPECS.items()},
    "shapes": GENERIC_SHAPES,
}
"""Groups of categories that share a picture type (a "no" of an existence question shows another
category of the same group). The group names are labels only: no scenario is ever rendered."""

ALL_CATEGORIES: tuple[str, ...] = tuple(c for cats in CATEGORY_SETS.values() for c in cats)

PLAIN_BACKGROUNDS: tuple[Colour, ...] = (
    (255, 255, 255), (0, 0, 0), (128, 128, 128), (232, 224, 204), (36, 40, 60), (200, 214, 228), (214, 232, 210),
)
"""Plain, evenly lit backgrounds (the caption pre-training's five plus a pale blue and a pale green)."""

NEW_QTYPES: tuple[str, ...] = (
    "digit", "word", "side", "relation", "ordinal", "largest", "colour-box", "verify", "choice", "phrase",
)
INSTRUCT_QTYPES: tuple[str, ...] = QTYPES + NEW_QTYPES
BOX_QTYPES: tuple[str, ...] = ("grounding", "colour-box")
PHRASE_QTYPES: tuple[str, ...] = ("phrase",)
DEFAULT_WEIGHTS: dict[str, int] = {**dict.fromkeys(QTYPES, 3), **dict.fromkeys(NEW_QTYPES, 2)}
"""Samples of each type per round of ``qtype_pattern`` (msvqa-synth's five 3, the new forms 2)."""

READING_WORDS: tuple[str, ...] = (
    "no", "yes", "red", "blue", "green", "purple", "orange", "yellow", "black", "white", "pink", "cyan",
    "box", "bar", "bus", "car", "cup", "fish", "crab", "ship", "lamp", "ring", "tank", "top", "left", "right",
    "man", "low", "air", "mark",
)
"""Words of the ``word`` form: 2-6 letters, each one token of the base's tokenizer (the
``mllm-acl-synth`` OCR answers no/red/blue/purple are among them)."""
DIGITS: tuple[str, ...] = tuple(str(k) for k in range(1, 7))
SIDES: tuple[str, ...] = ("left", "right", "top", "bottom")
LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
TEXT_SHAPE = "text"  # the vision warm-up's class of text pixels
TEXTURES: tuple[str, ...] = ("plain", "gradient", "noise")

_SPLIT_CODE = {"train": 1, "test": 2}
_TAG = 23  # keeps these generators apart from every other seeded stream


# ---------------------------------------------------------------- backgrounds and text


@dataclass(frozen=True)
class Backdrop:
    """A generic background: a plain colour, a smooth gradient to ``other``, or soft noise on ``colour``.

    ``direction`` (gradient): 0 left to right, 1 top to bottom, 2 and 3 the diagonals.
    ``amplitude`` (noise): the standard deviation of a noise field of ``cells`` x ``cells`` values
    interpolated over the image (no detail finer than a few patches).
    """

    kind: str
    colour: Colour
    other: Colour | None = None
    direction: int = 0
    amplitude: float = 0.0
    cells: int = 4

    @property
    def colours(self) -> tuple[Colour, ...]:
        return (self.colour,) if self.other is None else (self.colour, self.other)

    def draw(self, size: int, rng: np.random.Generator) -> Image.Image:
        base = np.array(self.colour, float)
        if self.kind == "plain":
            return Image.new("RGB", (size, size), self.colour)
        if self.kind == "gradient":
            u = np.linspace(0.0, 1.0, size)
            t = {0: np.broadcast_to(u[None, :], (size, size)), 1: np.broadcast_to(u[:, None], (size, size)),
                 2: (u[None, :] + u[:, None]) / 2, 3: (1 - u[None, :] + u[:, None]) / 2}[self.direction]
            arr = base * (1 - t[..., None]) + np.array(self.other, float) * t[..., None]
        elif self.kind == "noise":
            field = rng.normal(0.0, self.amplitude, (self.cells, self.cells)).astype(np.float32)
            smooth = np.asarray(Image.fromarray(field, "F").resize((size, size), Image.Resampling.BILINEAR))
            arr = base + smooth[..., None]
        else:
            raise ValueError(f"unknown backdrop kind {self.kind!r}; kinds: {TEXTURES}")
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


@dataclass(frozen=True)
class TextItem:
    """Text written in a palette ``ink`` at ``font`` px (on a 64 px design grid), centred on ``at``."""

    text: str
    ink: str
    font: int
    at: tuple[int, int]
    stroke: int = 1

    def pixel_box(self, size: int) -> tuple[int, int, int, int]:
        """The drawn text's bounding box in pixels of a ``size`` image (right/bottom exclusive)."""
        k = size / 64
        x0, y0, x1, y1 = _font(max(6, round(self.font * k))).getbbox(self.text, anchor="mm", stroke_width=self.stroke)
        cx, cy = round(self.at[0] * k), round(self.at[1] * k)
        return (cx + x0, cy + y0, cx + x1, cy + y1)


@lru_cache(maxsize=64)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if features.check("freetype2"):
        return ImageFont.load_default(size=px)
    return ImageFont.load_default()  # pragma: no cover - Pillow without FreeType: small bitmap font


@dataclass(frozen=True)
class InstructRenderer:
    """Zero-argument callable drawing one instruction picture; deterministic, cheap to keep, picklable.

    The backdrop, then the objects (the streams' glyphs and markings), then the text.
    """

    image_size: int
    objects: tuple[SceneObject, ...]
    backdrop: Backdrop
    seed: int
    texts: tuple[TextItem, ...] = ()

    def background(self) -> Image.Image:
        """The backdrop alone (what every pixel outside the objects and the text shows)."""
        return self.backdrop.draw(self.image_size, np.random.default_rng(self.seed))

    def __call__(self) -> Image.Image:
        img = self.background()
        draw_objects(img, self.objects)
        if self.texts:
            d = ImageDraw.Draw(img)
            k = self.image_size / 64
            for t in self.texts:
                d.text((round(t.at[0] * k), round(t.at[1] * k)), t.text, fill=PALETTE[t.ink],
                       font=_font(max(6, round(t.font * k))), anchor="mm", stroke_width=t.stroke,
                       stroke_fill=PALETTE[t.ink])
        return img


# ---------------------------------------------------------------- scenes


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _backdrop(rng: np.random.Generator, textured: float) -> Backdrop:
    colour = _pick(rng, PLAIN_BACKGROUNDS)
    if rng.random() >= textured:
        return Backdrop("plain", colour)
    if rng.integers(2):
        other = _pick(rng, [c for c in PLAIN_BACKGROUNDS if c != colour])
        return Backdrop("gradient", colour, other, direction=int(rng.integers(4)))
    return Backdrop("noise", colour, amplitude=float(rng.uniform(8, 20)), cells=int(rng.integers(3, 7)))


def _distance(a: Colour, b: Colour) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=float)))


def _ink(rng: np.random.Generator, backdrop: Backdrop) -> str:
    """A palette ink that stands out from every colour of the backdrop (RGB distance >= 150)."""
    inks = [c for c in COLOUR_NAMES if all(_distance(PALETTE[c], b) >= 150 for b in backdrop.colours)]
    return _pick(rng, inks or list(COLOUR_NAMES))


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


def _size(category: str, long: int) -> tuple[int, int]:
    """(width, height) in units of a ``category`` object whose long side is ``long`` units."""
    aw, ah = _aspect(category)
    scale = long / max(aw, ah)
    return max(2, round(aw * scale)), max(2, round(ah * scale))


def _size_fixed(category: str, value: int, axis: int) -> tuple[int, int]:
    """(width, height) of a ``category`` object whose width (axis 0) or height (axis 1) is ``value``."""
    aw, ah = _aspect(category)
    if axis == 0:
        return value, max(2, round(ah * value / aw))
    return max(2, round(aw * value / ah)), value


def _apart(box: tuple[int, int, int, int], placed: list[SceneObject]) -> bool:
    return all(box[2] + 1 <= o.box[0] or o.box[2] + 1 <= box[0] or box[3] + 1 <= o.box[1] or o.box[3] + 1 <= box[1]
               for o in placed)


def _obj(rng: np.random.Generator, cat: str, colour: str, box: tuple[int, int, int, int]) -> SceneObject:
    return SceneObject(cat, colour, box, False, bool(_flips(cat) and rng.integers(2)))


def _long_side(n: int) -> tuple[int, int]:
    """Range (inclusive) of an object's long side in units, by the number of objects shown."""
    return {1: (7, 11), 2: (5, 8), 3: (4, 6), 4: (4, 6)}.get(n, (3, 5))


def _place(rng: np.random.Generator, wanted: list[tuple[str, str]], long: tuple[int, int] | None = None,
           ) -> tuple[SceneObject, ...] | None:
    """Place (category, colour) objects anywhere on the unit grid, one unit apart; None if they do not fit.

    ``long``: the long side's range in units (default by the number of objects); sorted top to bottom.
    """
    placed: list[SceneObject] = []
    lo, hi = long or _long_side(len(wanted))
    for cat, colour in wanted:
        for _ in range(80):
            w, h = _size(cat, int(rng.integers(lo, hi + 1)))
            x, y = int(rng.integers(0, UNITS - w + 1)), int(rng.integers(0, UNITS - h + 1))
            box = (x, y, x + w, y + h)
            if _apart(box, placed):
                placed.append(_obj(rng, cat, colour, box))
                break
        else:
            return None
    return tuple(sorted(placed, key=lambda o: (o.box[1], o.box[0])))


def _others(rng: np.random.Generator, colour: str, n: int) -> list[str]:
    """``n`` colours other than ``colour`` (they may repeat)."""
    rest = [c for c in COLOUR_NAMES if c != colour]
    return [_pick(rng, rest) for _ in range(n)]


def _distinct(rng: np.random.Generator, n: int) -> list[str]:
    return [COLOUR_NAMES[int(i)] for i in rng.permutation(len(COLOUR_NAMES))[:n]]


@dataclass(frozen=True)
class InstructScene:
    question: str
    answer: str
    group: str
    category: str | None
    objects: tuple[SceneObject, ...]
    backdrop: Backdrop
    texts: tuple[TextItem, ...] = ()


Drawn = tuple[str, str, tuple[SceneObject, ...] | None, tuple[TextItem, ...]]  # question, answer, objects, texts


def _msvqa(rng: np.random.Generator, qtype: str, cats: tuple[str, ...], category: str) -> Drawn:
    """msvqa-synth's five forms, with its own question templates."""
    shown, colour = category, None
    if qtype == "counting":
        n = int(rng.integers(1, 7))
        answer = str(n)
    elif qtype == "category":
        n = int(rng.integers(1, 4))
        answer = category
    elif qtype == "attribute":
        n = int(rng.integers(1, 4))
        colour = answer = _pick(rng, COLOUR_NAMES)
    elif qtype == "existence":
        n = int(rng.integers(1, 4))
        exists = bool(rng.integers(2))
        if not exists:
            shown = _pick(rng, [c for c in cats if c != category])
            n = 0 if rng.integers(2) else n
        answer = "yes" if exists else "no"
    else:  # grounding
        n, answer = 1, ""
    question = question_text(qtype, category, n)  # the streams' own templates
    wanted = [(shown, colour or _pick(rng, COLOUR_NAMES)) for _ in range(n)]
    objects = _place(rng, wanted, (4, 11) if qtype == "grounding" else None)
    if objects and qtype == "grounding":
        answer = format_box(objects[0].norm_box)
    return question, answer, objects, ()


def _reading(rng: np.random.Generator, qtype: str, backdrop: Backdrop) -> Drawn:
    ink = _ink(rng, backdrop)
    if qtype == "digit":
        text, font, stroke = _pick(rng, DIGITS), int(rng.integers(24, 51)), int(rng.integers(1, 3))
        question = "What number is written in the image?"
    else:
        text, font, stroke = _pick(rng, READING_WORDS), int(rng.integers(14, 29)), 1
        question = "What word is written in the image?"
    for _ in range(20):
        item = TextItem(text, ink, font, (0, 0), stroke)
        x0, y0, x1, y1 = item.pixel_box(64)
        if x1 - x0 <= 60 and y1 - y0 <= 60:
            break
        font -= 2
    xs, ys = (2 - x0, 62 - x1), (2 - y0, 62 - y1)  # centres that keep the text 2 px inside the picture
    at = (int(rng.integers(xs[0], xs[1] + 1)), int(rng.integers(ys[0], ys[1] + 1)))
    return question, text, (), (TextItem(text, ink, font, at, stroke),)


def _side(rng: np.random.Generator, category: str) -> Drawn:
    side = _pick(rng, SIDES)
    w, h = _size(category, int(rng.integers(5, 9)))
    if side in ("left", "right"):  # inside that half, across the horizontal midline
        x = int(rng.integers(0, 8 - w + 1)) + (8 if side == "right" else 0)
        y = int(rng.integers(max(0, 9 - h), min(7, UNITS - h) + 1))
    else:
        y = int(rng.integers(0, 8 - h + 1)) + (8 if side == "bottom" else 0)
        x = int(rng.integers(max(0, 9 - w), min(7, UNITS - w) + 1))
    obj = _obj(rng, category, _pick(rng, COLOUR_NAMES), (x, y, x + w, y + h))
    return f"Which side of the image is the {category} on?", side, (obj,), ()


RELATIONS: tuple[str, ...] = ("left of", "left of", "left of", "right of", "above", "below")


def _relation(rng: np.random.Generator, cats: tuple[str, ...], category: str) -> Drawn:
    relation = _pick(rng, RELATIONS)
    other = _pick(rng, [c for c in cats if c != category])
    axis = 0 if relation in ("left of", "right of") else 1
    first_half = int(rng.integers(2))  # the asked object's half: 0 left/top, 1 right/bottom
    objects = []
    for cat, half in ((category, first_half), (other, 1 - first_half)):
        w, h = _size(cat, int(rng.integers(4, 8)))
        along = (w, h)[axis]
        a = int(rng.integers(0, 8 - along + 1)) + 8 * half
        b = int(rng.integers(0, UNITS - (h, w)[axis] + 1))
        x, y = (a, b) if axis == 0 else (b, a)
        objects.append(_obj(rng, cat, _pick(rng, COLOUR_NAMES), (x, y, x + w, y + h)))
    yes = first_half == (0 if relation in ("left of", "above") else 1)
    return f"Is the {category} {relation} the {other}?", "yes" if yes else "no", tuple(objects), ()


def _ordinal(rng: np.random.Generator, category: str) -> Drawn:
    variant = _pick(rng, ("column", "row", "highest"))
    target = int(rng.integers(4))  # the answer (0-based), balanced over 1-4
    n = int(rng.integers(max(2, target + 1), 5))
    axis = 1 if variant == "column" else 0  # the axis the objects line up along
    gap = 1
    span = min(7, (UNITS - (n - 1) * gap) // n)  # each object's extent along the line
    for _ in range(50):
        along = int(rng.integers(3, span + 1))
        w, h = _size_fixed(category, along, axis)
        if (h, w)[axis] <= (UNITS - 4 if variant == "highest" else UNITS):
            break
    extra = UNITS - n * along - (n - 1) * gap
    gaps = [gap + int(v) for v in rng.multinomial(int(rng.integers(0, extra + 1)), [1 / n] * n)[:n - 1]]
    start = int(rng.integers(0, UNITS - n * along - sum(gaps) + 1))
    across = (h, w)[axis]
    base = int(rng.integers(0, UNITS - across + 1))
    if variant == "highest":
        base = int(rng.integers(0, UNITS - across - 3 + 1))  # the highest one; the others 3+ units lower
    colour = _pick(rng, COLOUR_NAMES)  # the asked one's (column and row)
    colours = [_pick(rng, COLOUR_NAMES) for _ in range(n)] if variant == "highest" else _others(rng, colour, n)
    objects = []
    pos = start
    for k in range(n):
        cross = base
        if variant == "highest" and k != target:
            cross = int(rng.integers(base + 3, UNITS - across + 1))
        elif variant != "highest" and across < UNITS:
            cross = min(UNITS - across, max(0, base + int(rng.integers(-1, 2))))
        c = colour if variant != "highest" and k == target else colours[k]
        x, y = (pos, cross) if axis == 0 else (cross, pos)
        objects.append(_obj(rng, category, c, (x, y, x + w, y + h)))
        pos += along + (gaps[k] if k < n - 1 else 0)
    if variant == "highest":
        question = f"Which {category} is highest? Answer 1 for the left one."
    else:
        question = f"Which {category} is {colour}? Answer 1 for the {'top' if axis else 'left'} one."
    return question, str(target + 1), tuple(objects), ()


def _largest(rng: np.random.Generator, category: str) -> Drawn:
    n = int(rng.integers(2, 4))
    colours = _distinct(rng, n)
    big = int(rng.integers(7, 10)) if n == 2 else int(rng.integers(6, 9))
    small = [int(rng.integers(3, 1 + min(5, int(big / 1.5)))) for _ in range(n - 1)]
    placed: list[SceneObject] = []
    for c, long in zip(colours, [big, *small], strict=True):
        w, h = _size(category, long)
        for _ in range(80):
            x, y = int(rng.integers(0, UNITS - w + 1)), int(rng.integers(0, UNITS - h + 1))
            if _apart((x, y, x + w, y + h), placed):
                placed.append(_obj(rng, category, c, (x, y, x + w, y + h)))
                break
        else:
            return "", "", None, ()
    return f"Which {category} is the largest? Answer with its colour.", colours[0], tuple(placed), ()


def _colour_box(rng: np.random.Generator, category: str) -> Drawn:
    n = int(rng.integers(2, 4))
    colours = _distinct(rng, n)
    objects = _place(rng, [(category, c) for c in colours], (4, 8) if n == 2 else (4, 6))
    if not objects:
        return "", "", None, ()
    target = _pick(rng, objects)
    return (f"Where is the {target.colour} {category}? Answer with a box.", format_box(target.norm_box),
            objects, ())


def _verify(rng: np.random.Generator, cats: tuple[str, ...], category: str) -> Drawn:
    yes = bool(rng.integers(2))
    if rng.integers(2):  # the colour of the object(s)
        n = int(rng.integers(1, 4))
        colour = _pick(rng, COLOUR_NAMES)
        asked = colour if yes else _pick(rng, [c for c in COLOUR_NAMES if c != colour])
        what = f"Is the {category} {asked}?" if n == 1 else f"Are the {plural(category)} {asked}?"
        return what, "yes" if yes else "no", _place(rng, [(category, colour)] * n), ()
    n = int(rng.integers(2, 5))  # are there any
    shown = category if yes else _pick(rng, [c for c in cats if c != category])
    if not yes and rng.integers(2):
        n = 0
    wanted = [(shown, _pick(rng, COLOUR_NAMES)) for _ in range(n)]
    return f"Are there {plural(category)} in the image?", "yes" if yes else "no", _place(rng, wanted), ()


def _options(rng: np.random.Generator, right: str, pool: list[str], at: int, k: int) -> tuple[str, str]:
    """``k`` lettered options, ``right`` the ``at``-th: (the options text, the right letter)."""
    wrong = [pool[int(i)] for i in rng.permutation(len(pool))[: k - 1]]
    opts = wrong[:at] + [right] + wrong[at:]
    return " ".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(opts)), LETTERS[at]


def _choice(rng: np.random.Generator, cats: tuple[str, ...], category: str) -> Drawn:
    at = int(rng.integers(4))  # the right letter, balanced over A-D
    k = int(rng.integers(max(3, at + 1), 5))  # 3 or 4 options
    n = int(rng.integers(1, 4))
    colour = _pick(rng, COLOUR_NAMES)
    if rng.integers(2):  # the kind of object
        pool = [c for c in (cats if rng.integers(2) else ALL_CATEGORIES) if c != category]
        if len(pool) < k - 1:
            pool = [c for c in ALL_CATEGORIES if c != category]
        opts, letter = _options(rng, category, pool, at, k)
        question = f"What kind of object is in the image? {opts} Answer with the letter."
    else:  # its colour
        opts, letter = _options(rng, colour, [c for c in COLOUR_NAMES if c != colour], at, k)
        question = f"{question_text('attribute', category, n)} {opts} Answer with the letter."
    return question, letter, _place(rng, [(category, colour)] * n), ()


def _phrase(rng: np.random.Generator, category: str) -> Drawn:
    colour = _pick(rng, COLOUR_NAMES)
    return ("Describe the object in a few words.", f"{article(colour)} {colour} {category}",
            _place(rng, [(category, colour)]), ())


def instruct_scene(rng: np.random.Generator, qtype: str, textured: float = 0.4) -> InstructScene:
    """One canonical picture and its question of type ``qtype`` (one of ``INSTRUCT_QTYPES``)."""
    if qtype not in INSTRUCT_QTYPES:
        raise ValueError(f"unknown question type {qtype!r}; types: {INSTRUCT_QTYPES}")
    groups = list(CATEGORY_SETS)
    for _ in range(100):
        group = _pick(rng, groups)
        cats = CATEGORY_SETS[group]
        category: str | None = _pick(rng, cats)
        backdrop = _backdrop(rng, textured)
        if qtype in QTYPES:
            drawn = _msvqa(rng, qtype, cats, category)
        elif qtype in ("digit", "word"):
            drawn, group, category = _reading(rng, qtype, backdrop), "text", None
        elif qtype == "side":
            drawn = _side(rng, category)
        elif qtype == "relation":
            drawn = _relation(rng, cats, category)
        elif qtype == "ordinal":
            drawn = _ordinal(rng, category)
        elif qtype == "largest":
            drawn = _largest(rng, category)
        elif qtype == "colour-box":
            drawn = _colour_box(rng, category)
        elif qtype == "verify":
            drawn = _verify(rng, cats, category)
        elif qtype == "choice":
            drawn = _choice(rng, cats, category)
        else:
            drawn = _phrase(rng, category)
        question, answer, objects, texts = drawn
        if objects is None:
            continue
        return InstructScene(question, answer, group, category, objects, backdrop, texts)
    raise RuntimeError(f"could not place a canonical {qtype} scene")  # pragma: no cover


def qtype_pattern(weights: Mapping[str, int] | None = None, qtypes: tuple[str, ...] = INSTRUCT_QTYPES) -> tuple[str, ...]:
    """The repeating order of question types: each type ``weights[type]`` times per round (default once), interleaved."""
    w = {q: 1 for q in qtypes} if weights is None else {q: int(weights.get(q, 0)) for q in qtypes}
    if any(v < 0 for v in w.values()) or not any(w.values()):
        raise ValueError(f"question type weights must be >= 0 and not all 0, got {w}")
    return tuple(q for r in range(max(w.values())) for q in qtypes if w[q] > r)


def _objects_meta(scene: InstructScene, size: int) -> list[dict[str, object]]:
    """The vision warm-up's per-patch labels (see mmcl.pretrain.llava._patch_labels): objects, then text."""
    out: list[dict[str, object]] = [{"shape": o.category, "colour": o.colour, "mark": None, "box": o.norm_box}
                                    for o in scene.objects]
    for t in scene.texts:
        x0, y0, x1, y1 = t.pixel_box(size)
        out.append({"shape": TEXT_SHAPE, "colour": t.ink, "mark": None, "box": [x0 / size, y0 / size, x1 / size, y1 / size]})
    return out


def instruct_samples(n: int, seed: int, split: str = "train", image_size: int = 64,
                     qtypes: tuple[str, ...] = INSTRUCT_QTYPES, weights: Mapping[str, int] | None = None,
                     textured: float = 0.4) -> list[Sample]:
    """``n`` instruction samples, types in ``qtype_pattern(weights, qtypes)`` order; sample ``i`` depends only on
    (seed, split, i, the pattern, ``textured``: the share of gradient and noise backgrounds)."""
    pattern = qtype_pattern(weights, qtypes)
    out = []
    for i in range(n):
        qtype = pattern[i % len(pattern)]
        rng = np.random.default_rng([seed % 2**64, _TAG, _SPLIT_CODE[split], i])
        sc = instruct_scene(rng, qtype, textured)
        out.append(
            Sample(
                id=f"{INSTRUCT_TASK}.{qtype}-{split}-{seed}-{i:05d}",
                question=sc.question,
                answers=[sc.answer],
                image=InstructRenderer(image_size, sc.objects, sc.backdrop, int(rng.integers(2**63)), sc.texts),
                task=f"{INSTRUCT_TASK}.{qtype}",
                meta={
                    "qtype": qtype,
                    "group": sc.group,
                    "category": sc.category,
                    "backdrop": sc.backdrop.kind,
                    "boxes": [o.norm_box for o in sc.objects],
                    "objects": _objects_meta(sc, image_size),
                },
            )
        )
    return out
