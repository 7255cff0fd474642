"""Training of the image judge (:mod:`mmcl.models.image_judge`) on the generator's ground truth.

Training images are jittered random scenes of :mod:`mmcl.synth.janus_world` (object side 11-21
px, offset +-3 px) and augmented (box blur, Gaussian noise, per-channel gain) so that the judge
also reads the slightly blurred, noisy images a VQ decoder produces. Its accuracy is measured per
attribute on held-out synthetic images drawn from a separate random stream (:func:`evaluate_judge`)
and stored next to its weights (``judge.json``); nothing is assumed. The loop is the shared
primitive (:func:`mmcl.train.steps.fit`: Adam, a per-step cosine learning rate, no clipping).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmcl.models.image_judge import ATTRIBUTE_NAMES, ImageJudge, JudgeNet, to_tensor
from mmcl.synth.janus_world import ATTRIBUTES, Scene, draw_scene
from mmcl.train.steps import Optim, PerStepLR, Updates, fit


def synthetic_set(n: int, seed: int, stream: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` jittered random scenes from random stream (``seed``, ``stream``) and their labels."""
    rng = np.random.default_rng([seed % 2**32, 97, stream])
    images, labels = [], {k: [] for k in ATTRIBUTE_NAMES}
    for _ in range(n):
        vals = {k: int(rng.integers(len(v))) for k, v in ATTRIBUTES.items()}
        scene = Scene(**{k: ATTRIBUTES[k][i] for k, i in vals.items()})
        size = int(rng.integers(11, 22))
        offset = (int(rng.integers(-3, 4)), int(rng.integers(-3, 4)))
        images.append(draw_scene(scene, size, offset))
        for k, i in vals.items():
            labels[k].append(i)
    return to_tensor(images), {k: torch.tensor(v) for k, v in labels.items()}


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Box blur (half of the images), Gaussian noise (sd 0-0.06), per-channel gain 0.9-1.1."""
    b = x.shape[0]
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    pick = (torch.rand(b, 1, 1, 1, generator=g) < 0.5).float()
    x = pick * blurred + (1 - pick) * x
    x = x * (0.9 + 0.2 * torch.rand(b, 3, 1, 1, generator=g))
    x = x + torch.randn(x.shape, generator=g) * 0.06 * torch.rand(b, 1, 1, 1, generator=g)
    return x.clamp(0, 1)


@dataclass
class JudgeRecipe:
    seed: int = 0
    steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3
    n_train: int = 6000
    n_heldout: int = 2000
    width: int = 32


def evaluate_judge(judge: ImageJudge, x: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-attribute accuracy of ``judge`` on (``x``, ``labels``), computed from its predictions."""
    preds = {k: [] for k in ATTRIBUTE_NAMES}
    for i in range(0, len(x), 256):
        for k, v in judge.predict_indices(x[i:i + 256]).items():
            preds[k].append(v)
    acc = {k: float((torch.cat(preds[k]) == labels[k]).float().mean()) for k in ATTRIBUTE_NAMES}
    acc["all"] = float(torch.stack([torch.cat(preds[k]) == labels[k] for k in ATTRIBUTE_NAMES]).all(0).float().mean())
    return acc


def train_judge(recipe: JudgeRecipe | None = None, log: Any = print) -> ImageJudge:
    """Train on ground-truth synthetic images (stream 0), validate on held-out ones (stream 1)."""
    recipe = recipe or JudgeRecipe()
    t0 = time.time()
    torch.manual_seed(recipe.seed)
    g = torch.Generator().manual_seed(recipe.seed)
    x, y = synthetic_set(recipe.n_train, recipe.seed, stream=0)
    net = JudgeNet(recipe.width)
    updates = Updates(list(net.parameters()), Optim("adam", recipe.lr),
                      PerStepLR(lambda step: recipe.lr * 0.5 * (1 + np.cos(np.pi * step / max(1, recipe.steps)))),
                      zero_grad="before_backward")
    net.train()

    def batches() -> Any:
        while True:
            idx = torch.randint(len(x), (recipe.batch_size,), generator=g)
            yield idx, augment(x[idx], g)

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        idx, images = batch
        out = net(images)
        return sum(F.cross_entropy(out[k], y[k][idx]) for k in ATTRIBUTE_NAMES)

    def on_step(done: int, loss: torch.Tensor) -> None:
        if (done - 1) % 100 == 0:
            log(f"judge step {done - 1} loss {loss.item():.4f}")

    fit(updates, batches(), loss_fn, recipe.steps, on_step=on_step)
    judge = ImageJudge(net)
    xh, yh = synthetic_set(recipe.n_heldout, recipe.seed, stream=1)
    judge.info = {
        "recipe": asdict(recipe),
        "heldout_accuracy": evaluate_judge(judge, xh, yh),
        "heldout_accuracy_augmented": evaluate_judge(judge, augment(xh, torch.Generator().manual_seed(1)), yh),
        "train_seconds": time.time() - t0,
    }
    return judge
