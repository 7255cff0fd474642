"""Batched image generation with the real Janus API.

``processor(text, generation_mode="image")`` appends ``<begin_of_image>`` to each chat prompt,
``model.generate(..., generation_mode="image", guidance_scale=cfg)`` samples the VQ image tokens
with classifier-free guidance (the unconditional branch blanks the prompt to pad tokens), and
``decode_image_tokens`` turns them into pixels, mapped from [-1, 1] to 8-bit RGB PIL images.
A model that cannot produce an image raises :class:`NoImageProduced`;
:func:`generate_images_or_none` turns that into ``None`` per prompt for scorers (score 0).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from mmcl.models.dual import base_model as _base
from mmcl.models.dual import ensure_image_generation_config, tokens_to_images


class NoImageProduced(RuntimeError):
    """The model did not produce an image (no image head, or a malformed token sequence)."""


def chat_generation_prompt(processor: Any, text: str) -> str:
    """``text`` as a user turn + assistant prompt (Janus chat template)."""
    msgs = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    return processor.apply_chat_template(msgs, add_generation_prompt=True)


@torch.no_grad()
def generate_images(
    model: Any,
    processor: Any,
    prompts: list[str],
    cfg_scale: float = 5.0,
    do_sample: bool = False,
    temperature: float = 1.0,
    batch_size: int = 16,
    seed: int | None = None,
    chat: bool = True,
) -> list[Image.Image]:
    """One image per prompt. ``chat``: wrap each prompt in the chat template first.

    ``cfg_scale`` must be > 1 (the real ``generate`` needs its CFG processor). ``seed`` fixes the sampling (``do_sample=True``).
    """
    base = _base(model)
    if not hasattr(base, "decode_image_tokens") or getattr(base.model, "generation_head", None) is None:
        raise NoImageProduced(f"{type(base).__name__} has no image generation head")
    num_tokens = base.model.vision_model.config.num_image_tokens
    codebook = base.model.vqmodel.config.num_embeddings
    if not cfg_scale > 1:
        # Janus' image generate always runs the conditional + unconditional batch and needs the CFG
        # processor (guidance_scale > 1) to merge them; None would silently default to 5
        raise ValueError(f"cfg_scale must be > 1 for Janus image generation, got {cfg_scale}")
    ensure_image_generation_config(model, processor)
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    out: list[Image.Image] = []
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            texts = [chat_generation_prompt(processor, p) if chat else p for p in chunk]
            enc = processor(text=texts, generation_mode="image", padding=True, return_tensors="pt")
            device = next(base.parameters()).device
            kwargs: dict[str, Any] = {"do_sample": do_sample, "guidance_scale": cfg_scale}
            if do_sample:
                kwargs["temperature"] = temperature
            tokens = model.generate(input_ids=enc["input_ids"].to(device),
                                    attention_mask=enc["attention_mask"].to(device),
                                    generation_mode="image", **kwargs)
            if tokens.ndim != 2 or tokens.shape != (len(chunk), num_tokens):
                raise NoImageProduced(f"expected {len(chunk)} x {num_tokens} image tokens, got {tuple(tokens.shape)}")
            if int(tokens.min()) < 0 or int(tokens.max()) >= codebook:
                raise NoImageProduced(f"image token outside the codebook (0..{codebook - 1})")
            out += tokens_to_images(model, tokens)
    finally:
        model.train(was_training)
    return out


def generate_images_or_none(model: Any, processor: Any, prompts: list[str], **kwargs: Any) -> list[Image.Image | None]:
    """Like :func:`generate_images`, with ``None`` for every prompt when no image can be produced."""
    try:
        return list(generate_images(model, processor, prompts, **kwargs))
    except NoImageProduced:
        return [None] * len(prompts)
