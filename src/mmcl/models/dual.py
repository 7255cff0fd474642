"""What a dual-to-dual model (text and images in, text and images out) needs beyond a LLaVA-style one.

Today that is the Janus family (``JanusForConditionalGeneration``): an understanding encoder
for input images, a VQ tokenizer/decoder for output images, and a generation head + generation
embeddings next to the text LM head. These helpers read a model (plain or wrapped by peft) and
its processor; nothing here changes weights.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image


def base_model(model: Any) -> Any:
    """The Hugging Face model under a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def ensure_image_generation_config(model: Any, processor: Any) -> None:
    """``generate(generation_mode="image")`` reads ``generation_config.generation_kwargs["boi_token_id"]``
    (and pad/bos ids); a generation config rebuilt from config.json lacks it: fill it from the processor."""
    gc = base_model(model).generation_config
    tok = processor.tokenizer
    kwargs = dict(getattr(gc, "generation_kwargs", None) or {})
    kwargs.setdefault("boi_token_id", tok.convert_tokens_to_ids(processor.image_start_token))
    gc.generation_kwargs = kwargs
    if gc.pad_token_id is None:
        gc.pad_token_id = tok.pad_token_id
    if gc.bos_token_id is None and tok.bos_token_id is not None:
        gc.bos_token_id = tok.bos_token_id


def supports_image_output(model: Any) -> bool:
    """True for models with an image generation head and a VQ decoder (Janus)."""
    base = base_model(model)
    inner = getattr(base, "model", None)
    return (hasattr(base, "decode_image_tokens") and getattr(inner, "generation_head", None) is not None
            and getattr(inner, "vqmodel", None) is not None)


def boi_token_id(processor: Any) -> int:
    """Id of ``<begin_of_image>``: the token a dual model emits to answer with an image."""
    tok = processor.tokenizer
    name = getattr(processor, "image_start_token", None) or "<begin_of_image>"
    tid = tok.convert_tokens_to_ids(name)
    if tid is None or tid == tok.unk_token_id:
        raise ValueError(f"the tokenizer has no {name!r} token")
    return int(tid)


def num_image_tokens(model: Any) -> int:
    """Image tokens per generated image (Janus: ``vision_config.num_image_tokens``)."""
    return int(base_model(model).config.vision_config.num_image_tokens)


def image_tokenizer(model: Any, processor: Any, batch_size: int = 64):
    """A function PIL images -> their VQ codes [B, N] through the model's own ``vqmodel.encode``.

    Images go through the processor's image processor (resize + normalisation), as for
    understanding; Janus' VQ and understanding encoder share that normalisation.
    """
    base = base_model(model)

    @torch.no_grad()
    def encode(images: list[Image.Image]) -> torch.Tensor:
        vq = base.model.vqmodel
        device = next(vq.parameters()).device
        out = []
        for i in range(0, len(images), batch_size):
            pv = processor.image_processor(images[i:i + batch_size], return_tensors="pt")["pixel_values"]
            codes = vq.encode(pv.to(device, next(vq.parameters()).dtype)).image_tokens
            out.append(codes.view(len(pv), -1).cpu())
        return torch.cat(out).long()

    return encode


def tokens_to_images(model: Any, tokens: torch.Tensor) -> list[Image.Image]:
    """VQ image tokens [B, N] -> PIL images through ``decode_image_tokens``."""
    with torch.no_grad():
        pixels = base_model(model).decode_image_tokens(tokens)  # [B, H, W, C] in about [-1, 1]
    arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    return [Image.fromarray(a) for a in arr]
