"""``mmcl pretrain``: build the tiny LLaVA base from scratch and pre-train it on generic captions.

Recipe (deterministic from ``seed``):
1. train the BPE tokenizer on the benchmarks' question/answer templates and the caption
   vocabulary (text only: no benchmark image is seen);
2. build a randomly initialised tiny ``LlavaForConditionalGeneration``;
3. vision warm-up: train the vision tower alone, with a throw-away linear head, to tell for
   every patch the colour, the shape and the mark of the generic object covering it (or
   background). Learning to see through the whole language model from captions alone is
   very slow at this size; the dense per-patch signal gives the tower usable features in
   minutes;
4. train ALL its weights on synthetic image-caption pairs (one or two large generic shapes
   on plain backgrounds; none of the continual tasks' scenes, objects or question formats)
   mixed with text-only "Say <word>." samples over the benchmark's answer words (no image:
   the tiny LM must be able to write those words, as a real LLM can), with the same
   training loop as a continual run;
5. ``save_pretrained`` model + processor, plus ``pretrain.json`` with the recipe and the
   held-out caption accuracy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from rich.console import Console

from mmcl.benchmarks.msvqa.synth import answer_vocabulary
from mmcl.benchmarks.msvqa.synth import tokenizer_corpus as msvqa_corpus
from mmcl.config import RunConfig, TrainConfig
from mmcl.data.sample import Benchmark, Sample, Task
from mmcl.eval.evaluator import score_predictions
from mmcl.eval.generate import generate_answers
from mmcl.methods.base import Method, RunContext
from mmcl.models.loader import FAMILIES, ModelBundle
from mmcl.models.tiny_llava import TinyLlavaSize, build_model, build_processor
from mmcl.models.tokenizer import train_tokenizer
from mmcl.pretrain.data import MARK_NAMES, caption_samples, say_samples
from mmcl.synth.draw import COLOUR_NAMES
from mmcl.synth.shapes import SHAPES
from mmcl.train.encode import Encoder
from mmcl.train.loop import train_on
from mmcl.train.steps import Optim, Updates, fit, one_cycle


class FullFinetune(Method):
    """Internal: every weight trains (used for pre-training only, not registered)."""

    name = "pretrain"


def tokenizer_corpus(seed: int) -> list[str]:
    corpus = list(msvqa_corpus(seed))
    corpus += [s.answers[0] for s in caption_samples(2000, seed=seed + 1)]
    corpus += ["USER: <image>\nDescribe the image. ASSISTANT: a red circle.</s>"] * 50
    corpus += ["Say the word."] * 20
    corpus += [f"[{a / 100:.2f}, {b / 100:.2f}]" for a in range(101) for b in (0, 50)]
    return corpus


def _patch_labels(sample: Sample, grid: int, colours: list[str], shapes: tuple[str, ...]) -> torch.Tensor:
    """Per patch (row-major): [colour, shape, mark] classes of the object covering its centre, 0 = none."""
    labels = torch.zeros(grid * grid, 3, dtype=torch.long)
    for r in range(grid):
        for c in range(grid):
            cx, cy = (c + 0.5) / grid, (r + 0.5) / grid
            for obj in sample.meta["objects"]:
                x1, y1, x2, y2 = obj["box"]
                if x1 <= cx <= x2 and y1 <= cy <= y2:
                    mark = MARK_NAMES.index(obj["mark"]) + 1 if obj.get("mark") else 0
                    labels[r * grid + c] = torch.tensor(
                        [colours.index(obj["colour"]) + 1, shapes.index(obj["shape"]) + 1, mark]
                    )
    return labels


def pretrain_vision(
    model: torch.nn.Module,
    processor: Any,
    samples: list[Sample],
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    shapes: tuple[str, ...] | None = None,
) -> dict[str, float]:
    """Vision warm-up (step 3 of the recipe); returns the final loss and patch accuracy.

    ``shapes``: the object classes of ``samples`` (``meta["objects"][i]["shape"]``); default the
    caption shapes.
    """
    shapes = shapes or SHAPES
    colours = list(COLOUR_NAMES)
    tower = model.model.vision_tower
    vcfg = model.config.vision_config
    grid = vcfg.image_size // vcfg.patch_size
    pixels = processor.image_processor(images=[s.load_image() for s in samples], return_tensors="pt")["pixel_values"]
    labels = torch.stack([_patch_labels(s, grid, colours, shapes) for s in samples])
    ns = len(shapes) + 1
    head = torch.nn.Linear(vcfg.hidden_size, len(colours) + 1 + ns + len(MARK_NAMES) + 1)
    params = [*tower.parameters(), *head.parameters()]
    updates = Updates(params, Optim("adamw", lr), one_cycle(lr, steps, 0.05))  # no clipping, zero_grad after the step
    gen = torch.Generator().manual_seed(seed)
    tower.train()
    nc = len(colours) + 1
    last: dict[str, torch.Tensor] = {}  # the last batch's logits and labels, for the figures below

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        feats = tower(pixel_values=pixels[idx]).last_hidden_state[:, 1:]  # drop CLS
        logits = last["logits"] = head(feats)
        y = last["y"] = labels[idx]
        loss = torch.nn.functional.cross_entropy(logits[..., :nc].flatten(0, 1), y[..., 0].flatten())
        loss = loss + torch.nn.functional.cross_entropy(logits[..., nc : nc + ns].flatten(0, 1), y[..., 1].flatten())
        return loss + torch.nn.functional.cross_entropy(logits[..., nc + ns :].flatten(0, 1), y[..., 2].flatten())

    def batches() -> Any:
        while True:
            yield torch.randint(len(samples), (batch_size,), generator=gen)

    loss = fit(updates, batches(), loss_fn, steps)
    if loss is None:
        return {"vision_loss": float("nan"), "vision_object_patch_accuracy": 0.0}
    # figures of the last batch: its loss, and the share of object patches with both classes right
    logits, y = last["logits"].detach(), last["y"]
    obj = y[..., 0] > 0
    right = (logits[..., :nc].argmax(-1) == y[..., 0]) & (logits[..., nc : nc + ns].argmax(-1) == y[..., 1])
    right &= logits[..., nc + ns :].argmax(-1) == y[..., 2]
    return {"vision_loss": float(loss.detach()), "vision_object_patch_accuracy": float(right[obj].float().mean())}


def pretrain(
    output: str | Path,
    seed: int = 0,
    n_captions: int = 8000,
    epochs: float = 4.0,
    batch_size: int = 32,
    lr: float = 1e-3,
    size: TinyLlavaSize | None = None,
    console: Console | None = None,
    max_steps: int | None = None,
    vision_steps: int = 800,
) -> dict[str, Any]:
    """Build, pre-train and save the tiny base; returns the recipe and figures written to pretrain.json."""
    console = console or Console(stderr=True)
    size = size or TinyLlavaSize()
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(tokenizer_corpus(seed))
    processor = build_processor(tokenizer, size)
    model = build_model(tokenizer, size, seed=seed)
    console.print(f"tokenizer: {len(tokenizer)} tokens; model: {sum(p.numel() for p in model.parameters()):,} parameters")

    train = caption_samples(n_captions, seed=seed, image_size=size.image_size)
    says = say_samples(answer_vocabulary(seed), n_captions // 4, seed=seed)
    held_out = caption_samples(200, seed=seed + 10_000, image_size=size.image_size)
    task = Task("captions", train, held_out, scorers=["exact_match", "token_f1"], max_new_tokens=32)
    tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, warmup_ratio=0.03, max_steps=max_steps)
    cfg = RunConfig(train=tcfg)
    bundle = ModelBundle(model=model, processor=processor, family=FAMILIES["llava"], source="pretrain")
    method = FullFinetune(RunContext(cfg, bundle, Benchmark("captions", [task])), FullFinetune.Options())
    console.print(f"vision warm-up: {vision_steps} steps")
    vision = pretrain_vision(model, processor, train, vision_steps, seed=seed)
    train = train + says
    console.print(f"vision warm-up done: {vision}")
    encoder = Encoder(processor)
    encoded = encoder.encode(train, with_answer=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    last_print = [time.perf_counter()]

    def on_step(step: int, loss: float) -> None:
        if time.perf_counter() - last_print[0] > 20:
            console.print(f"  step {step}: loss {loss:.4f}")
            last_print[0] = time.perf_counter()

    stats = train_on(method, encoded, tcfg, accelerator, 0, seed, tokenizer.pad_token_id, on_step)
    preds = generate_answers(method.model, tokenizer, encoder.encode(held_out, with_answer=False), 64, 32)
    scores, rows = score_predictions(task, preds)
    record = {
        "recipe": {
            "seed": seed,
            "n_captions": n_captions,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "max_steps": max_steps,
            "vision_steps": vision_steps,
            "size": size.__dict__,
        },
        "params": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "vision_warmup": vision,
        "train_steps": stats.steps,
        "final_loss": stats.final_loss,
        "held_out_caption_scores": scores,
        "examples": rows[:5],
        "seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
    }
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    method.model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"pre-trained in {record['seconds']} s; held-out caption scores {scores}; saved to {out}")
    return record
