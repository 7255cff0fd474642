"""``quad``: question-only replay with attention distillation (QUAD; Marouf, Tartaglione,
Lathuilière & van de Weijer, ICCV 2025, "Ask and Remember: A Questions-Only Replay Strategy for
Continual VQA", arXiv 2502.04469).

QUAD keeps no images and no answers of earlier tasks, only some of their *questions*. At every
stage after the first it asks those old questions about the *current* task's images, lets the
frozen previous-step model answer them, and trains the current model to stay close to it::

    L = (1 - λ) · L_task + λ · (L_QR + L_ACD),    λ = 0.5 in the paper

* ``L_QR`` (question-only replay): the previous-step model's output distribution on (current
  image, old question) pairs is the soft target of the current model; it counters the
  out-of-answer-set problem (the model forgetting how to answer anything but the current task's
  answer space).
* ``L_ACD`` (attention consistency distillation): the current model's post-softmax attention maps
  on the same pairs are kept close to the previous model's, which covers intra-modal (text->text,
  image->image) and inter-modal (text->image) attention in one map.

How it is built here (one peft model, one LoRA adapter trained through the stream as ``lora-ft``):

* **Parts.** Everything below is :class:`QuestionReplay`, a part the method holds and calls from
  its hooks (``unifier-quad`` holds the same part beside UNIFIER's vision branches).
* **Teacher.** ``lwf``'s :class:`~mmcl.methods.lwf.TeacherAdapter`: before every stage after the
  first the ``default`` adapter is copied into a frozen ``teacher`` adapter of the same model;
  teacher forwards run under ``no_grad`` in ``eval()`` and leave every ``requires_grad`` flag as it
  was.
* **Memory.** After each task, ``questions_per_task`` of its training samples (default 100; the
  paper keeps 5,000 per task on VQAv2 and 500 on NExT-QA, our synthetic tasks are much smaller) are
  drawn uniformly at random with a generator seeded from the run seed and the stage, and their
  question text is stored with the object category it asks about (``sample.meta["category"]``, None
  when absent) and its provenance (task name, sample id). Repeated question strings are kept as
  they are: the memory follows the task's question distribution. Nothing else is stored: no image,
  no answer, no tensor.
* **Replay pairs.** At ``before_task`` of stage ``t > 0``, right after the teacher copy (so the
  student still *is* the teacher), ``pairs_per_task`` current training samples (default: all of
  them, in a seeded random order) each lend their image to one stored question (a text-only sample
  gives a text-only pair). With
  ``selection="object"`` (default) the question is drawn uniformly among stored questions whose
  category is among the categories the current task's samples ask about (``meta["category"]``);
  when none match, or with ``selection="random"``, uniformly among all stored questions. The
  teacher answers every pair once, greedily, in batches (``ctx.generate``, the task's
  ``max_new_tokens`` of the question's task unless ``eval.max_new_tokens`` is set), and that answer
  becomes the pair's target text. Pairs are held as ``Sample`` objects (image references and
  strings) and encoded when drawn, so no pixel tensors are kept between steps.
* **Replay step.** In ``extra_loss`` a mini-batch of ``replay_batch_size`` pairs (default:
  ``train.batch_size``) is drawn without replacement from a generator seeded by the run seed and the
  stage. The student (with gradient, in the loop's train mode) and the teacher run on it,
  teacher-forced on the teacher's answer (re-tokenised from its decoded text, with the answer eos).
  ``L_QR = T² · KL(softmax(z_teacher / T) || softmax(z_student / T))`` over the answer-token
  positions (``lwf``'s ``distillation_loss``; temperature ``T`` default 1, which is the paper's
  soft-target cross-entropy up to the teacher's entropy, a constant).
* **Attention.** The paper uses every head of every layer; here every head of the language
  model's decoder layers listed in ``attention_layers`` (default: all; negative indices count from
  the end, e.g. ``[-4, -3, -2, -1]`` for the last four on a large model, where all layers' maps
  cost memory). Rows are the query positions after the last image token (the question, the
  assistant prefix, the answer and its eos; BOS, the system/user prefix and the image tokens
  themselves are not rows) and every key (image and text). Per row the loss is
  ``KL(A_teacher || A_student) = CE(A_teacher, A_student) − H(A_teacher)``: the paper's
  cross-entropy minus the teacher's entropy, a constant with the same gradient, so that the loss
  is exactly zero against an identical teacher; it is averaged over rows, heads and layers. The
  maps are read by forward hooks on the language model's attention modules. Only the ``"eager"``
  attention implementation returns them: with ``sdpa`` (the default of transformers 5.x) the
  modules return ``None`` weights and ``output_attentions=True`` gives an empty tuple. The
  language model is therefore switched to ``eager`` for the two replay forwards only (through
  ``set_attn_implementation`` on its sub-config) and switched back; the task forward of the loop
  keeps its implementation. Maps are post-dropout when the model has ``attention_dropout > 0``.
* **Weighting.** The loop adds ``extra_loss`` to the unweighted task loss, so this method returns
  ``λ / (1 − λ) · (replay_weight · L_QR + attention_weight · L_ACD)`` with ``λ =
  stability_weight`` (default 0.5, so the factor is 1). The loop's loss is then the paper's
  objective times ``1 / (1 − λ)`` (2 at the default). AdamW is invariant to a uniform scaling of
  the loss except for its ``eps`` and for gradient clipping (``train.max_grad_norm`` is reached at
  half the paper's gradient norm at the default); the logged training loss is ``1 / (1 − λ)``
  times the paper's. ``replay_weight`` and ``attention_weight`` (default 1 each, the paper's
  unweighted sum) are for ablations; ``attention_weight=0`` skips the attention maps and the eager
  switch.

Stage 0 has no memory and no teacher, so no extra loss. ``state_dict`` holds the question memory
(JSON-friendly dicts); the teacher and the replay pairs are rebuilt at ``before_task`` from the
adapter as it was at the start of the stage and from seeded generators, so a run resumed at a
stage boundary continues identically.

Cost: ``questions_stored``; ``held_bytes.question_memory``, the UTF-8 bytes of the stored question
texts and category tags (provenance is bookkeeping, not counted); ``held_bytes.teacher_adapter``,
one extra set of LoRA weights (as ``lwf``); no parameters added per task. Each step runs two extra
forwards (student with gradient, teacher without) on the replay batch, and each stage after the
first one greedy-generation pass over its replay pairs.

Distributed: ``ddp`` only, for ``lwf``'s reason: the teacher forward switches adapters on the
unwrapped module by toggling ``requires_grad``, which DeepSpeed ZeRO and FSDP do not allow. Every
process draws the same replay pairs (the generators are seeded by the run seed and stage only).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
from pydantic import Field

from mmcl.data.sample import Sample, Task
from mmcl.methods.base import METHODS, MethodOptions, RunContext
from mmcl.methods.lora_ft import LoraFT
from mmcl.methods.lwf import TeacherAdapter


class QuadOptions(MethodOptions):
    """Options of ``quad`` (see the module docstring)."""

    questions_per_task: int = Field(
        100, ge=1, description="Questions stored from every finished task (default 100)."
    )
    selection: Literal["object", "random"] = Field(
        "object",
        description="Which stored questions are replayed: 'object' prefers those whose category is among "
        "the current task's, 'random' draws uniformly (default object).",
    )
    pairs_per_task: int | None = Field(
        None,
        ge=1,
        description="(current image, old question) pairs built and answered by the teacher at each stage "
        "(default null: one per training sample of the current task).",
    )
    replay_batch_size: int | None = Field(
        None, ge=1, description="Replay pairs per training step (default null: train.batch_size)."
    )
    temperature: float = Field(
        1.0, gt=0.0, description="Temperature T of the replay distillation (default 1)."
    )
    replay_weight: float = Field(
        1.0, ge=0.0, description="Weight of the replay KL in the stability loss (default 1)."
    )
    attention_weight: float = Field(
        1.0, ge=0.0, description="Weight of the attention distillation in the stability loss (default 1)."
    )
    attention_layers: list[int] | None = Field(
        None,
        min_length=1,
        description="Language-model layers whose attention is distilled; negative counts from the end "
        "(default null: all).",
    )
    stability_weight: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="λ in (1 - λ)·task + λ·(replay + attention), in [0, 1) (default 0.5, the paper's).",
    )


@dataclass(frozen=True)
class StoredQuestion:
    """One memory entry: a past question, the object category it asks about, and where it came from."""

    question: str
    category: str | None
    task: str
    sample_id: str


def question_category(sample: Sample) -> str | None:
    """The object category a sample's question asks about (``meta["category"]``), if any."""
    category = sample.meta.get("category")
    return str(category) if category is not None else None


