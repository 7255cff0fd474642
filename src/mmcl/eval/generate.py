"""Batched greedy generation with KV cache and left padding.

Prompts are sorted by length before batching so that padding stays small, and the
answers are returned in the original order.

Several processes (DDP) share the work by whole batches: the batches are cut exactly as in
one process (:func:`plan_batches`) and process ``r`` of ``W`` generates batches ``r, r + W,
r + 2W, ...`` (a :class:`Shard`); the answers are then gathered so that every process returns
all of them in the original order. Each batch holds the same prompts with the same padding as
in a one-process run, so the answers are the same as one process gives (same hardware, same
thread count).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmcl.train.encode import Encoded, collate_prompts

IMAGE_REQUEST = "<begin_of_image>"
"""What :func:`generate_answers` returns for a prompt the model answers with an image."""


@dataclass(frozen=True)
class Shard:
    """This process's share of a generation run by ``count`` processes.

    ``gather`` takes this process's list and returns the lists of all processes concatenated in
    process order, on every process (accelerate's ``gather_object``); it is called exactly once
    per :func:`generate_answers` call, by every process.
    """

    index: int
    count: int
    gather: Callable[[list[Any]], list[Any]]


def plan_batches(encoded: Sequence[Encoded], batch_size: int) -> list[list[int]]:
    """Indices of each generation batch: prompts sorted by length (stable), cut into ``batch_size`` chunks."""
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].prompt_len)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer,
    encoded: Sequence[Encoded],
    batch_size: int,
    max_new_tokens: int,
    adapter_names: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
    shard: Shard | None = None,
    image_token_id: int | None = None,
) -> list[str]:
    """Greedy answers for already-encoded prompts (same order as ``encoded``).

    ``image_token_id`` (dual-to-dual models): generation also stops at that token
    (``<begin_of_image>``), and an answer that starts with it is returned as
    :data:`IMAGE_REQUEST`: the model chose to answer with an image (see :mod:`mmcl.eval.dual`).

    ``adapter_names`` (one per prompt) routes each sample to its own peft adapter. With
    ``shard``, this process generates only its batches and the answers of all processes are
    gathered (see the module docstring); ``on_batch`` then counts this process's prompts as they
    are generated and the others' once gathered.
    """
    batches = plan_batches(encoded, batch_size)
    if shard is not None and shard.count > 1:
        batches = batches[shard.index :: shard.count]
    answers: list[str] = [""] * len(encoded)
    mine: list[tuple[int, str]] = []
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id
    for idx in batches:
        batch = collate_prompts([encoded[i] for i in idx], pad)
        batch = {k: v.to(device) for k, v in batch.items()}
        kwargs = {}
        if adapter_names is not None:
            kwargs["adapter_names"] = [adapter_names[i] for i in idx]
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id if image_token_id is None else [tokenizer.eos_token_id, image_token_id],
            **kwargs,
        )
        new = out[:, batch["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        if image_token_id is not None and new.shape[1]:
            texts = [IMAGE_REQUEST if int(first) == image_token_id else t for t, first in zip(texts, new[:, 0], strict=True)]
        for i, t in zip(idx, texts, strict=True):
            mine.append((i, t.strip()))
        if on_batch:
            on_batch(len(idx))
    model.train(was_training)
    gathered = shard.gather(mine) if shard is not None and shard.count > 1 else mine
    for i, text in gathered:
        answers[i] = text
    if on_batch and len(gathered) > len(mine):
        on_batch(len(gathered) - len(mine))
    if sorted(i for i, _ in gathered) != list(range(len(encoded))):
        raise RuntimeError(f"gathered {len(gathered)} answers for {len(encoded)} prompts")  # a broken gather
    return answers
