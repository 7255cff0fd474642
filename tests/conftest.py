"""Shared fixtures: a tiny LLaVA checkpoint written with save_pretrained, run helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny LlavaForConditionalGeneration + processor saved with save_pretrained.

    Smaller than the shipped preset so that end-to-end tests are fast; it goes through
    exactly the loading path of a real checkpoint (``model.path``).
    """
    from mmcl.models.pretrain import tokenizer_corpus
    from mmcl.models.tiny_llava import TinyLlavaSize, build_model, build_processor
    from mmcl.models.tokenizer import train_tokenizer

    size = TinyLlavaSize(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=64, text_layers=2,
                         text_heads=2, text_intermediate=128)
    tok = train_tokenizer(tokenizer_corpus(0))
    out = tmp_path_factory.mktemp("tiny-llava")
    build_model(tok, size, seed=0).save_pretrained(out)
    build_processor(tok, size).save_pretrained(out)
    return out


def quick_overrides(model_dir: Path, *extra: str) -> list[str]:
    """Overrides for a very small msvqa-synth run on the test checkpoint."""
    return [
        f"model.path={model_dir}",
        "benchmark.order=[high-altitude.attribute, underwater.existence, indoor.grounding]",
        "benchmark.train_per_task=16",
        "benchmark.test_per_task=6",
        "train.max_steps=3",
        "train.batch_size=8",
        "eval.batch_size=16",
        *extra,
    ]
