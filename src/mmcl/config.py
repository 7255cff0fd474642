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
import re
import reprlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mmcl.utils.paths import name_problem


class ConfigError(ValueError):
    """A configuration problem, with the offending key named."""


class _Strict(BaseModel):
    # floats must be finite everywhere (nan and inf are refused with the key named)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ---------------------------------------------------------------- value types with their ranges
def _not_a_bool(value: Any) -> Any:
    """Refuse ``true``/``false`` where a number is expected (pydantic would read them as 1 and 0)."""
    if isinstance(value, bool):
        raise PydanticCustomError("bool_not_number", "Input should be a number, not a boolean")
    return value


_Number = BeforeValidator(_not_a_bool)
Count = Annotated[int, _Number, Field(ge=1)]  # batch sizes, steps, ranks: at least 1
NonNegativeInt = Annotated[int, _Number, Field(ge=0)]
PositiveFloat = Annotated[float, _Number, Field(gt=0)]  # finite: the models refuse nan and inf
NonNegativeFloat = Annotated[float, _Number, Field(ge=0)]
Fraction = Annotated[float, _Number, Field(ge=0, le=1)]  # [0, 1]
OpenFraction = Annotated[float, _Number, Field(ge=0, lt=1)]  # [0, 1)
SEED_MAX = 2**31 - 1  # per-stage seeds multiply the run seed by up to ~8e9; torch takes seeds below 2**64


def _int_as_written(value: Any) -> Any:
    """Refuse anything but an integer literal: pydantic would read "7" as 7 and true as 1."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise PydanticCustomError("int_as_written", "Input should be an integer written as a number (no quotes, not true/false)")
    return value


# an integer from 0 to SEED_MAX, as written (strict: no coercion from strings, booleans or floats)
Seed = Annotated[int, BeforeValidator(_int_as_written), Field(strict=True, ge=0, le=SEED_MAX)]
THREADS_MAX = 1024  # torch accepts absurd thread counts and crashes later


class BenchmarkConfig(BaseModel):
    """Which stream to run. Extra keys are the benchmark's own options (checked by the benchmark)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    name: str = "msvqa-synth"
    order: list[str] | None = None  # task names in training order; None = the benchmark's default
    tasks: Annotated[list[str] | int | None, _Number] = None  # subset: names, or the first N of the order
    train_per_task: NonNegativeInt | None = None  # cap on training samples per task (0 keeps none)
    test_per_task: NonNegativeInt | None = None  # cap on test samples per task
    seed: Seed | None = None  # data seed; None = 0 (fixed across run seeds)
    # images larger than this (width x height) are refused before they are decoded; None = no limit
    max_image_pixels: int | None = Field(default=40_000_000, ge=1)

    def options(self) -> dict[str, Any]:
        """The benchmark-specific options (keys not declared above)."""
        return dict(self.model_extra or {})


class ModelConfig(_Strict):
    """Which model. ``preset`` names a built-in model; ``path`` is a local Hugging Face directory."""

    # The instruction-tuned generalist (docs/generalist-base.md); "tiny-llava" is the caption-only base
    # of the earlier tables (configs/caption.yaml).
    preset: str | None = "tiny-llava-generalist"
    path: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    lora_rank: Count = 16
    lora_alpha: Count = 32
    lora_dropout: OpenFraction = 0.0  # [0, 1)
    lora_targets: str | list[str] | None = None  # regex or names; None = the family's LM attention + MLP
    lora_vision: bool = False  # also put LoRA on the vision encoder's attention + MLP
    train_projector: bool = False

    @field_validator("lora_targets")
    @classmethod
    def _targets(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, str):
            try:
                re.compile(value)
            except re.error as e:
                raise PydanticCustomError("regex", "not a valid regular expression: {error}", {"error": str(e)}) from None
        elif isinstance(value, list) and not value:
            raise PydanticCustomError("empty", "an empty list targets nothing; leave it out for the family's default")
        return value


