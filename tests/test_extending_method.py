"""docs/extending.md's worked example of a method, run as written: extracted, registered, trained."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from conftest import run_quick

from mmcl.methods import METHODS

DOC = Path(__file__).resolve().parent.parent / "docs" / "extending.md"


def fenced_file(doc: Path, name: str) -> str:
    """The code of the fenced block marked ```` ```python file=<name> ```` in ``doc``."""
    blocks = re.findall(rf"^```python file={re.escape(name)}\n(.*?)^```$", doc.read_text(), flags=re.M | re.S)
    assert len(blocks) == 1, f"{doc.name} should hold one block marked file={name}, found {len(blocks)}"
    return blocks[0]


def test_the_worked_example_runs_and_its_hook_acts(
    tiny_llava_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = fenced_file(DOC, "my_method.py")
    path = tmp_path / "my_method.py"
    path.write_text(code)
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))  # the registration ends with the test
    spec = importlib.util.spec_from_file_location("my_method", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "my_method", module)
    spec.loader.exec_module(module)
    assert METHODS.get("l2-anchor") is module.L2Anchor

    res = run_quick(
        tiny_llava_dir, tmp_path / "run", "method.name=l2-anchor", "method.weight=10",
        "benchmark.order=[high-altitude.attribute, underwater.existence]", "eval.zero_shot=false",
        "train.num_threads=1",
    )
    assert res["method"] == "l2-anchor" and len(res["matrix"]["primary"]) == 2
    cost = res["cost"]
    # the hook acted: the penalty was added at every step of stage 1 (3 steps), none at stage 0
    assert cost["penalised_steps"] == 3 and cost["held_bytes"]["anchor"] > 0
    with pytest.raises(ValueError, match="method.weight: Input should be greater than or equal to 0"):
        METHODS.get("l2-anchor").parse_options({"weight": -1})
