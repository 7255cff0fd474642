"""Evaluate a model on tasks: generate, score with every declared scorer, keep predictions."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mmcl.data.sample import Task
from mmcl.eval.generate import Shard, generate_answers
from mmcl.eval.scorers import get_scorer
from mmcl.methods.base import Method
from mmcl.train.encode import Encoded


@dataclass
class TaskResult:
    """Scores of one (stage, task) cell."""

    task: str
    scores: dict[str, float]  # scorer -> mean over the test set
    predictions: list[dict[str, Any]]


def score_predictions(task: Task, predictions: list[str]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score each prediction with every scorer the task declares; returns means and rows."""
    fns = {name: get_scorer(name) for name in task.scorers}
    rows = []
    sums = dict.fromkeys(fns, 0.0)
    for s, pred in zip(task.test, predictions, strict=True):
        scores = {name: float(fn(pred, s.answers)) for name, fn in fns.items()}
        for k, v in scores.items():
            sums[k] += v
        rows.append(
            {"question_id": s.id, "question": s.question, "prediction": pred, "answers": s.answers, "scores": scores}
        )
    n = max(1, len(task.test))
    means = {k: v / n for k, v in sums.items()}
    if not task.test:
        means = dict.fromkeys(fns, math.nan)
    return means, rows


def evaluate_task(
    method: Method,
    task: Task,
    encoded: list[Encoded],
    tokenizer,
    batch_size: int,
    max_new_tokens: int | None,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
    shard: Shard | None = None,
) -> TaskResult:
    """Generate answers for ``task``'s test set and score them; with ``shard``, generation is split
    over the processes and every process gets all answers and the same scores."""
    adapter_names = method.route(task.test, task)
    preds = generate_answers(
        method.model,
        tokenizer,
        encoded,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens or task.max_new_tokens,
        adapter_names=adapter_names,
        device=device,
        on_batch=on_batch,
        shard=shard,
    )
    means, rows = score_predictions(task, preds)
    if adapter_names is not None:
        for r, a in zip(rows, adapter_names, strict=True):
            r["adapter"] = a
    return TaskResult(task.name, means, rows)
