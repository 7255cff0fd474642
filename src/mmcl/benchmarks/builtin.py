"""Import the built-in benchmarks (which registers them) and build one from a run config."""

from __future__ import annotations

from mmcl.benchmarks import BENCHMARKS
from mmcl.config import RunConfig
from mmcl.data.sample import Benchmark


def _register_builtins() -> None:
    from mmcl.benchmarks import (  # noqa: F401
        continual_next_synth,
        hf_dataset,
        llava_json,
        mllm_cl,
        mllm_cl_synth,
        msvqa,
        msvqa_synth,
    )


def build_benchmark(cfg: RunConfig) -> Benchmark:
    """Build the configured benchmark; refuses task names that are not safe file names.

    The data seed is ``benchmark.seed`` (default 0), independent of the run seed, so that
    runs with different seeds differ in training randomness only, on the same data.
    """
    from mmcl.data.sample import set_max_image_pixels
    from mmcl.utils.paths import check_name

    _register_builtins()
    factory = BENCHMARKS.get(cfg.benchmark.name)
    set_max_image_pixels(cfg.benchmark.max_image_pixels)  # images are checked while the stream is built
    bench = factory(cfg.benchmark)
    for t in bench.tasks:  # a task name becomes predictions/<stage>/<task>.jsonl
        check_name(t.name, f"benchmark {cfg.benchmark.name!r}: task name")
    if not bench.tasks:
        raise ValueError(f"benchmark {cfg.benchmark.name!r} has no tasks after applying order/subset options")
    for t in bench.tasks:
        if not t.test:
            raise ValueError(f"benchmark {cfg.benchmark.name!r}: task {t.name!r} has no test samples")
    return bench


def benchmark_names() -> list[str]:
    _register_builtins()
    return BENCHMARKS.names()
