"""``mr-lora``: MR-LoRA of MLLM-CL (Zhao et al., 2025): one LoRA expert per task + an MLLM router.

**Experts (parameter isolation).** Stage ``t`` adds a fresh peft LoRA adapter ``expert-t`` (the
run's LoRA config, as ``lora-ft``) and trains only it, from the base: the earlier experts are
neither active nor trainable while it trains, and never change afterwards. With
``train_projector`` (default on, as the official code trains the projector per expert: its
``non_lora_trainables.bin``) each expert also owns a copy of the projector's linear layers,
through peft's ``modules_to_save`` on those ``nn.Linear`` layers (peft mixes per-sample adapters
only for leaf Linear/Embedding/Conv modules, not for a whole projector module).

**Router.** The same base model with its own LoRA adapter ``router`` (and projector copy). After
stage ``t`` it is trained, through the shared training loop (``ctx.train_extra``), on a small
stored set of training samples of every task seen so far (``router_samples_per_task``, default 20
as in the official ``*_train20.json`` files; stored as sample ids), to answer with the letter of
the task's expert from a prompt that lists the experts and their descriptions (``task.description``,
else the task name; ``expert_text: letters`` lists the letters only, for streams whose many experts
would not fit the model's context) followed by the question (:func:`router_prompt`), with the sample's image;
``router_input: text`` gives the same router the question only (a control: how much of routing the
image decides). There is no router while
only one expert exists (as in the official schedule). ``router_reinit`` (default true) starts the
router from a fresh adapter at each stage; false continues from the previous stage's router.

**Inference.** :meth:`MRLoRA.route`: the router answers for a whole test set in batches (peft
``adapter_names=["router", ...]``); :func:`parse_choice` reads the first valid letter of the reply
(as a standalone token); a reply that names no valid letter falls back to a random seen expert
(seeded by run seed, stage and sample id), counted per stage in ``results.json["cost"]["router_fallbacks"]``
(this process's evaluations) and as the ``router_fallback`` track (kept across a resume).
Then the evaluator answers with the chosen experts, again in batches with per-sample
``adapter_names``. Two extra matrix tracks are reported:

* ``router_fallback``: the share of a task's test samples whose router reply named no valid
  expert (routed at random);
* ``router_accuracy``: the share of a task's test samples routed to that task's own expert
  (undefined, None, for tasks whose expert does not exist yet);
* ``oracle``: the primary score with oracle routing (each seen task to its own expert; tasks not
  seen yet keep the router's choice), an upper bound on what routing can give. Only the samples the
  router sent elsewhere are generated again.

Differences from the official code, on purpose: the official evaluation precomputes every
expert's answers on every test set and then picks one per sample; here only the routed expert
answers (same result, T times less generation). The official parser checks the letters in the
order A..E (``'A' in out`` first); here the first valid letter in the reply wins. Letters follow
the stream order (A = first task), where the official code uses a fixed map (e.g. A = Fin).

Distributed: DDP (every adapter is a plain peft LoRA; routing generates on every process).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from peft import LoraConfig, get_peft_model
from pydantic import Field

from mmcl.adapters.lora import refuse_train_projector
from mmcl.adapters.pool import adapter_parameters
from mmcl.data.sample import Sample, Task
from mmcl.methods.base import METHODS, Method, MethodOptions, RunContext

ROUTER = "router"
PACKED_VISION_FAMILIES = frozenset({"llava-next", "qwen2-vl", "qwen2.5-vl"})
"""Families whose projector input is not one row per sample (anyres tiles, packed patches)."""
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

DEFAULT_TEMPLATE = "Experts: {experts}. Question: {question} Which expert should answer? Reply with its letter."
"""Short on purpose: the official prompt (a role, instructions, the expert pool, the question, a reminder)
is several hundred words; the tiny default model reads ~4.6 tokens per word and was trained on ~100-token
sequences. Pass the official wording as ``prompt_template`` for a real model."""


class MRLoRAOptions(MethodOptions):
    """Router data, training and prompt; expert projector copies; the oracle track."""

    router_samples_per_task: int = Field(20, ge=1, description="training samples kept per task for the router")
    router_epochs: float = Field(35.0, gt=0, description="router training epochs per stage (official: 35-40)")
    router_lr: float | None = Field(None, gt=0, description="router learning rate (None = train.lr)")
    router_reinit: bool = Field(True, description="a fresh router adapter at each stage (false: keep training it)")
    router_max_new_tokens: int = Field(4, ge=1, description="tokens the router may generate (official: 16)")
    expert_text: Literal["description", "name", "letters"] = Field(
        "description",
        description="what the prompt says of each expert: task.description, the task name, or nothing (letters "
                    "only: the router learns what each letter means from its data; for many experts)",
    )
    prompt_template: str = Field(DEFAULT_TEMPLATE, description="router prompt with {experts} and {question}")
    train_projector: bool = Field(True, description="each expert (and the router) owns a copy of the projector")
    oracle: bool = Field(True, description="also evaluate with oracle routing (the 'oracle' matrix track)")
    router_input: Literal["image+text", "text"] = Field(
        "image+text", description="what the router reads: the image and the question (official), or the question only")


def expert_name(k: int) -> str:
    return f"expert-{k}"


def router_prompt(question: str, experts: Sequence[str], template: str = DEFAULT_TEMPLATE) -> str:
    """The router's question: ``experts[k]`` is listed under letter ``LETTERS[k]`` (an empty text: the letter alone)."""
    if len(experts) > len(LETTERS):
        raise ValueError(f"a router prompt lists at most {len(LETTERS)} experts, got {len(experts)}")
    listed = "; ".join(f"{LETTERS[k]}: {text.rstrip('.')}" if text else LETTERS[k] for k, text in enumerate(experts))
    return template.format(experts=listed, question=question.strip())


