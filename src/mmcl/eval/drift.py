"""Visual drift: linear probes fitted once on the base model's image features (docs/metrics.md#drift).

Before the first stage, for every task whose samples name the objects they show, the image features
the language model receives (``get_image_features``: vision tower then projector, mean over the
image tokens) of the task's training images are computed with the untouched base model, and one
linear probe per task is fitted to tell the images' main category apart (ridge regression on
one-hot targets over standardised features: closed form, deterministic, no learning rate to tune).
After each stage the same probe reads the *current* features of the task's test images; its
accuracy is the drift track's cell. A model whose vision side does not change keeps the base
figure in every row; one whose vision features drift away from what the base separated loses it.

The probe is fitted once and never again, so it measures whether the current features still
separate the categories *the way the base did*, not whether some probe could be refitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from mmcl.adapters.pool import adapter_in_use
from mmcl.data.sample import Sample
from mmcl.train.feature_cache import inner_model

DRIFT_TRACK = "drift_probe"
RIDGE = 1e-2  # relative to the mean diagonal of X^T X; small, only keeps the solve well posed


def probe_label(sample: Sample) -> str | None:
    """The category of the largest object a sample's image shows (``meta["objects"]``), or None.

    Empty scenes and samples that do not list their objects have no label and are left out.
    """
    objects = sample.meta.get("objects") if sample.meta else None
    if not objects:
        return None

    def area(o: dict) -> float:
        x1, y1, x2, y2 = o["box"]
        return (x2 - x1) * (y2 - y1)

    return str(max(objects, key=area)["category"])


@dataclass
class LinearProbe:
    """A ridge one-vs-rest classifier over standardised features, fitted on base features."""

    mean: torch.Tensor  # [D]
    std: torch.Tensor  # [D]
    weight: torch.Tensor  # [D + 1, C] (last row: bias)
    classes: list[str]

    @classmethod
    def fit(cls, features: torch.Tensor, labels: Sequence[str], ridge: float = RIDGE) -> LinearProbe:
        if features.shape[0] != len(labels) or not labels:
            raise ValueError(f"a probe needs one label per feature row ({features.shape[0]} rows, {len(labels)} labels)")
        classes = sorted(set(labels))
        x = features.double()
        mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-8)
        z = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        y = torch.zeros(len(x), len(classes), dtype=x.dtype)
        y[torch.arange(len(x)), torch.tensor([classes.index(c) for c in labels])] = 1.0
        gram = z.T @ z
        lam = ridge * gram.diagonal().mean()
        w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=x.dtype), z.T @ y)
        return cls(mean, std, w, classes)

    def predict(self, features: torch.Tensor) -> list[str]:
        x = features.double()
        z = torch.cat([(x - self.mean) / self.std, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        return [self.classes[i] for i in (z @ self.weight).argmax(1).tolist()]

    def accuracy(self, features: torch.Tensor, labels: Sequence[str]) -> float:
        if not labels:
            return float("nan")
        hits = sum(p == t for p, t in zip(self.predict(features), labels, strict=True))
        return 100.0 * hits / len(labels)


def labelled(samples: Sequence[Sample]) -> tuple[list[Sample], list[str]]:
    """The samples that have a probe label, and their labels (same order)."""
    keep = [(s, lab) for s in samples if (lab := probe_label(s)) is not None]
    return [s for s, _ in keep], [lab for _, lab in keep]


def can_probe(samples: Sequence[Sample]) -> bool:
    """Whether a task's samples give a probe at least two categories to separate."""
    return len(set(labelled(samples)[1])) >= 2


DRIFT_MODEL_TYPES = ("llava", "janus")
"""Model types whose ``get_image_features(pixel_values)`` gives one ``[tokens, hidden]`` feature per image
(Qwen2-VL's needs the patch grid as well, LLaVA-NeXT's tiles: not read here)."""


def supports_drift(model: Any) -> bool:
    """Whether the model exposes the image features a probe reads (see :data:`DRIFT_MODEL_TYPES`)."""
    inner = inner_model(model)
    return inner is not None and getattr(getattr(inner, "config", None), "model_type", None) in DRIFT_MODEL_TYPES


