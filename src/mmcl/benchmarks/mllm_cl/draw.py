"""Drawing functions for ``mllm-dcl-synth`` and ``mllm-acl-synth`` (see :mod:`mmcl.benchmarks.mllm_cl.synth`).

Each function draws one scene from a plain parameter dict on a ``size`` x ``size`` canvas. All
coordinates in the parameters are on a 64 x 64 design grid and scaled to ``size``; the random
generator only adds texture (noise, background details), never anything a question asks about.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from mmcl.synth.draw import PALETTE, Colour, draw_glyph, shade

Params = dict[str, Any]
Drawer = Callable[[np.random.Generator, int, Params], Image.Image]

DRAWERS: dict[str, Drawer] = {}


def drawer(name: str) -> Callable[[Drawer], Drawer]:
    def register(fn: Drawer) -> Drawer:
        DRAWERS[name] = fn
        return fn

    return register


def colour(name_or_rgb: str | Colour) -> Colour:
    """A palette colour by name, or an RGB triple as is."""
    if isinstance(name_or_rgb, str):
        return PALETTE[name_or_rgb]
    return tuple(int(v) for v in name_or_rgb)  # type: ignore[return-value]


def _scale(box: tuple[float, ...], size: int) -> tuple[int, ...]:
    k = size / 64
    return tuple(round(v * k) for v in box)


def _canvas(rng: np.random.Generator, size: int, base: Colour, noise: float) -> Image.Image:
    arr = np.zeros((size, size, 3)) + np.array(base, float)
    if noise:
        arr += rng.normal(0.0, noise, (size, size, 1))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------- DCL: remote sensing


FIELD_COLOURS: tuple[Colour, ...] = ((86, 112, 62), (104, 96, 66), (76, 98, 58), (112, 118, 74))
WATER: Colour = (40, 80, 160)
TANK: Colour = (236, 236, 230)


@drawer("rs")
def draw_rs(rng: np.random.Generator, size: int, p: Params) -> Image.Image:
    """Aerial field patches, optional water over one half, white storage tanks (circles)."""
    img = _canvas(rng, size, FIELD_COLOURS[int(p["ground"])], 5)
    d = ImageDraw.Draw(img)
    for x, y, w, h, c in p["patches"]:  # darker field patches
        d.rectangle(_scale((x, y, x + w, y + h), size), fill=FIELD_COLOURS[c])
    vertical, road = p["road"]
    if vertical:
        d.rectangle(_scale((road, 0, road + 2, 64), size), fill=(130, 130, 134))
    else:
        d.rectangle(_scale((0, road, 64, road + 2), size), fill=(130, 130, 134))
    side = p.get("water")
    if side:
        e = int(p.get("extent", 30))
        half = {
            "left": (0, 0, e, 64),
            "right": (64 - e, 0, 64, 64),
            "top": (0, 0, 64, e),
            "bottom": (0, 64 - e, 64, 64),
        }
        d.rectangle(_scale(half[side], size), fill=WATER)
    for x, y, r in p.get("tanks", ()):
        d.ellipse(_scale((x - r, y - r, x + r, y + r), size), fill=TANK, outline=(60, 60, 60))
    return img


# ---------------------------------------------------------------- DCL: pathology


STAIN_BG: Colour = (236, 178, 206)
CELL_BODIES: dict[str, Colour] = {
    "circle": (200, 110, 200),
    "ring": (130, 60, 150),
    "diamond": (110, 120, 215),
}
"""Each cell type takes up the stain in its own tone (as real cell types do)."""


@drawer("med")
def draw_med(rng: np.random.Generator, size: int, p: Params) -> Image.Image:
    """Pink stained tissue with cells: ``cells`` is a list of (x, y, r); ``shape`` circle/ring/diamond."""
    img = _canvas(rng, size, STAIN_BG, 6)
    d = ImageDraw.Draw(img)
    for _ in range(12):  # faint fibres
        x, y = (float(v) for v in rng.uniform(0, 64, 2))
        dx, dy = (float(v) for v in rng.uniform(-10, 10, 2))
        d.line(_scale((x, y, x + dx, y + dy), size), fill=(220, 150, 190), width=1)
    abnormal = bool(p["abnormal"])
    shape = p["shape"]
    body = CELL_BODIES[shape] if not abnormal else shade(CELL_BODIES[shape], 0.7)
    nucleus = (110, 50, 140) if not abnormal else (30, 5, 40)
    for x, y, r in p["cells"]:
        box = _scale((x - r, y - r, x + r, y + r), size)
        if shape == "diamond":
            draw_glyph(d, "diamond", body, (box[0], box[1], box[2] + 1, box[3] + 1))
        else:
            d.ellipse(box, fill=body)
        if shape == "ring":
            k = r * 0.55
            d.ellipse(_scale((x - k, y - k, x + k, y + k), size), fill=STAIN_BG)
            nr = r * (0.35 if not abnormal else 0.5)
            d.ellipse(_scale((x + r * 0.45 - nr, y - nr, x + r * 0.45 + nr, y + nr), size), fill=nucleus)
        else:
            nr = r * (0.35 if not abnormal else 0.6)
            d.ellipse(_scale((x - nr, y - nr, x + nr, y + nr), size), fill=nucleus)
    return img


# ---------------------------------------------------------------- DCL: autonomous driving


VIEW_W, VIEW_H = 21, 32  # one camera view on the 64 grid: 3 columns x 2 rows (the last column is 22 wide)
LIGHTS: dict[str, Colour] = {"red": (240, 30, 30), "yellow": (250, 220, 30), "green": (30, 210, 60)}


def view_box(camera: int) -> tuple[int, int, int, int]:
    """The design-grid box of camera ``camera`` (1..6, row-major: 1-3 top, 4-6 bottom)."""
    col, row = (camera - 1) % 3, (camera - 1) // 3
    x0 = col * VIEW_W + (1 if col == 2 else 0)
    return (x0, row * VIEW_H, x0 + VIEW_W, row * VIEW_H + VIEW_H)


@drawer("ad")
def draw_ad(rng: np.random.Generator, size: int, p: Params) -> Image.Image:
    """A 2 x 3 mosaic of camera views (sky, road); a car in view ``car``, a traffic light in ``light``."""
    img = Image.new("RGB", (size, size), (20, 20, 20))
    d = ImageDraw.Draw(img)
    skies = p.get("skies") or [int(v) for v in rng.integers(150, 200, 6)]
    for cam, sky in zip(range(1, 7), skies, strict=True):
        x0, y0, x1, y1 = view_box(cam)
        d.rectangle(_scale((x0, y0, x1 - 1, y0 + 12), size), fill=(sky - 40, sky - 10, sky + 40))
        d.rectangle(_scale((x0, y0 + 12, x1 - 1, y1 - 1), size), fill=(96, 98, 100))
        cx = (x0 + x1) / 2
        d.line(_scale((cx, y0 + 13, cx, y1 - 1), size), fill=(220, 220, 200), width=1)
    if p.get("car"):
        x0, y0, x1, y1 = view_box(int(p["car"]))
        dx, dy = p.get("car_shift", (0, 0))
        draw_glyph(
            d,
            "car",
            colour(p["car_colour"]),
            _scale((x0 + 2 + dx, y0 + 14 + dy, x1 - 2 + dx, y1 - 3 + dy), size),
        )
    if p.get("light"):
        x0, y0, _, _ = view_box(2)
        lx = x0 + 7 + int(p.get("light_shift", 0))
        d.rectangle(_scale((lx, y0 + 2, lx + 8, y0 + 26), size), fill=(25, 25, 25))
        slot = {"red": 0, "yellow": 1, "green": 2}[p["light"]]
        for i in range(3):
            fill = LIGHTS[p["light"]] if i == slot else (60, 60, 60)
            d.ellipse(_scale((lx + 1, y0 + 3 + 8 * i, lx + 7, y0 + 9 + 8 * i), size), fill=fill)
    return img


# ---------------------------------------------------------------- DCL: science diagrams


@drawer("map")
def draw_map(rng: np.random.Generator, size: int, p: Params) -> Image.Image:
    """A region map: ``regions`` is a list of (colour name, design box); a thin border between them."""
    img = Image.new("RGB", (size, size), (240, 240, 235))
    d = ImageDraw.Draw(img)
    for name, box in p["regions"]:
        d.rectangle(_scale(box, size), fill=shade(PALETTE[name], 0.95), outline=(40, 40, 40))
    return img


CYCLE_SLOTS: tuple[tuple[int, int], ...] = (
    (32, 12),
    (50, 46),
    (14, 46),
)  # clockwise: top, bottom right, bottom left
SHAPE_COLOURS: dict[str, str] = {"circle": "red", "square": "blue", "triangle": "green", "diamond": "orange"}


@drawer("cycle")
def draw_cycle(rng: np.random.Generator, size: int, p: Params) -> Image.Image:
    """Three shapes on a triangle of slots, joined clockwise by arrows."""
    img = Image.new("RGB", (size, size), (250, 250, 245))
    d = ImageDraw.Draw(img)
    n = len(CYCLE_SLOTS)
    for i in range(n):
        (ax, ay), (bx, by) = CYCLE_SLOTS[i], CYCLE_SLOTS[(i + 1) % n]
        ux, uy = bx - ax, by - ay
        norm = (ux * ux + uy * uy) ** 0.5
        ux, uy = ux / norm, uy / norm
        sx, sy, ex, ey = ax + 11 * ux, ay + 11 * uy, bx - 11 * ux, by - 11 * uy
        d.line(_scale((sx, sy, ex, ey), size), fill=(30, 30, 30), width=max(1, size // 32))
        px, py = -uy, ux
        head = [
            (ex, ey),
            (ex - 5 * ux + 3 * px, ey - 5 * uy + 3 * py),
            (ex - 5 * ux - 3 * px, ey - 5 * uy - 3 * py),
        ]
        d.polygon([tuple(_scale(pt, size)) for pt in head], fill=(30, 30, 30))
    for (x0, y0), shape, (dx, dy) in zip(
        CYCLE_SLOTS, p["shapes"], p.get("jitter", ((0, 0),) * n), strict=True
    ):
        x, y = x0 + dx, y0 + dy
        box = _scale((x - 9, y - 9, x + 9, y + 9), size)
        draw_glyph(d, shape, PALETTE[SHAPE_COLOURS[shape]], box)
    return img


# ---------------------------------------------------------------- DCL: finance


CANDLE_UP: Colour = (30, 180, 70)
CANDLE_DOWN: Colour = (220, 40, 40)


@drawer("candles")
def draw_candles(rng: np.random.Generator, size: int, p: Params) -> Image.Image:
    """Six candles: ``candles`` is a list of (open, close, low, high) in design-grid y (0 = top)."""
    img = Image.new("RGB", (size, size), (250, 250, 250))
    d = ImageDraw.Draw(img)
    for y in range(8, 64, 14):
        d.line(_scale((0, y, 64, y), size), fill=(225, 225, 225))
    for i, (o, c, lo, hi) in enumerate(p["candles"]):
        x = 2 + 10 * i
        col = CANDLE_UP if c < o else CANDLE_DOWN  # y grows downwards: close above open = up day
        d.line(_scale((x + 4, hi, x + 4, lo), size), fill=(40, 40, 40), width=max(1, size // 64))
        d.rectangle(_scale((x + 1, min(o, c), x + 7, max(o, c)), size), fill=col)
    return img


# ---------------------------------------------------------------- ACL: OCR


@lru_cache(maxsize=32)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if features.check("freetype2"):
        return ImageFont.load_default(size=px)
    return ImageFont.load_default()  # pragma: no cover - Pillow without FreeType: small bitmap font


@drawer("text")
def draw_text(rng: np.random.Generator, size: int, p: Params) -> Image.Image:
    """``text`` in ``ink`` on ``paper`` at font height ``font`` (design px), centred on ``at``."""
    img = _canvas(rng, size, colour(p["paper"]), 3)
    d = ImageDraw.Draw(img)
    font = _font(max(6, round(p["font"] * size / 64)))
    cx, cy = _scale(p["at"], size)
    d.text(
        (cx, cy), p["text"], fill=colour(p["ink"]), font=font, anchor="mm", stroke_width=p.get("stroke", 0)
    )
    return img


# ---------------------------------------------------------------- ACL: math charts


@drawer("line")
def draw_line(rng: np.random.Generator, size: int, p: Params) -> Image.Image:
    """A line plot through ``points`` (design grid) with axes."""
    img = Image.new("RGB", (size, size), colour(p["paper"]))
    d = ImageDraw.Draw(img)
    if p.get("grid"):
        for v in range(12, 64, 10):
            d.line(_scale((6, v, 62, v), size), fill=(200, 200, 200))
            d.line(_scale((v, 2, v, 58), size), fill=(200, 200, 200))
    d.line(_scale((6, 2, 6, 58), size), fill=(30, 30, 30), width=max(1, size // 64))
    d.line(_scale((6, 58, 62, 58), size), fill=(30, 30, 30), width=max(1, size // 64))
    pts = [tuple(_scale(pt, size)) for pt in p["points"]]
    d.line(pts, fill=colour(p["ink"]), width=max(1, round(p["width"] * size / 64)), joint="curve")
    return img


BAR_UNIT = 12  # design px per unit of bar height


@drawer("bars")
def draw_bars(rng: np.random.Generator, size: int, p: Params) -> Image.Image:
    """Two bars of ``heights`` units with a tick every unit."""
    img = Image.new("RGB", (size, size), colour(p["paper"]))
    d = ImageDraw.Draw(img)
    base = 58
    for k in range(0, 5):
        y = base - k * BAR_UNIT
        d.line(_scale((4, y, 8, y), size), fill=(60, 60, 60))
        if p.get("grid"):
            d.line(_scale((8, y, 62, y), size), fill=(205, 205, 205))
    d.line(_scale((8, 4, 8, base), size), fill=(30, 30, 30), width=max(1, size // 64))
    d.line(_scale((8, base, 62, base), size), fill=(30, 30, 30), width=max(1, size // 64))
    for (x, w), h, ink in zip(p["slots"], p["heights"], p["inks"], strict=True):
        d.rectangle(_scale((x, base - h * BAR_UNIT, x + w - 1, base - 1), size), fill=colour(ink))
    return img


# ---------------------------------------------------------------- ACL: vision-centric perception


@drawer("shapes")
def draw_shapes(rng: np.random.Generator, size: int, p: Params) -> Image.Image:
    """Generic shapes: ``objects`` is a list of (shape, colour name or RGB, design box)."""
    img = _canvas(rng, size, colour(p["paper"]), 2)
    d = ImageDraw.Draw(img)
    for shape, fill, box in p["objects"]:
        draw_glyph(d, shape, colour(fill), _scale(box, size))
    return img


# ---------------------------------------------------------------- ACL: GUI


@drawer("gui")
def draw_gui(rng: np.random.Generator, size: int, p: Params) -> Image.Image:
    """An app screen: a status bar and ``buttons`` (colour, design box); theme light, tinted or dark."""
    dark = p["theme"] == "dark"
    page = {"dark": (34, 36, 44), "tinted": (226, 232, 248)}.get(p["theme"], (246, 246, 248))
    img = Image.new("RGB", (size, size), page)
    d = ImageDraw.Draw(img)
    d.rectangle(_scale((0, 0, 63, 2), size), fill=(70, 72, 90) if dark else (200, 200, 210))
    labels = p.get("labels", (4,) * len(p["buttons"]))
    for (fill, box), label in zip(p["buttons"], labels, strict=True):
        rgb = colour(fill)
        x0, y0, x1, y1 = _scale(box, size)
        if p.get("rounded"):
            d.rounded_rectangle(
                (x0, y0, x1 - 1, y1 - 1), radius=max(1, size // 20), fill=rgb, outline=(90, 90, 90)
            )
        else:
            d.rectangle((x0, y0, x1 - 1, y1 - 1), fill=rgb, outline=(90, 90, 90))
        length = round(label * size / 64)
        # a label-like stroke of ``label`` design px, left-aligned (right-aligned with ``labels_right``)
        tx = x1 - (x1 - x0) // 6 - length if p.get("labels_right") else x0 + (x1 - x0) // 6
        ty = (y0 + y1) // 2
        d.line(
            (tx, ty, tx + length, ty),
            fill=(255, 255, 255) if dark else (40, 40, 40),
            width=1,
        )
    return img
