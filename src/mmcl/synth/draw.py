"""Drawing primitives for the synthetic benchmarks: a named palette and glyphs drawn tight in a box.

A glyph is drawn in a pixel box ``(x1, y1, x2, y2)`` with ``x2``/``y2`` exclusive (the glyph
covers pixels ``x1..x2-1``; boxes and their text form: :mod:`mmcl.synth.boxes`).
Every glyph touches all four sides of its box, so the box is the tight bounding box of the
drawn pixels. Glyphs are designed in a unit square; ``transpose`` swaps the axes (a
horizontal design drawn vertically) and ``flip`` mirrors left-right.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from PIL import Image, ImageDraw

from mmcl.synth.boxes import PixelBox

Colour = tuple[int, int, int]

PALETTE: dict[str, Colour] = {
    "red": (225, 35, 35),
    "green": (40, 185, 60),
    "blue": (45, 85, 235),
    "yellow": (245, 220, 40),
    "purple": (155, 55, 200),
    "orange": (250, 135, 25),
}
"""The six object colours, well separated in hue. Object colours come only from here."""

COLOUR_NAMES: tuple[str, ...] = tuple(PALETTE)
WHITE: Colour = (255, 255, 255)
BLACK: Colour = (0, 0, 0)


def shade(colour: Colour, factor: float) -> Colour:
    """Scale a colour towards black (factor < 1) or white (factor > 1)."""
    if factor <= 1:
        return (int(colour[0] * factor), int(colour[1] * factor), int(colour[2] * factor))
    t = min(factor - 1, 1.0)
    return (
        int(colour[0] + (255 - colour[0]) * t),
        int(colour[1] + (255 - colour[1]) * t),
        int(colour[2] + (255 - colour[2]) * t),
    )


# ---------------------------------------------------------------- the pen


class Pen:
    """Draws on ``draw`` in the unit-square coordinates of one pixel box.

    ``(u, v) = (0, 0)`` is the box's top-left pixel and ``(1, 1)`` its bottom-right pixel.
    """

    def __init__(self, draw: ImageDraw.ImageDraw, box: PixelBox, transpose: bool = False, flip: bool = False):
        self.draw = draw
        self.x1, self.y1 = box[0], box[1]
        self.w, self.h = box[2] - box[0], box[3] - box[1]
        self.transpose = transpose
        self.flip = flip

    @property
    def thin(self) -> int:
        """A line width that reads at this box size (1 px for small boxes)."""
        return max(1, round(min(self.w, self.h) / 10))

    def pt(self, u: float, v: float) -> tuple[int, int]:
        if self.flip:
            u = 1.0 - u
        if self.transpose:
            u, v = v, u
        return (self.x1 + round(u * (self.w - 1)), self.y1 + round(v * (self.h - 1)))

    def _rect_px(self, u0: float, v0: float, u1: float, v1: float) -> tuple[int, int, int, int]:
        (a, b), (c, d) = self.pt(u0, v0), self.pt(u1, v1)
        return (min(a, c), min(b, d), max(a, c), max(b, d))

    def rect(self, u0: float, v0: float, u1: float, v1: float, fill: Colour) -> None:
        self.draw.rectangle(self._rect_px(u0, v0, u1, v1), fill=fill)

    def ellipse(
        self, u0: float, v0: float, u1: float, v1: float, fill: Colour | None = None,
        outline: Colour | None = None, width: int = 1,
    ) -> None:
        self.draw.ellipse(self._rect_px(u0, v0, u1, v1), fill=fill, outline=outline, width=width)

    def poly(self, points: Sequence[tuple[float, float]], fill: Colour) -> None:
        self.draw.polygon([self.pt(u, v) for u, v in points], fill=fill)

    def line(self, points: Sequence[tuple[float, float]], fill: Colour, width: int = 1) -> None:
        self.draw.line([self.pt(u, v) for u, v in points], fill=fill, width=width)


Glyph = Callable[[Pen, Colour], None]
GLYPHS: dict[str, Glyph] = {}


def glyph(name: str) -> Callable[[Glyph], Glyph]:
    def deco(fn: Glyph) -> Glyph:
        GLYPHS[name] = fn
        return fn

    return deco


def draw_glyph(
    image: Image.Image | ImageDraw.ImageDraw, name: str, colour: Colour, box: PixelBox,
    transpose: bool = False, flip: bool = False,
) -> None:
    """Draw glyph ``name`` in ``colour`` filling pixel box ``box`` (exclusive right/bottom)."""
    if name not in GLYPHS:
        raise KeyError(f"unknown glyph {name!r}; glyphs: {', '.join(sorted(GLYPHS))}")
    draw = ImageDraw.Draw(image) if isinstance(image, Image.Image) else image
    GLYPHS[name](Pen(draw, box, transpose, flip), colour)


DARK: Colour = (30, 30, 35)
SKIN: Colour = (235, 190, 150)

# ---- high altitude (nadir view); airplane nose up, vehicle and ship horizontal


@glyph("airplane")
def _airplane(p: Pen, c: Colour) -> None:
    p.rect(0.38, 0.0, 0.62, 1.0, c)  # fuselage
    p.poly([(0.0, 0.55), (0.5, 0.28), (1.0, 0.55), (1.0, 0.62), (0.0, 0.62)], c)  # swept wings
    p.rect(0.22, 0.86, 0.78, 1.0, c)  # tail plane


@glyph("storage-tank")
def _storage_tank(p: Pen, c: Colour) -> None:
    p.ellipse(0, 0, 1, 1, fill=shade(c, 0.55))
    d = 1.0 / max(p.w - 1, 1)
    p.ellipse(d, d, 1 - d, 1 - d, fill=c)
    if p.w >= 8:
        p.ellipse(0.4, 0.4, 0.6, 0.6, fill=shade(c, 1.4))  # roof vent


@glyph("vehicle")
def _vehicle(p: Pen, c: Colour) -> None:
    p.rect(0, 0, 1, 1, c)
    p.rect(0.62, 0.0, 0.75, 1.0, shade(c, 0.45))  # windscreen


@glyph("ship")
def _ship(p: Pen, c: Colour) -> None:
    p.poly([(0.0, 0.15), (0.62, 0.0), (1.0, 0.5), (0.62, 1.0), (0.0, 0.85)], c)
    p.rect(0.15, 0.4, 0.4, 0.6, shade(c, 1.5))  # bridge


# ---- underwater; fish faces right


@glyph("fish")
def _fish(p: Pen, c: Colour) -> None:
    p.poly([(0.0, 0.0), (0.32, 0.5), (0.0, 1.0)], shade(c, 0.7))  # tail
    p.ellipse(0.22, 0.05, 1.0, 0.95, fill=c)
    p.ellipse(0.22, 0.0, 0.9, 1.0, fill=c)
    p.rect(0.78, 0.35, 0.8, 0.4, DARK)  # eye


@glyph("crab")
def _crab(p: Pen, c: Colour) -> None:
    leg = shade(c, 0.7)
    for right in (False, True):  # legs and arms, left side then mirrored

        def m(u: float, right: bool = right) -> float:
            return 1.0 - u if right else u

        p.line([(m(0.3), 0.65), (m(0.0), 1.0)], leg)
        p.line([(m(0.3), 0.55), (m(0.02), 0.72)], leg)
        p.line([(m(0.3), 0.5), (m(0.12), 0.3)], leg)
    p.ellipse(0.0, 0.0, 0.3, 0.38, fill=c)  # claws
    p.ellipse(0.7, 0.0, 1.0, 0.38, fill=c)
    p.ellipse(0.18, 0.38, 0.82, 0.9, fill=c)  # shell


def _star_points(n: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    pts = []
    for i in range(2 * n):
        r = 1.0 if i % 2 == 0 else inner
        a = -math.pi / 2 + i * math.pi / n
        pts.append((r * math.cos(a), r * math.sin(a)))
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    return [((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in pts]


_STAR = _star_points()


@glyph("starfish")
def _starfish(p: Pen, c: Colour) -> None:
    p.poly(_STAR, c)


_DOME = [(0.5 + 0.5 * math.cos(a), 0.45 + 0.45 * math.sin(a)) for a in (math.pi * (1 + i / 12) for i in range(13))]


@glyph("jellyfish")
def _jellyfish(p: Pen, c: Colour) -> None:
    p.poly(_DOME, c)
    t = shade(c, 1.35)
    for i, u in enumerate((0.15, 0.38, 0.62, 0.85)):
        w = 0.08 if i % 2 == 0 else -0.08
        p.line([(u, 0.45), (u + w, 0.72), (u, 1.0)], t)


# ---- low altitude (oblique street view)


@glyph("car")
def _car(p: Pen, c: Colour) -> None:
    p.poly([(0.2, 0.0), (0.8, 0.0), (0.92, 0.4), (0.08, 0.4)], shade(c, 0.85))  # cabin
    p.rect(0.3, 0.1, 0.7, 0.3, DARK)  # rear window
    p.rect(0.0, 0.38, 1.0, 0.82, c)  # body
    p.rect(0.08, 0.82, 0.3, 1.0, DARK)  # wheels
    p.rect(0.7, 0.82, 0.92, 1.0, DARK)


@glyph("bus")
def _bus(p: Pen, c: Colour) -> None:
    p.rect(0.0, 0.0, 1.0, 0.84, c)
    n = 4
    for i in range(n):
        u0 = 0.08 + i * 0.86 / n
        p.rect(u0, 0.14, u0 + 0.86 / n - 0.08, 0.42, DARK)  # windows
    p.rect(0.1, 0.84, 0.26, 1.0, DARK)
    p.rect(0.74, 0.84, 0.9, 1.0, DARK)


@glyph("person")
def _person(p: Pen, c: Colour) -> None:
    p.ellipse(0.25, 0.0, 0.75, 0.24, fill=SKIN)
    p.rect(0.0, 0.24, 1.0, 0.62, c)  # shirt
    leg = shade(c, 0.5)
    p.rect(0.1, 0.62, 0.42, 1.0, leg)
    p.rect(0.58, 0.62, 0.9, 1.0, leg)


@glyph("bicycle")
def _bicycle(p: Pen, c: Colour) -> None:
    w = p.thin
    p.ellipse(0.0, 0.4, 0.42, 1.0, outline=DARK, width=w)  # wheels
    p.ellipse(0.58, 0.4, 1.0, 1.0, outline=DARK, width=w)
    p.line([(0.21, 0.7), (0.45, 0.3), (0.79, 0.7)], c, width=w)  # frame
    p.line([(0.21, 0.7), (0.55, 0.7), (0.45, 0.3)], c, width=w)
    p.line([(0.79, 0.7), (0.72, 0.0)], c, width=w)  # fork
    p.line([(0.6, 0.0), (0.85, 0.0)], c, width=w)  # handlebar
    p.line([(0.35, 0.18), (0.55, 0.18)], c, width=w)  # saddle


# ---- indoor (side view); chair faces right, cup handle on the right


@glyph("chair")
def _chair(p: Pen, c: Colour) -> None:
    d = shade(c, 0.7)
    p.rect(0.0, 0.0, 0.22, 1.0, c)  # backrest and back leg
    p.rect(0.0, 0.5, 1.0, 0.64, c)  # seat
    p.rect(0.8, 0.5, 1.0, 1.0, d)  # front leg


@glyph("table")
def _table(p: Pen, c: Colour) -> None:
    d = shade(c, 0.7)
    p.rect(0.06, 0.0, 0.2, 1.0, d)
    p.rect(0.8, 0.0, 0.94, 1.0, d)
    p.rect(0.0, 0.0, 1.0, 0.22, c)


@glyph("lamp")
def _lamp(p: Pen, c: Colour) -> None:
    p.rect(0.42, 0.38, 0.58, 0.9, DARK)  # pole
    p.rect(0.18, 0.88, 0.82, 1.0, DARK)  # base
    p.poly([(0.25, 0.0), (0.75, 0.0), (1.0, 0.42), (0.0, 0.42)], c)  # shade


@glyph("cup")
def _cup(p: Pen, c: Colour) -> None:
    p.ellipse(0.5, 0.18, 1.0, 0.72, outline=shade(c, 0.75), width=max(1, p.thin))  # handle
    p.rect(0.0, 0.0, 0.7, 1.0, c)
    p.rect(0.0, 0.0, 0.7, 0.14, shade(c, 0.5))  # rim / coffee


# ---- generic shapes (pre-training captions only)


@glyph("circle")
def _circle(p: Pen, c: Colour) -> None:
    p.ellipse(0, 0, 1, 1, fill=c)


@glyph("square")
def _square(p: Pen, c: Colour) -> None:
    p.rect(0, 0, 1, 1, c)


@glyph("triangle")
def _triangle(p: Pen, c: Colour) -> None:
    p.poly([(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)], c)


@glyph("diamond")
def _diamond(p: Pen, c: Colour) -> None:
    p.poly([(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)], c)


@glyph("bar")
def _bar(p: Pen, c: Colour) -> None:
    p.rect(0.0, 0.0, 1.0, 1.0, c)  # the caller gives a flat box


@glyph("ring")
def _ring(p: Pen, c: Colour) -> None:
    p.ellipse(0, 0, 1, 1, outline=c, width=max(2, round(min(p.w, p.h) / 4)))
