"""``mmcl pretrain-janus --recipe generalist``: the generalist tiny Janus (``tiny-janus-generalist``).

The shipped ``tiny-janus`` only captions and draws its world. Like the papers' bases (SEED-X in
Continual-NExT), a generalist already answers questions about, and draws, the canonical objects
of its world before any stream. Recipe (deterministic from ``seed``):

1. start from the shipped ``tiny-janus`` (its VQ, understanding encoder and LM);
2. instruction-tune all weights but the VQ, with the same training loop as a continual run
   (:func:`mmcl.train.loop.train_on`), on generic samples of every form of the
   ``continual-next-synth`` stream, drawn canonically (16 px objects on the grid points, plain
   backgrounds) from generators the stream never uses (``namespace="generalist"``): VQA, naming
   the object, reading (a generic word list; the stream adds words it never saw), two-object
   boxes, text-to-image (only the combinations the ``tiny-janus`` LM was trained on) and editing
   (recolouring and changing the background; moving an object is left for the stream), plus the
   captions the base was pre-trained on;
3. the card (``pretrain_janus.json``): held-out generic scores per form and zero-shot on the
   stream in each style: ``shaded`` (the canonical objects on shaded, grained backgrounds), the
   stream the generalist config runs (``configs/continual-next-generalist.yaml``), ``shifted``
   (also jittered object sizes and places, smaller OCR words) and ``canonical``.

See docs/continual-next.md ("The generalist base").
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from mmcl.benchmarks.continual_next.synth import (
    OCR_WORDS,
    SPECS,
    TASK_NAMES,
    SceneImage,
    make_task,
    ocr_qtype,
)
from mmcl.config import ModelConfig, RunConfig, TrainConfig
from mmcl.data.sample import Benchmark, Sample, Task
from mmcl.eval.evaluator import evaluate_task
from mmcl.methods.base import RunContext
from mmcl.models.dual import boi_token_id
from mmcl.models.loader import ASSETS_DIR, load_model
from mmcl.pretrain.janus import heldout_split
from mmcl.pretrain.llava import FullFinetune
from mmcl.synth.janus_world import CAPTION_INSTRUCTION
from mmcl.train.encode import Encoder
from mmcl.train.loop import train_on

NAMESPACE = "generalist"
GENERIC_WORDS: tuple[str, ...] = ("red", "blue", "green", "gray", "bar", "ring", "circle", "square", "yes", "no",
                                  "1", "2", "4", "7", "9")
"""What the generic reading samples write; the stream's OCR-VQA adds ``cat``, ``sun``, ``box``, ``tree``."""
GENERIC_EDITS: tuple[str, ...] = ("colour", "background")
"""Edits in the generic mix; ``position`` (moving the object) is only in the stream."""


@dataclass
class JanusGeneralistRecipe:
    """The instruction stage's settings."""

    seed: int = 0
    per_form: int = 4000  # generic training samples per stream form (vqa, classification, t2i, ocr-vqa, grounding, editing)
    captions: int = 2000  # "Describe the image." samples of the base's pre-training (kept so it still captions)
    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 5e-4
    image_uncond_prob: float = 0.1
    held_out_per_form: int = 48
    card_test_size: int = 24  # stream test samples per task in the card (the quick config's)
    cfg_scale: float = 1.5
    max_steps: int | None = None


def generic_specs() -> dict[str, Any]:
    """The stream's task specs, with the generic word list for reading and the generic edits only."""
    specs = dict(SPECS)
    specs["ocr-vqa"] = dataclasses.replace(SPECS["ocr-vqa"], qtypes=(ocr_qtype(GENERIC_WORDS),))
    specs["editing"] = dataclasses.replace(
        SPECS["editing"], qtypes=tuple(q for q in SPECS["editing"].qtypes if q.name in GENERIC_EDITS))
    return specs


def generic_tasks(seed: int, train_size: int, test_size: int, base_seed: int = 0) -> list[Task]:
    """Generic canonical tasks of every stream form (their own generators: ``namespace="generalist"``).

    Text-to-image keeps only the combinations the base's LM was trained on (its held-out ones, from
    the base's own ``heldout_split(base_seed)``, stay held out)."""
    specs = generic_specs()
    tasks = [make_task(n, seed, train_size, test_size, style="canonical", namespace=NAMESPACE, spec=specs[n])
             for n in TASK_NAMES]
    train_scenes, _ = heldout_split(base_seed)
    allowed = {s.caption() for s in train_scenes}
    for t in tasks:
        if t.name == "t2i":
            t.train = [s for s in t.train if s.answers[0] in allowed]
            t.test = [s for s in t.test if s.answers[0] in allowed]
    return tasks


