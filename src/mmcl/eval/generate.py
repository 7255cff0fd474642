"""Batched greedy generation with KV cache and left padding.

Prompts are sorted by length before batching so that padding stays small, and the
answers are returned in the original order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mmcl.train.encode import Encoded, collate_prompts


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
) -> list[str]:
    """Greedy answers for already-encoded prompts (same order as ``encoded``).

    ``adapter_names`` (one per prompt) routes each sample to its own peft adapter.
    """
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].prompt_len)
    answers: list[str] = [""] * len(encoded)
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
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
            eos_token_id=tokenizer.eos_token_id,
            **kwargs,
        )
        new = out[:, batch["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        for i, t in zip(idx, texts, strict=True):
            answers[i] = t.strip()
        if on_batch:
            on_batch(len(idx))
    model.train(was_training)
    return answers
