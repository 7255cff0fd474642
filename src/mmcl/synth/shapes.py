"""The generic-shape vocabulary of the pre-training worlds: the six shapes and the 3 x 3 grid's place names.

Shared by the caption pre-training (:mod:`mmcl.pretrain.data`) and the tiny Janus's scene world
(:mod:`mmcl.synth.janus_world`); the shapes are drawn with :func:`mmcl.synth.draw.draw_glyph`.
See docs/data.md.
"""

from __future__ import annotations

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
