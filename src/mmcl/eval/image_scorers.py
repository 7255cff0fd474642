"""Scorers for image answers (Continual-NExT's text-to-image and editing tasks), by an independent judge.

The paper scores generated images with CLIP ViT-B/32 (text-image cosine for text-to-image,
image-image cosine for editing); CLIP weights cannot be downloaded here, so the judge is the
project's attribute classifier (:mod:`mmcl.models.image_judge`), trained only on the synthetic
generator's ground truth and never used in training. Both scorers are sample-aware (they read the
target attributes from ``sample.meta["attributes"]`` and the target image from the sample) and
give 0 when the answer is not an image (the paper: 0 when no image is produced).

``cnext_t2i``   share of the prompt's attributes (shape, colour, position, background) that the
                judge finds in the generated image (:func:`mmcl.eval.image_judge.t2i_score`).
``cnext_edit``  0.5 x the share of the target's attributes the judge finds + 0.5 x pixel
                similarity to the target image (:func:`mmcl.eval.image_judge.edit_score`).

The judge is loaded once from ``$MMCL_IMAGE_JUDGE`` or the shipped ``assets/image-judge``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmcl.eval.scorers import SCORERS, _as_refs, sample_aware

if TYPE_CHECKING:
    from mmcl.data.sample import Sample

JUDGE_ENV = "MMCL_IMAGE_JUDGE"
JUDGE_CATEGORIES = {"shape": "shapes", "colour": "colours", "background": "backgrounds"}
"""Judge attribute -> the ``meta["present"]`` category it fills (for hallucination in image answers)."""


@lru_cache(maxsize=4)
def _load(path: str) -> Any:
    from mmcl.models.image_judge import load_judge

    if not (Path(path) / "judge.json").is_file():
        raise FileNotFoundError(
            f"no image judge at {path} (judge.json missing); train one with mmcl.pretrain.judge.train_judge "
            f"or set ${JUDGE_ENV} to its directory"
        )
    return load_judge(path)


def get_judge() -> Any:
    """The image judge (cached): ``$MMCL_IMAGE_JUDGE`` or the shipped one."""
    from mmcl.models.image_judge import default_judge_dir

    return _load(str(os.environ.get(JUDGE_ENV) or default_judge_dir()))


def _image(prediction: Any) -> Any:
    return getattr(prediction, "image", None)


def _need(sample: Sample | None, scorer: str) -> Sample:
    if sample is None:
        raise ValueError(f"{scorer} needs the test sample (it is sample-aware)")
    return sample


@SCORERS.register("cnext_t2i")
@sample_aware
def cnext_t2i(prediction: str, references: Sequence[str], sample: Sample | None = None) -> float:
    """Judge agreement with the prompt's attributes; 0 without an image."""
    from mmcl.eval.image_judge import attributes_from_caption, t2i_score

    refs = _as_refs(references)
    sample = _need(sample, "cnext_t2i")
    image = _image(prediction)
    if image is None:
        return 0.0
    want = sample.meta.get("attributes") or attributes_from_caption(refs[0])
    return float(t2i_score(get_judge(), image, dict(want)))


@SCORERS.register("cnext_edit")
@sample_aware
def cnext_edit(prediction: str, references: Sequence[str], sample: Sample | None = None) -> float:
    """0.5 x judge agreement with the target's attributes + 0.5 x pixel similarity; 0 without an image."""
    from mmcl.eval.image_judge import edit_score

    _as_refs(references)
    sample = _need(sample, "cnext_edit")
    image = _image(prediction)
    if image is None:
        return 0.0
    target = sample.load_target_image()
    if target is None:
        raise ValueError(f"cnext_edit: sample {sample.id!r} has no target_image")
    return float(edit_score(get_judge(), image, target, sample.meta.get("attributes")))


def judged_content(image: Any) -> dict[str, list[str]]:
    """What the judge sees in ``image``, as ``{category: [name]}`` in ``meta["present"]`` categories."""
    got = get_judge()([image])[0]
    return {cat: [got[attr]] for attr, cat in JUDGE_CATEGORIES.items() if attr in got}
