"""Load a model and its processor: a built-in preset or a local Hugging Face directory.

Both go through the same code: ``from_pretrained`` on a directory, offline. Nothing is
downloaded at run time; a hub id with no local copy gets a clear error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmcl.config import ModelConfig

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


class ModelLoadError(RuntimeError):
    """The model or its processor cannot be loaded; the message says why and what to do."""


@dataclass(frozen=True)
class Family:
    """What mmcl needs to know about a model family."""

    name: str
    model_class: str  # transformers class name
    lora_targets: str  # regex over module names: the language model's linear layers
    vision_lora_targets: str  # regex over module names: the vision encoder's linear layers
    vision_blocks: str  # attribute path of the vision encoder's block list
    projector: str  # attribute path of the vision->language projector


FAMILIES: dict[str, Family] = {
    "llava": Family(
        name="llava",
        model_class="LlavaForConditionalGeneration",
        lora_targets=r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)",
        vision_lora_targets=r".*vision_tower\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc\d)",
        vision_blocks="model.vision_tower.encoder.layers",
        projector="model.multi_modal_projector",
    ),
}


@dataclass
class ModelBundle:
    """A loaded model with its processor and family facts."""

    model: Any
    processor: Any
    family: Family
    source: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer


def preset_dir(name: str) -> Path:
    """Where a preset lives: $MMCL_HOME/<name>, else the package's shipped assets."""
    home = os.environ.get("MMCL_HOME")
    candidates = ([Path(home) / name] if home else []) + [ASSETS_DIR / name]
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    raise ModelLoadError(
        f"model preset {name!r} is not built (looked in {', '.join(str(c) for c in candidates)}). "
        f"Build it with `mmcl pretrain --output {candidates[-1]}`."
    )


PRESETS = {"tiny-llava"}


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _detect_family(path: Path) -> Family:
    cfg_file = path / "config.json"
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{cfg_file}: cannot read the model config: {e}") from None
    for fam in FAMILIES.values():
        if model_type == fam.name:
            return fam
    raise ModelLoadError(
        f"{cfg_file}: model_type {model_type!r} is not supported; supported: {', '.join(FAMILIES)}"
    )


def load_model(cfg: ModelConfig) -> ModelBundle:
    """Load the model named by ``cfg.path`` (a local directory) or ``cfg.preset``."""
    import transformers
    from transformers import AutoProcessor

    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not path.exists():
            looks_like_hub = "/" in cfg.path and not cfg.path.startswith((".", "/", "~"))
            hint = (
                " It looks like a Hugging Face hub id: mmcl never downloads at run time; download it "
                "beforehand (e.g. `huggingface-cli download ID --local-dir DIR`) and set model.path to DIR."
                if looks_like_hub
                else ""
            )
            raise ModelLoadError(f"model.path {cfg.path!r}: no such local directory.{hint}")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model.path {path}: no config.json, so this is not a saved model directory")
        source = str(path)
    else:
        if cfg.preset not in PRESETS:
            raise ModelLoadError(f"unknown model preset {cfg.preset!r}; presets: {', '.join(sorted(PRESETS))}")
        path = preset_dir(cfg.preset)
        source = f"preset:{cfg.preset}"
    family = _detect_family(path)
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(
            f"{path}: cannot load the processor (tokenizer + image processor): {e}. "
            "A model directory needs its processor files (save them with processor.save_pretrained)."
        ) from None
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ModelLoadError(f"{path}: the saved processor has no image processor or tokenizer")
    processor.tokenizer.padding_side = "left"
    cls = getattr(transformers, family.model_class)
    try:
        model = cls.from_pretrained(path, local_files_only=True, dtype=resolve_dtype(cfg.dtype))
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot load the model weights: {e}") from None
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return ModelBundle(model=model, processor=processor, family=family, source=source)
