"""The tiny Janus's scene world: one generic shape on a plain background at a point of a 3 x 3 grid.

A :class:`Scene` is (shape, colour, position, background), captioned e.g. "a red triangle at the
top left on a white background."; :func:`draw_scene` renders it at 64 x 64 px. The canonical
object is 16 px and centred on a grid point (16, 32, 48 px), so it covers exactly 2 x 2 cells of
the tiny Janus's VQ latent grid (8 px cells). The tiny Janus is pre-trained on this world
(:mod:`mmcl.pretrain.janus`), the image judge reads it (:mod:`mmcl.models.image_judge`) and the
Continual-NExT stream builds its tasks from it. See docs/continual-next.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product

import numpy as np
from PIL import Image, ImageDraw

from mmcl.synth.draw import COLOUR_NAMES, PALETTE, draw_glyph
from mmcl.synth.shapes import REGIONS, SHAPES

POSITIONS: tuple[tuple[int, int], ...] = tuple((c, r) for r in range(3) for c in range(3))
"""(column, row) of the 3 x 3 grid, row-major; ``REGIONS`` gives the caption phrase."""
POSITION_NAMES: tuple[str, ...] = tuple(REGIONS[p] for p in POSITIONS)
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUND_COLOURS)
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOUR_NAMES,
    "position": POSITION_NAMES,
    "background": BACKGROUND_NAMES,
}
"""Every ground-truth attribute of a scene and its values (the image judge predicts all four)."""

IMAGE_SIZE = 64
OBJECT_SIZE = 16  # canonical side in px: two VQ latent cells (8 px each)
GRID_STEP = 16  # px between the centres of neighbouring positions (centres at 16, 32, 48)
CAPTION_INSTRUCTION = "Describe the image."


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    position: str  # a POSITION_NAMES phrase, e.g. "at the top left"
    background: str

    def attributes(self) -> dict[str, str]:
        return asdict(self)

    def caption(self) -> str:
        art = "an" if self.colour[0] in "aeiou" else "a"
        return f"{art} {self.colour} {self.shape} {self.position} on a {self.background} background."


def all_scenes() -> list[Scene]:
    """Every (shape, colour, position, background) combination, in a fixed order."""
    return [Scene(*c) for c in product(SHAPES, COLOUR_NAMES, POSITION_NAMES, BACKGROUND_NAMES)]


def draw_scene(scene: Scene, size: int = OBJECT_SIZE, offset: tuple[int, int] = (0, 0),
               image_size: int = IMAGE_SIZE) -> Image.Image:
    """Render ``scene``: the shape (side ``size`` px) centred on its grid point, moved by ``offset``.

    The grid points sit at ``image_size / 4 * (1, 2, 3)`` (16, 32, 48 px at 64 px): the canonical
    16 px object then covers exactly 2 x 2 VQ latent cells (8 px), see the module docstring."""
    img = Image.new("RGB", (image_size, image_size), BACKGROUND_COLOURS[scene.background])
    col, row = POSITIONS[POSITION_NAMES.index(scene.position)]
    step = image_size / 4
    cx, cy = (col + 1) * step + offset[0], (row + 1) * step + offset[1]
    w = h = size
    if scene.shape == "bar":
        h = max(3, size // 3)
    x1, y1 = int(round(cx - w / 2)), int(round(cy - h / 2))
    draw_glyph(ImageDraw.Draw(img), scene.shape, PALETTE[scene.colour], (x1, y1, x1 + w, y1 + h))
    return img


def random_scene(rng: np.random.Generator, jitter: bool = True,
                 scenes: list[Scene] | None = None) -> tuple[Scene, Image.Image]:
    """A random scene (from ``scenes`` when given) and its image; ``jitter`` varies size (13-19 px) and offset (+-2 px)."""
    pool = scenes if scenes is not None else None
    if pool is not None:
        scene = pool[int(rng.integers(len(pool)))]
    else:
        scene = Scene(*(vals[int(rng.integers(len(vals)))] for vals in ATTRIBUTES.values()))
    if jitter:
        size = int(rng.integers(13, 20))
        offset = (int(rng.integers(-2, 3)), int(rng.integers(-2, 3)))
        return scene, draw_scene(scene, size, offset)
    return scene, draw_scene(scene)
