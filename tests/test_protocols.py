"""The benchmark registries: every built-in benchmark package registers its parts, and the generic
layers (runner, report, rescore, cli) find them by name without naming a benchmark themselves."""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import pytest

import mmcl.benchmarks
from mmcl.benchmarks import BENCHMARKS, DATA_VALIDATORS
from mmcl.benchmarks.builtin import benchmark_names
from mmcl.eval.scorers import SCORERS
from mmcl.registry import UnknownNameError
from mmcl.report.protocols import PROTOCOLS, Protocol, protocols

SRC = Path(__file__).resolve().parents[1] / "src" / "mmcl"
GENERIC = [SRC / "runner.py", SRC / "rescore.py", SRC / "cli.py", *sorted((SRC / "report").glob("*.py"))]
PACKAGES = sorted(m.name for m in pkgutil.iter_modules(mmcl.benchmarks.__path__) if m.ispkg)


def test_every_builtin_benchmark_package_is_registered() -> None:
    assert PACKAGES == ["continual_next", "mllm_cl", "msvqa"]
    assert benchmark_names() == [
        "continual-next-synth", "hf-dataset", "llava-json", "mllm-acl-synth", "mllm-cl", "mllm-dcl-synth",
        "msvqa", "msvqa-synth",
    ]
    assert {n for n in SCORERS.names() if n.startswith(("cnext_", "mllmcl_"))} >= {
        "cnext_text", "cnext_grounding", "cnext_t2i", "cnext_edit", "mllmcl_ai2d", "mllmcl_sci",
    }
    assert DATA_VALIDATORS.names() == ["msvqa"]


@pytest.mark.parametrize("name", ["msvqa", "cnext"])
def test_every_builtin_protocol_is_found_by_name(name: str) -> None:
    protocol = PROTOCOLS.get(name)
    assert isinstance(protocol, Protocol) and protocol.name == name and protocol.title
    assert protocol in protocols()


def test_an_unknown_protocol_says_what_exists() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown protocol 'cnxt'\. Did you mean 'cnext'\?.*msvqa"):
        PROTOCOLS.get("cnxt")


def _literals_and_imports(path: Path) -> tuple[set[str], set[str]]:
    strings, modules = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.add(node.value)
        elif isinstance(node, ast.Import):
            modules |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules |= {f"{node.module}.{a.name}" for a in node.names}
    return strings, modules


@pytest.mark.parametrize("path", GENERIC, ids=lambda p: str(p.relative_to(SRC)))
def test_generic_layers_never_name_a_benchmark(path: Path) -> None:
    """No string equal to a benchmark, protocol or package name (``== "msvqa"``, ``results["continual_next"]``),
    and no import of a benchmark package: they go through the registries."""
    names = set(BENCHMARKS.names()) | set(PROTOCOLS.names()) | set(PACKAGES) | {"continual_next", "mllm_cl"}
    strings, modules = _literals_and_imports(path)
    assert not strings & names, f"{path.name} names {sorted(strings & names)}"
    allowed = {"mmcl.benchmarks.builtin", "mmcl.benchmarks.BENCHMARKS", "mmcl.benchmarks.DATA_VALIDATORS"}
    inside = {m for m in modules if m.startswith("mmcl.benchmarks")} - allowed
    assert not {m for m in inside if not m.startswith("mmcl.benchmarks.builtin.")}, f"{path.name} imports {inside}"
