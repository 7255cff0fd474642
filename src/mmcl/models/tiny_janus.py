"""The dual-to-dual base model: a tiny ``JanusForConditionalGeneration`` built from a config.

Real transformers class, real processor (``JanusProcessor`` + ``JanusImageProcessor``), real
generation path (``generate(..., generation_mode="image")`` with classifier-free guidance, then
``decode_image_tokens``). Sizes (``TinyJanusSize`` defaults):

- images 64 x 64, pixel values in [-1, 1] (mean = std = 0.5, as the released Janus);
- understanding encoder: Janus/SigLIP-style ViT, 8 px patches -> 64 image tokens;
- VQ tokenizer/decoder (``JanusVQVAE``): 3 downsamplings (64 -> 8), an 8 x 8 grid = 64 image
  tokens per image (the same count as the understanding tokens, which the class requires),
  a 1024-entry codebook of 16-d unit vectors;
- a Llama-style LM (4 layers, hidden 128) with the Janus generation embeddings / aligner / head.

Total about 2.2 M parameters (VQ about 1 M, LM about 0.9 M). The pre-trained model ships in
``mmcl/assets/tiny-janus`` (its ``pretrain_janus.json`` holds the recipe and every measured
figure), the image judge that scores it in ``mmcl/assets/image-judge``.

This module is the model: its size, tokenizer, processor, builder, save/load, prompts, pixel
conversion and the forward passes the pre-training and the dual loss share (:func:`vq_forward`,
:func:`t2i_and_modality_loss`). The scenes it is pre-trained on are :mod:`mmcl.synth.janus_world`;
the recipe (stages, measured status) is :mod:`mmcl.pretrain.janus` (``mmcl pretrain-janus``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mmcl.models.chat import JANUS_CHAT_TEMPLATE
from mmcl.models.dual import ensure_image_generation_config
from mmcl.models.tokenizer import train_tokenizer
from mmcl.synth.janus_world import CAPTION_INSTRUCTION, IMAGE_SIZE, all_scenes

# ---------------------------------------------------------------- pixels

def images_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images -> [B, 3, H, W] float in [-1, 1] (the tiny Janus's pixel normalisation)."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] -> PIL images."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


# ---------------------------------------------------------------- model + processor

JANUS_SPECIAL_TOKENS = ["<image_placeholder>", "<begin_of_image>", "<end_of_image>", "<|User|>", "<|Assistant|>"]


@dataclass(frozen=True)
class TinyJanusSize:
    """Architecture of the tiny Janus (defaults: about 2 M parameters)."""

    image_size: int = IMAGE_SIZE
    patch_size: int = 8  # understanding patches; also the VQ downsampling factor (64 / 8 = 8 x 8 tokens)
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    # JanusVQVAE normalises with GroupNorm(32 groups): with 32 channels that is a per-channel instance
    # norm, which erases the absolute colour of flat synthetic images; 64 gives channel pairs.
    vq_base_channels: int = 64
    vq_latent_channels: int = 64
    vq_embed_dim: int = 16
    vq_codebook: int = 1024
    vq_res_blocks: int = 0
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 384
    max_positions: int = 256
    vocab_size: int = 512

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


PROMPT_PHRASES: tuple[str, ...] = (
    "Draw", "Draw a", "Generate an image of", "Generate an image of a", "make the", "Make the", "move the",
    "Move the", "change the background to", "Change the background to", "What colour is the", "What color is the",
    "What shape is the", "What shape", "Where is the", "Is there a", "Is the", "box", "the box", "object", "shape",
    "colour", "color", "background", "position", "yes", "no", "Yes", "No", "0", "1", "2", "3", "4", "5", "6", "7",
    "8", "9", "10", "image", "picture", "an image", "Describe the image.", "?", ".", ",", "to", "it", "into", "is",
)
"""Words other tasks in this domain put in prompts (edits, questions): in the BPE corpus so they are not shredded."""


def tokenizer_corpus() -> list[str]:
    chat = "<|User|>: <image_placeholder>\nDescribe the image.\n\n<|Assistant|>: "
    corpus = [CAPTION_INSTRUCTION, chat]
    corpus += [s.caption() for s in all_scenes()]
    corpus += [chat + s.caption() for s in all_scenes()[::7]]
    scenes = all_scenes()[::11]
    for i, s in enumerate(scenes):  # prompts of the kinds other tasks use, a few of each, several times
        other = scenes[(i * 7 + 3) % len(scenes)]
        corpus += [
            f"Draw {s.caption()}", f"Generate an image of {s.caption()}",
            f"make the {s.shape} {other.colour}.", f"move the {s.shape} {other.position}.",
            f"change the background to {other.background}.", f"What colour is the {s.shape}? {s.colour}",
            f"What shape is in the image? {s.shape}", f"Where is the {s.shape}? {s.position}",
            f"Is there a {other.shape}? {'yes' if other.shape == s.shape else 'no'}",
            f"the box {i % 10} {(i * 3) % 10} {i}",
        ]
    corpus += list(PROMPT_PHRASES) * 5
    return corpus


def build_tokenizer(vocab_size: int = 512) -> Any:
    """The project's BPE (``train_tokenizer``) with the Janus special tokens added."""
    from transformers import PreTrainedTokenizerFast

    base = train_tokenizer(tokenizer_corpus(), vocab_size=vocab_size)
    backend = base.backend_tokenizer
    backend.add_special_tokens(JANUS_SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={
            "image_token": "<image_placeholder>",
            "boi_token": "<begin_of_image>",
            "eoi_token": "<end_of_image>",
        },
        padding_side="left",
    )


