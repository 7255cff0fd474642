"""Cross-modal transfer from the full accuracy matrix (Continual-NExT, arXiv 2602.18055).

The paper observes cross-modal transfer (e.g. VQAv2 accuracy recovering after OCR-VQA is
trained) without a formula; this is our measurable version (see
``docs/continual-next-metrics.md``). With ``A[t][j]`` the score on task j after stage t
(T x T, 0-based, row t = after training task t) and ``pair[j]`` task j's modality pair
(e.g. ``"image+text->text"``, ``"text->image"``, ``"image+text->image"``):

- for every stage ``t >= 1`` and every task already learned before it (``j < t``), the
  transfer of training task t onto task j is ``delta(t, j) = A[t][j] - A[t-1][j]``
  (positive: learning t helped j; negative: it made j forget). Pairs with a None cell are
  skipped.
- ``same_pair_mean``: mean of ``delta(t, j)`` over pairs with ``pair[t] == pair[j]``;
  ``different_pair_mean``: over pairs with ``pair[t] != pair[j]`` (None when there is none).
- ``per_pair``: mean and count of ``delta(t, j)`` for every (trained pair, evaluated pair).

The classic metrics come from :func:`mmcl.metrics.compute_metrics` (not recomputed here):
``New.ACC`` = ``mft`` = ``mean_t A[t][t]``; ``Avg.ACC`` = ``last`` = ``mean_j A[T-1][j]``;
``Forgetting`` = ``forgetting`` = ``mean_{j<T-1} (max_{j<=t<T-1} A[t][j] - A[T-1][j])``.
Cells above the diagonal (future tasks) may be None: none of these three reads them. A None on
or below the diagonal makes the three metrics None (``missing`` lists such cells).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from mmcl.metrics import compute_metrics


@dataclass(frozen=True)
class TransferDelta:
    """One ``delta(t, j) = A[t][j] - A[t-1][j]``: the change on learned task j when task t is trained."""

    stage: int
    task: int
    delta: float
    trained_pair: str
    evaluated_pair: str

    @property
    def same_pair(self) -> bool:
        return self.trained_pair == self.evaluated_pair


@dataclass
class CrossModalReport:
    """Result of :func:`cross_modal_transfer` (see the module docstring for the formulas)."""

    deltas: list[TransferDelta]
    same_pair_mean: float | None
    same_pair_n: int
    different_pair_mean: float | None
    different_pair_n: int
    per_pair: dict[tuple[str, str], tuple[float, int]]
    """(trained pair, evaluated pair) -> (mean delta, number of (t, j) pairs)."""
    new_acc: float | None
    avg_acc: float | None
    forgetting: float | None
    missing: list[tuple[int, int]] = field(default_factory=list)
    """Cells on or below the diagonal that are None."""

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dictionary."""
        return {
            "New.ACC": self.new_acc,
            "Avg.ACC": self.avg_acc,
            "Forgetting": self.forgetting,
            "transfer_same_pair": self.same_pair_mean,
            "transfer_same_pair_n": self.same_pair_n,
            "transfer_different_pair": self.different_pair_mean,
            "transfer_different_pair_n": self.different_pair_n,
            "transfer_per_pair": [
                {"trained": tr, "evaluated": ev, "mean_delta": m, "n": n}
                for (tr, ev), (m, n) in self.per_pair.items()
            ],
            "deltas": [
                {
                    "stage": d.stage,
                    "task": d.task,
                    "delta": d.delta,
                    "trained": d.trained_pair,
                    "evaluated": d.evaluated_pair,
                    "same_pair": d.same_pair,
                }
                for d in self.deltas
            ],
            "missing": [list(c) for c in self.missing],
        }


def _mean(xs: Sequence[float]) -> float | None:
    return math.fsum(xs) / len(xs) if xs else None


def _cell(value: object, t: int, j: int) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"A[{t}][{j}] must be a number or None, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"A[{t}][{j}] is {x}; scores must be finite (use None for a missing cell)")
    return x


