"""The image judge's network: a small CNN attribute classifier of 64 x 64 images, and its save/load.

It reads the four attributes of a scene of the tiny Janus's world (:mod:`mmcl.synth.janus_world`:
shape, colour, position in the 3 x 3 grid, background colour). It is trained only on the
generator's ground truth (:mod:`mmcl.pretrain.judge`), never on model outputs, and kept out of
every model's training; the shipped one is ``mmcl/assets/image-judge`` (``judge.safetensors`` +
``judge.json`` with its recipe and held-out accuracy). The scores built on it (text-to-image,
editing) are :mod:`mmcl.eval.image_judge`. See docs/continual-next.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from mmcl.synth.janus_world import ATTRIBUTES, IMAGE_SIZE

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