def question_pool(
    memory: Sequence[StoredQuestion], categories: set[str], selection: Literal["object", "random"]
) -> list[StoredQuestion]:
    """Stored questions to replay: those about ``categories`` ("object", when any), else all of them."""
    if selection == "object":
        matched = [q for q in memory if q.category is not None and q.category in categories]
        if matched:
            return matched
    return list(memory)


@contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Run the language model's attention with the "eager" implementation, then restore the previous one.

    Only eager attention modules return their weights in transformers 5.x. ``model`` is the Hugging
    Face model (not the peft wrapper); only the decoder's (sub-)config is switched.
    """
    config = model.get_decoder().config
    previous = config._attn_implementation
    if previous == "eager":
        yield
        return
    sub = next(
        (k for k in getattr(model.config, "sub_configs", {}) if getattr(model.config, k, None) is config),
        None,
    )

    def use(implementation: str) -> None:
        model.set_attn_implementation({sub: implementation} if sub else implementation)

    use("eager")
    try:
        yield
    finally:
        use(previous)


@contextmanager
def record_attention(modules: Sequence[torch.nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Collect the attention weights (``[batch, heads, queries, keys]``) ``modules`` return, in call order."""
    maps: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, args: Any, output: Any) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise RuntimeError(
                f"quad: {type(module).__name__} returned no attention weights (is the attention "
                "implementation eager?)"
            )
        maps.append(weights)

    handles = [m.register_forward_hook(keep) for m in modules]
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()