def _normalize_pair(pair: str) -> str:
    if not isinstance(pair, str) or "->" not in pair:
        raise ValueError(
            f"a modality pair must be a string 'inputs->output', e.g. 'image+text->text', got {pair!r}"
        )
    inputs, output = pair.split("->", 1)
    ins = "+".join(sorted(p.strip().lower() for p in inputs.split("+") if p.strip()))
    out = output.strip().lower()
    if not ins or not out:
        raise ValueError(f"a modality pair needs inputs and an output, got {pair!r}")
    return f"{ins}->{out}"


def cross_modal_transfer(
    matrix: Sequence[Sequence[float | None]], modality_pairs: Sequence[str]
) -> CrossModalReport:
    """Cross-modal transfer and New.ACC / Avg.ACC / Forgetting of one run's T x T accuracy matrix.

    ``modality_pairs[j]`` is task j's ``"inputs->output"`` (input order and case do not matter:
    ``"text+image->text"`` equals ``"image+text->text"``). Raises ValueError for a non-square
    matrix, a non-number cell, or a wrong number of pairs.
    """
    rows = [list(r) for r in matrix]
    n = len(rows)
    if n == 0 or any(len(r) != n for r in rows):
        raise ValueError(
            f"the accuracy matrix must be square (T x T), got row lengths {[len(r) for r in rows]}"
        )
    if isinstance(modality_pairs, str) or len(modality_pairs) != n:
        raise ValueError(f"need one modality pair per task ({n}), got {modality_pairs!r}")
    pairs = [_normalize_pair(p) for p in modality_pairs]
    a = [[_cell(v, t, j) for j, v in enumerate(row)] for t, row in enumerate(rows)]

    deltas: list[TransferDelta] = []
    for t in range(1, n):
        for j in range(t):
            now, before = a[t][j], a[t - 1][j]
            if now is None or before is None:
                continue
            deltas.append(TransferDelta(t, j, now - before, pairs[t], pairs[j]))
    same = [d.delta for d in deltas if d.same_pair]
    diff = [d.delta for d in deltas if not d.same_pair]
    groups: dict[tuple[str, str], list[float]] = {}
    for d in deltas:
        groups.setdefault((d.trained_pair, d.evaluated_pair), []).append(d.delta)
    per_pair = {k: (math.fsum(v) / len(v), len(v)) for k, v in groups.items()}

    missing = [(t, j) for t in range(n) for j in range(t + 1) if a[t][j] is None]
    new_acc = avg_acc = forgetting = None
    if not missing:
        # Cells above the diagonal are read by no metric used here (only by fwt, which needs a
        # zero-shot vector we do not pass); a placeholder lets compute_metrics validate the rest.
        m = compute_metrics([[0.0 if v is None else v for v in row] for row in a])
        new_acc, avg_acc, forgetting = m["mft"], m["last"], m["forgetting"]
    return CrossModalReport(
        deltas=deltas,
        same_pair_mean=_mean(same),
        same_pair_n=len(same),
        different_pair_mean=_mean(diff),
        different_pair_n=len(diff),
        per_pair=per_pair,
        new_acc=new_acc,
        avg_acc=avg_acc,
        forgetting=forgetting,
        missing=missing,
    )


def format_cross_modal(report: CrossModalReport, digits: int = 2) -> str:
    """A markdown summary: the three classic metrics, same vs different pair, and the per-pair table."""

    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.{digits}f}"

    lines = [
        "| New.ACC | Avg.ACC | Forgetting | transfer, same pair (n) | transfer, different pair (n) |",
        "|---|---|---|---|---|",
        f"| {f(report.new_acc)} | {f(report.avg_acc)} | {f(report.forgetting)} "
        f"| {f(report.same_pair_mean)} ({report.same_pair_n}) "
        f"| {f(report.different_pair_mean)} ({report.different_pair_n}) |",
        "",
        "| trained task's pair | evaluated task's pair | mean delta | n |",
        "|---|---|---|---|",
    ]
    lines += [f"| {tr} | {ev} | {f(m)} | {k} |" for (tr, ev), (m, k) in report.per_pair.items()]
    return "\n".join(lines) + "\n"
