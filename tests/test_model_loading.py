"""Loading real Hugging Face checkpoint directories through model.path, offline."""

import shutil
from pathlib import Path

import pytest
import torch

from mmcl.config import ModelConfig
from mmcl.models.loader import ModelLoadError, load_model


def test_loads_save_pretrained_dir(tiny_llava_dir: Path) -> None:
    bundle = load_model(ModelConfig(path=str(tiny_llava_dir)))
    assert type(bundle.model).__name__ == "LlavaForConditionalGeneration"
    assert bundle.family.name == "llava"
    assert bundle.tokenizer.padding_side == "left"
    assert bundle.model.dtype == torch.float32  # fp32 on CPU


def test_hub_id_without_local_copy_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="never downloads"):
        load_model(ModelConfig(path="llava-hf/llava-1.5-7b-hf"))


def test_dir_without_processor(tiny_llava_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "no-proc"
    d.mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(tiny_llava_dir / f, d / f)
    with pytest.raises(ModelLoadError, match="processor"):
        load_model(ModelConfig(path=str(d)))


def test_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(ModelConfig(path=str(tmp_path)))


def test_unknown_preset() -> None:
    with pytest.raises(ModelLoadError, match="unknown model preset"):
        load_model(ModelConfig(preset="giant"))