class MethodConfig(BaseModel):
    """Which continual-learning method. Extra keys are the method's own options."""

    model_config = ConfigDict(extra="allow")

    name: str = "lora-ft"

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainConfig(_Strict):
    epochs: PositiveFloat = 4.0  # per task; may be fractional (0.5 = half the samples once)
    max_steps: Count | None = None  # update steps per task; overrides epochs when set
    batch_size: Count = 16  # per process
    grad_accum: Count = 1
    lr: PositiveFloat = 5e-4  # for LoRA on an instruction-tuned base; the caption-only base used 2e-3
    weight_decay: NonNegativeFloat = 0.0
    warmup_ratio: Fraction = 0.05  # share of a task's steps spent warming up, in [0, 1]
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: NonNegativeFloat = 1.0  # 0 = no clipping
    # image answers (dual-to-dual models): share of prompts blanked in training, for classifier-free guidance
    image_uncond_prob: OpenFraction = 0.1
    # image answers: train <begin_of_image> as the answer's first token (the model's own choice of an image
    # answer); false: only the image codes train, as in Janus' own training, whose pipeline appends it
    image_decision_loss: bool = True
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    num_threads: Annotated[int, _Number, Field(ge=1, le=THREADS_MAX)] | None = None  # torch CPU threads; None = torch's default
    # image features of a frozen vision side computed once per run (mmcl.train.feature_cache)
    feature_cache: Literal["auto", "on", "off"] = "auto"
    feature_cache_mb: NonNegativeFloat = 2048.0  # in memory; past it, spilled inside the run dir
    compile: bool = False  # the training forward through torch.compile (mmcl.train.compile; why off: docs/speed.md)

    @field_validator("feature_cache", mode="before")
    @classmethod
    def _feature_cache_bool(cls, value: Any) -> Any:
        """YAML reads a bare on/off as a bool."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class EvalConfig(_Strict):
    batch_size: Count = 64
    max_new_tokens: Count | None = None  # None = each task's own
    # which cells: full = every task after every stage (future tasks included); seen = tasks seen so far;
    # sampled = diagonal, zero-shot and final rows in full, other cells on sample_per_cell items (mmcl.eval.budget)
    matrix: Literal["full", "seen", "sampled"] = "full"
    full_matrix: bool | None = None  # older key: true = matrix full, false = matrix seen
    sample_per_cell: Count = 100
    zero_shot: bool = True  # evaluate the untrained model once (row used for FWT)
    save_predictions: bool = True
    # classifier-free guidance of image answers (dual-to-dual models)
    cfg_scale: Annotated[float, _Number, Field(gt=1.0)] = 3.0
    # who decides that an answer is an image (dual-to-dual models): "model" (its first token is
    # <begin_of_image> or not), or "task" (samples with a target image get one directly, as Janus'
    # own pipeline does: for checkpoints never trained to emit <begin_of_image> themselves)
    image_answers: Literal["model", "task"] = "model"
    # visual drift (mmcl.eval.drift, docs/metrics.md#visual-drift): a linear probe per task, fitted once on
    # the base model's image features of up to drift_train_images labelled training images, read on the
    # current features of the test images after every stage; a matrix track "drift_probe" (LLaVA-style models)
    drift_probe: bool = False
    drift_train_images: Count = 256

    @model_validator(mode="before")
    @classmethod
    def _full_matrix_alias(cls, data: Any) -> Any:
        """``full_matrix`` (the older key) sets ``matrix``; both given must agree."""
        if isinstance(data, dict) and data.get("full_matrix") is not None:
            implied = "full" if data["full_matrix"] else "seen"
            if data.get("matrix") not in (None, implied):
                raise ValueError(f"eval.full_matrix={data['full_matrix']} means eval.matrix={implied}, "
                                 f"but eval.matrix={data['matrix']}; set only eval.matrix")
            data = {**data, "matrix": implied}
        return data


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
    log_every: Count = 10  # log train/loss and train/lr every N optimizer steps

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
    seed: Seed = 0  # an integer from 0 to SEED_MAX
    benchmark: BenchmarkConfig = BenchmarkConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()
    logging: LoggingConfig = LoggingConfig()

    @field_validator("name")
    @classmethod
    def _name_is_a_file_name(cls, value: str) -> str:
        problem = name_problem(value)
        if problem is not None:
            raise PydanticCustomError("unsafe_name", "the run name {problem}; it becomes a folder name under runs/ "
                                      "(no '/', '\\', '..', NUL or control characters, no leading '.')",
                                      {"problem": problem})
        return value


_SECTIONS: dict[str, type[BaseModel]] = {
    "benchmark": BenchmarkConfig,
    "model": ModelConfig,
    "method": MethodConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "output": OutputConfig,
    "logging": LoggingConfig,
}


# ---------------------------------------------------------------- YAML, read with limits
MAX_SHOWN = 200  # characters of a value shown in a message
MAX_ERRORS_SHOWN = 20  # problems listed in one message (the rest are counted)
MAX_ALIAS_EXPANSION = 100_000  # values that YAML aliases may stand for, in one file or --set value
_short_repr = reprlib.Repr()  # bounded: a few items per level, three levels deep
_short_repr.maxlevel, _short_repr.maxstring, _short_repr.maxother, _short_repr.maxlong = 3, MAX_SHOWN, MAX_SHOWN, 60
_short_repr.maxtuple = _short_repr.maxlist = _short_repr.maxdict = _short_repr.maxset = 6


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` cut to about ``limit`` characters, in time bounded whatever the value's size."""
    text = _short_repr.repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def _cut(text: str, limit: int = MAX_SHOWN) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus: a key given twice in one mapping is refused (PyYAML keeps the
    last silently), and aliases may stand for at most MAX_ALIAS_EXPANSION values in all (an
    "alias bomb" of a few lines would otherwise expand to billions when the config is checked).
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._expanded = 0  # values the aliases seen so far stand for
        self._sizes: dict[int, int] = {}  # id(node) -> values in it, aliases expanded
        self._open: dict[str, int] = {}  # anchors whose node is being composed (an alias to one recurses)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if self._open.get(event.anchor):
                raise yaml.composer.ComposerError(
                    None, None, f"alias *{event.anchor} is inside the node it names (a recursive alias)", event.start_mark
                )
            node = super().compose_node(parent, index)
            self._expanded += self._size(node)
            if self._expanded > MAX_ALIAS_EXPANSION:
                raise yaml.composer.ComposerError(
                    None, None, f"aliases expand to more than {MAX_ALIAS_EXPANSION:,} values (an alias bomb?); "
                    "write the values out or use fewer aliases", event.start_mark,
                )
            return node
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open[anchor] = self._open.get(anchor, 0) + 1
        try:
            return super().compose_node(parent, index)
        finally:
            if anchor is not None:
                self._open[anchor] -= 1

    def _size(self, root: yaml.Node) -> int:
        """Values in ``root`` with aliases expanded (memoised; the graph is acyclic: recursion was refused)."""
        stack = [(root, False)]
        while stack:
            node, children_done = stack.pop()
            if id(node) in self._sizes:
                continue
            children = _children(node)
            if children_done:
                self._sizes[id(node)] = 1 + sum(self._sizes[id(c)] for c in children)
            else:
                stack.append((node, True))
                stack.extend((c, False) for c in children if id(c) not in self._sizes)
        return self._sizes[id(root)]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], yaml.Node] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                seen = first.setdefault((key_node.tag, key_node.value), key_node)
                if seen is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None,
                        f"key {_cut(key_node.value)!r} is given twice in one mapping (first on line "
                        f"{seen.start_mark.line + 1}); keep one",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _yaml_problem(e: yaml.YAMLError, text: str = "") -> tuple[str, str]:
    """(where, what) of a YAML error in ``text``: ", line L, column C" and the problem."""
    mark = getattr(e, "problem_mark", None)
    if isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow, e.g. a NUL byte
        char = chr(e.character) if isinstance(e.character, int) else str(e.character)
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        where = f", line {line}, column {column}" if text else ""
        return where, f"character {char!r} (U+{ord(char[:1] or ' '):04X}) is not allowed in YAML"
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return where, str(getattr(e, "problem", None) or e)


