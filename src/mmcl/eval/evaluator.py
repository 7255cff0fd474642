"""Evaluate a model on tasks: generate, score with every declared scorer, keep predictions."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from mmcl.data.sample import Sample, Task
from mmcl.eval.dual import DEFAULT_CFG_SCALE, ImageOutput, generate_dual_answers
from mmcl.eval.generate import Shard, generate_answers
from mmcl.eval.outputs import Expectation, Output, classify_sample, judged_content
from mmcl.eval.scorers import call_scorer, get_scorer, sample_context
from mmcl.train.encode import Encoded


class EvaluationHooks(Protocol):
    """What :func:`evaluate_task` calls on a method (see :class:`mmcl.methods.base.Method`): the model
    to generate with, and the routing hooks (adapter per sample, further routings, per-sample tracks)."""

    model: torch.nn.Module

    def route(self, samples: list[Sample], task: Task) -> list[str] | None: ...

    def extra_routes(self, samples: list[Sample], task: Task) -> dict[str, list[str]]: ...

    def extra_states(self, task: Task) -> dict[str, AbstractContextManager[None]]: ...

    def sample_tracks(self, task: Task) -> dict[str, list[float | None]]: ...


@dataclass
class TaskResult:
    """Scores of one (stage, task) cell."""

    task: str
    scores: dict[str, float]  # scorer -> mean over the test set
    predictions: list[dict[str, Any]]


def score_predictions(task: Task, predictions: list[str]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score each prediction with every scorer the task declares; returns means and rows.

    A sample-aware scorer (``mmcl.eval.scorers.sample_aware``) also gets the test Sample. Each
    row keeps, under ``sample_meta``, what the registered sample-aware scorers read from the
    sample (:func:`mmcl.eval.scorers.sample_context`: image file name, OCRBench category,
    image size), so that ``mmcl rescore`` can use them later.
    """
    fns = {name: get_scorer(name) for name in task.scorers}
    rows = []
    sums = dict.fromkeys(fns, 0.0)
    for s, pred in zip(task.test, predictions, strict=True):
        scores = {name: float(call_scorer(fn, pred, s.answers, s)) for name, fn in fns.items()}
        for k, v in scores.items():
            sums[k] += v
        row = {"question_id": s.id, "question": s.question, "prediction": pred, "answers": s.answers, "scores": scores}
        # What sample-aware scorers read (possibly nothing), so that `mmcl rescore` can call them again.
        row["sample_meta"] = sample_context(s)
        rows.append(row)
    n = max(1, len(task.test))
    means = {k: v / n for k, v in sums.items()}
    if not task.test:
        means = dict.fromkeys(fns, math.nan)
    for r, pred in zip(rows, predictions, strict=True):
        if isinstance(pred, ImageOutput):
            r["prediction"] = str(pred)
            r[IMAGE_KEY] = pred.image  # the runner saves it as a PNG and replaces it by the path
    if "expect" in task.meta:
        add_error_classes(task, predictions, rows)
    return means, rows


IMAGE_KEY = "_image"
"""Row key of a generated image (a PIL image) until the runner writes it to disk."""

ERROR_TRACKS = {"hallucination": "hal", "instruction_unfollowing": "iuf", "other": "oth"}
"""Error class -> the per-sample track (1 for that class, else 0) whose cell means are the rates."""