def build_processor(tokenizer: Any, size: TinyJanusSize) -> Any:
    from transformers import JanusImageProcessor, JanusProcessor

    image_processor = JanusImageProcessor(
        size={"height": size.image_size, "width": size.image_size},
        min_size=8,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return JanusProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=size.num_image_tokens,
        chat_template=JANUS_CHAT_TEMPLATE,
    )


def build_model(tokenizer: Any, size: TinyJanusSize, seed: int = 0) -> Any:
    """A freshly initialised tiny ``JanusForConditionalGeneration`` (deterministic from ``seed``)."""
    from transformers import JanusConfig, JanusForConditionalGeneration

    downsamplings = int(math.log2(size.patch_size))
    if 2**downsamplings != size.patch_size:
        raise ValueError(f"patch_size must be a power of two (the VQ downsamples by 2), got {size.patch_size}")
    config = JanusConfig(
        text_config=dict(
            model_type="llama",
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
        ),
        vision_config=dict(
            hidden_size=size.vision_hidden,
            num_hidden_layers=size.vision_layers,
            num_attention_heads=size.vision_heads,
            image_size=size.image_size,
            patch_size=size.patch_size,
            mlp_ratio=2.0,
            projection_dim=size.text_hidden,
            depth=2,
            num_image_tokens=size.num_image_tokens,
        ),
        vq_config=dict(
            embed_dim=size.vq_embed_dim,
            num_embeddings=size.vq_codebook,
            latent_channels=size.vq_latent_channels,
            base_channels=size.vq_base_channels,
            channel_multiplier=[1] * (downsamplings + 1),
            num_res_blocks=size.vq_res_blocks,
            projection_dim=size.text_hidden,
            image_token_embed_dim=size.text_hidden,
            num_hidden_layers=2,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config)
    with torch.no_grad():  # unit-norm codebook (see module docstring)
        cb = model.model.vqmodel.quantize.embedding.weight
        cb.copy_(F.normalize(torch.randn_like(cb), dim=-1))
    gc = model.generation_config
    gc.pad_token_id = tokenizer.pad_token_id
    gc.eos_token_id = tokenizer.eos_token_id
    gc.bos_token_id = tokenizer.bos_token_id
    gc.generation_kwargs = {"boi_token_id": tokenizer.convert_tokens_to_ids("<begin_of_image>"),
                            "num_image_tokens": size.num_image_tokens}
    gc._from_model_config = False  # else from_pretrained rebuilds it from config.json and drops generation_kwargs
    return model


def save_tiny_janus(model: Any, processor: Any, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def load_tiny_janus(path: str | Path) -> tuple[Any, Any]:
    """(model, processor) from a ``save_pretrained`` directory (eval mode, float32)."""
    from transformers import JanusForConditionalGeneration, JanusProcessor

    model = JanusForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    processor = JanusProcessor.from_pretrained(path)
    ensure_image_generation_config(model, processor)
    return model, processor


# ---------------------------------------------------------------- prompts

def generation_prompt(processor: Any, caption: str) -> str:
    """Chat prompt asking for an image of ``caption`` (the processor adds ``<begin_of_image>``)."""
    msgs = [{"role": "user", "content": [{"type": "text", "text": caption}]}]
    return processor.apply_chat_template(msgs, add_generation_prompt=True)


def question_prompt(processor: Any, question: str) -> str:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(msgs, add_generation_prompt=True)


# ---------------------------------------------------------------- forward passes (VQ round trip, teacher-forced text-to-image)

def vq_forward(vq: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training pass through the real ``JanusVQVAE`` modules: (reconstruction, quantizer loss, codes, z)."""
    z = F.normalize(vq.quant_conv(vq.encoder(pixels)), dim=1)
    zq, emb_loss, codes = vq.quantize(z)
    return vq.decoder(vq.post_quant_conv(zq)), emb_loss, codes, z


@torch.no_grad()
def vq_reconstruct(model: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference round trip with the model's own API: ``encode`` -> image tokens -> ``decode_image_tokens``."""
    vq = model.model.vqmodel
    codes = vq.encode(pixels).image_tokens.view(pixels.shape[0], -1)
    return model.decode_image_tokens(codes).permute(0, 3, 1, 2), codes


def _position_ids(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def t2i_loss(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
    """Next-image-token loss: text embeddings of the (left-padded) prompt ending in ``<begin_of_image>``,
    then the generation embeddings of the image tokens, through ``language_model`` and
    ``generation_head`` — the same modules and positions as ``generate(generation_mode="image")``."""
    return t2i_and_modality_loss(model, prompt_ids, prompt_mask, image_tokens)[0]


def t2i_logits(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced generation-head logits for the image tokens [B, n, codebook], and the LM's hidden states."""
    text = model.get_input_embeddings()(prompt_ids)
    img = model.prepare_embeddings_for_image_generation(image_tokens[:, :-1])
    embeds = torch.cat([text, img], dim=1)
    mask = torch.cat([prompt_mask, torch.ones_like(image_tokens[:, :-1])], dim=1)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                        position_ids=_position_ids(mask)).last_hidden_state
    n, p = image_tokens.shape[1], prompt_ids.shape[1]
    return model.model.generation_head(hidden[:, p - 1: p - 1 + n]), hidden


def t2i_and_modality_loss(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, image_tokens: torch.Tensor,
                          decide: torch.Tensor | None = None,
                          token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(:func:`t2i_loss`, modality-decision loss) from one forward pass.

    The modality-decision loss is the ``lm_head`` cross-entropy of ``<begin_of_image>`` at the last
    prompt position before it (the position whose text-mode greedy token starts the answer), over the
    rows where ``decide`` is true (default all); 0 when none. By causality that hidden state is the
    one ``generate(generation_mode="text")`` computes for the prompt without ``<begin_of_image>``.
    """
    logits, hidden = t2i_logits(model, prompt_ids, prompt_mask, image_tokens)
    p = prompt_ids.shape[1]
    if token_weights is None:
        l_img = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), image_tokens.reshape(-1))
    else:  # weighted mean over the image tokens
        per = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), image_tokens.reshape(-1), reduction="none")
        l_img = (per * token_weights.reshape(-1)).sum() / token_weights.sum()
    decide = torch.ones(len(prompt_ids), dtype=torch.bool) if decide is None else decide
    if not bool(decide.any()):
        return l_img, hidden.sum() * 0.0
    text_logits = model.lm_head(hidden[decide, p - 2])
    boi = torch.full((text_logits.shape[0],), model.generation_config.generation_kwargs["boi_token_id"])
    return l_img, F.cross_entropy(text_logits, boi)


def unconditional_ids(ids: torch.Tensor, model: Any) -> torch.Tensor:
    """The CFG unconditional prompt, as ``generate`` builds it: all but BOS/BOI become pad."""
    gc = model.generation_config
    keep = (ids == gc.bos_token_id) | (ids == gc.generation_kwargs["boi_token_id"])
    return ids.masked_fill(~keep, gc.pad_token_id)
