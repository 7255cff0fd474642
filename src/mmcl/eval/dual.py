"""Evaluation of a dual-to-dual model: the model itself decides whether it answers with text or an image.

Every test prompt is first decoded greedily as text (:func:`mmcl.eval.generate.generate_answers`
with ``<begin_of_image>`` as an extra stop token). A prompt whose first answer token is
``<begin_of_image>`` is then answered with an image: :func:`generate_image_tokens` samples the
VQ codes after ``prompt + <begin_of_image>`` with classifier-free guidance and the model's
``decode_image_tokens`` turns them into pixels. So a text task can get an image and an
image task can get text: both score 0 and count as instruction unfollowing (wrong modality).

:func:`generate_image_tokens` is the loop of the real ``JanusForConditionalGeneration.generate(
generation_mode="image")`` (same modules, same unconditional prompt: every token but BOS and
``<begin_of_image>`` replaced by pad, same CFG rule ``uncond + scale * (cond - uncond)``), written
out because the real one takes ``input_ids`` only and editing needs the source image's
understanding features in the prompt. ``tests/test_dual.py`` checks that both give the same tokens
on text-only prompts. In the unconditional branch the source image is blanked too (its placeholders
become pad), as that rule implies.

Image answers come back as :class:`ImageOutput`, a ``str`` (``"<image>"``, what the predictions
file shows) that carries the PIL image for the image scorers and the run's predictions folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from transformers import DynamicCache

from mmcl.eval.generate import IMAGE_REQUEST, Shard, generate_answers
from mmcl.models.dual import base_model, num_image_tokens, tokens_to_images
from mmcl.train.dual import merged_input_embeddings
from mmcl.train.encode import Encoded, collate_prompts

IMAGE_PREDICTION = "<image>"
DEFAULT_CFG_SCALE = 3.0


class ImageOutput(str):
    """An image answer: the string ``"<image>"`` with the PIL image in ``.image``."""

    image: Image.Image

    def __new__(cls, image: Image.Image) -> ImageOutput:
        obj = super().__new__(cls, IMAGE_PREDICTION)
        obj.image = image
        return obj


def _prompt_batch(encoded: Sequence[Encoded], pad_id: int, boi_id: int) -> dict[str, torch.Tensor]:
    """The left-padded prompt batch of :func:`collate_prompts` with ``<begin_of_image>`` appended."""
    batch = collate_prompts(encoded, pad_id)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    batch["input_ids"] = torch.cat([ids, ids.new_full((len(ids), 1), boi_id)], dim=1)
    batch["attention_mask"] = torch.cat([mask, mask.new_ones((len(mask), 1))], dim=1)
    return batch


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded mask, as ``generate`` computes them."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


@torch.no_grad()
def generate_image_tokens(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor | None = None,
    cfg_scale: float = DEFAULT_CFG_SCALE,
    bos_token_id: int | None = None,
    boi_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """Greedy CFG image tokens [B, N] after left-padded prompts that end in ``<begin_of_image>``."""
    base = base_model(model)
    gc = base.generation_config
    bos = gc.bos_token_id if bos_token_id is None else bos_token_id
    boi = gc.generation_kwargs["boi_token_id"] if boi_token_id is None else boi_token_id
    pad = gc.pad_token_id if pad_token_id is None else pad_token_id
    if not cfg_scale > 1:
        raise ValueError(f"cfg_scale must be > 1 (classifier-free guidance), got {cfg_scale}")
    b = input_ids.shape[0]
    uncond = input_ids.masked_fill((input_ids != bos) & (input_ids != boi), pad)
    cond_embeds = merged_input_embeddings(model, input_ids, pixel_values)
    uncond_embeds = base.model.get_input_embeddings()(uncond)
    embeds = torch.cat([cond_embeds, uncond_embeds])
    mask = attention_mask.repeat(2, 1)
    pos = _positions(mask)
    cache = DynamicCache()
    lm, head = base.model.language_model, base.model.generation_head
    out = torch.zeros((b, num_image_tokens(model)), dtype=torch.long, device=input_ids.device)
    for i in range(out.shape[1]):
        hidden = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, past_key_values=cache,
                    use_cache=True).last_hidden_state[:, -1]
        logits = head(hidden).float()
        cond, unc = logits[:b], logits[b:]
        nxt = (unc + cfg_scale * (cond - unc)).argmax(-1)
        out[:, i] = nxt
        embeds = base.prepare_embeddings_for_image_generation(torch.cat([nxt, nxt])[:, None]).to(cond_embeds.dtype)
        mask = torch.cat([mask, mask.new_ones((2 * b, 1))], dim=1)
        pos = pos[:, -1:] + 1
    return out


@torch.no_grad()
def generate_images_for(
    model: Any, encoded: Sequence[Encoded], pad_id: int, boi_id: int, batch_size: int,
    cfg_scale: float = DEFAULT_CFG_SCALE, device: torch.device | str = "cpu",
) -> list[Image.Image]:
    """One image per encoded prompt (the prompt's own image, if any, conditions it: editing)."""
    images: list[Image.Image] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(encoded), batch_size):
            batch = _prompt_batch(encoded[start:start + batch_size], pad_id, boi_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            tokens = generate_image_tokens(model, batch["input_ids"], batch["attention_mask"],
                                           batch.get("pixel_values"), cfg_scale, boi_token_id=boi_id, pad_token_id=pad_id)
            images += tokens_to_images(model, tokens)
    finally:
        model.train(was_training)
    return images


def generate_dual_answers(
    model: Any,
    tokenizer: Any,
    encoded: Sequence[Encoded],
    batch_size: int,
    max_new_tokens: int,
    boi_id: int,
    cfg_scale: float = DEFAULT_CFG_SCALE,
    adapter_names: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
    shard: Shard | None = None,
    image_prompts: Sequence[bool] | None = None,
) -> list[str]:
    """Text answers, and :class:`ImageOutput` for the prompts the model answers with an image.

    ``image_prompts`` (one flag per prompt, ``eval.image_answers: task``): the flagged prompts are
    answered with an image directly (``prompt + <begin_of_image>``, as Janus' own pipeline does for a
    generation request) instead of letting the model choose; the others get the text pass.
    With ``shard`` (several processes) the text pass is split over the processes; the images are
    generated by every process for every image answer (greedy, so the same images).
    """
    forced = [i for i, f in enumerate(image_prompts or []) if f]
    if forced:
        texts: list[str] = [IMAGE_REQUEST] * len(encoded)
        rest = [i for i in range(len(encoded)) if i not in set(forced)]
        if rest:
            answers = generate_answers(model, tokenizer, [encoded[i] for i in rest], batch_size, max_new_tokens,
                                       [adapter_names[i] for i in rest] if adapter_names is not None else None,
                                       device, on_batch, shard, image_token_id=boi_id)
            for i, t in zip(rest, answers, strict=True):
                texts[i] = t
        if on_batch:
            on_batch(len(forced))
    else:
        texts = generate_answers(model, tokenizer, encoded, batch_size, max_new_tokens, adapter_names, device,
                                 on_batch, shard, image_token_id=boi_id)
    want = [i for i, t in enumerate(texts) if t == IMAGE_REQUEST]
    if not want:
        return texts
    if adapter_names is not None:
        raise NotImplementedError("per-sample adapters (adapter_names) are not supported for image answers")
    images = generate_images_for(model, [encoded[i] for i in want], tokenizer.pad_token_id, boi_id, batch_size,
                                 cfg_scale, device)
    out: list[str] = list(texts)
    for i, im in zip(want, images, strict=True):
        out[i] = ImageOutput(im)
    return out
