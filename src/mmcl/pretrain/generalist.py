"""``mmcl pretrain --recipe generalist``: the generalist tiny LLaVA (caption pre-training, then visual instruction tuning).

Recipe (deterministic from ``seed``):

1. caption pre-training: the ``caption`` recipe (:mod:`mmcl.pretrain.llava`). Its output is the
   shipped ``tiny-llava`` preset, so by default that directory is loaded instead of rebuilt
   (``caption_base``); when it is missing the caption stage runs first;
2. vision warm-up on the instruction pictures: the tower alone, with a throw-away linear head,
   tells for every patch the colour and the class of the object covering it (22 classes:
   the streams' 16 categories, 5 generic shapes and written text, all drawn canonically);
3. visual instruction tuning of ALL weights on the generic mix of
   :mod:`mmcl.pretrain.instruct` (msvqa-synth's five question forms and the MLLM-CL stand-ins'
   answer forms, about large objects and text on plain or smooth generic backgrounds; types
   weighted by ``qtype_weights``) plus a share of the caption and "Say <word>." samples, so that
   the base still captions and writes the answer words;
4. the card: held-out generic scores per question type, and zero-shot on the built-in streams
   (``msvqa-synth``, 20 steps, per task, scenario and type; ``mllm-dcl-synth`` and
   ``mllm-acl-synth`` per task and per task and question type), written to ``pretrain.json``.
   See docs/generalist-base.md.

No stream picture is ever shown in steps 1-3; the streams' test sets are only read in step 4.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from rich.console import Console

from mmcl.benchmarks.builtin import build_benchmark
from mmcl.benchmarks.msvqa.synth import (
    GROUNDING_MAX_NEW_TOKENS,
    GROUNDING_SCORERS,
    QA_MAX_NEW_TOKENS,
    QA_SCORERS,
    answer_vocabulary,
)
from mmcl.config import BenchmarkConfig, ModelConfig, RunConfig, TrainConfig
from mmcl.data.sample import Benchmark, Task
from mmcl.eval.evaluator import score_predictions
from mmcl.eval.generate import generate_answers
from mmcl.methods.base import RunContext
from mmcl.models.loader import ASSETS_DIR, FAMILIES, ModelBundle, load_model
from mmcl.pretrain.data import caption_samples, say_samples
from mmcl.pretrain.instruct import (
    ALL_CATEGORIES,
    BOX_QTYPES,
    DEFAULT_WEIGHTS,
    INSTRUCT_QTYPES,
    INSTRUCT_TASK,
    PHRASE_QTYPES,
    TEXT_SHAPE,
    instruct_samples,
)
from mmcl.pretrain.llava import FullFinetune, pretrain, pretrain_vision
from mmcl.train.encode import Encoder
from mmcl.train.loop import train_on

CARD_STREAMS: tuple[str, ...] = ("msvqa-synth", "mllm-dcl-synth", "mllm-acl-synth")


@dataclass
class GeneralistRecipe:
    """The instruction stage's settings (the caption stage keeps the ``caption`` recipe's)."""

    seed: int = 0
    n_instruct: int = 63000  # instruction samples, types in mmcl.pretrain.instruct.qtype_pattern(qtype_weights) order
    n_captions: int = 3000  # caption samples kept in the mix
    n_say: int = 1500  # "Say <word>." samples kept in the mix
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 5e-4
    vision_steps: int = 300
    n_held_out: int = 1500  # held-out generic instruction samples for the card (the types in turn: 100 each)
    qtype_weights: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))  # samples per round
    textured: float = 0.4  # share of pictures on a gradient or soft-noise background instead of a plain one
    max_steps: int | None = None
    card_test_per_task: int = 50
    card_streams: tuple[str, ...] = field(default_factory=lambda: CARD_STREAMS)


def _where(path: Path) -> str:
    """``preset:<name>`` for a shipped preset directory, else the path."""
    return f"preset:{path.name}" if path.resolve().parent == ASSETS_DIR.resolve() else str(path)


PHRASE_MAX_NEW_TOKENS = 12  # "a blue storage-tank" is 7 tokens of the tiny tokenizer


def evaluate_tasks(bundle: ModelBundle, tasks: list[Task], batch_size: int = 64) -> dict[str, dict[str, Any]]:
    """Greedy answers on every task's test set; {task: {scorer: mean}} (primary scorer first).

    ``per_qtype`` (x100): the primary score per ``meta["qtype"]`` of the test samples.
    """
    encoder = Encoder(bundle.processor)
    out: dict[str, dict[str, Any]] = {}
    for t in tasks:
        preds = generate_answers(bundle.model, bundle.tokenizer, encoder.encode(t.test, with_answer=False),
                                 batch_size, t.max_new_tokens)
        scores, rows = score_predictions(t, preds)
        by_type: dict[str, list[float]] = {}
        for sample, row in zip(t.test, rows, strict=True):
            by_type.setdefault(str(sample.meta.get("qtype")), []).append(row["scores"][t.primary_scorer])
        out[t.name] = {"primary": t.primary_scorer, "score": 100 * scores[t.primary_scorer],
                       "scores": scores, "examples": rows[:2],
                       "per_qtype": {q: 100 * sum(v) / len(v) for q, v in by_type.items()}}
    return out


def held_out_tasks(seed: int, n: int, image_size: int, qtypes: tuple[str, ...] = INSTRUCT_QTYPES) -> list[Task]:
    """The card's generic held-out tasks, one per question type (``n`` samples, the types in turn), scored like
    msvqa-synth's (VQA score; box F1 for boxes)."""
    test = instruct_samples(n, seed, split="test", image_size=image_size, qtypes=qtypes)
    tasks = []
    for q in qtypes:
        box = q in BOX_QTYPES
        tokens = GROUNDING_MAX_NEW_TOKENS if box else PHRASE_MAX_NEW_TOKENS if q in PHRASE_QTYPES else QA_MAX_NEW_TOKENS
        tasks.append(Task(f"{INSTRUCT_TASK}.{q}", [], [s for s in test if s.meta["qtype"] == q],
                          scorers=list(GROUNDING_SCORERS) if box else list(QA_SCORERS), max_new_tokens=tokens))
    return tasks


