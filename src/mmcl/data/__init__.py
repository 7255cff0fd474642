"""Samples, tasks, benchmarks and loaders for real data formats."""

from mmcl.data.sample import Benchmark, Sample, Task

__all__ = ["Benchmark", "Sample", "Task"]
