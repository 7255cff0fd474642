"""Run configuration: one YAML per run, validated by pydantic, any key overridable with ``--set``.

The top-level keys are ``benchmark``, ``model``, ``method``, ``train``, ``eval``, ``output``,
``logging``, ``seed``, ``name``. ``benchmark`` and ``method`` accept options of their own (validated
later by the chosen benchmark or method); every other section rejects unknown keys with
a message naming the key, the close match and the valid keys.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


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
    # image answers (dual-to-dual models): share of prompts blanked in training, for classifier-free guidance
    image_uncond_prob: float = Field(default=0.1, ge=0.0, lt=1.0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    num_threads: int | None = None  # torch CPU threads; None = torch's default


class EvalConfig(_Strict):
    batch_size: int = 64
    max_new_tokens: int | None = None  # None = each task's own
    full_matrix: bool = True  # evaluate every task after every stage (future tasks included)
    zero_shot: bool = True  # evaluate the untrained model once (row used for FWT)
    save_predictions: bool = True
    cfg_scale: float = Field(default=3.0, gt=1.0)  # classifier-free guidance of image answers (dual-to-dual models)


class OutputConfig(_Strict):
    dir: str | None = None  # default runs/<time>-<name>
    report: bool = True


TRACKERS = ("tensorboard", "wandb")  # experiment trackers, through Accelerate (logging.trackers)
_TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


class LoggingConfig(_Strict):
    """Live experiment tracking through Accelerate trackers (none by default).

    TensorBoard writes under ``<run dir>/tensorboard/<name>/``; Weights & Biases uses project ``<name>``.
    """

    trackers: list[str] = []  # any of TRACKERS
    log_every: int = Field(default=10, ge=1)  # log train/loss and train/lr every N optimizer steps

    @field_validator("trackers", mode="before")
    @classmethod
    def _known_trackers(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):  # --set logging.trackers=tensorboard
            value = [value]
        if not isinstance(value, list):
            return value  # the list type check reports it
        out: list[str] = []
        for name in value:
            if name not in TRACKERS:
                raise ValueError(f"unknown tracker {name!r}; valid trackers: {', '.join(TRACKERS)}")
            if name not in out:
                out.append(name)
        return out


def check_trackers_installed(trackers: Sequence[str]) -> None:
    """Refuse, before anything runs, a tracker whose package is missing (Accelerate would skip it silently)."""
    for name in trackers:
        if importlib.util.find_spec(_TRACKER_PACKAGES[name]) is not None:
            continue
        if name == "wandb":
            raise ConfigError(
                "logging.trackers: 'wandb' needs the wandb package, which is not installed: pip install wandb "
                "(with WANDB_MODE=offline it logs to local files, without network or an account)"
            )
        raise ConfigError(
            f"logging.trackers: {name!r} needs the {_TRACKER_PACKAGES[name]} package, which is not installed: "
            f"pip install {_TRACKER_PACKAGES[name]} (or pip install 'mmcl[logging]')"
        )


def flat_config(cfg: RunConfig) -> dict[str, int | float | str | bool]:
    """The resolved config as ``{"a.b": value}`` with int/float/str/bool values only (for tracker hparams).

    Unset (None) keys are left out; lists and mappings become their JSON text.
    """
    flat: dict[str, int | float | str | bool] = {}

    def walk(prefix: str, node: dict[str, Any]) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            elif v is not None:
                flat[f"{prefix}{k}"] = v if isinstance(v, int | float | str | bool) else json.dumps(v)

    walk("", cfg.model_dump(mode="json"))
    return flat


class RunConfig(_Strict):
    name: str = "run"
    seed: int = 0
    benchmark: BenchmarkConfig = BenchmarkConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()
    logging: LoggingConfig = LoggingConfig()


_SECTIONS: dict[str, type[BaseModel]] = {
    "benchmark": BenchmarkConfig,
    "model": ModelConfig,
    "method": MethodConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "output": OutputConfig,
    "logging": LoggingConfig,
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


# names other trainers use for a key, when difflib finds no close match
_KEY_ALIASES = {
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "num_train_epochs": "epochs",
    "gradient_accumulation_steps": "grad_accum",
    "per_device_train_batch_size": "batch_size",
    "lr_scheduler": "scheduler",
    "lr_scheduler_type": "scheduler",
    "lora_r": "lora_rank",
    "model_name_or_path": "path",
    "output_dir": "dir",
}


def _unknown_key_message(where: str, key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    alias = _KEY_ALIASES.get(key)
    if not close and alias in valid:
        close = [alias]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown config key {where + key!r}.{hint} Valid keys: {', '.join(valid)}"


# where a config key was set, for messages: "FILE, line N" or "--set KEY=VALUE" (None: not found)
Locator = Callable[[Sequence[str]], str | None]


def validate_config(data: dict[str, Any], source: str = "config", locate: Locator | None = None) -> RunConfig:
    """Validate a nested dict into a RunConfig, with readable errors.

    ``locate(key parts)`` says where a key was set; messages name that place instead of ``source``.
    """

    def where(*parts: Any) -> str:
        found = locate([str(p) for p in parts]) if locate is not None else None
        return found or source

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(data).__name__}")
    top_valid = list(RunConfig.model_fields)
    for k in data:
        if k not in top_valid:
            raise ConfigError(f"{where(k)}: " + _unknown_key_message("", k, top_valid))
    for section, model in _SECTIONS.items():
        sub = data.get(section)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise ConfigError(f"{where(section)}: {section!r} must be a mapping, got {sub!r}")
        if model.model_config.get("extra") == "forbid":
            valid = list(model.model_fields)
            for k in sub:
                if k not in valid:
                    raise ConfigError(f"{where(section, k)}: " + _unknown_key_message(f"{section}.", k, valid))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            found = locate([str(x) for x in err["loc"]]) if locate is not None else None
            at = f" ({found})" if found else ""
            lines.append(f"  - {loc}{at}: {err['msg']} (got {err.get('input')!r})")
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
    locate = _locator([Path(p) for p in paths or []], list(overrides or []))
    return validate_config(data, source=" + ".join(sources) or "config", locate=locate)


def _files_in_merge_order(path: Path, depth: int = 0) -> list[Path]:
    """``path`` after the files it includes (recursively): later files win."""
    if depth > 8:
        return [path]
    files: list[Path] = []
    try:
        includes = (yaml.safe_load(path.read_text()) or {}).get("include") or []
    except (OSError, yaml.YAMLError, AttributeError):
        includes = []
    for inc in [includes] if isinstance(includes, str) else includes:
        files += _files_in_merge_order((path.parent / str(inc)).resolve(), depth + 1)
    return [*files, path]


def _yaml_key_line(path: Path, parts: Sequence[str]) -> int | None:
    """The 1-based line of key ``a.b.c`` in a YAML file, or None."""
    try:
        node = yaml.compose(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for part in parts:
        if isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
            continue
        if not isinstance(node, yaml.MappingNode):
            return None
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == part:
                node, line = value, key.start_mark.line + 1
                break
        else:
            return None
    return line


def _locator(paths: list[Path], overrides: list[str]) -> Locator:
    """Find where a key was set: the last ``--set`` naming it (or a section above or below it), else the last file."""

    def locate(parts: Sequence[str]) -> str | None:
        dotted = ".".join(parts)
        for ov in reversed(overrides):
            key = ".".join(p for p in ov.split("=", 1)[0].strip().split(".") if p)
            if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + "."):
                return f"--set {ov}"
        files = [f for p in paths for f in _files_in_merge_order(p)]
        for f in reversed(files):
            line = _yaml_key_line(f, parts)
            if line is not None:
                return f"{f}, line {line}"
        return None

    return locate


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