def attention_rows(batch: dict[str, torch.Tensor], image_token_id: int | None) -> torch.Tensor:
    """``[batch, seq]`` mask of the query rows distilled: attended positions after the last image token."""
    mask = batch["attention_mask"].bool()
    if image_token_id is None:
        return mask
    ids = batch["input_ids"]
    pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    last_image = torch.where(ids == image_token_id, pos, -1).amax(dim=1, keepdim=True)
    return mask & (pos > last_image)


def attention_kl(
    teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], rows: torch.Tensor
) -> torch.Tensor:
    """``KL(A_teacher || A_student)`` per attention row (over all keys), mean over rows, heads and layers.

    ``KL = CE − H(teacher)``: QUAD's cross-entropy minus the teacher's entropy (no gradient), so the
    loss is zero when the maps agree. Keys the teacher does not attend to contribute nothing.
    """
    if len(teacher) != len(student) or not teacher:
        raise RuntimeError(f"quad: {len(teacher)} teacher and {len(student)} student attention maps")
    tiny = torch.finfo(torch.float32).tiny  # only exact zeros (masked keys) are clamped
    losses = []
    for t, s in zip(teacher, student, strict=True):
        t = t.transpose(1, 2)[rows].float()  # [rows, heads, keys]
        s = s.transpose(1, 2)[rows].float()
        kl = (t * (t.clamp_min(tiny).log() - s.clamp_min(tiny).log())).sum(-1)
        losses.append(kl.mean())
    return torch.stack(losses).mean()


