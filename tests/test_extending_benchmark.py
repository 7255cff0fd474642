"""The worked benchmark example of docs/extending.md runs: its files are copied out of the page,
imported as ``mmcl.benchmarks.counting`` (the one registration line of builtin.py) and a small
stream goes through a real run, report and ``compare --protocol``.

The run happens in a child process, so that the example's benchmark, scorer and protocol are
registered there only (the registries of this process stay as the package ships them).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"
SECTION = "## Adding a benchmark"
BLOCK = re.compile(r"^```python (file|line)=(\S+)\n(.*?)^```$", re.M | re.S)

DRIVER = r'''
import json, sys
from pathlib import Path

import torch

torch.set_num_threads(1)
import mmcl.benchmarks

mmcl.benchmarks.__path__.append(sys.argv[1])  # where the example's package was written
import mmcl.benchmarks.builtin  # noqa: F401
exec(sys.argv[2])  # the example's line of builtin.py

from typer.testing import CliRunner

from mmcl.benchmarks.builtin import benchmark_names, build_benchmark
from mmcl.cli import app
from mmcl.config import load_config
from mmcl.eval.scorers import score
from mmcl.report.protocols import PROTOCOLS
from mmcl.runner import Runner

model_dir, out = sys.argv[3], Path(sys.argv[4])
overrides = [
    f"model.path={model_dir}", "benchmark.name=counting-synth", "benchmark.train_size=16",
    "benchmark.test_size=4", "train.max_steps=2", "train.batch_size=8", "eval.batch_size=16",
]
bench = build_benchmark(load_config(overrides=overrides))
run_dir = Runner(load_config(overrides=overrides), output_dir=out / "run").run()
compared = CliRunner().invoke(app, ["compare", str(run_dir), "--protocol", "counting", "-o", str(out / "cmp")])
print(json.dumps({
    "registered": "counting-synth" in benchmark_names() and "counting" in PROTOCOLS,
    "tasks": bench.task_names,
    "first": [bench.tasks[0].test[0].question, bench.tasks[0].test[0].answers],
    "scores": [score("count_close", p, ["3"]) for p in ("3", "2", "5", "no")],
    "results": json.loads((run_dir / "results.json").read_text()),
    "report": (run_dir / "report.md").read_text(),
    "compare": [compared.exit_code, compared.output],
}))
'''


def example_files() -> tuple[dict[str, str], str]:
    """The example's files (path -> code) and its registration line, from the doc's section."""
    text = DOC.read_text(encoding="utf-8")
    assert SECTION in text, f"{DOC} has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    files: dict[str, str] = {}
    line = ""
    for kind, path, code in BLOCK.findall(section):
        if kind == "file":
            files[path] = code
        else:
            assert path == "src/mmcl/benchmarks/builtin.py"
            line = code.strip()
    return files, line


def test_the_example_is_one_package_and_one_registration_line() -> None:
    files, line = example_files()
    assert sorted(files) == [f"src/mmcl/benchmarks/counting/{n}" for n in
                             ("__init__.py", "protocol.py", "scorers.py", "stream.py")]
    assert re.fullmatch(r"import mmcl\.benchmarks\.counting  # noqa: F401 .*", line)
    assert not (ROOT / "src/mmcl/benchmarks/counting").exists()  # the example is not shipped


def test_the_worked_benchmark_example_runs(tiny_llava_dir: Path, tmp_path: Path) -> None:
    files, line = example_files()
    for path, code in files.items():
        target = tmp_path / "example" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code, encoding="utf-8")
    package_root = tmp_path / "example" / "src" / "mmcl" / "benchmarks"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(package_root), line, str(tiny_llava_dir), str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["registered"]
    assert got["tasks"] == ["circle", "square", "triangle"]
    question, answers = got["first"]
    assert question == "How many circles are there?" and answers[0] in {"1", "2", "3", "4"}
    assert got["scores"] == [1.0, 0.5, 0.0, 0.0]
    results = got["results"]
    assert results["benchmark"] == "counting-synth" and results["stages_complete"] == 3
    assert len(results["matrix"]["count_close"]) == 3
    assert all(v is not None and 0.0 <= v <= 1.0 for v in results["matrix"]["count_close"][-1])
    assert "## Counting protocol" in got["report"] and "| `circle` |" in got["report"]
    code, output = got["compare"]
    assert code == 0, output
    assert (tmp_path / "out" / "cmp" / "protocol-counting.md").is_file()
    table = json.loads((tmp_path / "out" / "cmp" / "protocol-counting.json").read_text())
    assert list(table) == [f"{results['name']} (lora-ft)"]


@pytest.mark.parametrize("name", ["counting-synth"])
def test_the_example_is_not_registered_in_this_process(name: str) -> None:
    from mmcl.benchmarks.builtin import benchmark_names

    assert name not in benchmark_names()