def add_error_classes(task: Task, predictions: list[str], rows: list[dict[str, Any]]) -> None:
    """Class each answer of a task that declares ``meta["expect"]`` (Continual-NExT's metrics beyond forgetting).

    ``meta["expect"]`` holds :class:`~mmcl.eval.outputs.Expectation` fields; an answer is
    correct when its primary score is at least ``meta["correct_at"]`` (default 1). Each row gets
    ``error_class`` and the tracks ``hal``, ``iuf``, ``oth`` (0/1), whose means per cell are the
    rates that ``mmcl.report`` averages into Avg.HAL, Avg.IUF and Avg.OTH.
    """
    try:
        expected = Expectation(**task.meta["expect"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"task {task.name!r}: meta['expect'] is not a valid Expectation ({e})") from None
    threshold = float(task.meta.get("correct_at", 1.0))
    for s, pred, r in zip(task.test, predictions, rows, strict=True):
        if isinstance(pred, ImageOutput):
            content = None
            if expected.modality == "image":
                content = judged_content(pred.image)
            out = Output(text=None, image=True, image_content=content)
        else:
            out = Output(text=pred)
        cls = classify_sample(out, s, expected, correct=r["scores"][task.primary_scorer] >= threshold - 1e-9)
        r["error_class"] = cls
        tracks = r.setdefault("tracks", {})
        for name, track in ERROR_TRACKS.items():
            tracks[track] = float(cls == name)


def evaluate_task(
    method: EvaluationHooks,
    task: Task,
    encoded: list[Encoded],
    tokenizer,
    batch_size: int,
    max_new_tokens: int | None,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
    shard: Shard | None = None,
    image_token_id: int | None = None,
    cfg_scale: float = DEFAULT_CFG_SCALE,
    image_answers: str = "model",
) -> TaskResult:
    """Generate answers for ``task``'s test set and score them; with ``shard``, generation is split
    over the processes and every process gets all answers and the same scores.

    ``image_token_id`` (a dual-to-dual model's ``<begin_of_image>``): the model may answer any
    prompt with an image (:mod:`mmcl.eval.dual`, guidance ``cfg_scale``); with ``image_answers="task"``
    the samples that ask for an image (``Sample.wants_image``) get one directly."""
    adapter_names = method.route(task.test, task)

    def generate(idx: list[int], names: list[str] | None, progress: Callable[[int], None] | None) -> list[str]:
        if image_token_id is not None:
            return generate_dual_answers(
                method.model, tokenizer, [encoded[i] for i in idx], batch_size=batch_size,
                max_new_tokens=max_new_tokens or task.max_new_tokens, boi_id=image_token_id, cfg_scale=cfg_scale,
                adapter_names=[names[i] for i in idx] if names is not None else None, device=device,
                on_batch=progress, shard=shard,
                image_prompts=[task.test[i].wants_image for i in idx] if image_answers == "task" else None,
            )
        return generate_answers(
            method.model,
            tokenizer,
            [encoded[i] for i in idx],
            batch_size=batch_size,
            max_new_tokens=max_new_tokens or task.max_new_tokens,
            adapter_names=[names[i] for i in idx] if names is not None else None,
            device=device,
            on_batch=progress,
            shard=shard,
        )

    everything = list(range(len(encoded)))
    preds = generate(everything, adapter_names, on_batch)
    means, rows = score_predictions(task, preds)
    if adapter_names is not None:
        for r, a in zip(rows, adapter_names, strict=True):
            r["adapter"] = a
    for track, names in method.extra_routes(task.test, task).items():
        # only the samples this routing sends elsewhere are generated again
        redo = [i for i in everything if adapter_names is None or names[i] != adapter_names[i]]
        other = list(preds)
        for i, p in zip(redo, generate(redo, names, None) if redo else [], strict=True):
            other[i] = p
        _, other_rows = score_predictions(task, other)
        for r, o, a in zip(rows, other_rows, names, strict=True):
            r.setdefault("tracks", {})[track] = o["scores"][task.primary_scorer]
            r[f"{track}_prediction"], r[f"{track}_adapter"] = o["prediction"], a
    for track, state in method.extra_states(task).items():
        with state:  # e.g. UNIFIER's branches switched off: every sample is answered again
            other = generate(everything, adapter_names, None)
        _, other_rows = score_predictions(task, other)
        for r, o, p in zip(rows, other_rows, preds, strict=True):
            r.setdefault("tracks", {})[track] = o["scores"][task.primary_scorer]
            r["tracks"][f"{track}_changed"] = float(o["prediction"] != str(p))
            r[f"{track}_prediction"] = o["prediction"]
    for track, values in method.sample_tracks(task).items():
        for r, v in zip(rows, values, strict=True):
            r.setdefault("tracks", {})[track] = v
    means.update(track_means(rows))
    return TaskResult(task.name, means, rows)


TRACK_PREFIX = "track/"
"""Scores of extra tracks (a method's ``extra_tracks``) are kept in ``TaskResult.scores`` under this prefix."""


def track_means(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``{"track/<name>": mean}`` over the rows' per-sample ``tracks`` values (None values left out)."""
    values: dict[str, list[float]] = {}
    for r in rows:
        for name, v in (r.get("tracks") or {}).items():
            lst = values.setdefault(name, [])
            if v is not None:
                lst.append(float(v))
    return {TRACK_PREFIX + name: sum(v) / len(v) for name, v in values.items() if v}