def _yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with the checks of :class:`_ConfigLoader` (raises yaml.YAMLError or RecursionError)."""
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _parse_value(text: str, assignment: str) -> Any:
    """Parse an override value with YAML rules (numbers, bools, lists, null); not YAML: the text itself."""
    try:
        return _yaml_load(text)
    except yaml.composer.ComposerError as e:  # a recursive alias or an alias bomb: not a plain string
        raise ConfigError(f"--set {_cut(assignment)}: {_yaml_problem(e)[1]}") from None
    except yaml.constructor.ConstructorError as e:
        if "given twice" in str(e.problem):
            raise ConfigError(f"--set {_cut(assignment)}: {e.problem}") from None
        return text
    except yaml.YAMLError:
        return text
    except RecursionError:
        raise ConfigError(f"--set {_cut(assignment)}: the value is nested too deeply") from None


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override to a nested dict, in place."""
    if "=" not in assignment:
        raise ConfigError(f"override {shown(assignment)} must look like key=value (e.g. method.name=lora-ft)")
    key, value = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {shown(assignment)} has an empty key")
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {shown(assignment)}: {shown(p)} is not a section")
        node = nxt
    node[parts[-1]] = _parse_value(value, assignment)


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


def _unknown_key_message(where: str, key: Any, valid: list[str]) -> str:
    key = str(key)
    close = difflib.get_close_matches(key, valid, n=1)
    alias = _KEY_ALIASES.get(key)
    if not close and alias in valid:
        close = [alias]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown config key {shown(where + str(key))}.{hint} Valid keys: {', '.join(valid)}"


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
            raise ConfigError(f"{where(section)}: {section!r} must be a mapping, got {shown(sub)}")
        if model.model_config.get("extra") == "forbid":
            valid = list(model.model_fields)
            for k in sub:
                if k not in valid:
                    raise ConfigError(f"{where(section, k)}: " + _unknown_key_message(f"{section}.", k, valid))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        if len(errors) == 1:  # one line: where it was set, the key, what is wrong
            err = errors[0]
            loc = ".".join(str(x) for x in err["loc"])
            at = where(*err["loc"]) if err["loc"] else source
            raise ConfigError(f"{at}: {loc}: {err['msg']} (got {shown(err.get('input'))})") from None
        lines = []
        for err in errors[:MAX_ERRORS_SHOWN]:
            loc = ".".join(str(x) for x in err["loc"])
            found = locate([str(x) for x in err["loc"]]) if locate is not None else None
            at = f" ({found})" if found else ""
            lines.append(f"  - {loc}{at}: {err['msg']} (got {shown(err.get('input'))})")
        if len(errors) > MAX_ERRORS_SHOWN:
            lines.append(f"  - ... and {len(errors) - MAX_ERRORS_SHOWN} more")
        raise ConfigError(f"{source}: invalid config:\n" + "\n".join(lines)) from None


