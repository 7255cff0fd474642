"""Shared fixtures: a tiny LLaVA checkpoint written with save_pretrained, run helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Under pytest-xdist (`-n 2`, as CI runs) each worker gets its share of the cores, so workers do
# not oversubscribe them; OMP_NUM_THREADS reaches the `mmcl` subprocesses some tests start.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _THREADS = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)

    import torch

    torch.set_num_threads(_THREADS)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny LlavaForConditionalGeneration + processor saved with save_pretrained.

    Smaller than the shipped preset so that end-to-end tests are fast; it goes through
    exactly the loading path of a real checkpoint (``model.path``).
    """
    from mmcl.models.tiny_llava import TinyLlavaSize, build_model, build_processor
    from mmcl.models.tokenizer import train_tokenizer
    from mmcl.pretrain.llava import tokenizer_corpus

    size = TinyLlavaSize(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=64, text_layers=2,
                         text_heads=2, text_intermediate=128)
    tok = train_tokenizer(tokenizer_corpus(0))
    out = tmp_path_factory.mktemp("tiny-llava")
    build_model(tok, size, seed=0).save_pretrained(out)
    build_processor(tok, size).save_pretrained(out)
    return out


def small_janus_size():
    """A tiny-Janus size for tests: 16 px patches (16 image tokens), codebook 64, a 2-layer LM."""
    from mmcl.models.tiny_janus import TinyJanusSize

    return TinyJanusSize(patch_size=16, vision_hidden=32, vision_layers=1, vision_heads=2, vq_codebook=64,
                         text_hidden=64, text_layers=2, text_heads=2, text_intermediate=128)


@pytest.fixture(scope="session")
def tiny_janus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised small JanusForConditionalGeneration + processor saved with save_pretrained."""
    import torch

    from mmcl.models import tiny_janus as tj

    torch.set_num_threads(1)
    size = small_janus_size()
    tok = tj.build_tokenizer(size.vocab_size)
    out = tmp_path_factory.mktemp("tiny-janus")
    tj.save_tiny_janus(tj.build_model(tok, size, seed=0), tj.build_processor(tok, size), out)
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


def build_test_method(model_dir: Path, name: str, *extra: str, setup: bool = True):
    """The configured method on the test checkpoint, built as the runner builds it (set up unless told)."""
    from mmcl.benchmarks.builtin import build_benchmark
    from mmcl.config import load_config
    from mmcl.methods import build_method
    from mmcl.models.loader import load_model
    from mmcl.runner import run_context, seed_everything

    cfg = load_config(overrides=quick_overrides(model_dir, f"method.name={name}", *extra))
    method = build_method(run_context(cfg, load_model(cfg.model), build_benchmark(cfg)))
    if setup:
        seed_everything(cfg.seed)
        method.setup(method.ctx.model)
    return method


def train_stage(method, t: int, finish: bool = True):
    """Stage ``t`` as the runner trains it: before_task, the shared loop, after_task (if ``finish``)."""
    from accelerate import Accelerator

    from mmcl.runner import seed_everything
    from mmcl.train.loop import train_on

    ctx = method.ctx
    task = ctx.benchmark.tasks[t]
    seed_everything(ctx.seed * 7919 + t)
    method.before_task(t, task)
    encoded = ctx.encode(method.train_samples(t, task), with_answer=True)
    stats = train_on(
        method, encoded, ctx.config.train, Accelerator(cpu=True), t, ctx.seed, ctx.bundle.tokenizer.pad_token_id,
        grad_clip=ctx.services.grad_clip,
    )
    if finish:
        method.after_task(t, task)
    return stats


def run_quick(model_dir: Path, out_dir: Path, *extra: str) -> dict:
    """A quick end-to-end run on the test checkpoint; returns its results.json."""
    import json

    from mmcl.config import load_config
    from mmcl.runner import Runner

    out = Runner(load_config(overrides=quick_overrides(model_dir, *extra)), output_dir=out_dir).run()
    return json.loads((out / "results.json").read_text())


def science_runs(*configs: Path):
    """The ``joint`` and ``sequential`` (lora-ft) module fixtures of a science test: one run each of
    the shipped model on ``configs`` (no predictions kept), their results.json.

    Use as ``joint, sequential = science_runs(CONFIG, ...)`` at module level. Each run prints its
    zero-shot row, matrix and metrics (shown with -s, or on failure).
    """
    import json

    from mmcl.config import load_config
    from mmcl.runner import Runner

    def run(out: Path, method: str) -> dict:
        cfg = load_config(list(configs), overrides=[f"method.name={method}", "eval.save_predictions=false"])
        results = json.loads((Runner(cfg, output_dir=out).run() / "results.json").read_text())
        print(method, "zero-shot", results["zero_shot"]["primary"])
        print(method, "matrix", results["matrix"]["primary"], "metrics", results["metrics"]["primary"])
        return results

    @pytest.fixture(scope="module")
    def joint(tmp_path_factory: pytest.TempPathFactory) -> dict:
        return run(tmp_path_factory.mktemp("joint"), "joint")

    @pytest.fixture(scope="module")
    def sequential(tmp_path_factory: pytest.TempPathFactory) -> dict:
        return run(tmp_path_factory.mktemp("lora-ft"), "lora-ft")

    return joint, sequential
