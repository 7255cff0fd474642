"""Scores of generated and edited images by the image judge (:mod:`mmcl.models.image_judge`).

CLIP weights cannot be downloaded here, so generated and edited images are scored by a judge
trained only on the synthetic generator's ground truth (:mod:`mmcl.synth.janus_world`: shape,
colour, position in the 3 x 3 grid, background colour; trained by :mod:`mmcl.pretrain.judge`),
never on model outputs, and kept out of every model's training.

Scores (both in [0, 1], 0 when no image was produced):

- text-to-image: :func:`t2i_score` = the fraction of the prompt's attributes (those the caption
  names, parsed by :func:`attributes_from_caption`) that the judge finds in the image;
- editing: :func:`edit_score` = ``w * attribute agreement + (1 - w) * pixel similarity``, with
  attribute agreement = fraction of the target's four attributes the judge finds in the edited
  image, pixel similarity = 1 - mean absolute difference to the target image (RGB in [0, 1],
  both at 64 x 64), ``w = 0.5`` by default. The attribute term checks the instruction was
  carried out; the pixel term rewards keeping the rest of the source image.
"""

from __future__ import annotations

import re
from typing import Any

from PIL import Image

from mmcl.eval.generate_image import generate_images_or_none
from mmcl.models.image_judge import ATTRIBUTE_NAMES, ImageJudge, to_tensor
from mmcl.synth.janus_world import ATTRIBUTES


def attributes_from_caption(text: str) -> dict[str, str]:
    """The attributes a caption names, e.g. "a red triangle at the top left on a white background"."""
    t = " " + re.sub(r"[^a-z ]", " ", text.lower()) + " "
    t = re.sub(r"\s+", " ", t)
    out: dict[str, str] = {}
    bg = re.search(r" on an? (\w+) background ", t)
    if bg and bg.group(1) in ATTRIBUTES["background"]:
        out["background"] = bg.group(1)
        t = t.replace(bg.group(0), " ")
    for pos in sorted(ATTRIBUTES["position"], key=len, reverse=True):  # "at the top left" before "at the top"
        if f" {pos} " in t:
            out["position"] = pos
            t = t.replace(f" {pos} ", " ")
            break
    for key in ("shape", "colour"):
        for v in ATTRIBUTES[key]:
            if re.search(rf"\b{v}\b", t):
                out[key] = v
                break
    return out


def t2i_score(judge: ImageJudge, image: Image.Image | None, prompt: str | dict[str, str]) -> float:
    """Fraction of the prompt's attributes the judge finds in ``image``; 0 when no image."""
    if image is None:
        return 0.0
    want = attributes_from_caption(prompt) if isinstance(prompt, str) else dict(prompt)
    if not want:
        raise ValueError(f"no judge attribute found in the prompt {prompt!r}")
    got = judge([image])[0]
    return sum(got[k] == v for k, v in want.items()) / len(want)


def pixel_similarity(a: Image.Image, b: Image.Image) -> float:
    """1 - mean absolute RGB difference (in [0, 1]) at 64 x 64."""
    return float(1.0 - (to_tensor([a]) - to_tensor([b])).abs().mean())


def edit_score(judge: ImageJudge, image: Image.Image | None, target: Image.Image,
               target_attrs: dict[str, str] | None = None, weight: float = 0.5) -> float:
    """``weight`` * judge agreement with the target's attributes + (1 - ``weight``) * pixel similarity; 0 when no image.

    ``target_attrs`` defaults to the generator's ground truth when given, else the judge's
    reading of ``target``.
    """
    if image is None:
        return 0.0
    want = target_attrs if target_attrs is not None else judge([target])[0]
    got = judge([image])[0]
    agree = sum(got[k] == v for k, v in want.items()) / len(want)
    return weight * agree + (1 - weight) * pixel_similarity(image, target)


def evaluate_text_to_image(model: Any, processor: Any, judge: ImageJudge, captions: list[str],
                           cfg_scale: float = 3.0, batch_size: int = 16) -> dict[str, Any]:
    """Generate one image per caption (greedy, CFG ``cfg_scale``) and score it with the judge.

    Returns the mean :func:`t2i_score` and, per attribute, the fraction of images whose judged
    value matches the caption's. An image the model cannot produce scores 0.
    """
    images = generate_images_or_none(model, processor, captions, cfg_scale=cfg_scale, batch_size=batch_size)
    scores = [t2i_score(judge, im, c) for im, c in zip(images, captions, strict=True)]
    per: dict[str, list[float]] = {k: [] for k in ATTRIBUTE_NAMES}
    for im, c in zip(images, captions, strict=True):
        got = judge([im])[0] if im is not None else {}
        for k, v in attributes_from_caption(c).items():
            per[k].append(float(got.get(k) == v))
    return {"t2i_score": sum(scores) / max(1, len(scores)),
            "per_attribute": {k: sum(v) / len(v) for k, v in per.items() if v},
            "n": len(captions), "cfg_scale": cfg_scale, "images": images}
