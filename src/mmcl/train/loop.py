"""The one training loop. Methods change it only through their hooks (see methods/base.py)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import get_scheduler

from mmcl.config import TrainConfig
from mmcl.methods.base import Method
from mmcl.train.encode import Encoded, collate_train


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


def train_on(
    method: Method,
    encoded: list[Encoded],
    cfg: TrainConfig,
    accelerator: Accelerator,
    stage: int,
    seed: int,
    pad_id: int,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainStats:
    """Train ``method.model`` on ``encoded`` for the configured number of update steps."""
    model = method.model
    params = [p for p in method.trainable_parameters() if p.requires_grad]
    if not params:
        raise RuntimeError(f"method {method.name!r} left no trainable parameters at stage {stage}")
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
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        cfg.scheduler,
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    # Accumulate cfg.grad_accum batches per update; the counter restarts with every stage so that a
    # stage's result depends only on (seed, stage), which a resumed run relies on.
    accelerator.gradient_accumulation_steps = cfg.grad_accum
    accelerator.step = 0
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    step, samples, tokens, losses = 0, 0, 0, []
    t0 = time.perf_counter()
    while step < total_steps:
        for batch in loader:
            with accelerator.accumulate(model):
                outputs = model(**batch)
                loss = outputs.loss
                extra = method.extra_loss(batch, outputs, stage)
                if extra is not None:
                    loss = loss + extra
                accelerator.backward(loss)
                method.after_backward(stage)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            samples += batch["input_ids"].shape[0]
            tokens += int(batch["attention_mask"].sum())
            if accelerator.sync_gradients:
                step += 1
                losses.append(float(loss.detach()))
                if on_step:
                    on_step(step, losses[-1])
                if step >= total_steps:
                    break
    seconds = time.perf_counter() - t0
    method.model = accelerator.unwrap_model(model)
    accelerator.free_memory()
    return TrainStats(
        steps=step,
        samples=samples,
        seconds=seconds,
        final_loss=losses[-1] if losses else float("nan"),
        mean_loss=sum(losses) / max(1, len(losses)),
        tokens=tokens,
    )
