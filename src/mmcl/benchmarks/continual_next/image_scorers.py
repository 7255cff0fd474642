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

The judge is loaded once from ``$MMCL_IMAGE_JUDGE`` or the shipped ``assets/image-judge``
(:func:`mmcl.eval.outputs.get_judge`, which the evaluator also uses to class image answers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmcl.data.sample import Sample
from mmcl.eval.image_judge import attributes_from_caption, edit_score, t2i_score
from mmcl.eval.outputs import get_judge
from mmcl.eval.scorers import SCORERS, as_refs, sample_aware


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
    refs = as_refs(references)
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
    as_refs(references)
    sample = _need(sample, "cnext_edit")
    image = _image(prediction)
    if image is None:
        return 0.0
    target = sample.load_target_image()
    if target is None:
        raise ValueError(f"cnext_edit: sample {sample.id!r} has no target_image")
    return float(edit_score(get_judge(), image, target, sample.meta.get("attributes")))