def stream_zero_shot(bundle: ModelBundle, name: str, test_per_task: int) -> dict[str, Any]:
    """Zero-shot of ``bundle`` on the built-in stream ``name``: per task, and means (x100)."""
    cfg = RunConfig(benchmark=BenchmarkConfig(name=name, test_per_task=test_per_task, train_per_task=1))
    bench: Benchmark = build_benchmark(cfg)
    per_task = evaluate_tasks(bundle, bench.tasks)
    scores = {k: round(v["score"], 1) for k, v in per_task.items()}
    card: dict[str, Any] = {"per_task": scores, "all_tasks": round(sum(scores.values()) / len(scores), 1)}
    if name != "msvqa-synth":  # two question types per task
        card["per_qtype"] = {f"{k}.{q}": round(v, 1) for k, t in per_task.items() for q, v in t["per_qtype"].items()}
    if name == "msvqa-synth":
        for axis, pos in (("per_scenario", 0), ("per_type", 1)):
            groups: dict[str, list[float]] = {}
            for k, v in scores.items():
                groups.setdefault(k.split(".")[pos], []).append(v)
            card[axis] = {g: round(sum(v) / len(v), 1) for g, v in groups.items()}
    return card


def write_card(out: Path, bundle: ModelBundle, recipe: GeneralistRecipe, record: dict[str, Any],
               console: Console) -> dict[str, Any]:
    """Held-out generic scores and zero-shot on the built-in streams, added to ``record``."""
    size = bundle.model.config.vision_config.image_size
    qtypes = tuple(q for q in INSTRUCT_QTYPES if recipe.qtype_weights.get(q, 0) > 0)
    held = evaluate_tasks(bundle, held_out_tasks(recipe.seed + 10_000, recipe.n_held_out, size, qtypes))
    record["held_out_generic"] = {k.split(".", 1)[1]: round(v["score"], 1) for k, v in held.items()}
    record["held_out_generic"]["all_types"] = round(
        sum(v["score"] for v in held.values()) / len(held), 1)
    record["held_out_examples"] = [ex for v in held.values() for ex in v["examples"][:1]]
    console.print(f"held-out generic: {record['held_out_generic']}")
    record["zero_shot"] = {}
    for name in recipe.card_streams:
        record["zero_shot"][name] = stream_zero_shot(bundle, name, recipe.card_test_per_task)
        console.print(f"zero-shot {name}: {record['zero_shot'][name]}")
    return record