@torch.no_grad()
def image_features(model: Any, processor: Any, samples: Sequence[Sample], batch_size: int = 32) -> torch.Tensor:
    """``[N, hidden]``: per sample, the mean over image tokens of what the language model receives.

    Read through ``get_image_features`` with whatever adapters and vision branches are active now,
    in eval mode, as float32 on the CPU (:meth:`DriftTrack.mark` activates a routed sample's adapter).
    """
    inner = inner_model(model)
    if inner is None:
        raise ValueError("the drift probe needs a model with get_image_features (LLaVA-style)")
    was_training = inner.training
    inner.eval()
    device = next(inner.parameters()).device
    rows: list[torch.Tensor] = []
    try:
        for i in range(0, len(samples), batch_size):
            images = [s.load_image() for s in samples[i:i + batch_size]]
            pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
            out = inner.get_image_features(pixel_values=pixels.to(device, next(inner.parameters()).dtype))
            per_image = out.pooler_output if hasattr(out, "pooler_output") else out
            rows += [f.float().mean(0).cpu() for f in per_image]
    finally:
        inner.train(was_training)
    return torch.stack(rows) if rows else torch.zeros(0, 0)


def _by_adapter(rows: Sequence[dict[str, Any]], keep: Sequence[int]) -> dict[str | None, list[int]]:
    """The indices ``keep`` grouped by the adapter their row was answered with (None: no routing)."""
    groups: dict[str | None, list[int]] = {}
    for i in keep:
        groups.setdefault(rows[i].get("adapter"), []).append(i)
    return groups


class DriftTrack:
    """The ``drift_probe`` track of a run: probes fitted once on the base, read after every stage.

    ``fit`` runs before the first stage on the base model (tasks whose samples name fewer than two
    categories get no probe and no cell); ``mark`` adds, to each prediction row of an evaluated
    task, 1/0 for whether the probe still names the test image's category from the current
    features (None for images without a label), so the track's cell is the probe's accuracy and
    resumed or re-read cells give the same figure. ``state_dict`` / ``load_state_dict`` keep the
    probes with the run (a resumed run can no longer see the base's features).
    """

    def __init__(self, train_images: int = 256) -> None:
        self.train_images = train_images
        self.probes: dict[str, LinearProbe] = {}

    def fit(self, model: Any, processor: Any, tasks: Sequence[Any], batch_size: int = 32) -> None:
        for task in tasks:
            samples, labels = labelled(task.train)
            samples, labels = samples[: self.train_images], labels[: self.train_images]
            if len(set(labels)) >= 2:
                self.probes[task.name] = LinearProbe.fit(image_features(model, processor, samples, batch_size), labels)

    def mark(self, model: Any, processor: Any, task: Any, rows: list[dict[str, Any]], batch_size: int = 32) -> float | None:
        """Write each row's ``tracks[DRIFT_TRACK]`` for ``task`` (rows in ``task.test`` order); returns the accuracy.

        A row that names the ``adapter`` it was answered with (a routing method, e.g. ``mr-lora``) has its
        features read through that adapter alone, so each sample is probed through the expert (and
        projector copy) that answered it, not through whichever adapter happens to be active.
        """
        probe = self.probes.get(task.name)
        if probe is None:
            return None
        labels = [probe_label(s) for s in task.test]
        keep = [i for i, lab in enumerate(labels) if lab is not None]
        hits: dict[int, bool] = {}
        for adapter, idx in _by_adapter(rows, keep).items():
            with adapter_in_use(model, adapter) if adapter is not None else nullcontext():
                predicted = probe.predict(image_features(model, processor, [task.test[i] for i in idx], batch_size))
            hits.update(zip(idx, (p == labels[i] for i, p in zip(idx, predicted, strict=True)), strict=True))
        for i, row in enumerate(rows):
            row.setdefault("tracks", {})[DRIFT_TRACK] = float(hits[i]) if i in hits else None
        return sum(hits.values()) / len(hits) if hits else None

    def state_dict(self) -> dict[str, Any]:
        return {name: {"mean": p.mean, "std": p.std, "weight": p.weight, "classes": p.classes}
                for name, p in self.probes.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probes = {name: LinearProbe(**p) for name, p in state.items()}