_TOKEN = re.compile(r"[A-Za-z]+")


def parse_choice(reply: str, n_experts: int) -> int | None:
    """The expert index the router's reply names, or None.

    The first standalone letter among the valid ones (``A`` .. the ``n_experts``-th), in either
    case, wins: "B", "b.", "(C)", "Expert D" give 1, 1, 2, 3; "Bad" or a letter beyond the experts
    gives None.
    """
    valid = LETTERS[:n_experts]
    for tok in _TOKEN.findall(reply):
        if len(tok) == 1 and tok.upper() in valid:
            return valid.index(tok.upper())
    return None


@METHODS.register("mr-lora")
class MRLoRA(Method):
    """A LoRA expert per task, never changed after its stage, chosen per sample by an MLLM router."""

    name = "mr-lora"
    image_answers = False  # per-sample expert routing is text-only
    Options = MRLoRAOptions
    supports = frozenset({"ddp"})
    extra_tracks = ("router_accuracy", "router_fallback", "oracle")

    def __init__(self, ctx: RunContext, options: MethodOptions) -> None:
        super().__init__(ctx, options)
        refuse_train_projector(ctx.config.model, self.name,
                               "each expert gets its own projector through method.train_projector; leave "
                               "model.train_projector false")
        family = ctx.bundle.family.name
        if self.opts.train_projector and family in PACKED_VISION_FAMILIES:
            raise ValueError(
                f"method 'mr-lora' cannot give each expert its own projector on a {family} model: its projector "
                "sees image patches packed or tiled across the batch, not one row per sample, so peft cannot "
                "route it per sample; set method.train_projector=false"
            )
        self.experts: list[str] = []  # task name of expert k
        self.buffer: dict[str, list[str]] = {}  # task name -> kept training sample ids (the router's data)
        self.has_router = False
        self.fallbacks: dict[str, int] = {}  # stage label -> replies that named no valid expert
        self.routed: dict[str, list[int]] = {}  # task name -> the last route()'s expert per sample
        self.fell_back: dict[str, list[bool]] = {}  # task name -> the last route()'s fallback flags
        self._projector_linears: list[str] = []

    @property
    def opts(self) -> MRLoRAOptions:
        assert isinstance(self.options, MRLoRAOptions)
        return self.options

    # ------------------------------------------------------------------ adapters
    def _config(self) -> LoraConfig:
        cfg = self.ctx.lora_config()
        if self.opts.train_projector:
            cfg.modules_to_save = list(self._projector_linears)
        return cfg

    def setup(self, model: torch.nn.Module) -> torch.nn.Module:
        # found once, on the plain model: peft's wrappers add Linear copies inside the projector
        self._projector_linears = projector_linears(model, self.ctx.bundle.family.projector)
        torch.manual_seed(self.ctx.seed)
        self.model = get_peft_model(model, self._config(), adapter_name=expert_name(0))
        self._activate(expert_name(0))
        return self.model

    def _adapter_params(self, adapter: str) -> list[tuple[str, torch.nn.Parameter]]:
        return adapter_parameters(self.model, adapter)

    def _activate(self, adapter: str) -> None:
        """Make ``adapter`` the active one and the only trainable parameters."""
        self.model.set_adapter(adapter)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for _, p in self._adapter_params(adapter):
            p.requires_grad_(True)

    def _add(self, adapter: str) -> None:
        if adapter in self.model.peft_config:
            self.model.delete_adapter(adapter)
        self.model.add_adapter(adapter, self._config())

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ stages
    def before_task(self, stage: int, task: Task) -> None:
        if stage > 0 and expert_name(stage) not in self.model.peft_config:
            torch.manual_seed(self.ctx.seed * 7919 + stage)
            self._add(expert_name(stage))
        self._activate(expert_name(stage))

    def after_task(self, stage: int, task: Task) -> None:
        self.experts.append(task.name)
        self.buffer[task.name] = self._pick(task)
        if len(self.experts) > 1:
            self._train_router(stage)
        self._activate(expert_name(stage))  # as after training: nothing else changed

    def _pick(self, task: Task) -> list[str]:
        n = min(self.opts.router_samples_per_task, len(task.train))
        idx = sorted(random.Random(f"{self.ctx.seed}:router:{task.name}").sample(range(len(task.train)), n))
        return [task.train[i].id for i in idx]

    def _expert_texts(self) -> list[str]:
        tasks = {t.name: t for t in self.ctx.benchmark.tasks}
        if self.opts.expert_text == "name":
            return list(self.experts)
        if self.opts.expert_text == "letters":
            return [""] * len(self.experts)
        return [tasks[name].description or name for name in self.experts]

    def router_samples(self, samples: Sequence[Sample], answers: Sequence[int] | None = None) -> list[Sample]:
        """``samples`` as router questions (with the expert letter as the answer, if given)."""
        texts = self._expert_texts()
        out = []
        for i, s in enumerate(samples):
            q = router_prompt(s.question, texts, self.opts.prompt_template)
            ans = [LETTERS[answers[i]]] if answers is not None else []
            image = s.image if self.opts.router_input == "image+text" else None
            out.append(Sample(id=f"router:{s.id}", question=q, answers=ans, image=image, task=s.task))
        return out

    def router_data(self) -> list[Sample]:
        """The router's training set now: the kept samples of every seen task, labelled by expert."""
        tasks = {t.name: t for t in self.ctx.benchmark.tasks}
        samples, labels = [], []
        for k, name in enumerate(self.experts):
            by_id = {s.id: s for s in tasks[name].train}
            missing = [i for i in self.buffer[name] if i not in by_id]
            if missing:
                raise ValueError(f"mr-lora: router sample {missing[0]!r} of task {name!r} is not in its training set")
            samples += [by_id[i] for i in self.buffer[name]]
            labels += [k] * len(self.buffer[name])
        return self.router_samples(samples, labels)

    def _train_router(self, stage: int) -> None:
        if self.ctx.train_extra is None:
            raise RuntimeError("mr-lora needs the runner's ctx.train_extra to train its router")
        if self.opts.router_reinit or not self.has_router:
            torch.manual_seed(self.ctx.seed * 7919 + 1000 + stage)
            self._add(ROUTER)
        self._activate(ROUTER)
        overrides: dict[str, Any] = {"epochs": self.opts.router_epochs, "max_steps": None}
        if self.opts.router_lr is not None:
            overrides["lr"] = self.opts.router_lr
        self.ctx.train_extra(self.router_data(), f"router (stage {stage + 1})", **overrides)
        self.has_router = True

    # ------------------------------------------------------------------ routing
    def _choose(self, samples: list[Sample], task: Task) -> tuple[list[int], list[bool]]:
        """The expert of each sample, and whether it was a random fallback."""
        k = len(self.experts)
        if k == 1 or not self.has_router:
            return [0] * len(samples), [False] * len(samples)
        replies = self.ctx.generate(
            self.model, self.router_samples(samples), max_new_tokens=self.opts.router_max_new_tokens,
            adapter_names=[ROUTER] * len(samples),
        )
        choices, fell = [], []
        label = f"stage {k}"
        for s, r in zip(samples, replies, strict=True):
            c = parse_choice(r, k)
            fell.append(c is None)
            if c is None:  # seeded per sample: the same pick in any batch
                c = random.Random(f"{self.ctx.seed}:fallback:{k}:{s.id}").randrange(k)
                self.fallbacks[label] = self.fallbacks.get(label, 0) + 1
            choices.append(c)
        return choices, fell

    def route(self, samples: list[Sample], task: Task) -> list[str] | None:
        if not self.experts:  # nothing trained yet (the zero-shot row)
            return None
        choices, fell = self._choose(samples, task)
        self.routed[task.name], self.fell_back[task.name] = choices, fell
        return [expert_name(c) for c in choices]

    def extra_routes(self, samples: list[Sample], task: Task) -> dict[str, list[str]]:
        if not self.experts or not self.opts.oracle:
            return {}
        if task.name in self.experts:
            return {"oracle": [expert_name(self.experts.index(task.name))] * len(samples)}
        return {"oracle": [expert_name(c) for c in self.routed[task.name]]}

    def sample_tracks(self, task: Task) -> dict[str, list[float | None]]:
        if not self.experts:
            return {}
        own = self.experts.index(task.name) if task.name in self.experts else None
        return {
            "router_accuracy": [None if own is None else float(c == own) for c in self.routed[task.name]],
            "router_fallback": [float(f) for f in self.fell_back[task.name]],
        }

    # ------------------------------------------------------------------ bookkeeping
    def state_dict(self) -> dict[str, Any]:
        return {
            "experts": list(self.experts),
            "buffer": {k: list(v) for k, v in self.buffer.items()},
            "has_router": self.has_router,
            "fallbacks": dict(self.fallbacks),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-create the saved experts and router (their weights are then loaded by the checkpoint)."""
        self.experts = list(state["experts"])
        self.buffer = {k: list(v) for k, v in state["buffer"].items()}
        self.has_router = bool(state["has_router"])
        self.fallbacks = dict(state["fallbacks"])
        for k in range(1, len(self.experts)):
            if expert_name(k) not in self.model.peft_config:
                self._add(expert_name(k))
        if self.has_router and ROUTER not in self.model.peft_config:
            self._add(ROUTER)
        self._activate(expert_name(max(0, len(self.experts) - 1)))

    def cost(self) -> dict[str, Any]:
        def nbytes(adapter: str) -> int:
            return sum(p.numel() * p.element_size() for _, p in self._adapter_params(adapter))

        experts = [nbytes(expert_name(k)) for k in range(len(self.experts))]
        return {
            "experts": len(self.experts),
            "params_added_per_task": sum(p.numel() for _, p in self._adapter_params(expert_name(0))),
            "expert_bytes": sum(experts),
            "router_bytes": nbytes(ROUTER) if self.has_router else 0,
            "router_buffer_samples": sum(len(v) for v in self.buffer.values()),
            "router_fallbacks": dict(self.fallbacks),
        }


def projector_linears(model: torch.nn.Module, projector: str) -> list[str]:
    """Full names of the ``nn.Linear`` layers inside the module ``projector`` of ``model``."""
    try:
        module = model.get_submodule(projector)
    except AttributeError:
        raise ValueError(f"the model has no projector module {projector!r}") from None
    names = [f"{projector}.{n}" for n, m in module.named_modules() if n and isinstance(m, torch.nn.Linear)]
    if isinstance(module, torch.nn.Linear):
        names = [projector]
    if not names:
        raise ValueError(f"the projector {projector!r} has no nn.Linear layer for an expert to copy")
    return names
