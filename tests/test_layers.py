"""The import graph of src/mmcl: layers only point down, no cycles (docs/extending.md, DESIGN "Layers").

Every ``import`` / ``from ... import`` of an mmcl module is read from the source (module level and
inside functions; blocks under ``if TYPE_CHECKING:`` are skipped: they never run). A module may
import its own package and any lower layer; never a higher layer, never another package of its own
layer (core, layer 0, is one: its modules only have to form no cycle). Methods use the run context's services, so they never import ``mmcl.train`` or ``mmcl.eval``.
Imports inside functions are only allowed in the command-line layer (lazy, so that ``mmcl --help``
does not load torch).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mmcl"

# lowest first; a module's layer is the entry of its longest matching prefix
LAYERS: dict[str, int] = {
    "mmcl": 0, "mmcl.config": 0, "mmcl.registry": 0, "mmcl.metrics": 0,
    "mmcl.utils": 0, "mmcl.data": 0, "mmcl.synth": 0,
    "mmcl.models": 1,
    "mmcl.adapters": 2,
    "mmcl.train": 3,
    "mmcl.eval": 4,  # evaluation encodes with train's encoder
    "mmcl.methods": 5, "mmcl.report": 5,
    "mmcl.benchmarks": 6,
    "mmcl.pretrain": 7, "mmcl.checkpoint": 7,
    "mmcl.rundir": 8,
    "mmcl.runner": 9, "mmcl.rescore": 9,
    "mmcl.bench": 10, "mmcl.cli": 11,
}
LAZY_OK = 10  # layers from here on may import inside functions
NO_RUNTIME = {"mmcl.methods": ("mmcl.train", "mmcl.eval")}


def modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = ("mmcl", *path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def group(module: str) -> str:
    """The LAYERS key a module belongs to (its package, or the module itself at the top)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    raise KeyError(f"{module} is in no layer: add its package to LAYERS in tests/test_layers.py")


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported mmcl module, line, inside a function) for every import of ``name``."""
    found: list[tuple[str, int, bool]] = []

    def resolve(node: ast.ImportFrom) -> list[str]:
        if node.level:
            base = name.split(".")
            if path.name != "__init__.py":
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        return [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, local)
                continue
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                targets = resolve(child)
            for t in targets:
                if t == "mmcl" or t.startswith("mmcl."):
                    while t not in known and "." in t:
                        t = t.rsplit(".", 1)[0]
                    if t != name:
                        found.append((t, child.lineno, local))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def graph() -> tuple[dict[str, Path], dict[str, list[tuple[str, int, bool]]]]:
    known = modules()
    return known, {m: imports(m, p, known) for m, p in known.items()}


def violations() -> list[str]:
    known, edges = graph()
    bad = []
    for mod, targets in sorted(edges.items()):
        g = group(mod)
        where = known[mod].relative_to(SRC.parent) if known[mod].is_relative_to(SRC) else known[mod]
        for target, line, local in targets:
            h = group(target)
            if target == "mmcl":  # the package root: version only
                continue
            if LAYERS[h] > LAYERS[g]:
                bad.append(f"{where}:{line}: {mod} (layer {LAYERS[g]}) imports {target} (layer {LAYERS[h]}): upward")
            elif LAYERS[h] == LAYERS[g] and h != g and LAYERS[g] > 0:  # core is one layer; cycles are caught below
                bad.append(f"{where}:{line}: {mod} imports {target}: sideways between two packages of layer {LAYERS[g]}")
            elif local and LAYERS[g] < LAZY_OK:
                bad.append(f"{where}:{line}: {mod} imports {target} inside a function: import it at the top")
            for pkg, banned in NO_RUNTIME.items():
                if g == pkg and target.startswith(banned):
                    bad.append(f"{where}:{line}: {mod} imports {target}: methods use the run context's services")
    return list(dict.fromkeys(bad))  # one line per import statement, not per imported name


def cycles() -> list[list[str]]:
    """Strongly connected components (Tarjan) of more than one module."""
    _, edges = graph()
    adj = {m: sorted({t for t, _, _ in ts}) for m, ts in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in adj.get(v, []):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(adj):
        if v not in index:
            strong(v)
    return out


def test_every_module_has_a_layer() -> None:
    for mod in modules():
        group(mod)


def test_no_upward_or_sideways_import() -> None:
    bad = violations()
    assert not bad, f"{len(bad)} imports against the layers:\n" + "\n".join(bad)


def test_no_import_cycle() -> None:
    found = cycles()
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("source, expected", [
    ("from mmcl.cli import app\n", "upward"),
    ("def f():\n    from mmcl.config import RunConfig\n", "inside a function"),
    ("from mmcl.report import compare\n", "sideways"),
])
def test_the_walker_sees_a_bad_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      source: str, expected: str) -> None:
    """A planted bad import in a methods module is reported (the check can fail)."""
    known = modules()
    fake = tmp_path / "planted.py"
    fake.write_text("from __future__ import annotations\n" + source)
    known["mmcl.methods.planted"] = fake
    assert imports("mmcl.methods.planted", fake, known), source
    monkeypatch.setattr(sys.modules[__name__], "modules", lambda: known)
    assert any(expected in v for v in violations() if "planted" in v)


def test_type_checking_imports_are_ignored(tmp_path: Path) -> None:
    fake = tmp_path / "typed.py"
    fake.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mmcl.cli import app\n")
    assert imports("mmcl.models.typed", fake, modules()) == []