def pretrain_generalist(
    output: str | Path,
    recipe: GeneralistRecipe | None = None,
    caption_base: str | Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Build the generalist base into ``output``; returns what ``pretrain.json`` records."""
    console = console or Console(stderr=True)
    recipe = recipe or GeneralistRecipe()
    out = Path(output)
    t0 = time.perf_counter()
    if caption_base is None:
        caption_base = ASSETS_DIR / "tiny-llava"
    caption_base = Path(caption_base)
    if not (caption_base / "config.json").is_file():
        console.print(f"no caption base at {caption_base}: running the caption stage first")
        pretrain(caption_base, seed=recipe.seed, console=console)
    card = caption_base / "pretrain.json"
    caption_record = json.loads(card.read_text()) if card.is_file() else {}
    torch.manual_seed(recipe.seed)
    bundle = load_model(ModelConfig(preset=None, path=str(caption_base), dtype="float32"))
    model, processor = bundle.model, bundle.processor
    size = model.config.vision_config.image_size
    n_params = sum(p.numel() for p in model.parameters())
    console.print(f"caption base {caption_base}: {n_params:,} parameters")

    train = instruct_samples(recipe.n_instruct, recipe.seed, "train", size, weights=recipe.qtype_weights,
                             textured=recipe.textured)
    console.print(f"vision warm-up: {recipe.vision_steps} steps on the instruction pictures")
    vision = pretrain_vision(model, processor, train[: min(len(train), 8000)], recipe.vision_steps,
                             lr=1e-3, seed=recipe.seed, shapes=(*ALL_CATEGORIES, TEXT_SHAPE))
    console.print(f"vision warm-up done: {vision}")
    mix = train + caption_samples(recipe.n_captions, seed=recipe.seed + 20_000, image_size=size)
    mix += say_samples(answer_vocabulary(recipe.seed), recipe.n_say, seed=recipe.seed + 20_000)
    tcfg = TrainConfig(epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, warmup_ratio=0.03,
                       max_steps=recipe.max_steps)
    cfg = RunConfig(train=tcfg)
    tbundle = ModelBundle(model=model, processor=processor, family=FAMILIES["llava"], source="pretrain")
    task = Task("generalist", train, [], scorers=["exact_match"])
    method = FullFinetune(RunContext(cfg, tbundle, Benchmark("generalist", [task])), FullFinetune.Options())
    for p in model.parameters():
        p.requires_grad_(True)
    encoded = Encoder(processor).encode(mix, with_answer=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    last = [time.perf_counter()]

    def on_step(step: int, loss: float) -> None:
        if time.perf_counter() - last[0] > 30:
            console.print(f"  step {step}: loss {loss:.4f} ({time.perf_counter() - t0:.0f} s)")
            last[0] = time.perf_counter()

    stats = train_on(method, encoded, tcfg, accelerator, 0, recipe.seed, processor.tokenizer.pad_token_id, on_step)
    model = method.model
    model.eval()
    seconds = round(time.perf_counter() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    record: dict[str, Any] = {
        "recipe": "generalist: caption pre-training, then visual instruction tuning",
        "caption_stage": {"from": _where(caption_base), "recipe": caption_record.get("recipe"),
                          "seconds": caption_record.get("seconds")},
        "instruction_stage": {**asdict(recipe), "card_streams": list(recipe.card_streams),
                              "mix": {"instruct": len(train), "captions": recipe.n_captions, "say": recipe.n_say,
                                  "per_qtype": dict(Counter(s.meta["qtype"] for s in train)),
                                  "backdrops": dict(Counter(s.meta["backdrop"] for s in train))}},
        "params": n_params,
        "vocab_size": len(processor.tokenizer),
        "size": caption_record.get("recipe", {}).get("size"),
        "vision_warmup": vision,
        "train_steps": stats.steps,
        "final_loss": stats.final_loss,
        "instruction_seconds": seconds,
        "total_seconds": round(seconds + float(caption_record.get("seconds") or 0), 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    console.print(f"instruction stage: {stats.steps} steps in {seconds} s; final loss {stats.final_loss:.4f}")
    record = write_card(out, ModelBundle(model, processor, FAMILIES["llava"], "pretrain"), recipe, record, console)
    record["card_seconds"] = round(time.perf_counter() - t0 - seconds, 1)
    (out / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"saved to {out}")
    return record
