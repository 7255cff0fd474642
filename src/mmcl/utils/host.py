"""What machine a run was computed on, as far as it can change the numbers.

The same config and seed give the same figures on one machine, but float results can differ
across CPUs: PyTorch picks its CPU kernels by instruction set (``AVX2``, ``AVX512``, ...), and a
different kernel sums in a different order. A long continual stream amplifies such last-bit
differences, so a run records the CPU it ran on, per stage as well (a resumed run may span
machines).
"""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

import torch


@cache
def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``, else ``unknown``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_signature() -> str:
    """One short string naming what decides the CPU kernels: model, PyTorch's ISA level, threads."""
    return f"{cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"


def host_info() -> dict[str, object]:
    """The host fields of ``results.json``: hostname, torch, CPU model, ISA level, cores."""
    return {
        "hostname": platform.node(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
    }
