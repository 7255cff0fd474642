"""Benchmark registry. A benchmark factory takes the run's BenchmarkConfig and returns a Benchmark."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mmcl.registry import Registry

if TYPE_CHECKING:
    from mmcl.config import BenchmarkConfig
    from mmcl.data.sample import Benchmark

BenchmarkFactory = Callable[["BenchmarkConfig"], "Benchmark"]
BENCHMARKS: Registry[BenchmarkFactory] = Registry("benchmark")
