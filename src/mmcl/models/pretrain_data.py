"""Generic image-caption pairs for pre-training the tiny base model.

Deliberately unlike the continual tasks: a plain single-colour background and 1-3 generic
shapes (circle, square, triangle, diamond, bar, ring) in the palette colours, each in its own
region of a 3 x 3 grid, captioned e.g. "a red circle at the top left and a blue square at the
bottom right." None of the benchmarks' scenes, categories or question formats appear.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from mmcl.benchmarks.synth_draw import COLOUR_NAMES, PALETTE, Colour, draw_glyph
from mmcl.data.sample import Sample

CAPTION_INSTRUCTION = "Describe the image."
CAPTION_TASK = "pretrain.caption"
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "bar", "ring")

# (column, row) of the 3 x 3 grid -> phrase used in captions
REGIONS: dict[tuple[int, int], str] = {
    (0, 0): "at the top left",
    (1, 0): "at the top",
    (2, 0): "at the top right",
    (0, 1): "on the left",
    (1, 1): "in the center",
    (2, 1): "on the right",
    (0, 2): "at the bottom left",
    (1, 2): "at the bottom",
    (2, 2): "at the bottom right",
}

BACKGROUNDS: tuple[Colour, ...] = ((255, 255, 255), (0, 0, 0), (128, 128, 128), (232, 224, 204), (36, 40, 60))


@dataclass(frozen=True)
class CaptionRenderer:
    """Zero-argument callable drawing one caption image (picklable, deterministic)."""

    image_size: int
    background: Colour
    shapes: tuple[tuple[str, str, tuple[int, int, int, int]], ...]  # (shape, colour, pixel box)

    def __call__(self) -> Image.Image:
        img = Image.new("RGB", (self.image_size, self.image_size), self.background)
        draw = ImageDraw.Draw(img)
        for shape, colour, box in self.shapes:
            draw_glyph(draw, shape, PALETTE[colour], box)
        return img


def _caption(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0] + "."
    return ", ".join(parts[:-1]) + " and " + parts[-1] + "."


def _one(rng: np.random.Generator, image_size: int) -> tuple[str, CaptionRenderer, list[dict[str, object]]]:
    s = image_size
    cell = s // 3
    n = int(rng.integers(1, 4))
    regions = sorted(
        (list(REGIONS)[int(i)] for i in rng.choice(len(REGIONS), size=n, replace=False)),
        key=lambda cr: (cr[1], cr[0]),
    )
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    shapes, parts, meta = [], [], []
    for col, row in regions:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        if shape == "bar":
            w, h = int(rng.integers(cell * 2 // 3, cell)), int(rng.integers(max(3, cell // 6), max(4, cell // 4) + 1))
        else:
            w = h = int(rng.integers(cell * 2 // 5, cell * 4 // 5 + 1))
        x = col * cell + int(rng.integers(0, cell - w + 1))
        y = row * cell + int(rng.integers(0, cell - h + 1))
        box = (x, y, x + w, y + h)
        shapes.append((shape, colour, box))
        parts.append(f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape} {REGIONS[(col, row)]}")
        meta.append({"shape": shape, "colour": colour, "region": REGIONS[(col, row)], "box": [v / s for v in box]})
    return _caption(parts), CaptionRenderer(s, background, tuple(shapes)), meta


def caption_samples(n: int, seed: int, image_size: int = 64) -> list[Sample]:
    """``n`` caption samples; sample ``i`` depends only on (``seed``, ``i``, ``image_size``)."""
    out = []
    for i in range(n):
        caption, renderer, meta = _one(np.random.default_rng([seed % 2**64, 11, i]), image_size)
        out.append(
            Sample(
                id=f"{CAPTION_TASK}-{seed}-{i:05d}",
                question=CAPTION_INSTRUCTION,
                answers=[caption],
                image=renderer,
                task=CAPTION_TASK,
                meta={"objects": meta},
            )
        )
    return out


def caption_corpus(seed: int, n: int = 2000) -> Iterator[str]:
    """The instruction and ``n`` captions as plain text (no image is drawn), for tokenizer training."""
    yield CAPTION_INSTRUCTION
    for s in caption_samples(n, seed):
        yield s.answers[0]
