"""Run configuration: one YAML per run, validated by pydantic, any key overridable with ``--set``.

The top-level keys are ``benchmark``, ``model``, ``method``, ``train``, ``eval``, ``output``,
``seed``, ``name``. ``benchmark`` and ``method`` accept options of their own (validated
later by the chosen benchmark or method); every other section rejects unknown keys with
a message naming the key, the close match and the valid keys.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A configuration problem, with the offending key named."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BenchmarkConfig(BaseModel):
    """Which stream to run. Extra keys are the benchmark's own options (checked by the benchmark)."""

    model_config = ConfigDict(extra="allow")

    name: str = "msvqa-synth"
    order: list[str] | None = None  # task names in training order; None = the benchmark's default
    tasks: list[str] | int | None = None  # subset: names, or the first N of the order
    train_per_task: int | None = None  # cap on training samples per task
    test_per_task: int | None = None  # cap on test samples per task
    seed: int | None = None  # data seed; None = 0 (fixed across run seeds)

    def options(self) -> dict[str, Any]:
        """The benchmark-specific options (keys not declared above)."""
        return dict(self.model_extra or {})


class ModelConfig(_Strict):
    """Which model. ``preset`` names a built-in model; ``path`` is a local Hugging Face directory."""

    preset: str | None = "tiny-llava"
    path: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: str | list[str] | None = None  # regex or names; None = the family's LM attention + MLP
    lora_vision: bool = False  # also put LoRA on the vision encoder's attention + MLP
    train_projector: bool = False


class MethodConfig(BaseModel):
    """Which continual-learning method. Extra keys are the method's own options."""

    model_config = ConfigDict(extra="allow")

    name: str = "lora-ft"

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainConfig(_Strict):
    epochs: float = 4.0
    max_steps: int | None = None  # per task; overrides epochs when set
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = 1.0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    num_threads: int | None = None  # torch CPU threads; None = torch's default


class EvalConfig(_Strict):
    batch_size: int = 64
    max_new_tokens: int | None = None  # None = each task's own
    full_matrix: bool = True  # evaluate every task after every stage (future tasks included)
    zero_shot: bool = True  # evaluate the untrained model once (row used for FWT)
    save_predictions: bool = True


class OutputConfig(_Strict):
    dir: str | None = None  # default runs/<time>-<name>
    report: bool = True


class RunConfig(_Strict):
    name: str = "run"
    seed: int = 0
    benchmark: BenchmarkConfig = BenchmarkConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()


_SECTIONS: dict[str, type[BaseModel]] = {
    "benchmark": BenchmarkConfig,
    "model": ModelConfig,
    "method": MethodConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "output": OutputConfig,
}


def _parse_value(text: str) -> Any:
    """Parse an override value with YAML rules (numbers, bools, lists, null)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override to a nested dict, in place."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key=value (e.g. method.name=lora-ft)")
    key, value = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {assignment!r} has an empty key")
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {assignment!r}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = _parse_value(value)


def _unknown_key_message(where: str, key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown config key {where}{key!r}.{hint} Valid keys: {', '.join(valid)}"


def validate_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a nested dict into a RunConfig, with readable errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(data).__name__}")
    top_valid = list(RunConfig.model_fields)
    for k in data:
        if k not in top_valid:
            raise ConfigError(f"{source}: " + _unknown_key_message("", k, top_valid))
    for section, model in _SECTIONS.items():
        sub = data.get(section)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise ConfigError(f"{source}: {section!r} must be a mapping, got {sub!r}")
        if model.model_config.get("extra") == "forbid":
            valid = list(model.model_fields)
            for k in sub:
                if k not in valid:
                    raise ConfigError(f"{source}: " + _unknown_key_message(f"{section}.", k, valid))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"  - {loc}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"{source}: invalid config:\n" + "\n".join(lines)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into a copy of ``base``."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(paths: list[str | Path] | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load YAML file(s) (later ones override earlier ones), apply ``key=value`` overrides, validate.

    A YAML may name other files to build on with ``include: [file, ...]`` (relative to itself).
    """
    data: dict[str, Any] = {}
    sources = []
    for p in paths or []:
        data = merge(data, _load_with_includes(Path(p)))
        sources.append(str(p))
    for ov in overrides or []:
        apply_override(data, ov)
    return validate_config(data, source=" + ".join(sources) or "config")


def _load_with_includes(path: Path, depth: int = 0) -> dict[str, Any]:
    if depth > 8:
        raise ConfigError(f"{path}: include nesting is too deep")
    data = load_yaml(path)
    includes = data.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    merged: dict[str, Any] = {}
    for inc in includes:
        merged = merge(merged, _load_with_includes((path.parent / inc).resolve(), depth + 1))
    return merge(merged, data)


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
