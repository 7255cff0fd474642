"""``msvqa-synth``: a procedurally drawn stand-in for MSVQA (4 scenarios x 5 question types = 20 tasks).

Scenarios (each with its own background and its own 4 object categories):

- ``high-altitude``: nadir aerial view of fields and a road; the smallest and densest objects
  (8-16 px on 64 px, up to 6 per scene): airplane, storage-tank, vehicle, ship.
- ``underwater``: blue-green water, light streaks, particles, blur: fish, crab, starfish, jellyfish.
- ``low-altitude``: oblique drone view of a street; objects higher in the image are drawn smaller:
  car, person, bus, bicycle.
- ``indoor``: wall and floor: chair, table, lamp, cup.

Every scene shows objects of ONE category (1-6 of them), so that each answer is carried by
every object in the image. Besides its shape, each category carries a marking over the middle
half of its body, in a colour of its own (white, black, cyan or pink: never an object colour); it
stands in for the texture and appearance cues that tell categories apart in real photos.
Without it the tiny default model did not tell the shapes apart within a CPU run's budget: a
linear probe on its pooled vision features reads the underwater category at 0.80, yet the
language model stayed at chance after 240 joint steps (docs/learnability.md). Scenes with distractors of other categories, where the question
singles out one object ("the red one"), were tried first: the tiny default model did not learn
them above chance in the step budget of a CPU run (docs/learnability.md).

Question types (one task each, named ``"<scenario>.<type>"``):

- ``counting``: "How many <plural> are in the image?" -> "1".."6" (high-altitude) or "1".."4".
- ``category``: "What kind of object is in the image?" -> the category.
- ``attribute``: "What colour is the <category>?" / "What colour are the <plural>?" (all objects
  share one colour) -> colour name.
- ``existence``: "Is there a <category> in the image?" -> "yes"/"no", alternating in pairs (50/50).
  What a "no" scene shows is the option ``existence_negatives``: ``"other"`` (objects of another
  category of the scenario), ``"empty"`` (no object) or ``"mixed"`` (the default: every other pair
  is empty). With "other" only, answering needs the asked word compared with the object's marking,
  and the tiny default model stayed at chance (0.50 jointly, 600 steps on the four existence tasks;
  3,000 steps on the full stream); with "mixed" it reaches 0.54 / 0.76 / 0.74 / 0.70 (high-altitude /
  underwater / low-altitude / indoor) in the same 600 steps: 0.75 is what telling an empty scene from
  a full one gives, so the comparison itself is still not learned (docs/learnability.md).
- ``grounding``: "Where is the <category>? Answer with a box." (one object)
  -> ``[x1, y1, x2, y2]`` normalised, two decimals.

Box grid: the image is cut into 16 x 16 units (4 px at 64 px). Every object's top-left corner sits
on the 8 x 8 cell grid (8 px cells, multiples of 1/8, aligned with 8 px patches) and its width and
height are whole units (multiples of 1/16); the glyph fills its box exactly. Boxes never overlap and
keep at least one unit apart.

Data: each sample is drawn from its own generator seeded by (seed, task name, split, index), so a
task's data depends only on the seed and the task name, never on the order or the subset of tasks,
and the first N samples do not change when the split size grows. Test scenes are drawn first; a
training scene equal to a test scene (same question, same objects) is redrawn. Images are rendered
on demand by a small picklable callable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mmcl.benchmarks import BENCHMARKS
from mmcl.benchmarks.stream import apply_stream_options, parse_options
from mmcl.config import BenchmarkConfig
from mmcl.data.sample import Benchmark, Sample, Task
from mmcl.synth.boxes import format_box
from mmcl.synth.draw import COLOUR_NAMES, PALETTE, Colour, draw_glyph

BENCHMARK_NAME = "msvqa-synth"
UNITS = 16  # box coordinates are multiples of 1/UNITS of the image side
CELL = 2  # object corners snap to cells of CELL units (8 px at 64 px)

SCENARIOS: tuple[str, ...] = ("high-altitude", "underwater", "low-altitude", "indoor")
QTYPES: tuple[str, ...] = ("counting", "category", "attribute", "existence", "grounding")

ExistenceNegatives = Literal["other", "empty", "mixed"]  # what an existence "no" scene shows

QA_SCORERS = ["vqa_score", "exact_match", "token_f1"]
GROUNDING_SCORERS = ["box_f1"]
QA_MAX_NEW_TOKENS = 4
GROUNDING_MAX_NEW_TOKENS = 24

Size = tuple[int, int]  # (width, height) in units


@dataclass(frozen=True)
class CategorySpec:
    """How one category is drawn: sizes in units (far sizes for the upper image half, if any)."""

    sizes: tuple[Size, ...]
    far_sizes: tuple[Size, ...] = ()
    rotate: bool = False  # may be drawn with axes swapped (nadir view)
    flip: bool = False  # may be mirrored left-right


@dataclass(frozen=True)
class ScenarioSpec:
    title: str
    categories: dict[str, CategorySpec]
    max_count: int  # largest counting answer
    max_objects: int  # most objects in one scene
    rows: tuple[int, int]  # cell rows an object's top-left corner may use (inclusive)
    far_rows: int = -1  # cell rows <= this use ``far_sizes``


SCENARIO_SPECS: dict[str, ScenarioSpec] = {
    "high-altitude": ScenarioSpec(
        title="High-altitude aerial scenes",
        categories={
            "airplane": CategorySpec(sizes=((3, 3),), rotate=True),
            "storage-tank": CategorySpec(sizes=((2, 2), (3, 3))),
            "vehicle": CategorySpec(sizes=((3, 2),), rotate=True, flip=True),
            "ship": CategorySpec(sizes=((4, 2),), rotate=True, flip=True),
        },
        max_count=6,
        max_objects=6,
        rows=(0, 7),
    ),
    "underwater": ScenarioSpec(
        title="Underwater scenes",
        categories={
            "fish": CategorySpec(sizes=((5, 3), (6, 4)), flip=True),
            "crab": CategorySpec(sizes=((5, 3), (6, 4))),
            "starfish": CategorySpec(sizes=((4, 4), (5, 5))),
            "jellyfish": CategorySpec(sizes=((4, 5), (5, 6))),
        },
        max_count=4,
        max_objects=4,
        rows=(0, 6),
    ),
    "low-altitude": ScenarioSpec(
        title="Low-altitude drone street scenes",
        categories={
            "car": CategorySpec(sizes=((6, 4),), far_sizes=((4, 3),), flip=True),
            "person": CategorySpec(sizes=((3, 5),), far_sizes=((2, 4),)),
            "bus": CategorySpec(sizes=((7, 4),), far_sizes=((5, 3),), flip=True),
            "bicycle": CategorySpec(sizes=((6, 4),), far_sizes=((4, 3),), flip=True),
        },
        max_count=4,
        max_objects=4,
        rows=(2, 6),
        far_rows=3,
    ),
    "indoor": ScenarioSpec(
        title="Indoor scenes",
        categories={
            "chair": CategorySpec(sizes=((4, 5), (5, 6)), flip=True),
            "table": CategorySpec(sizes=((6, 4), (5, 4))),
            "lamp": CategorySpec(sizes=((3, 6), (3, 5))),
            "cup": CategorySpec(sizes=((4, 4), (3, 3)), flip=True),
        },
        max_count=4,
        max_objects=4,
        rows=(0, 6),
    ),
}

PLURALS: dict[str, str] = {
    "fish": "fish", "starfish": "starfish", "jellyfish": "jellyfish", "person": "people", "bus": "buses",
}


def plural(category: str) -> str:
    return PLURALS.get(category, category + "s")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# ---------------------------------------------------------------- options


class MSVQASynthOptions(BaseModel):
    """The benchmark's own options (extra keys of the ``benchmark`` config section).

    ``scenario`` is used only with ``steps=5``; ``interleave`` only with ``steps=20``.
    """

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(64, ge=32, description="image side in pixels; a multiple of 16")
    train_size: int = Field(600, ge=0, description="training samples per task")
    test_size: int = Field(50, ge=1, description="test samples per task")
    steps: Literal[5, 20] = Field(20, description="20: all four scenarios; 5: the five tasks of `scenario`")
    scenario: Literal["high-altitude", "underwater", "low-altitude", "indoor"] = "high-altitude"
    scenario_order: list[str] = Field(default_factory=lambda: list(SCENARIOS))
    interleave: bool = Field(False, description="20 steps only: step i = qtype i//4, scenario i%4")
    qtype_order: list[str] = Field(default_factory=lambda: list(QTYPES))
    existence_negatives: ExistenceNegatives = Field(
        "mixed",
        description='what an existence "no" scene shows: "other" (objects of another category of '
        'the scenario), "empty" (no object) or "mixed" (every other pair empty)',
    )

    @field_validator("image_size")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % UNITS:
            raise ValueError(f"image_size must be a multiple of {UNITS}, got {v}")
        return v

    @field_validator("scenario_order")
    @classmethod
    def _scenario_perm(cls, v: list[str]) -> list[str]:
        return check_permutation("scenario_order", v, SCENARIOS)

    @field_validator("qtype_order")
    @classmethod
    def _qtype_perm(cls, v: list[str]) -> list[str]:
        return check_permutation("qtype_order", v, QTYPES)


def check_permutation(field: str, value: list[str], valid: tuple[str, ...]) -> list[str]:
    unknown = [x for x in value if x not in valid]
    if unknown or sorted(value) != sorted(valid):
        raise ValueError(
            f"{field} must list each of {', '.join(valid)} exactly once"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return value


def task_order(opts: MSVQASynthOptions) -> list[str]:
    """Default task names in training order.

    steps=5: the qtypes of ``scenario``. steps=20, blocked (default): scenario after scenario,
    qtypes in ``qtype_order`` inside each. steps=20, interleave: step i is
    ``scenario_order[i % 4]`` with ``qtype_order[i // 4]`` (all counting tasks first, then category...).
    """
    if opts.steps == 5:
        return [f"{opts.scenario}.{q}" for q in opts.qtype_order]
    if opts.interleave:
        return [f"{s}.{q}" for q in opts.qtype_order for s in opts.scenario_order]
    return [f"{s}.{q}" for s in opts.scenario_order for q in opts.qtype_order]


# ---------------------------------------------------------------- scenes


@dataclass(frozen=True)
class SceneObject:
    """One drawn object; ``box`` is in units (1/16 of the image side), right/bottom exclusive."""

    category: str
    colour: str
    box: tuple[int, int, int, int]
    transpose: bool = False
    flip: bool = False

    @property
    def norm_box(self) -> list[float]:
        return [v / UNITS for v in self.box]


def _place(
    rng: np.random.Generator, spec: ScenarioSpec, wanted: list[tuple[str, str]]
) -> tuple[SceneObject, ...] | None:
    """Place (category, colour) objects on the cell grid without overlap; None if it does not fit."""
    placed: list[SceneObject] = []
    n_cols = UNITS // CELL
    r0, r1 = spec.rows
    for cat, colour in wanted:
        cs = spec.categories[cat]
        for _ in range(60):
            col, row = int(rng.integers(n_cols)), int(rng.integers(r0, r1 + 1))
            sizes = cs.far_sizes if cs.far_sizes and row <= spec.far_rows else cs.sizes
            w, h = sizes[int(rng.integers(len(sizes)))]
            transpose = bool(cs.rotate and rng.integers(2))
            flip = bool(cs.flip and rng.integers(2))
            if transpose:
                w, h = h, w
            x, y = col * CELL, row * CELL
            box = (x, y, x + w, y + h)
            if box[2] > UNITS or box[3] > UNITS:
                continue
            if any(_near(box, o.box) for o in placed):
                continue
            placed.append(SceneObject(cat, colour, box, transpose, flip))
            break
        else:
            return None
    return tuple(sorted(placed, key=lambda o: (o.box[1], o.box[0])))


def _near(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """True unless the boxes keep at least one unit apart horizontally or vertically."""
    return not (a[2] + 1 <= b[0] or b[2] + 1 <= a[0] or a[3] + 1 <= b[1] or b[3] + 1 <= a[1])


def question_text(qtype: str, category: str, n: int = 1) -> str:
    """The stream's question of type ``qtype`` about ``category`` (``n``: how many objects the attribute
    question speaks of). The one source of the templates: the generalist base's instruction data asks
    the same questions about canonical pictures (``mmcl.pretrain.instruct``)."""
    if qtype == "counting":
        return f"How many {plural(category)} are in the image?"
    if qtype == "category":
        return "What kind of object is in the image?"
    if qtype == "attribute":
        return f"What colour {'is' if n == 1 else 'are'} the {category if n == 1 else plural(category)}?"
    if qtype == "existence":
        return f"Is there {article(category)} {category} in the image?"
    if qtype == "grounding":
        return f"Where is the {category}? Answer with a box."
    raise ValueError(f"unknown question type {qtype!r}")


def _pick(rng: np.random.Generator, items: list[str] | tuple[str, ...]) -> str:
    return items[int(rng.integers(len(items)))]


def _scene(
    rng: np.random.Generator, scenario: str, qtype: str, exists: bool, empty: bool = False
) -> tuple[str, str, str | None, str | None, tuple[SceneObject, ...]]:
    """Draw one (question, answer, asked category, asked colour, objects).

    Every scene shows one category only, so that each answer is carried by every object in
    the image rather than by one object among distractors (see the module docstring).
    ``empty`` (existence "no" only): the scene shows the background and no object at all.
    """
    spec = SCENARIO_SPECS[scenario]
    cats = list(spec.categories)
    few = min(3, spec.max_objects)
    for _ in range(100):
        category: str | None = _pick(rng, cats)
        colour: str | None = None
        shown = category
        if qtype == "counting":
            n = int(rng.integers(1, spec.max_count + 1))
            answer = str(n)
        elif qtype == "category":
            n = int(rng.integers(1, few + 1))
            answer = category
        elif qtype == "attribute":
            n = int(rng.integers(1, few + 1))
            colour = answer = _pick(rng, COLOUR_NAMES)
        elif qtype == "existence":
            n = int(rng.integers(1, few + 1))
            if not exists:
                shown = _pick(rng, [c for c in cats if c != category])
                n = 0 if empty else n
            answer = "yes" if exists else "no"
        elif qtype == "grounding":
            n, answer = 1, ""
        else:
            raise ValueError(f"unknown question type {qtype!r}")
        question = question_text(qtype, category, n)
        wanted = [(shown, colour or _pick(rng, COLOUR_NAMES)) for _ in range(n)]
        objects = _place(rng, spec, wanted)
        if objects is None:
            continue
        if qtype == "grounding":
            answer = format_box(objects[0].norm_box)
        return question, answer, category, colour, objects
    raise RuntimeError(f"could not place a {scenario} {qtype} scene")  # pragma: no cover


# ---------------------------------------------------------------- rendering


def _noise(rng: np.random.Generator, size: int, amp: float) -> np.ndarray:
    return rng.normal(0.0, amp, (size, size, 1))


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _bg_high_altitude(rng: np.random.Generator, s: int) -> Image.Image:
    fields = np.array([(118, 126, 84), (142, 124, 90), (104, 94, 72), (150, 146, 112), (92, 106, 76)], float)
    arr = np.zeros((s, s, 3))
    xs = [0, *sorted(int(v) for v in rng.integers(s // 8, s - s // 8, 2)), s]
    ys = [0, *sorted(int(v) for v in rng.integers(s // 8, s - s // 8, 2)), s]
    yy = np.arange(s)[:, None]
    for i in range(3):
        for j in range(3):
            col = fields[int(rng.integers(len(fields)))]
            arr[ys[i]:ys[i + 1], xs[j]:xs[j + 1]] = col
            if rng.integers(2):  # plough furrows
                period = max(2, s // 21)
                furrow = ((yy[ys[i]:ys[i + 1]] // (period // 2 or 1)) % 2 == 0)[..., None] * -10.0
                arr[ys[i]:ys[i + 1], xs[j]:xs[j + 1]] += furrow
    arr += _noise(rng, s, 6)
    img = _to_image(arr)
    d = ImageDraw.Draw(img)
    w = max(2, s // 20)
    road = (128, 128, 132)
    p = int(rng.integers(s // 6, s - s // 6))
    if rng.integers(2):
        d.rectangle([0, p, s, p + w], fill=road)
    else:
        d.rectangle([p, 0, p + w, s], fill=road)
    if rng.integers(2):  # a second, crossing road
        q = int(rng.integers(s // 6, s - s // 6))
        d.line([(q, 0), (q + int(rng.integers(-s // 4, s // 4)), s)], fill=road, width=w)
    return img


def _bg_underwater(rng: np.random.Generator, s: int) -> Image.Image:
    t = np.linspace(0.0, 1.0, s)[:, None, None]
    top, bottom = np.array([38, 128, 150], float), np.array([8, 48, 84], float)
    arr = top * (1 - t) + bottom * t + np.zeros((s, s, 3))
    sand = int(s * rng.uniform(0.85, 0.95))
    arr[sand:] = np.array([150, 140, 100]) * 0.6
    arr += _noise(rng, s, 4)
    img = _to_image(arr)
    d = ImageDraw.Draw(img)
    xs = np.arange(0, s + 4, 4)
    for _ in range(int(rng.integers(3, 6))):  # caustic streaks
        y0, amp, ph, k = rng.uniform(0, s), rng.uniform(1, 4), rng.uniform(0, 6.3), rng.uniform(0.1, 0.3)
        slope = rng.uniform(-0.3, 0.3)
        pts = [(float(x), float(y0 + slope * x + amp * np.sin(k * x + ph))) for x in xs]
        d.line(pts, fill=(70, 170, 185), width=1)
    for _ in range(int(rng.integers(10, 22))):  # particles
        x, y = int(rng.integers(s)), int(rng.integers(s))
        d.point((x, y), fill=(170, 215, 215))
    return img


def _bg_low_altitude(rng: np.random.Generator, s: int) -> Image.Image:
    arr = np.zeros((s, s, 3)) + np.array([150, 148, 140], float)  # sidewalk / plaza
    arr += _noise(rng, s, 5)
    img = _to_image(arr)
    d = ImageDraw.Draw(img)
    horizon = s // 4 - s // 16
    # buildings along the far edge
    x = 0
    while x < s:
        w = int(rng.integers(s // 8, s // 4))
        shade_ = int(rng.integers(90, 140))
        d.rectangle([x, 0, x + w, horizon], fill=(shade_, shade_ - 8, shade_ - 16))
        for wy in range(2, horizon - 2, max(3, s // 16)):
            for wx in range(x + 2, x + w - 2, max(3, s // 16)):
                d.point((wx, wy), fill=(60, 60, 70))
        x += w + 1
    # road trapezoid, narrow far away
    cx = s / 2 + rng.uniform(-s / 10, s / 10)
    top_w, bot_w = s * 0.22, s * 1.1
    d.polygon([(cx - top_w / 2, horizon), (cx + top_w / 2, horizon), (cx + bot_w / 2, s), (cx - bot_w / 2, s)],
              fill=(72, 74, 78))
    d.line([(cx - top_w / 2 - 1, horizon), (cx - bot_w / 2 - 1, s)], fill=(190, 190, 180), width=1)  # kerbs
    d.line([(cx + top_w / 2 + 1, horizon), (cx + bot_w / 2 + 1, s)], fill=(190, 190, 180), width=1)
    for i in range(6):  # centre dashes, growing towards the viewer
        a, b = i / 6, (i + 0.5) / 6
        d.line([(cx, horizon + a * (s - horizon)), (cx, horizon + b * (s - horizon))], fill=(220, 220, 210),
               width=max(1, round(1 + 2 * a)))
    return img


def _bg_indoor(rng: np.random.Generator, s: int) -> Image.Image:
    walls = [(214, 204, 184), (198, 204, 210), (222, 214, 198), (205, 196, 205)]
    floors = [(128, 104, 82), (112, 104, 96), (146, 132, 114)]
    wall = np.array(walls[int(rng.integers(len(walls)))], float)
    floor = np.array(floors[int(rng.integers(len(floors)))], float)
    horizon = int(s * rng.uniform(0.5, 0.62))
    arr = np.zeros((s, s, 3)) + wall
    arr[horizon:] = floor
    plank = max(3, s // 12)
    arr[horizon:][(np.arange(s - horizon) % plank == 0)] -= 18  # floor boards
    arr += _noise(rng, s, 3)
    img = _to_image(arr)
    d = ImageDraw.Draw(img)
    d.rectangle([0, horizon - max(1, s // 32), s, horizon], fill=tuple(int(v * 0.6) for v in wall))  # skirting
    if rng.integers(2):  # a window on the wall
        wx, ww = int(rng.integers(0, s // 2)), int(rng.integers(s // 5, s // 3))
        wy, wh = int(rng.integers(2, max(3, horizon // 4))), int(horizon * 0.4)
        d.rectangle([wx, wy, wx + ww, wy + wh], fill=(205, 222, 236), outline=(235, 235, 235))
        d.line([(wx + ww // 2, wy), (wx + ww // 2, wy + wh)], fill=(235, 235, 235))
    return img


_BACKGROUNDS = {
    "high-altitude": _bg_high_altitude,
    "underwater": _bg_underwater,
    "low-altitude": _bg_low_altitude,
    "indoor": _bg_indoor,
}


MARKINGS: tuple[Colour, ...] = ((250, 250, 250), (20, 20, 24), (40, 225, 225), (255, 150, 205))
"""Marking colours (white, black, cyan, pink), none of them an object colour: the i-th category
of every scenario carries the i-th marking."""


def category_marking(scenario: str, category: str) -> Colour:
    """The marking colour every object of ``category`` carries in ``scenario``."""
    return MARKINGS[list(SCENARIO_SPECS[scenario].categories).index(category)]


def marking_box(px: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The marking: the middle half of a pixel box (exclusive right/bottom); inclusive corners for PIL."""
    x1, y1, x2, y2 = px
    w, h = x2 - x1, y2 - y1
    return (x1 + w // 4, y1 + h // 4, x2 - 1 - w // 4, y2 - 1 - h // 4)


CATEGORY_MARKINGS: dict[str, Colour] = {
    c: MARKINGS[i] for spec in SCENARIO_SPECS.values() for i, c in enumerate(spec.categories)
}
"""Category -> its marking colour (category names are unique across scenarios)."""


def draw_objects(img: Image.Image, objects: tuple[SceneObject, ...]) -> None:
    """Draw ``objects`` (glyph, then its category's marking when it has one) onto ``img`` in place."""
    draw = ImageDraw.Draw(img)
    unit = img.size[0] // UNITS
    for o in objects:
        px = (o.box[0] * unit, o.box[1] * unit, o.box[2] * unit, o.box[3] * unit)
        draw_glyph(draw, o.category, PALETTE[o.colour], px, transpose=o.transpose, flip=o.flip)
        if o.category in CATEGORY_MARKINGS:
            draw.rectangle(marking_box(px), fill=CATEGORY_MARKINGS[o.category])


@dataclass(frozen=True)
class SceneRenderer:
    """Zero-argument callable that draws one scene; deterministic, cheap to keep, picklable.

    ``background=None`` draws the scenario's rendering (its background, and for underwater the
    tint and blur). A colour draws the CANONICAL rendering instead: the same glyphs and markings
    on a plain background with no scenario effect (the generalist base's instruction data,
    :mod:`mmcl.pretrain.instruct`; ``scenario`` is then only a label). Objects whose category
    has no marking (the generic shapes) are drawn without one.
    """

    scenario: str
    image_size: int
    objects: tuple[SceneObject, ...]
    seed: int
    background: Colour | None = None

    def __call__(self) -> Image.Image:
        rng = np.random.default_rng(self.seed)
        s = self.image_size
        if self.background is None:
            img = _BACKGROUNDS[self.scenario](rng, s)
        else:
            img = Image.new("RGB", (s, s), self.background)
        draw_objects(img, self.objects)
        if self.background is not None:
            return img
        if self.scenario == "underwater":
            tint: Colour = (0, 95, 115)
            img = Image.blend(img, Image.new("RGB", img.size, tint), 0.18)
            img = img.filter(ImageFilter.GaussianBlur(radius=0.7 * s / 64))
        return img


# ---------------------------------------------------------------- tasks


def _task_key(task: str) -> int:
    return int.from_bytes(hashlib.sha256(task.encode()).digest()[:8], "little")


_SPLIT_CODE = {"train": 1, "test": 2}
_PAIR_TAG = 7


def _make_split(
    task: str,
    split: str,
    n: int,
    seed: int,
    image_size: int,
    avoid: set[tuple[object, ...]],
    negatives: ExistenceNegatives = "mixed",
) -> list[Sample]:
    scenario, qtype = task.split(".")
    base = [seed % 2**64, _task_key(task), _SPLIT_CODE[split]]
    out: list[Sample] = []
    for i in range(n):
        rng = np.random.default_rng([*base, i])
        exists = empty = False
        if qtype == "existence":  # samples 2k and 2k+1: one yes, one no, in random order
            coin = int(np.random.default_rng([*base, _PAIR_TAG, i // 2]).integers(2))
            exists = (i % 2) == coin
            # which kind of "no": every other pair shows an empty scene under "mixed"
            empty = negatives == "empty" or (negatives == "mixed" and (i // 2) % 2 == 1)
        while True:
            question, answer, category, colour, objects = _scene(rng, scenario, qtype, exists, empty)
            sig = (question, objects)
            if not objects or sig not in avoid:  # empty scenes differ by their background
                avoid.add(sig)
                break
        out.append(
            Sample(
                id=f"{task}-{split}-{i:05d}",
                question=question,
                answers=[answer],
                image=SceneRenderer(scenario, image_size, objects, int(rng.integers(2**63))),
                task=task,
                scenario=scenario,
                meta={
                    "qtype": qtype,
                    "category": category,
                    "colour": colour,
                    "boxes": [o.norm_box for o in objects],
                    "objects": [{"category": o.category, "colour": o.colour, "box": o.norm_box} for o in objects],
                },
            )
        )
    return out


def _description(scenario: str, qtype: str) -> str:
    spec = SCENARIO_SPECS[scenario]
    cats = list(spec.categories)
    either = ", ".join(cats[:-1]) + " or " + cats[-1]
    what = {
        "counting": "count " + ", ".join(plural(c) for c in cats),
        "category": f"name the object of a given colour ({either})",
        "attribute": f"name the colour of the {either}",
        "existence": f"say whether there is a {either}",
        "grounding": f"give the box of a given colour {either}",
    }[qtype]
    return f"{spec.title}: {what}"


def make_task(
    name: str,
    seed: int = 0,
    train_size: int = 200,
    test_size: int = 50,
    image_size: int = 64,
    existence_negatives: ExistenceNegatives = "mixed",
) -> Task:
    """Build one task ``"<scenario>.<qtype>"``; its data depends only on (seed, name, sizes, options)."""
    scenario, _, qtype = name.partition(".")
    if scenario not in SCENARIOS or qtype not in QTYPES:
        raise ValueError(f"unknown {BENCHMARK_NAME} task {name!r}; scenarios: {SCENARIOS}, types: {QTYPES}")
    seen: set[tuple[object, ...]] = set()
    test = _make_split(name, "test", test_size, seed, image_size, seen, existence_negatives)
    train = _make_split(name, "train", train_size, seed, image_size, seen, existence_negatives)
    grounding = qtype == "grounding"
    return Task(
        name=name,
        train=train,
        test=test,
        scorers=list(GROUNDING_SCORERS) if grounding else QA_SCORERS + (["relaxed_numeric"] if qtype == "counting" else []),
        scenario=scenario,
        max_new_tokens=GROUNDING_MAX_NEW_TOKENS if grounding else QA_MAX_NEW_TOKENS,
        description=_description(scenario, qtype),
        meta={"qtype": qtype, "categories": list(SCENARIO_SPECS[scenario].categories), "image_size": image_size},
    )


@BENCHMARKS.register(BENCHMARK_NAME)
def build(cfg: BenchmarkConfig) -> Benchmark:
    """The ``msvqa-synth`` stream: options from ``cfg`` (see MSVQASynthOptions), then the common fields."""
    opts = parse_options(MSVQASynthOptions, cfg.options(), BENCHMARK_NAME)
    seed = cfg.seed if cfg.seed is not None else 0
    tasks = [
        make_task(n, seed, opts.train_size, opts.test_size, opts.image_size, opts.existence_negatives)
        for n in task_order(opts)
    ]
    tasks = apply_stream_options(tasks, cfg, seed)
    scope = opts.scenario if opts.steps == 5 else "4 scenarios"
    return Benchmark(
        name=BENCHMARK_NAME,
        tasks=tasks,
        description=f"Synthetic multi-scenario VQA and grounding ({scope}, {opts.steps} steps), MSVQA-like",
    )


def tokenizer_corpus(seed: int = 0, n_boxes: int = 2000) -> Iterator[str]:
    """Every question and answer string msvqa-synth can produce (boxes: ``n_boxes`` random ones).

    For training a tokenizer on the benchmark's words without seeing its images.
    """
    rng = np.random.default_rng([seed % 2**64, _PAIR_TAG])
    for scenario in SCENARIOS:
        spec = SCENARIO_SPECS[scenario]
        for cat in spec.categories:
            yield f"How many {plural(cat)} are in the image?"
            yield f"What colour is the {cat}?"
            yield f"What colour are the {plural(cat)}?"
            yield f"Is there {article(cat)} {cat} in the image?"
            yield f"Where is the {cat}? Answer with a box."
            yield cat
        for k in range(1, spec.max_count + 1):
            yield str(k)
    yield "What kind of object is in the image?"
    yield from COLOUR_NAMES
    yield "yes"
    yield "no"
    for v in range(UNITS + 1):
        yield f"{v / UNITS:.2f}"
    for _ in range(n_boxes):
        x, y = int(rng.integers(0, UNITS // CELL)) * CELL, int(rng.integers(0, UNITS // CELL)) * CELL
        w, h = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        yield format_box([x / UNITS, y / UNITS, min(x + w, UNITS) / UNITS, min(y + h, UNITS) / UNITS])


def answer_vocabulary(seed: int = 0, n_boxes: int = 200) -> list[str]:
    """Every short answer (categories, colours, counts, yes/no) and ``n_boxes`` box strings."""
    corpus = list(tokenizer_corpus(seed, n_boxes=n_boxes))
    boxes = [t for t in corpus if t.startswith("[")]
    words = sorted({t for t in corpus if " " not in t and not t.endswith("?") and not t.startswith("[")})
    return words + boxes
