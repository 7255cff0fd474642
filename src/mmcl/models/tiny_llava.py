"""The embedded default model: a tiny ``LlavaForConditionalGeneration`` built from a config.

CLIP-style vision tower (64 px images, 8 px patches -> 64 image tokens), a two-layer
GELU projector, and a Llama-style language model, with the project's own tokenizer.
It is the real transformers class, so every code path (processor, chat template,
generation, peft) is the one a full-size LLaVA checkpoint takes.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from mmcl.models.chat import LLAVA15_CHAT_TEMPLATE


@dataclass(frozen=True)
class TinyLlavaSize:
    """Architecture of the tiny model (defaults: about 3.6 M parameters)."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 192
    text_layers: int = 4
    text_heads: int = 6
    text_intermediate: int = 512
    max_positions: int = 512


def build_processor(tokenizer: PreTrainedTokenizerFast, size: TinyLlavaSize) -> LlavaProcessor:
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size.image_size},
        crop_size={"height": size.image_size, "width": size.image_size},
        do_center_crop=True,
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=size.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
        chat_template=LLAVA15_CHAT_TEMPLATE,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, size: TinyLlavaSize, seed: int = 0) -> LlavaForConditionalGeneration:
    """A freshly initialised tiny LLaVA (random weights, deterministic from ``seed``)."""
    import torch

    vision = CLIPVisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_hidden * 4,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=size.image_size,
        patch_size=size.patch_size,
        projection_dim=size.vision_hidden,
    )
    text = LlamaConfig(
        hidden_size=size.text_hidden,
        intermediate_size=size.text_intermediate,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        num_key_value_heads=size.text_heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=size.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