class QuestionReplay:
    """QUAD's stability term as a part a method holds (see the module docstring): the question
    memory, the teacher adapter, the replay pairs, and the replay and attention distillation.

    The host calls :meth:`setup` from its ``setup`` (after the LoRA model exists), and
    :meth:`before_task`, :meth:`after_task`, :meth:`loss` from the hooks of the same names.
    ``teacher_mode``: a context entered around every teacher forward (see :class:`TeacherAdapter`).
    """

    def __init__(
        self, ctx: RunContext, options: QuadOptions, teacher_mode: Callable[[], AbstractContextManager[Any]] | None = None
    ) -> None:
        self.ctx = ctx
        self.options = options
        self.teacher = TeacherAdapter(ctx, around=teacher_mode)
        self.model: torch.nn.Module = ctx.model  # the peft model, from setup on
        self.memory: list[StoredQuestion] = []
        self.pairs: list[Sample] = []  # this stage's (current image, old question, teacher answer)
        self.distilled_attention: list[torch.nn.Module] = []
        self._draw = random.Random(0)

    def setup(self, model: torch.nn.Module) -> None:
        """Add the teacher adapter to the peft ``model`` and find the attention modules to distil."""
        self.model = model
        self.teacher.setup(model)
        self.distilled_attention = self._attention_modules()

    def _attention_modules(self) -> list[torch.nn.Module]:
        """The attention modules of the decoder layers in ``attention_layers``, in layer order."""
        decoder = self.hf_model.get_decoder()
        spec = getattr(type(decoder), "_can_record_outputs", None) or {}
        cls = getattr(spec.get("attentions"), "target_class", spec.get("attentions"))
        if not isinstance(cls, type):
            raise ValueError(f"method 'quad': cannot find the attention modules of {type(decoder).__name__}")
        modules = [m for m in decoder.modules() if isinstance(m, cls)]
        n = len(modules)
        layers = self.options.attention_layers or list(range(n))
        bad = [i for i in layers if not -n <= i < n]
        if bad:
            raise ValueError(
                f"method 'quad': method.attention_layers {bad} out of range for a language model with {n} layers"
            )
        return [modules[i] for i in sorted({i % n for i in layers})]

    @property
    def hf_model(self) -> Any:
        """The Hugging Face model under the peft wrapper."""
        return self.model.get_base_model()

    def _rng(self, stage: int, purpose: str) -> random.Random:
        # str seeds are hashed with SHA-512: the same in every process and Python run
        return random.Random(f"mmcl-quad:{self.ctx.seed}:{stage}:{purpose}")

    # ------------------------------------------------------------------ memory
    def after_task(self, stage: int, task: Task) -> None:
        """Store ``questions_per_task`` of the finished task's questions."""
        rng = self._rng(stage, "select")
        picked = rng.sample(task.train, min(self.options.questions_per_task, len(task.train)))
        self.memory.extend(StoredQuestion(s.question, question_category(s), task.name, s.id) for s in picked)
        self.pairs = []

    def before_task(self, stage: int, task: Task) -> None:
        """From stage 1 on: copy the student into the teacher, then build the replay pairs."""
        if stage > 0:
            self.teacher.copy_student()
        self.pairs = self.build_pairs(stage, task) if stage > 0 else []
        self._draw = self._rng(stage, "draw")

    def build_pairs(self, stage: int, task: Task) -> list[Sample]:
        """Current training samples' images with stored questions, answered by the teacher."""
        if not self.memory or not task.train:
            return []
        rng = self._rng(stage, "pairs")
        n = self.options.pairs_per_task or len(task.train)
        images = rng.sample(task.train, n) if n <= len(task.train) else rng.choices(task.train, k=n)
        current = {c for s in task.train if (c := question_category(s)) is not None}
        pool = question_pool(self.memory, current, self.options.selection)
        questions = [rng.choice(pool) for _ in images]
        pairs = [
            Sample(
                id=f"quad-{stage}-{i:05d}",
                question=q.question,
                answers=[""],
                image=img.image,
                task=task.name,
                scenario=img.scenario,
                meta={
                    "category": q.category,
                    "question_task": q.task,
                    "question_id": q.sample_id,
                    "image_id": img.id,
                },
            )
            for i, (img, q) in enumerate(zip(images, questions, strict=True))
        ]
        answers = self.teacher_answers(pairs, [q.task for q in questions])
        return [replace(p, answers=[a]) for p, a in zip(pairs, answers, strict=True)]

    def teacher_answers(self, pairs: list[Sample], question_tasks: list[str]) -> list[str]:
        """Greedy answers of the current ``default`` adapter, which equals the teacher at ``before_task``."""
        ctx = self.ctx
        limits = [
            ctx.config.eval.max_new_tokens or ctx.benchmark.task(t).max_new_tokens for t in question_tasks
        ]
        answers = [""] * len(pairs)
        for limit in sorted(set(limits)):
            idx = [i for i, m in enumerate(limits) if m == limit]
            texts = ctx.generate(self.model, [pairs[i] for i in idx], max_new_tokens=limit)
            for i, text in zip(idx, texts, strict=True):
                answers[i] = text
        return answers

    # ------------------------------------------------------------------ loss
    def replay_batch(self, device: torch.device) -> dict[str, torch.Tensor]:
        """A training batch of replay pairs (labels on the teacher's answer), drawn without replacement."""
        size = self.options.replay_batch_size or self.ctx.config.train.batch_size
        chosen = self._draw.sample(self.pairs, min(size, len(self.pairs)))
        batch = self.ctx.collate(self.ctx.encode(chosen, with_answer=True))
        return {k: v.to(device) for k, v in batch.items()}

    def loss(self, batch: dict[str, torch.Tensor], stage: int) -> torch.Tensor | None:
        """``λ / (1 − λ) · (replay_weight · L_QR + attention_weight · L_ACD)`` on a drawn replay batch."""
        o = self.options
        if stage == 0 or not self.teacher.ready or not self.pairs or o.stability_weight == 0:
            return None
        replay_kl, attention = self.stability_losses(self.replay_batch(batch["input_ids"].device))
        stability = o.replay_weight * replay_kl + o.attention_weight * attention
        return o.stability_weight / (1.0 - o.stability_weight) * stability

    def stability_losses(self, replay: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(replay KL, attention KL) of the student against the teacher on a replay batch."""
        with_attention = self.options.attention_weight > 0
        modules = self.distilled_attention if with_attention else []
        inputs = {k: v for k, v in replay.items() if k != "labels"}
        with eager_attention(self.hf_model) if with_attention else nullcontext():
            with record_attention(modules) as student_maps:
                student = self.model(**inputs)
            with record_attention(modules) as teacher_maps:  # the teacher forward runs in distillation_loss
                replay_kl = self.teacher.distillation_loss(replay, student.logits, self.options.temperature)
        if not with_attention:
            return replay_kl, replay_kl.new_zeros(())
        rows = attention_rows(replay, getattr(self.hf_model.config, "image_token_id", None))
        return replay_kl, attention_kl(teacher_maps, student_maps, rows)

    # ------------------------------------------------------------------ bookkeeping
    def state_dict(self) -> dict[str, Any]:
        return {"memory": [asdict(q) for q in self.memory]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        memory = [
            StoredQuestion(
                question=str(q["question"]),
                category=None if q.get("category") is None else str(q["category"]),
                task=str(q["task"]),
                sample_id=str(q["sample_id"]),
            )
            for q in state.get("memory", [])
        ]
        unknown = sorted({q.task for q in memory} - set(self.ctx.benchmark.task_names))
        if unknown:  # fail now, not when the teacher answers at the next stage
            raise KeyError(
                f"quad memory holds questions of tasks {unknown} that the benchmark does not have "
                "(was the memory saved for another benchmark?)"
            )
        self.memory = memory

    def cost(self) -> dict[str, Any]:
        return {
            "params_added_per_task": 0,
            "held_bytes": {
                "teacher_adapter": self.teacher.held_bytes(),
                "question_memory": sum(len(q.question.encode()) + len((q.category or "").encode()) for q in self.memory),
            },
            "questions_stored": len(self.memory),
        }


@METHODS.register("quad")
class Quad(LoraFT):
    """One LoRA adapter, distilled towards its previous-stage copy on old questions about current
    images, attention included (the :class:`QuestionReplay` part)."""

    name = "quad"
    image_answers = False  # its replay and attention distillation read text logits
    Options = QuadOptions
    supports = frozenset({"ddp"})
    options: QuadOptions

    def __init__(self, ctx: RunContext, options: QuadOptions) -> None:
        super().__init__(ctx, options)
        self.replay = QuestionReplay(ctx, options)

    def setup(self, model: torch.nn.Module) -> torch.nn.Module:
        model = super().setup(model)
        self.replay.setup(model)
        return model

    def before_task(self, stage: int, task: Task) -> None:
        self.replay.before_task(stage, task)

    def after_task(self, stage: int, task: Task) -> None:
        self.replay.after_task(stage, task)

    def extra_loss(self, batch: dict[str, torch.Tensor], outputs: Any, stage: int) -> torch.Tensor | None:
        return self.replay.loss(batch, stage)

    def state_dict(self) -> dict[str, Any]:
        return self.replay.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.replay.load_state_dict(state)

    def cost(self) -> dict[str, Any]:
        return self.replay.cost()