def caption_samples(n: int, seed: int, base_seed: int = 0) -> list[Sample]:
    """``n`` "Describe the image." samples of the base's pre-training combinations (canonical, one object)."""
    train_scenes, _ = heldout_split(base_seed)
    g = torch.Generator().manual_seed(seed + 7)
    out = []
    for k, i in enumerate(torch.randint(len(train_scenes), (n,), generator=g).tolist()):
        s = train_scenes[i]
        out.append(Sample(id=f"{NAMESPACE}.caption-{k:05d}", question=CAPTION_INSTRUCTION, answers=[s.caption()],
                          image=SceneImage(((s.shape, s.colour, s.position),), s.background, 64), task="caption"))
    return out


def evaluate(method: FullFinetune, bundle: Any, tasks: list[Task], cfg_scale: float) -> dict[str, float]:
    """Primary score x 100 per task, answered as a run's evaluation answers them (text or image)."""
    encoder = Encoder.for_bundle(bundle)
    out = {}
    for t in tasks:
        res = evaluate_task(method, t, encoder.encode(t.test, with_answer=False), bundle.tokenizer, 32, None,
                            torch.device("cpu"), image_token_id=boi_token_id(bundle.processor), cfg_scale=cfg_scale)
        out[t.name] = round(100 * res.scores[t.primary_scorer], 1)
    out["mean"] = round(sum(out.values()) / len(tasks), 1)
    return out


def pretrain_janus_generalist(out_dir: str | Path, recipe: JanusGeneralistRecipe | None = None,
                              base: str | Path | None = None, log: Any = print) -> dict[str, Any]:
    """Instruction-tune ``base`` (default: the shipped ``tiny-janus``) into ``out_dir``; returns the card."""
    recipe = recipe or JanusGeneralistRecipe()
    base = Path(base) if base is not None else ASSETS_DIR / "tiny-janus"
    t0 = time.time()
    torch.manual_seed(recipe.seed)
    bundle = load_model(ModelConfig(preset=None, path=str(base), dtype="float32"))
    model = bundle.model
    base_card = base / "pretrain_janus.json"
    base_recipe = json.loads(base_card.read_text())["recipe"] if base_card.is_file() else {}
    base_seed = int(base_recipe.get("base_seed", base_recipe.get("seed", 0)))  # a generalist base: its own base's
    tasks = generic_tasks(recipe.seed, recipe.per_form, recipe.held_out_per_form, base_seed)
    mix = [s for t in tasks for s in t.train] + caption_samples(recipe.captions, recipe.seed, base_seed)
    log(f"generic mix: {len(mix)} samples ({', '.join(f'{t.name} {len(t.train)}' for t in tasks)}, "
        f"captions {recipe.captions})")
    tcfg = TrainConfig(epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, warmup_ratio=0.03,
                       max_steps=recipe.max_steps, image_uncond_prob=recipe.image_uncond_prob)
    cfg = RunConfig(train=tcfg)
    method = FullFinetune(RunContext(cfg, bundle, Benchmark(NAMESPACE, tasks)), FullFinetune.Options())
    for name, p in model.named_parameters():
        p.requires_grad_(".vqmodel." not in f".{name}")  # the VQ stays: image answers are its codes
    encoded = Encoder.for_bundle(bundle).encode(mix, with_answer=True)
    last = [time.time()]

    def on_step(step: int, loss: float) -> None:
        if time.time() - last[0] > 30:
            log(f"  step {step}: loss {loss:.4f} ({time.time() - t0:.0f} s)")
            last[0] = time.time()

    stats = train_on(method, encoded, tcfg, Accelerator(cpu=True), 0, recipe.seed,
                     bundle.tokenizer.pad_token_id, on_step)
    model.eval()
    train_seconds = round(time.time() - t0, 1)
    log(f"instruction stage: {stats.steps} steps in {train_seconds} s, final loss {stats.final_loss:.4f}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    bundle.processor.save_pretrained(out)
    card: dict[str, Any] = {
        "recipe": {**asdict(recipe), "base": str(base), "base_seed": base_seed, "generic_words": list(GENERIC_WORDS),
                   "generic_edits": list(GENERIC_EDITS), "stream_only_words": sorted(set(OCR_WORDS) - set(GENERIC_WORDS))},
        "mix": {t.name: len(t.train) for t in tasks} | {"captions": recipe.captions},
        "train_steps": stats.steps, "final_loss": stats.final_loss, "train_seconds": train_seconds,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    card["held_out_generic"] = evaluate(method, bundle, tasks, recipe.cfg_scale)
    log(f"held-out generic: {card['held_out_generic']}")
    for style in ("shaded", "shifted", "canonical"):
        stream = [make_task(n, 0, 1, recipe.card_test_size, style=style) for n in TASK_NAMES]
        card[f"zero_shot_{style}"] = evaluate(method, bundle, stream, recipe.cfg_scale)
        log(f"zero-shot continual-next-synth ({style}): {card[f'zero_shot_{style}']}")
    card["seconds"] = round(time.time() - t0, 1)
    (out / "pretrain_janus.json").write_text(json.dumps(card, indent=2) + "\n")
    return card

