"""Generic image-caption pairs for pre-training the tiny base model.

Deliberately unlike the continual tasks: a plain single-colour background and 1-2 large generic
shapes (circle, square, triangle, diamond, bar, ring) in the palette colours, each centred in its
own region of a 3 x 3 grid, captioned e.g. "a red circle at the top left and a blue square at the
bottom right." None of the benchmarks' scenes, categories or question formats appear. The shapes
and place names are :mod:`mmcl.synth.shapes`; the marks are msvqa-synth's (``MARKINGS``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from mmcl.benchmarks.msvqa.synth import MARKINGS, marking_box
from mmcl.data.sample import Sample
from mmcl.synth.draw import COLOUR_NAMES, PALETTE, Colour, draw_glyph
from mmcl.synth.shapes import REGIONS, SHAPES

CAPTION_INSTRUCTION = "Describe the image."
CAPTION_TASK = "pretrain.caption"

MARK_NAMES: tuple[str, ...] = ("white", "black", "cyan", "pink")
"""Names of the marking colours (``mmcl.benchmarks.msvqa.synth.MARKINGS``, same order); half the shapes carry one."""

BACKGROUNDS: tuple[Colour, ...] = ((255, 255, 255), (0, 0, 0), (128, 128, 128), (232, 224, 204), (36, 40, 60))


@dataclass(frozen=True)
class CaptionRenderer:
    """Zero-argument callable drawing one caption image (picklable, deterministic)."""

    image_size: int
    background: Colour
    shapes: tuple[tuple[str, str, tuple[int, int, int, int], str | None], ...]  # (shape, colour, pixel box, mark)

    def __call__(self) -> Image.Image:
        img = Image.new("RGB", (self.image_size, self.image_size), self.background)
        draw = ImageDraw.Draw(img)
        for shape, colour, box, mark in self.shapes:
            draw_glyph(draw, shape, PALETTE[colour], box)
            if mark is not None:
                draw.rectangle(marking_box(box), fill=MARKINGS[MARK_NAMES.index(mark)])
        return img


def _caption(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0] + "."
    return ", ".join(parts[:-1]) + " and " + parts[-1] + "."


def _region(box: tuple[int, int, int, int], s: int) -> tuple[int, int]:
    """The 3 x 3 grid cell (column, row) holding the centre of pixel box ``box``."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return (min(2, int(3 * cx / s)), min(2, int(3 * cy / s)))


def _one(rng: np.random.Generator, image_size: int) -> tuple[str, CaptionRenderer, list[dict[str, object]]]:
    """One or two large shapes: one shape is 30-60 % of the image side, two are 22-33 % each.

    Objects are large on purpose: a tiny language model learns to read what covers many image
    tokens in a few hundred steps, but not to pick out a small object among 64 tokens (see
    docs/learnability.md).
    """
    s = image_size
    n = 1 if rng.random() < 0.5 else 2
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    shapes: list[tuple[str, str, tuple[int, int, int, int], str | None]] = []
    for _ in range(200):
        if len(shapes) == n:
            break
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        lo, hi = (0.30, 0.60) if n == 1 else (0.22, 0.33)
        w = h = int(rng.integers(int(lo * s), int(hi * s) + 1))
        if shape == "bar":
            h = max(3, w // 3)
        x, y = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
        box = (x, y, x + w, y + h)
        region = _region(box, s)
        clash = any(
            _region(b, s) == region
            or not (box[2] + 2 <= b[0] or b[2] + 2 <= box[0] or box[3] + 2 <= b[1] or b[3] + 2 <= box[1])
            for _, _, b, _ in shapes
        )
        mark = MARK_NAMES[int(rng.integers(len(MARK_NAMES)))] if rng.random() < 0.5 else None
        if not clash:
            shapes.append((shape, colour, box, mark))
    shapes.sort(key=lambda t: _region(t[2], s)[::-1])
    parts, meta = [], []
    for shape, colour, box, mark in shapes:
        where = REGIONS[_region(box, s)]
        marked = f" with a {mark} mark" if mark else ""
        parts.append(f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}{marked} {where}")
        meta.append({"shape": shape, "colour": colour, "mark": mark, "region": where, "box": [v / s for v in box]})
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


SAY_TASK = "pretrain.say"


def say_samples(words: list[str], n: int, seed: int) -> list[Sample]:
    """Text-only "Say <word>." -> "<word>" samples over ``words`` (no image).

    The language side of the pre-training: a real LLM can already write every word of a
    benchmark's answers, but the tiny one has never produced most of them (its captions use
    only colours, shapes and places), and LoRA on its layers cannot retrain the output
    embeddings. No image is shown, so nothing about any task's visual question is learned.
    """
    rng = np.random.default_rng([seed % 2**64, 13])
    out = []
    for i in range(n):
        w = words[int(rng.integers(len(words)))]
        out.append(Sample(id=f"{SAY_TASK}-{seed}-{i:05d}", question=f"Say {w}.", answers=[w], task=SAY_TASK))
    return out
