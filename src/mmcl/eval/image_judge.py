"""An independent image judge for generated images: a small CNN attribute classifier.

CLIP weights cannot be downloaded here, so generated and edited images are scored by a judge
trained only on the synthetic generator's ground truth (``mmcl.models.tiny_janus.draw_scene``:
shape, colour, position in the 3 x 3 grid, background colour), never on model outputs, and
kept out of every model's training. Its accuracy is measured per attribute on held-out
synthetic images drawn from a separate random stream (:func:`evaluate_judge`) and stored next
to its weights (``judge.json``); nothing is assumed.

Training images are jittered (object side 11-21 px, offset +-3 px) and augmented (box blur,
Gaussian noise, per-channel gain) so that the judge also reads the slightly blurred, noisy
images a VQ decoder produces.

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

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from mmcl.models.tiny_janus import ATTRIBUTES, IMAGE_SIZE, Scene, draw_scene

ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTES)


class JudgeNet(nn.Module):
    """Four stride-2 conv layers (64 -> 4 px) and one linear head per attribute."""

    def __init__(self, width: int = 32, classes: dict[str, int] | None = None):
        super().__init__()
        classes = classes or {k: len(v) for k, v in ATTRIBUTES.items()}
        chans = [3, width, 2 * width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.BatchNorm2d(b), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 16, 128), nn.ReLU())
        self.heads = nn.ModuleDict({k: nn.Linear(128, n) for k, n in classes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.hidden(self.features(x))
        return {k: head(h) for k, head in self.heads.items()}


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> [B, 3, 64, 64] in [0, 1] (resized when needed)."""
    arr = [np.asarray(im.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
                      if im.size != (IMAGE_SIZE, IMAGE_SIZE) else im.convert("RGB"), dtype=np.float32)
           for im in images]
    return torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2) / 255.0


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


class ImageJudge:
    """The trained judge: ``judge(images)`` -> one ``{attribute: value}`` dict per image."""

    def __init__(self, net: JudgeNet, info: dict[str, Any] | None = None):
        self.net = net.eval()
        self.info = info or {}

    @torch.no_grad()
    def predict_indices(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.argmax(-1) for k, v in self.net(x).items()}

    def __call__(self, images: list[Image.Image]) -> list[dict[str, str]]:
        if not images:
            return []
        pred = self.predict_indices(to_tensor(images))
        return [{k: ATTRIBUTES[k][int(pred[k][i])] for k in ATTRIBUTE_NAMES} for i in range(len(images))]


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
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    net.train()
    for step in range(recipe.steps):
        for group in opt.param_groups:
            group["lr"] = recipe.lr * 0.5 * (1 + np.cos(np.pi * step / max(1, recipe.steps)))
        idx = torch.randint(len(x), (recipe.batch_size,), generator=g)
        out = net(augment(x[idx], g))
        loss = sum(F.cross_entropy(out[k], y[k][idx]) for k in ATTRIBUTE_NAMES)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log(f"judge step {step} loss {loss.item():.4f}")
    judge = ImageJudge(net)
    xh, yh = synthetic_set(recipe.n_heldout, recipe.seed, stream=1)
    judge.info = {
        "recipe": asdict(recipe),
        "heldout_accuracy": evaluate_judge(judge, xh, yh),
        "heldout_accuracy_augmented": evaluate_judge(judge, augment(xh, torch.Generator().manual_seed(1)), yh),
        "train_seconds": time.time() - t0,
    }
    return judge


def save_judge(judge: ImageJudge, out_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.net.state_dict().items()}, str(out / "judge.safetensors"))
    width = judge.info.get("recipe", {}).get("width", judge.net.features[0].out_channels)
    info = dict(judge.info, width=width, attributes={k: list(v) for k, v in ATTRIBUTES.items()})
    (out / "judge.json").write_text(json.dumps(info, indent=2))
    return out


def load_judge(path: str | Path) -> ImageJudge:
    from safetensors.torch import load_file

    path = Path(path)
    info = json.loads((path / "judge.json").read_text())
    if info.get("attributes") != {k: list(v) for k, v in ATTRIBUTES.items()}:
        raise ValueError(f"{path}: the judge was trained on other attribute values than the current generator's")
    net = JudgeNet(info["width"])
    net.load_state_dict(load_file(str(path / "judge.safetensors")))
    return ImageJudge(net, info)


def default_judge_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "assets" / "image-judge"


# ---------------------------------------------------------------- scoring

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
    from mmcl.eval.generate_image import generate_images_or_none

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
