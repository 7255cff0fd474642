"""The Method API: hooks around the one shared training loop (Avalanche-style, one level deep).

A method never copies the loop. The runner calls, for each stage t with task T_t::

    method.setup(model)                         # once, before the first stage -> (possibly wrapped) model
    method.before_task(t, task)
    samples = method.train_samples(t, task)     # e.g. replay mixes in memory samples
    params  = method.trainable_parameters()     # what the optimizer updates this stage
    ... loop: loss = task loss + method.extra_loss(batch, outputs, t)
              method.after_backward(t)          # e.g. gradient surgery
    method.after_task(t, task)                  # e.g. Fisher estimate, freeze an expert
    for every task j: method.route(samples_j, j) -> adapter name per sample (or None)
                      method.extra_routes(samples_j, j) -> more routings, each scored as its own track
                      method.extra_states(j) -> model states to answer again in (e.g. branches off)
                      method.sample_tracks(j) -> per-sample values of further tracks (e.g. router accuracy)

``schedule`` says how the stream is used: "sequential" (train each task, evaluate after
each stage), "joint" (train once on the union, evaluate once), "none" (no training).
``state_dict``/``load_state_dict`` hold everything a resumed run needs besides the
model weights; ``cost`` reports memory the method holds between tasks.

A method never imports the training loop or the evaluator: what it needs of them comes
through its :class:`RunContext`'s services (``ctx.encode``, ``ctx.collate``, ``ctx.forward``,
``ctx.generate``, ``ctx.update_steps``, ``ctx.clip_scale``, ``ctx.train_extra``), which the
runner fills (:func:`mmcl.runner.run_context`). See docs/extending.md.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, Union, get_args, get_origin

import torch
from peft import LoraConfig
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from mmcl.adapters.lora import lora_config
from mmcl.config import RunConfig
from mmcl.data.sample import Benchmark, Sample, Task
from mmcl.models.loader import ModelBundle
from mmcl.registry import Registry

if TYPE_CHECKING:
    from mmcl.train.encode import Encoded


def _takes_bool(annotation: Any) -> bool:
    """Whether a field of this type may hold true/false (bool, Any, a Literal of bools, a union with one)."""
    if annotation is bool or annotation is Any:
        return True
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return any(isinstance(a, bool) for a in args)
    if origin is Union or origin is types.UnionType:
        return any(_takes_bool(a) for a in args)
    return False


class MethodOptions(BaseModel):
    """Base class of a method's options: unknown keys are refused, floats must be finite, and
    true/false is not read as a number (pydantic would take it for 1 or 0)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and not _takes_bool(cls.model_fields[info.field_name].annotation):
            raise PydanticCustomError("bool_not_number", "Input should be a number, not a boolean")
        return value


class Services(Protocol):
    """What the runner lends a method (``RunContext.services``); a method calls them as ``ctx.<name>``.

    The runner's implementation is :class:`mmcl.runner.RunServices` (the run's encoder, the loop's
    collation and forward, batched greedy generation, the loop's step count and gradient clipping).
    """

    def encode(self, samples: Sequence[Sample], with_answer: bool) -> list[Encoded]: ...

    def collate(self, encoded: Sequence[Encoded]) -> dict[str, torch.Tensor]: ...

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any: ...

    def generate(
        self, model: torch.nn.Module, samples: Sequence[Sample], max_new_tokens: int,
        adapter_names: Sequence[str] | None = None,
    ) -> list[str]: ...

    def update_steps(self, n_samples: int) -> int: ...

    def clip_scale(self) -> float: ...


