"""Do two runs agree on everything but timings? ``python scripts/same_runs.py RUN_A RUN_B [RUN_A2 RUN_B2 ...]``

Compares results.json (matrices, zero-shot row, metrics, and stage statistics and costs with every
timing, memory and throughput key left out), matrix.csv byte for byte, and every predictions file
byte for byte. Used to check that a refactor changes no figure (e.g. issue 24: the four quick
configs run before and after the redesign, one thread each). Exit status 1 if any pair differs.
"""

from __future__ import annotations

import filecmp
import json
import sys
from pathlib import Path
from typing import Any

TIMING = ("second", "time", "per_s", "_s", "mb", "memory", "throughput", "mfu")


def without_timings(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: without_timings(v) for k, v in x.items() if not any(t in k for t in TIMING)}
    if isinstance(x, list):
        return [without_timings(v) for v in x]
    return x


def differences(a: Path, b: Path) -> list[str]:
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    out = [f"results.json key {k!r}" for k in sorted(set(ra) | set(rb))
           if without_timings(ra.get(k)) != without_timings(rb.get(k))]
    if not filecmp.cmp(a / "matrix.csv", b / "matrix.csv", shallow=False):
        out.append("matrix.csv")
    pa = sorted(p.relative_to(a) for p in (a / "predictions").rglob("*.jsonl"))
    pb = sorted(p.relative_to(b) for p in (b / "predictions").rglob("*.jsonl"))
    if pa != pb:
        out.append(f"prediction files: {len(pa)} vs {len(pb)}")
    out += [str(p) for p in pa if p in pb and not filecmp.cmp(a / p, b / p, shallow=False)]
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2 or len(argv) % 2:
        print(__doc__)
        return 2
    bad = 0
    for a, b in zip(argv[::2], argv[1::2], strict=True):
        diff = differences(Path(a), Path(b))
        n = len(list((Path(a) / "predictions").rglob("*.jsonl")))
        print(f"{a} vs {b}: " + ("identical up to timings" if not diff else "DIFFER: " + ", ".join(diff))
              + f" ({n} prediction files)")
        bad += bool(diff)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
