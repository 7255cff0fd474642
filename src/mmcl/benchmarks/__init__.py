"""Benchmark registries. A benchmark factory takes the run's BenchmarkConfig and returns a Benchmark.

One package per benchmark (``benchmarks/<name>/``: stream, generator and drawing, scorers,
protocol), registered in one place, :mod:`mmcl.benchmarks.builtin`. See docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from mmcl.registry import Registry

if TYPE_CHECKING:
    from mmcl.config import BenchmarkConfig
    from mmcl.data.sample import Benchmark

BenchmarkFactory = Callable[["BenchmarkConfig"], "Benchmark"]
BENCHMARKS: Registry[BenchmarkFactory] = Registry("benchmark")


class DataReport(Protocol):
    """What a data validator returns: ``ok`` (no problem found) and a text rendering."""

    @property
    def ok(self) -> bool: ...

    def render(self) -> str: ...


DataValidator = Callable[..., DataReport]
"""``validate(benchmark_config, check_images=True)``: check a benchmark's data without training."""
DATA_VALIDATORS: Registry[DataValidator] = Registry("data validator")
"""Benchmark name -> its data validator, for ``mmcl validate-data`` (e.g. ``msvqa``)."""
