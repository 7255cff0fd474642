"""The report's section on sampled cells (``eval.matrix: sampled``, see :mod:`mmcl.eval.budget`)."""

from __future__ import annotations

import math
from typing import Any


def sampling_section(results: dict[str, Any]) -> str | None:
    """``## Sampled cells``: each sampled cell of the primary matrix as score ± standard error (n), or None."""
    s = results.get("sampling")
    if not s:
        return None
    tasks = results["tasks"]
    matrix = (results.get("matrix") or {}).get("primary") or []
    stderr = (s.get("stderr") or {}).get("primary") or []
    stages = results.get("stages") or []
    lines = []
    for t, row in enumerate(s.get("cells") or []):
        for j, sampled in enumerate(row):
            if not sampled:
                continue
            score = matrix[t][j] if t < len(matrix) else None
            se = stderr[t][j] if t < len(stderr) else None
            n = (s.get("n") or [[]])[t][j]
            shown = "–" if score is None else f"{100 * score:.1f}"
            err = "–" if se is None or (isinstance(se, float) and math.isnan(se)) else f"{100 * se:.1f}"
            lines.append(f"| {stages[t] if t < len(stages) else t + 1} | T{j + 1} `{tasks[j]}` | {shown} ± {err} | {n} |")
    used = s.get("metrics_from_sampled_cells") or []
    head = (
        f"## Sampled cells\n\n`eval.matrix: sampled`: the zero-shot row, the diagonal and the final row use the "
        f"full test sets; the {len(lines)} cells below use {s.get('sample_per_cell')} seeded items each "
        "(the same items at every stage). Score ± standard error (×100, finite-population corrected). "
        + (f"Metrics that read sampled cells: {', '.join(used)}; the others are exact." if used
           else "No metric reads a sampled cell.")
    )
    table = "| row | task | score ± s.e. | n |\n|---|---|---|---|\n" + "\n".join(lines)
    return head + ("\n\n" + table if lines else "")
