"""Load a model and its processor: a built-in preset or a local Hugging Face directory.

Both go through the same code: ``from_pretrained`` on a directory, offline. Nothing is
downloaded at run time; a hub id with no local copy gets a clear error. The family (LLaVA,
LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Janus: see ``families.py``) comes from config.json and picks
the model class, the LoRA targets and the default chat template.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmcl.config import ModelConfig
from mmcl.models.dual import ensure_image_generation_config
from mmcl.models.families import FAMILIES, Family, UnsupportedFamilyError, detect_family, read_config

__all__ = ["FAMILIES", "Family", "ModelBundle", "ModelLoadError", "load_model", "preset_dir", "resolve_dtype"]

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


class ModelLoadError(RuntimeError):
    """The model or its processor cannot be loaded; the message says why and what to do."""


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
        f"Build it with `{_BUILD_COMMAND.get(name, 'mmcl pretrain')} --output {candidates[-1]}`."
    )


PRESETS = {"tiny-llava", "tiny-llava-generalist", "tiny-janus", "tiny-janus-generalist"}
_BUILD_COMMAND = {"tiny-llava": "mmcl pretrain", "tiny-llava-generalist": "mmcl pretrain --recipe generalist",
                  "tiny-janus": "mmcl pretrain-janus", "tiny-janus-generalist": "mmcl pretrain-janus --recipe generalist"}


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _detect_family(path: Path) -> Family:
    cfg_file = path / "config.json"
    try:
        config = read_config(path)
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{cfg_file}: cannot read the model config: {e}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{cfg_file}: the model config is not a JSON object")
    try:
        return detect_family(config)
    except UnsupportedFamilyError as e:
        raise ModelLoadError(f"{cfg_file}: {e}") from None


def _processor_without_video(path: Path, family: Family) -> Any:
    """The family's processor built from its local pieces, with no video processor.

    transformers' video processors need torchvision; without it ``AutoProcessor`` cannot build a
    Qwen2-VL processor at all, although mmcl only ever passes images. The tokenizer, the image
    processor and the chat template are loaded from ``path`` exactly as ``AutoProcessor`` would.
    """
    from transformers import AutoImageProcessor, AutoTokenizer

    cls = _processor_class(family)

    class _ImageOnly(cls):  # type: ignore[misc, valid-type]
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and argument is None:
                return type(None)
            return super().check_argument_for_proper_class(argument_name, argument)

    _ImageOnly.__name__ = _ImageOnly.__qualname__ = cls.__name__
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    template = None
    if (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text()
    else:
        for name in ("chat_template.json", "processor_config.json"):
            if (path / name).is_file():
                template = json.loads((path / name).read_text()).get("chat_template") or template
    kwargs: dict[str, Any] = {}
    if (path / "processor_config.json").is_file():
        saved = json.loads((path / "processor_config.json").read_text())
        params = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in saved.items() if k in params and k not in {"chat_template", "video_processor"}}
    return _ImageOnly(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                      chat_template=template, **kwargs)


def _load_processor(path: Path, family: Family) -> Any:
    """The checkpoint's processor, loaded from ``path`` only, with a chat template and left padding."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    def failed(e: Exception) -> ModelLoadError:
        return ModelLoadError(
            f"{path}: cannot load the processor (tokenizer + image processor): {e}. "
            "A model directory needs its processor files (save them with processor.save_pretrained)."
        )

    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError, ImportError, AttributeError) as e:
        has_video = "video_processor" in inspect.signature(_processor_class(family).__init__).parameters
        if not has_video or is_torchvision_available():
            raise failed(e) from None
        try:
            processor = _processor_without_video(path, family)
        except (OSError, ValueError, TypeError, ImportError, AttributeError) as e2:
            raise failed(e2) from None
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ModelLoadError(f"{path}: the saved processor has no image processor or tokenizer")
    if not getattr(processor, "chat_template", None):
        processor.chat_template = family.chat_template
    processor.tokenizer.padding_side = "left"
    return processor


def _processor_class(family: Family) -> type:
    import transformers

    return getattr(transformers, family.processor_class)


def load_model(cfg: ModelConfig) -> ModelBundle:
    """Load the model named by ``cfg.path`` (a local directory) or ``cfg.preset``."""
    import transformers

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
    processor = _load_processor(path, family)
    cls = getattr(transformers, family.model_class, None)
    if cls is None:
        raise ModelLoadError(
            f"{path}: the {family.name} family needs transformers.{family.model_class}, which this "
            f"transformers ({transformers.__version__}) does not have"
        )
    try:
        model = cls.from_pretrained(path, local_files_only=True, dtype=resolve_dtype(cfg.dtype))
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot load the model weights: {e}") from None
    except Exception as e:  # safetensors' SafetensorError (a cut-short file) is no OSError
        if type(e).__name__ != "SafetensorError":
            raise
        files = ", ".join(str(f) for f in sorted(Path(path).glob("*.safetensors"))) or str(path)
        raise ModelLoadError(
            f"{path}: cannot load the model weights: a weights file is damaged or cut short ({files}; "
            f"SafetensorError: {e}); copy the checkpoint again"
        ) from None
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    if family.name == "janus":  # image generation reads boi/pad/bos from the generation config
        ensure_image_generation_config(model, processor)
    return ModelBundle(model=model, processor=processor, family=family, source=source)
