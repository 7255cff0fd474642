"""The one training loop. Methods change it only through their hooks (:class:`mmcl.train.hooks.TrainingHooks`,
implemented by :class:`mmcl.methods.base.Method`).

It is a loss function and a batch source (a seeded DataLoader, epoch after epoch) handed to the
optimisation primitive :func:`mmcl.train.steps.fit`, which the pre-training recipes use too.

Under several processes (``accelerate launch`` / ``torchrun``: DDP) ``accelerator.prepare`` shards
the DataLoader: ``train.batch_size`` is the batch of *one* process, so an update sees
``batch_size * num_processes * grad_accum`` samples and :func:`num_update_steps` divides by the
world size. Every process draws the same shuffled order (the loader's generator is seeded from
``(seed, stage)`` and accelerate broadcasts process 0's state at each epoch) and takes its own
batches of it. The LR scheduler is stepped by this loop once per optimizer update (it is not
given to ``accelerator.prepare``, whose wrapper would step it ``num_processes`` times per update
and so finish the schedule early). Process ``r > 0`` reseeds torch's RNG with ``(seed, stage, r)``
for the loop (dropout masks differ between processes, deterministically) and gets process 0's
RNG state back at the end, so ``method.after_task`` sees the same RNG on every process. One
process runs exactly as before. The logged losses are the mean over processes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import synchronize_rng_states
from torch.utils.data import DataLoader

from mmcl.config import TrainConfig
from mmcl.train.compile import compiled
from mmcl.train.dual import forward_batch
from mmcl.train.encode import Encoded, collate_train
from mmcl.train.hooks import GradClip, TrainingHooks
from mmcl.train.steps import Optim, Updates, epochs, fit, warmup_schedule


@dataclass
class TrainStats:
    steps: int
    samples: int
    seconds: float
    final_loss: float
    mean_loss: float
    tokens: int


def num_update_steps(n_samples: int, cfg: TrainConfig, world_size: int = 1) -> int:
    per_epoch = math.ceil(n_samples / (cfg.batch_size * world_size * cfg.grad_accum))
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(per_epoch * cfg.epochs))


def release_stage(accelerator: Accelerator) -> None:
    """Drop accelerate's references to a finished stage's wrapped model, optimizer and loader.

    On a GPU (or under DeepSpeed) this is ``accelerator.free_memory()``: its ``gc.collect()`` and
    cache emptying give device memory back before the next stage. On the CPU it does what
    ``free_memory`` does without the full ``gc.collect()``, a fixed 0.1-0.4 s per stage in a process
    that holds a benchmark's samples (``mmcl bench``: it made a short stage half as fast as a plain
    loop). Nothing of a stage is held by a reference cycle, so the optimizer state is freed by
    reference counting as soon as ``train_on`` returns (tests/test_loop.py checks it).
    """
    if accelerator.device.type != "cpu" or getattr(accelerator, "deepspeed_engine_wrapped", None) is not None:
        accelerator.free_memory()
        return
    accelerator._models, accelerator._optimizers = [], []  # the attributes free_memory resets (accelerate 1.x)
    accelerator._dataloaders, accelerator._schedulers = [], []
    accelerator.step = 0


def train_on(
    method: TrainingHooks,
    encoded: list[Encoded],
    cfg: TrainConfig,
    accelerator: Accelerator,
    stage: int,
    seed: int,
    pad_id: int,
    on_step: Callable[[int, float], None] | None = None,
    grad_clip: GradClip | None = None,
) -> TrainStats:
    """Train ``method.model`` on ``encoded`` for the configured number of update steps.

    ``grad_clip``: told the parameters and ``cfg.max_grad_norm`` for this pass, so that the hooks can
    read the factor clipping is about to apply (:class:`mmcl.train.hooks.GradClip`)."""
    model = method.model
    params = [p for p in method.trainable_parameters() if p.requires_grad]
    if not params:
        raise RuntimeError(f"method {method.name!r} left no trainable parameters at stage {stage}")
    if grad_clip is not None:
        grad_clip.watch(params, cfg.max_grad_norm)
    total_steps = num_update_steps(len(encoded), cfg, accelerator.num_processes)
    gen = torch.Generator().manual_seed(seed * 1000 + stage)
    loader = DataLoader(
        encoded,
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=gen,
        collate_fn=lambda b: collate_train(b, pad_id),
        drop_last=False,
    )
    # the optimizer side (mmcl.train.steps): AdamW, the transformers schedule, clipping, zero_grad after the step
    updates = Updates(
        params,
        Optim("adamw", lr=cfg.lr, kwargs={"weight_decay": cfg.weight_decay}),
        warmup_schedule(cfg.scheduler, int(cfg.warmup_ratio * total_steps), total_steps),
        max_grad_norm=cfg.max_grad_norm,
        accelerator=accelerator,
    )
    # Accumulate cfg.grad_accum batches per update; the counter restarts with every stage so that a
    # stage's result depends only on (seed, stage), which a resumed run relies on.
    accelerator.gradient_accumulation_steps = cfg.grad_accum
    accelerator.step = 0
    # the scheduler is stepped by fit once per update, not by accelerate (see the module docstring)
    model, updates.optimizer, loader = accelerator.prepare(model, updates.optimizer, loader)
    world = accelerator.num_processes
    if world > 1 and accelerator.process_index > 0:
        torch.manual_seed((seed * 1000 + stage) * 1009 + accelerator.process_index)
    model.train()
    forward_model = compiled(model) if cfg.compile else model  # train.compile (mmcl.train.compile)
    samples, tokens, losses = 0, 0, []

    def loss_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's loss on ``batch`` plus the method's extra loss (run under accelerator.autocast)."""
        nonlocal samples, tokens
        outputs = forward_batch(forward_model, batch, cfg.image_uncond_prob, cfg.image_decision_loss)
        loss = outputs.loss
        extra = method.extra_loss(batch, outputs, stage)
        if extra is not None:
            loss = loss + extra
        samples += batch["input_ids"].shape[0]
        tokens += int(batch["attention_mask"].sum())
        return loss

    def after_backward() -> None:
        method.after_backward(stage)

    def logged(step: int, loss: torch.Tensor) -> None:
        value = loss.detach() if world == 1 else accelerator.reduce(loss.detach(), reduction="mean")
        losses.append(float(value))
        if on_step:
            on_step(step, losses[-1])

    t0 = time.perf_counter()
    fit(updates, epochs(loader), loss_of, total_steps, model=model, after_backward=after_backward, on_step=logged)
    seconds = time.perf_counter() - t0
    if world > 1:
        counts = accelerator.reduce(torch.tensor([samples, tokens], device=accelerator.device), reduction="sum")
        samples, tokens = (int(v) for v in counts.tolist())
        synchronize_rng_states(["torch", "cuda"] if accelerator.device.type == "cuda" else ["torch"])
    # without accelerate's autocast wrapper around forward (it would nest one more every stage);
    # evaluation and the loop above enter accelerator.autocast() themselves
    method.model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    release_stage(accelerator)
    if grad_clip is not None:
        grad_clip.release()
    return TrainStats(
        steps=len(losses),
        samples=samples,
        seconds=seconds,
        final_loss=losses[-1] if losses else float("nan"),
        mean_loss=sum(losses) / max(1, len(losses)),
        tokens=tokens,
    )
