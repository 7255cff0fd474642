"""The built-in benchmarks, registered in one place, and :func:`build_benchmark`.

Importing this module imports every built-in benchmark package, which registers its benchmarks
(:data:`mmcl.benchmarks.BENCHMARKS`), its scorers (:data:`mmcl.eval.scorers.SCORERS`) and its
protocol (:data:`mmcl.report.protocols.PROTOCOLS`). Whoever looks one of them up by name imports
this module first. Adding a benchmark: one line here (docs/extending.md).
"""

from __future__ import annotations

# One line per benchmark package; importing it registers its benchmarks, scorers and protocol.
import mmcl.benchmarks.continual_next  # noqa: F401  continual-next-synth; cnext_* scorers; protocol cnext
import mmcl.benchmarks.hf_dataset  # noqa: F401  hf-dataset: your data as Hugging Face datasets
import mmcl.benchmarks.llava_json  # noqa: F401  llava-json: your data as LLaVA conversation JSON
import mmcl.benchmarks.mllm_cl  # noqa: F401  mllm-cl, mllm-dcl-synth, mllm-acl-synth; mllmcl_* scorers
import mmcl.benchmarks.msvqa  # noqa: F401  msvqa, msvqa-synth; protocol msvqa
from mmcl.benchmarks import BENCHMARKS
from mmcl.config import RunConfig
from mmcl.data.sample import Benchmark, set_max_image_pixels
from mmcl.utils.paths import check_name


def build_benchmark(cfg: RunConfig) -> Benchmark:
    """Build the configured benchmark; refuses task names that are not safe file names.

    The data seed is ``benchmark.seed`` (default 0), independent of the run seed, so that
    runs with different seeds differ in training randomness only, on the same data.
    """
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
    """Every registered benchmark name."""
    return BENCHMARKS.names()
