"""Stream options shared by every benchmark: task order, task subset, per-task sample caps.

Also :func:`parse_options`, which validates a benchmark's own options (the extra keys of
``BenchmarkConfig``) with a pydantic model and turns unknown keys into a readable error.
"""

from __future__ import annotations

import dataclasses
import difflib
import random
import types
import typing
from collections import Counter
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mmcl.config import MAX_ERRORS_SHOWN, BenchmarkConfig, ConfigError, shown
from mmcl.data.sample import Sample, Task
from mmcl.eval.scorers import SCORERS

M = TypeVar("M", bound=BaseModel)


def stream_seed(cfg: BenchmarkConfig) -> int:
    """The seed for sample caps: ``cfg.seed``, or 0 when unset."""
    return cfg.seed if cfg.seed is not None else 0


def _unknown(what: str, name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1) if len(name) <= 200 else []
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{what} {shown(name)}.{hint} Valid: {', '.join(valid)}"


def select_task_names(names: Sequence[str], cfg: BenchmarkConfig) -> list[str]:
    """Apply ``cfg.order`` then ``cfg.tasks`` to the default task order ``names``.

    ``order`` lists tasks in training order; it may name a subset (the others are dropped).
    ``tasks`` keeps the named tasks (in stream order) or the first N. Unknown names, repeats
    and an out-of-range N raise ConfigError listing the valid choices.
    """
    names = list(names)
    if cfg.order is not None:
        if not cfg.order:
            raise ConfigError("benchmark.order is empty; list the tasks in training order")
        for n in cfg.order:
            if n not in names:
                raise ConfigError("benchmark.order: " + _unknown("unknown task", n, names))
        dup = sorted(n for n, count in Counter(cfg.order).items() if count > 1)
        if dup:
            raise ConfigError(f"benchmark.order names task(s) more than once: {', '.join(dup)}")
        names = list(cfg.order)
    sub = cfg.tasks
    if sub is None:
        return names
    if isinstance(sub, bool) or not isinstance(sub, (int, list)):
        raise ConfigError(f"benchmark.tasks must be a list of task names or a number, got {sub!r}")
    if isinstance(sub, int):
        if not 1 <= sub <= len(names):
            raise ConfigError(f"benchmark.tasks={sub} is out of range: the stream has {len(names)} task(s)")
        return names[:sub]
    if not sub:
        raise ConfigError("benchmark.tasks is an empty list; name at least one task")
    for n in sub:
        if n not in names:
            raise ConfigError("benchmark.tasks: " + _unknown("unknown task", n, names))
    return [n for n in names if n in sub]


def cap_samples(samples: list[Sample], cap: int | None, seed: int, key: str) -> list[Sample]:
    """Keep ``cap`` samples: the first ``cap`` of a shuffle seeded by (``seed``, ``key``).

    The kept samples stay in their original order. ``cap=None`` (or a cap at least the size)
    keeps everything.
    """
    if cap is None or cap >= len(samples):
        return list(samples)
    if cap < 0:
        raise ConfigError(f"a per-task sample cap must be >= 0, got {cap}")
    order = list(range(len(samples)))
    random.Random(f"{seed}:{key}").shuffle(order)
    return [samples[i] for i in sorted(order[:cap])]


def cap_task(task: Task, cfg: BenchmarkConfig, seed: int | None = None) -> Task:
    """A copy of ``task`` with ``cfg.train_per_task`` / ``cfg.test_per_task`` applied."""
    seed = stream_seed(cfg) if seed is None else seed
    return dataclasses.replace(
        task,
        train=cap_samples(task.train, cfg.train_per_task, seed, f"{task.name}:train"),
        test=cap_samples(task.test, cfg.test_per_task, seed, f"{task.name}:test"),
    )


def apply_stream_options(tasks: list[Task], cfg: BenchmarkConfig, seed: int | None = None) -> list[Task]:
    """Reorder, subset and cap ``tasks`` by the common BenchmarkConfig fields.

    ``seed`` defaults to ``cfg.seed or 0``; the same seed always keeps the same samples.
    The input tasks are not modified.
    """
    by_name = {t.name: t for t in tasks}
    if len(by_name) != len(tasks):
        dup = sorted({t.name for t in tasks if sum(u.name == t.name for u in tasks) > 1})
        raise ConfigError(f"the benchmark has several tasks named {', '.join(dup)}")
    return [cap_task(by_name[n], cfg, seed) for n in select_task_names([t.name for t in tasks], cfg)]


def check_scorer_names(scorers: Sequence[str], where: str) -> None:
    """Raise ConfigError if a scorer name is not registered (checked before any data is read)."""
    for name in scorers:
        if name not in SCORERS:
            raise ConfigError(f"{where}: " + _unknown("unknown scorer", name, SCORERS.names()))


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation like ``list[X] | None``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, (types.UnionType, types.GenericAlias)) or typing.get_origin(annotation):
        for arg in typing.get_args(annotation):
            found = _submodel(arg)
            if found is not None:
                return found
    return None


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(str(part))
        sub = _submodel(info.annotation) if info is not None else None
        if sub is None:
            return None
        model = sub
    return model


def parse_options(model: type[M], options: dict[str, Any], benchmark: str) -> M:
    """Validate a benchmark's own options with ``model`` (which should forbid extra keys).

    Raises ConfigError naming each bad key: an unknown one with the valid keys listed, a
    wrong value with what was given.
    """
    try:
        return model.model_validate(options)
    except ValidationError as e:
        lines = []
        errors = e.errors(include_url=False)
        for err in errors[:MAX_ERRORS_SHOWN]:
            loc = ".".join(str(x) for x in err["loc"])
            if err["type"] == "extra_forbidden":
                owner = _model_at(model, err["loc"][:-1])
                valid = list(owner.model_fields) if owner is not None else []
                key = str(err["loc"][-1])
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                lines.append(f"  - unknown option {shown(loc)}.{hint} Valid options: {', '.join(valid)}")
            elif not loc:  # a check of the options as a whole
                lines.append(f"  - {err['msg'].removeprefix('Value error, ')}")
            else:
                lines.append(f"  - {loc}: {err['msg']} (got {shown(err.get('input'))})")
        if len(errors) > MAX_ERRORS_SHOWN:
            lines.append(f"  - ... and {len(errors) - MAX_ERRORS_SHOWN} more")
        raise ConfigError(f"benchmark {benchmark!r}: invalid options:\n" + "\n".join(lines)) from None
