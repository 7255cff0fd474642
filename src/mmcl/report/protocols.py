"""Benchmark protocols: a benchmark's own summary of a run, its report sections, its comparison of runs.

A benchmark that reports more than the common accuracy matrices and metrics (MSVQA's per-scenario
VQA / F1, Continual-NExT's Avg.HAL and cross-modal transfer...) subclasses :class:`Protocol` in
its package and registers one instance in :data:`PROTOCOLS`. The runner, ``report.md``,
``report.html`` and ``mmcl compare --protocol NAME`` go through this registry and never name a
benchmark. Registration happens when the benchmark package is imported: whoever reads the
registry imports ``mmcl.benchmarks.builtin`` first. Worked example: ``docs/extending.md``.

A protocol decides from a run's ``results.json`` whether it applies (a section method returns
None when not); several protocols may apply to one run. They are asked in registration order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcl.data.sample import Task
from mmcl.registry import Registry

RunResults = dict[str, Any]
"""One run's ``results.json``, as loaded."""


@dataclass
class HtmlTable:
    """A protocol's section of the HTML report, as plain text (the page escapes every cell).

    ``text_columns``: the first columns are left-aligned text, the others right-aligned numbers.
    ``notes`` and ``legend`` may hold `code` spans; notes already shown under *Runs* are dropped.
    """

    header: list[str]
    rows: list[list[str]]
    text_columns: int = 1
    notes: list[str] = field(default_factory=list)
    legend: str = ""


@dataclass
class Compared:
    """What ``mmcl compare --protocol NAME`` prints (a ``rich`` renderable or text) and the files it wrote."""

    shown: Any
    files: list[Path] = field(default_factory=list)


class Protocol:
    """Override what the benchmark reports; every method has a do-nothing default but :meth:`compare`.

    ``name`` is what ``mmcl compare --protocol`` takes (and the ``protocol-<name>.md/.json`` it
    writes); ``title`` heads the protocol's report sections.
    """

    name: str = ""
    title: str = ""

    def run_results(self, tasks: Sequence[Task], results: RunResults) -> dict[str, Any]:
        """Entries to add to ``results.json`` at the end of a run (``results`` holds the common ones)."""
        return {}

    def markdown_section(self, run_dir: Path, results: RunResults) -> str | None:
        """A section of the run's ``report.md`` (starting ``## <title>``), or None when the run has none."""
        return None

    def html_table(self, runs: Sequence[tuple[Path, RunResults]]) -> HtmlTable | None:
        """The protocol's section of ``report.html`` over these runs, or None (none of them has one)."""
        return None

    def compare(self, run_dirs: Sequence[Path], out_dir: Path | None = None) -> Compared:
        """Summarise several runs (seeds grouped as ``mmcl compare``); with ``out_dir``, write
        ``protocol-<name>.md`` and ``.json`` there. Raises ValueError / OSError for bad runs."""
        raise NotImplementedError(f"protocol {self.name!r} has no comparison")


PROTOCOLS: Registry[Protocol] = Registry("protocol")


def register_protocol(protocol: Protocol) -> Protocol:
    """Add ``protocol`` to :data:`PROTOCOLS` under its ``name``; returns it."""
    if not protocol.name:
        raise ValueError(f"{type(protocol).__name__} has no name")
    PROTOCOLS.add(protocol.name, protocol)
    return protocol


def protocols() -> list[Protocol]:
    """The registered protocols, in registration order (the order of the report sections)."""
    return PROTOCOLS.values()