def read_config_text(path: Path) -> str:
    """A config file's text, which must be UTF-8; ConfigError naming the file (and the byte) otherwise."""
    if not path.is_file():
        if path.is_dir():
            raise ConfigError(f"config file not found: {path} (it is a directory)")
        shipped = sorted(p.stem for p in packaged_configs().glob("*.yaml"))
        raise ConfigError(f"config file not found: {path} (shipped configs, usable by name from any folder: "
                          f"{', '.join(shipped)})")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(
            f"{path}, line {line}, column {column}: not UTF-8 text: byte 0x{raw[e.start]:02x} at byte offset "
            f"{e.start}; save the file as UTF-8"
        ) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    text = read_config_text(path)
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as e:
        where, problem = _yaml_problem(e, text)
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {shown(data)}")
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


def packaged_configs() -> Path:
    """The folder of the configs shipped inside the package (the repository's ``configs/``)."""
    return Path(__file__).resolve().parent / "configs"


def find_config(path: str | Path) -> Path:
    """``path`` if it exists; else the shipped config it names (``quick``, ``quick.yaml`` or
    ``configs/quick.yaml``), so that an installed wheel runs ``mmcl run configs/quick.yaml`` from any
    folder. A name found nowhere is returned as given: reading it then says it is missing."""
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    parts = given.parts[1:] if given.parts[:1] == ("configs",) else given.parts
    if not parts:
        return given
    shipped = packaged_configs().joinpath(*parts)
    for candidate in (shipped, shipped.with_name(shipped.name + ".yaml")):
        if candidate.is_file():
            return candidate
    return given


def load_config(paths: list[str | Path] | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load YAML file(s) (later ones override earlier ones), apply ``key=value`` overrides, validate.

    A YAML may name other files to build on with ``include: [file, ...]`` (relative to itself).
    """
    data: dict[str, Any] = {}
    sources = []
    files = [find_config(p) for p in paths or []]
    for p in files:
        data = merge(data, _load_with_includes(p))
        sources.append(str(p))
    for ov in overrides or []:
        apply_override(data, ov)
    locate = _locator(files, list(overrides or []))
    return validate_config(data, source=" + ".join(sources) or "config", locate=locate)


def _files_in_merge_order(path: Path, depth: int = 0) -> list[Path]:
    """``path`` after the files it includes (recursively): later files win."""
    if depth > 8:
        return [path]
    files: list[Path] = []
    try:
        includes = (_yaml_load(read_config_text(path)) or {}).get("include") or []
    except (ConfigError, yaml.YAMLError, RecursionError, AttributeError):
        includes = []
    if not isinstance(includes, str | list):
        includes = []
    for inc in [includes] if isinstance(includes, str) else includes:
        files += _files_in_merge_order((path.parent / str(inc)).resolve(), depth + 1)
    return [*files, path]


def _yaml_key_line(path: Path, parts: Sequence[str]) -> int | None:
    """The 1-based line of key ``a.b.c`` in a YAML file, or None."""
    try:
        node = yaml.compose(read_config_text(path), Loader=_ConfigLoader)
    except (ConfigError, yaml.YAMLError, RecursionError):
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
                return f"--set {_cut(ov, 100)}"
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
    if not isinstance(includes, list) or not all(isinstance(inc, str) and inc for inc in includes):
        raise ConfigError(f"{path}: include must be a file name or a list of file names, got {shown(includes)}")
    merged: dict[str, Any] = {}
    for inc in includes:
        merged = merge(merged, _load_with_includes((path.parent / inc).resolve(), depth + 1))
    return merge(merged, data)


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