@dataclass
class RunContext:
    """What a method may look at (the config, the model bundle, the stream, the device, the seed)
    and the runner's services it may call (see docs/extending.md, "The run context")."""

    config: RunConfig
    bundle: ModelBundle
    benchmark: Benchmark
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    train_extra: Callable[..., dict[str, Any]] | None = None
    """Set by the runner: ``train_extra(samples, label, **train_overrides)`` trains ``samples`` with the
    shared loop on whatever is trainable now (e.g. a router adapter in ``after_task``) and returns the
    pass's statistics. ``train_overrides`` replace ``train.*`` fields (epochs, lr, ...) for that pass."""
    services: Services | None = None
    """Set by the runner (:func:`mmcl.runner.run_context`); the methods below delegate to it."""

    @property
    def model(self) -> torch.nn.Module:
        return self.bundle.model

    def lora_config(self) -> LoraConfig:
        """The run's peft LoRA config (``model.lora_*``, the family's targets): :func:`mmcl.adapters.lora.lora_config`."""
        return lora_config(self.config.model, self.bundle.family)

    def _services(self) -> Services:
        if self.services is None:
            raise RuntimeError(
                "this RunContext has no services (encode, generate, ...): build it with mmcl.runner.run_context(), "
                "as the runner does"
            )
        return self.services

    def encode(self, samples: Sequence[Sample], with_answer: bool = True) -> list[Encoded]:
        """``samples`` encoded as the run encodes them: prompt + answer + eos with ``with_answer``
        (labels on the answer), else the prompt for generation."""
        return self._services().encode(samples, with_answer)

    def collate(self, encoded: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        """A training batch of encoded samples (right padding, labels), as the loop collates them (on the CPU)."""
        return self._services().collate(encoded)

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """The loop's forward pass of ``model`` on a training batch (``.loss``, ``.logits``; image answers
        included), without the loop's prompt blanking (``train.image_uncond_prob``)."""
        return self._services().forward(model, batch)

    def generate(
        self, model: torch.nn.Module, samples: Sequence[Sample], max_new_tokens: int,
        adapter_names: Sequence[str] | None = None,
    ) -> list[str]:
        """Greedy text answers of ``model`` to ``samples`` (in order), batched by ``eval.batch_size``;
        ``adapter_names``: a peft adapter per sample."""
        return self._services().generate(model, samples, max_new_tokens, adapter_names)

    def update_steps(self, n_samples: int) -> int:
        """The update steps the loop runs on ``n_samples`` training samples with ``train.*`` (all processes)."""
        return self._services().update_steps(n_samples)

    def clip_scale(self) -> float:
        """In ``after_backward``: the factor the loop's gradient clipping (``train.max_grad_norm``) is about
        to apply to the gradients, ``min(1, max_grad_norm / (||g||_2 + 1e-6))``; 1 without clipping."""
        return self._services().clip_scale()


def copy_tensors_into(own: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], who: str) -> None:
    """Copy ``saved`` into the live tensors ``own`` (same names, same shapes), for ``load_state_dict``.

    Raises ValueError naming missing/unexpected names or the first shape mismatch (``who`` prefixes it).
    """
    if set(own) != set(saved):
        missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
        raise ValueError(f"{who} state: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for k, t in saved.items():
            if t.shape != own[k].shape:
                raise ValueError(f"{who} state: {k} has shape {tuple(t.shape)}, expected {tuple(own[k].shape)}")
            own[k].copy_(t.to(own[k].device, own[k].dtype))


Distributed = Literal["ddp", "fsdp", "zero1", "zero2", "zero3"]


class Method:
    """Base method: plain training of whatever ``setup`` leaves trainable, no extra loss."""

    name: ClassVar[str] = "base"
    extra_tracks: ClassVar[tuple[str, ...]] = ()  # matrix tracks beyond the scorers (see extra_routes)
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    schedule: ClassVar[Literal["sequential", "joint", "none"]] = "sequential"
    supports: ClassVar[frozenset[str]] = frozenset({"ddp"})  # distributed settings beyond one process
    image_answers: ClassVar[bool] = True  # can train and evaluate tasks answered with images (dual-to-dual models)

    def __init__(self, ctx: RunContext, options: MethodOptions) -> None:
        self.ctx = ctx
        self.options = options
        self.model: torch.nn.Module = ctx.model

    @classmethod
    def parse_options(cls, raw: dict[str, Any]) -> MethodOptions:
        try:
            return cls.Options.model_validate(raw)
        except ValidationError as e:
            names = list(cls.Options.model_fields)
            valid = ", ".join(names) or "(none)"
            msgs = "; ".join(
                f"method.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()
            )
            unknown = [str(err["loc"][-1]) for err in e.errors() if err["type"] == "extra_forbidden" and err["loc"]]
            model_keys = [k for k in RunConfig.model_fields["model"].annotation.model_fields if k.startswith("lora")]
            close = []
            for k in unknown:  # a close option, else a close LoRA key of the model section
                found = difflib.get_close_matches(k, names, n=1)
                close += [f"method.{found[0]}"] if found else [f"model.{m}" for m in difflib.get_close_matches(k, model_keys, n=1)]
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"method {cls.name!r}: {msgs}. Valid options: {valid}.{hint}") from None

    # --- lifecycle -------------------------------------------------------
    def setup(self, model: torch.nn.Module) -> torch.nn.Module:
        """Prepare the model once (e.g. add adapters). Returns the model to train and evaluate."""
        self.model = model
        return model

    def before_task(self, stage: int, task: Task) -> None:
        """Called before training on ``task`` (``stage`` is 0-based)."""

    def train_samples(self, stage: int, task: Task) -> list[Sample]:
        """The samples to train on at this stage (default: the task's training set)."""
        return list(task.train)

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def extra_loss(self, batch: dict[str, torch.Tensor], outputs: Any, stage: int) -> torch.Tensor | None:
        """A loss term added to the task loss (regularisers, distillation)."""
        return None

    def after_backward(self, stage: int) -> None:
        """Called after each backward pass, before clipping and the optimizer step."""

    def after_task(self, stage: int, task: Task) -> None:
        """Called after training on ``task``, before evaluation."""

    def route(self, samples: list[Sample], task: Task) -> list[str] | None:
        """Adapter name per sample for evaluation (peft ``adapter_names=``), or None for no routing."""
        return None

    def extra_routes(self, samples: list[Sample], task: Task) -> dict[str, list[str]]:
        """More routings to evaluate after :meth:`route`, by track name (e.g. ``{"oracle": [...]}``).

        Each is generated (only the samples whose adapter differs from :meth:`route`'s) and scored
        with the task's primary scorer; the mean is the task's cell in that track's matrix.
        """
        return {}

    def extra_states(self, task: Task) -> dict[str, AbstractContextManager[None]]:
        """Other states of the model to evaluate ``task`` in, by track name (e.g. UNIFIER's branches off).

        Under each context every test sample is answered again (with :meth:`route`'s adapters);
        the track ``<name>`` gets the primary score of those answers and ``<name>_changed`` the share
        of answers that differ from the ones just scored. List both in ``extra_tracks``.
        """
        return {}

    def sample_tracks(self, task: Task) -> dict[str, list[float | None]]:
        """Per-sample values of further tracks for the evaluation just run (None = not defined)."""
        return {}

    # --- bookkeeping -----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def cost(self) -> dict[str, Any]:
        """Extra cost figures (e.g. bytes held between tasks)."""
        return {}


METHODS: Registry[type[Method]] = Registry("method")


def count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
