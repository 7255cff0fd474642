"""The dual-to-dual base model: a tiny ``JanusForConditionalGeneration`` built from a config.

Real transformers class, real processor (``JanusProcessor`` + ``JanusImageProcessor``), real
generation path (``generate(..., generation_mode="image")`` with classifier-free guidance, then
``decode_image_tokens``). Sizes (``TinyJanusSize`` defaults):

- images 64 x 64, pixel values in [-1, 1] (mean = std = 0.5, as the released Janus);
- understanding encoder: Janus/SigLIP-style ViT, 8 px patches -> 64 image tokens;
- VQ tokenizer/decoder (``JanusVQVAE``): 3 downsamplings (64 -> 8), an 8 x 8 grid = 64 image
  tokens per image (the same count as the understanding tokens, which the class requires),
  a 256-entry codebook of 16-d unit vectors;
- a Llama-style LM (4 layers, hidden 128) with the Janus generation embeddings / aligner / head.

Total about 2.0 M parameters (VQ about 1 M, LM about 0.9 M).

Status (measured, seed 0, default recipe, one CPU thread, about 5.3 min): VQ held-out MAE 0.020
over all pixels but 0.31 on the object's pixels: reconstructions keep the background and a blob
at about the right place, not the object's colour or shape; so generated images are NOT yet
recognisable (held-out image-judge text-to-image score 0.28 at CFG 3, only the background above
chance). The bottleneck is the VQ on flat images (see step 2), not the LM.

Pre-training (:func:`pretrain_tiny_janus`, deterministic from ``seed``) uses its own synthetic
scenes (:func:`draw_scene`): one large generic shape (circle, square, triangle, diamond, bar,
ring) in one of the six palette colours, centred in one cell of a 3 x 3 grid, on a plain
white / black / gray background, captioned "a red triangle at the top left on a white
background.". Steps:

1. BPE tokenizer (``train_tokenizer``) over the captions and prompts, plus the Janus special
   tokens (``<image_placeholder>``, ``<begin_of_image>``, ``<end_of_image>``, ``<|User|>``,
   ``<|Assistant|>``);
2. VQ-VAE: encoder -> ``quant_conv`` -> ``quantize`` -> ``post_quant_conv`` -> decoder, on
   jittered scenes (size and offset vary), L1 + MSE reconstruction + the quantizer's own
   codebook/commitment loss. ``JanusVQVAE.decode`` looks codes up L2-normalised
   (``get_codebook_entry``), so training quantizes the L2-normalised encoder output against a
   codebook kept on the unit sphere: then ``encode`` (Euclidean argmin on the raw output) picks
   the same code as training (cosine argmin), and ``decode`` sees the vectors it was trained on.
   Unused codes are restarted on encoder outputs every ``restart_every`` steps. The first
   ``warmup_frac`` of the steps train a plain auto-encoder on the normalised latent (no
   quantization), then the codebook starts from a spherical k-means of the latents; the first
   ``crop_frac`` of the steps see 32 x 32 crops around the object (aligned to the latent grid; a
   quarter of the cost, and the small shapes fill half of the crop), the rest whole images.
   With 32 channels, ``JanusVQVAE``'s GroupNorm(32 groups) is a per-channel instance norm that
   erases the absolute colour of flat images (reconstructions came out background-only), hence
   64 channels (channel pairs per group);
3. LM, VQ frozen: text-to-image (chat prompt + ``<begin_of_image>`` -> the 64 VQ tokens of the
   canonical scene, through ``language_model`` + ``generation_head`` exactly as ``generate``
   runs them, with the prompt blanked to pad tokens with probability ``uncond_prob`` for
   classifier-free guidance) and understanding (image + "Describe the image." -> caption,
   through the model's forward with ``labels``) in every step; all non-VQ weights train;
4. ``save_pretrained`` model + processor + ``pretrain_janus.json`` (recipe, VQ reconstruction
   error on held-out jittered scenes, caption exact-match on held-out combinations, times).

A fraction of the (shape, colour, position, background) combinations is held out of the LM
training (``heldout_combos``) so that evaluation measures composition, not recall.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from mmcl.benchmarks.synth_draw import COLOUR_NAMES, PALETTE, draw_glyph
from mmcl.models.chat import JANUS_CHAT_TEMPLATE
from mmcl.models.pretrain_data import REGIONS, SHAPES

# ---------------------------------------------------------------- synthetic scenes

POSITIONS: tuple[tuple[int, int], ...] = tuple((c, r) for r in range(3) for c in range(3))
"""(column, row) of the 3 x 3 grid, row-major; ``REGIONS`` gives the caption phrase."""
POSITION_NAMES: tuple[str, ...] = tuple(REGIONS[p] for p in POSITIONS)
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUND_COLOURS)
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOUR_NAMES,
    "position": POSITION_NAMES,
    "background": BACKGROUND_NAMES,
}
"""Every ground-truth attribute of a scene and its values (the image judge predicts all four)."""

IMAGE_SIZE = 64
OBJECT_SIZE = 18  # canonical side in px; a grid cell is 64 / 3 = 21.3 px
CAPTION_INSTRUCTION = "Describe the image."


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    position: str  # a POSITION_NAMES phrase, e.g. "at the top left"
    background: str

    def attributes(self) -> dict[str, str]:
        return asdict(self)

    def caption(self) -> str:
        art = "an" if self.colour[0] in "aeiou" else "a"
        return f"{art} {self.colour} {self.shape} {self.position} on a {self.background} background."


def all_scenes() -> list[Scene]:
    """Every (shape, colour, position, background) combination, in a fixed order."""
    return [Scene(*c) for c in product(SHAPES, COLOUR_NAMES, POSITION_NAMES, BACKGROUND_NAMES)]


def heldout_split(seed: int, fraction: float = 0.1) -> tuple[list[Scene], list[Scene]]:
    """(train, held-out) combinations; held-out ones are never seen by the LM in pre-training."""
    scenes = all_scenes()
    rng = np.random.default_rng([seed % 2**32, 71])
    order = rng.permutation(len(scenes))
    n_held = int(round(fraction * len(scenes)))
    held = {int(i) for i in order[:n_held]}
    return [s for i, s in enumerate(scenes) if i not in held], [s for i, s in enumerate(scenes) if i in held]


def draw_scene(scene: Scene, size: int = OBJECT_SIZE, offset: tuple[int, int] = (0, 0),
               image_size: int = IMAGE_SIZE) -> Image.Image:
    """Render ``scene``: the shape (side ``size`` px) centred in its grid cell, moved by ``offset``."""
    img = Image.new("RGB", (image_size, image_size), BACKGROUND_COLOURS[scene.background])
    col, row = POSITIONS[POSITION_NAMES.index(scene.position)]
    cell = image_size / 3
    cx, cy = (col + 0.5) * cell + offset[0], (row + 0.5) * cell + offset[1]
    w = h = size
    if scene.shape == "bar":
        h = max(3, size // 3)
    x1, y1 = int(round(cx - w / 2)), int(round(cy - h / 2))
    draw_glyph(ImageDraw.Draw(img), scene.shape, PALETTE[scene.colour], (x1, y1, x1 + w, y1 + h))
    return img


def random_scene(rng: np.random.Generator, jitter: bool = True,
                 scenes: list[Scene] | None = None) -> tuple[Scene, Image.Image]:
    """A random scene (from ``scenes`` when given) and its image; ``jitter`` varies size (15-21 px) and offset (+-2 px)."""
    pool = scenes if scenes is not None else None
    if pool is not None:
        scene = pool[int(rng.integers(len(pool)))]
    else:
        scene = Scene(*(vals[int(rng.integers(len(vals)))] for vals in ATTRIBUTES.values()))
    if jitter:
        size = int(rng.integers(15, 22))
        offset = (int(rng.integers(-2, 3)), int(rng.integers(-2, 3)))
        return scene, draw_scene(scene, size, offset)
    return scene, draw_scene(scene)


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
    vq_codebook: int = 256
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


def tokenizer_corpus() -> list[str]:
    chat = "<|User|>: <image_placeholder>\nDescribe the image.\n\n<|Assistant|>: "
    corpus = [CAPTION_INSTRUCTION, chat]
    corpus += [s.caption() for s in all_scenes()]
    corpus += [chat + s.caption() for s in all_scenes()[::7]]
    return corpus


def build_tokenizer(vocab_size: int = 512) -> Any:
    """The project's BPE (``train_tokenizer``) with the Janus special tokens added."""
    from transformers import PreTrainedTokenizerFast

    from mmcl.models.tokenizer import train_tokenizer

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

    from mmcl.eval.generate_image import ensure_image_generation_config

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


# ---------------------------------------------------------------- VQ-VAE training

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


@torch.no_grad()
def _kmeans_codebook(vq: Any, images: torch.Tensor, g: torch.Generator, iters: int = 8) -> None:
    """Spherical k-means of the encoder's normalised latents -> the (unit) codebook."""
    z = torch.cat([F.normalize(vq.quant_conv(vq.encoder(images[i:i + 32])), dim=1) for i in range(0, len(images), 32)])
    z = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    cb = vq.quantize.embedding.weight
    centres = z[torch.randperm(len(z), generator=g)[: cb.shape[0]]].clone()
    for _ in range(iters):
        assign = (z @ centres.T).argmax(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, z)
        counts = torch.bincount(assign, minlength=len(centres))
        empty = counts == 0
        centres = torch.where(empty[:, None], z[torch.randint(len(z), (len(centres),), generator=g)], sums)
        centres = F.normalize(centres, dim=-1)
    cb.copy_(centres)


def train_vq(model: Any, steps: int, batch_size: int, lr: float, seed: int, restart_every: int = 25,
             object_weight: float = 1.0, warmup_frac: float = 0.3, crop: int = 32, crop_frac: float = 0.85,
             log: Any = print) -> dict[str, float]:
    vq = model.model.vqmodel
    vq.train()
    warmup = int(warmup_frac * steps)
    rng = np.random.default_rng([seed % 2**32, 5])
    drawn = [random_scene(rng) for _ in range(max(2048, batch_size * 8))]
    pool = images_to_tensor([im for _, im in drawn])
    bg = images_to_tensor([Image.new("RGB", (1, 1), BACKGROUND_COLOURS[s.background]) for s, _ in drawn])
    # object pixels weigh ``object_weight`` times a background pixel: the shapes cover ~8 % of the image
    mask = ((pool - bg).abs().amax(1, keepdim=True) > 0.05).float()
    weights = 1.0 + (object_weight - 1.0) * mask
    # object-centred crop origins, on the latent grid (multiples of the downsampling factor)
    f, c = model.config.vision_config.patch_size, crop
    ys = torch.arange(pool.shape[-1]).float()
    area = mask[:, 0].sum((1, 2)).clamp(min=1)
    cy = (mask[:, 0] * ys[:, None]).sum((1, 2)) / area
    cx = (mask[:, 0] * ys[None, :]).sum((1, 2)) / area
    hi = (pool.shape[-1] - c) // f
    oy, ox = ((cy - c / 2) / f).round().clamp(0, hi).long(), ((cx - c / 2) / f).round().clamp(0, hi).long()
    opt = torch.optim.Adam(vq.parameters(), lr=lr)
    cb = vq.quantize.embedding.weight
    usage = torch.zeros(cb.shape[0])
    g = torch.Generator().manual_seed(seed)
    t0, loss = time.time(), torch.tensor(0.0)
    for step in range(steps):
        pick = torch.randint(len(pool), (batch_size,), generator=g)
        x, w = pool[pick], weights[pick]
        if c and step < crop_frac * steps:  # cheap: a c x c crop holding the object (conv nets are local)
            jy = (oy[pick] + torch.randint(-1, 2, (batch_size,), generator=g)).clamp(0, hi) * f
            jx = (ox[pick] + torch.randint(-1, 2, (batch_size,), generator=g)).clamp(0, hi) * f
            x = torch.stack([x[i, :, a:a + c, b:b + c] for i, (a, b) in enumerate(zip(jy.tolist(), jx.tolist(), strict=True))])
            w = torch.stack([w[i, :, a:a + c, b:b + c] for i, (a, b) in enumerate(zip(jy.tolist(), jx.tolist(), strict=True))])
        cur_lr = lr * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = cur_lr
        if step < warmup:  # plain auto-encoder on the normalised latents, no quantization
            z = F.normalize(vq.quant_conv(vq.encoder(x)), dim=1)
            rec, emb_loss = vq.decoder(vq.post_quant_conv(z)), torch.tensor(0.0)
        else:
            if step == warmup:
                _kmeans_codebook(vq, pool[torch.randint(len(pool), (128,), generator=g)], g)
            rec, emb_loss, codes, z = vq_forward(vq, x)
        loss = (w * ((rec - x).abs() + (rec - x) ** 2)).mean() / w.mean() + emb_loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vq.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"vq step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        if step < warmup:
            continue
        with torch.no_grad():
            cb.copy_(F.normalize(cb, dim=-1))
            usage += torch.bincount(codes, minlength=cb.shape[0]).float()
            if (step + 1) % restart_every == 0 and step < 0.8 * steps:
                dead = (usage == 0).nonzero().flatten()
                if len(dead):
                    zs = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                    pick = torch.randint(len(zs), (len(dead),), generator=g)
                    cb[dead] = F.normalize(zs[pick] + 0.01 * torch.randn(len(dead), zs.shape[1], generator=g), dim=-1)
                usage.zero_()
    vq.eval()
    return {"vq_final_loss": float(loss.item()), "vq_seconds": time.time() - t0}


@torch.no_grad()
def vq_eval(model: Any, n: int, seed: int) -> dict[str, float]:
    """Held-out reconstruction error (encode -> tokens -> decode) on jittered scenes, pixels in [0, 1]."""
    rng = np.random.default_rng([seed % 2**32, 6])
    drawn = [random_scene(rng) for _ in range(n)]
    x = images_to_tensor([im for _, im in drawn])
    bg = images_to_tensor([Image.new("RGB", (1, 1), BACKGROUND_COLOURS[s.background]) for s, _ in drawn])
    obj = ((x - bg).abs().amax(1, keepdim=True) > 0.05).expand_as(x)
    rec, codes = vq_reconstruct(model, x)
    diff = (rec.clamp(-1, 1) - x) / 2
    return {
        "vq_heldout_mae": float(diff.abs().mean()),
        "vq_heldout_mae_object_pixels": float(diff.abs()[obj].mean()),
        "vq_heldout_mse": float((diff**2).mean()),
        "vq_codes_used_heldout": int(codes.unique().numel()),
    }


# ---------------------------------------------------------------- LM training

def _position_ids(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def t2i_loss(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
    """Next-image-token loss: text embeddings of the (left-padded) prompt ending in ``<begin_of_image>``,
    then the generation embeddings of the image tokens, through ``language_model`` and
    ``generation_head`` — the same modules and positions as ``generate(generation_mode="image")``."""
    text = model.get_input_embeddings()(prompt_ids)
    img = model.prepare_embeddings_for_image_generation(image_tokens[:, :-1])
    embeds = torch.cat([text, img], dim=1)
    mask = torch.cat([prompt_mask, torch.ones_like(image_tokens[:, :-1])], dim=1)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                        position_ids=_position_ids(mask)).last_hidden_state
    n = image_tokens.shape[1]
    logits = model.model.generation_head(hidden[:, prompt_ids.shape[1] - 1: prompt_ids.shape[1] - 1 + n])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), image_tokens.reshape(-1))


def unconditional_ids(ids: torch.Tensor, model: Any) -> torch.Tensor:
    """The CFG unconditional prompt, as ``generate`` builds it: all but BOS/BOI become pad."""
    gc = model.generation_config
    keep = (ids == gc.bos_token_id) | (ids == gc.generation_kwargs["boi_token_id"])
    return ids.masked_fill(~keep, gc.pad_token_id)


def _understanding_batch(processor: Any, images: list[Image.Image], captions: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded image + "Describe the image." -> caption batch; loss on the answer and EOS only."""
    tok = processor.tokenizer
    prompt = question_prompt(processor, CAPTION_INSTRUCTION)
    enc = processor(text=[prompt] * len(images), images=images, return_tensors="pt")
    p_ids = enc["input_ids"][0]  # identical prompts: no padding
    rows, labels = [], []
    for cap in captions:
        ans = tok(" " + cap, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append(torch.cat([p_ids, torch.tensor(ans)]))
        labels.append(torch.cat([torch.full_like(p_ids, -100), torch.tensor(ans)]))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    lab = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels, strict=True)):
        ids[i, : len(r)], lab[i, : len(r)], mask[i, : len(r)] = r, lb, 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab, "pixel_values": enc["pixel_values"]}


def _prompt_batch(processor: Any, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = processor(text=[generation_prompt(processor, c) for c in captions], generation_mode="image",
                    padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def train_lm(model: Any, processor: Any, scenes: list[Scene], steps: int, batch_size: int, lr: float, seed: int,
             uncond_prob: float = 0.1, log: Any = print) -> dict[str, float]:
    """Joint text-to-image + captioning on canonical renderings of ``scenes`` (VQ frozen)."""
    vq = model.model.vqmodel
    for p in vq.parameters():
        p.requires_grad_(False)
    images = [draw_scene(s) for s in scenes]
    with torch.no_grad():
        codes = torch.cat([vq.encode(images_to_tensor(images[i:i + 128])).image_tokens.view(-1, model.config.vision_config.num_image_tokens)
                           for i in range(0, len(images), 128)])
        # generation embeddings start from the (unit) VQ codebook: a code's input embedding matches its content
        model.model.generation_embeddings.weight.copy_(vq.quantize.embedding.weight)
    captions = [s.caption() for s in scenes]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.time()
    l_t2i = l_i2t = torch.tensor(0.0)
    for step in range(steps):
        cur_lr = lr * min(1.0, (step + 1) / 30) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = cur_lr
        idx = torch.randint(len(scenes), (batch_size,), generator=g).tolist()
        ids, mask = _prompt_batch(processor, [captions[i] for i in idx])
        drop = torch.rand(batch_size, generator=g) < uncond_prob
        ids = torch.where(drop[:, None], unconditional_ids(ids, model), ids)
        l_t2i = t2i_loss(model, ids, mask, codes[idx])
        jdx = torch.randint(len(scenes), (batch_size // 2,), generator=g).tolist()
        batch = _understanding_batch(processor, [images[j] for j in jdx], [captions[j] for j in jdx])
        l_i2t = model(**batch).loss
        loss = l_t2i + l_i2t
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"lm step {step} t2i {l_t2i.item():.3f} i2t {l_i2t.item():.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    return {"lm_final_t2i_loss": float(l_t2i.item()), "lm_final_i2t_loss": float(l_i2t.item()),
            "lm_seconds": time.time() - t0}


@torch.no_grad()
def caption_accuracy(model: Any, processor: Any, scenes: list[Scene], batch_size: int = 32) -> float:
    """Exact match of the greedy caption for canonical renderings of ``scenes``."""
    tok = processor.tokenizer
    hits = 0
    for i in range(0, len(scenes), batch_size):
        chunk = scenes[i:i + batch_size]
        enc = processor(text=[question_prompt(processor, CAPTION_INSTRUCTION)] * len(chunk),
                        images=[draw_scene(s) for s in chunk], return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=24, do_sample=False)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        hits += sum(t.strip() == s.caption() for t, s in zip(texts, chunk, strict=True))
    return hits / max(1, len(scenes))


# ---------------------------------------------------------------- the recipe

@dataclass
class JanusPretrainRecipe:
    seed: int = 0
    size: TinyJanusSize = field(default_factory=TinyJanusSize)
    vq_steps: int = 520
    vq_batch_size: int = 16
    vq_lr: float = 1e-3
    lm_steps: int = 220
    lm_batch_size: int = 32
    lm_lr: float = 2e-3
    uncond_prob: float = 0.1
    heldout_fraction: float = 0.1


def pretrain_tiny_janus(out_dir: str | Path, recipe: JanusPretrainRecipe | None = None, log: Any = print) -> dict[str, Any]:
    """Build and pre-train the tiny Janus (deterministic from ``recipe.seed``); save it to ``out_dir``.

    Returns (and writes as ``pretrain_janus.json``) the recipe and the measured results.
    """
    recipe = recipe or JanusPretrainRecipe()
    torch.manual_seed(recipe.seed)
    t0 = time.time()
    tok = build_tokenizer(recipe.size.vocab_size)
    processor = build_processor(tok, recipe.size)
    model = build_model(tok, recipe.size, seed=recipe.seed)
    results: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters()),
                               "image_tokens": recipe.size.num_image_tokens, "codebook": recipe.size.vq_codebook}
    results.update(train_vq(model, recipe.vq_steps, recipe.vq_batch_size, recipe.vq_lr, recipe.seed, log=log))
    results.update(vq_eval(model, 256, recipe.seed + 1))
    log(f"VQ held-out: {results}")
    train, held = heldout_split(recipe.seed, recipe.heldout_fraction)
    results.update(train_lm(model, processor, train, recipe.lm_steps, recipe.lm_batch_size, recipe.lm_lr,
                            recipe.seed, recipe.uncond_prob, log=log))
    results["pretrain_seconds"] = time.time() - t0
    results["caption_exact_match_heldout"] = caption_accuracy(model, processor, held)
    results["caption_exact_match_train_sample"] = caption_accuracy(model, processor, train[::10])
    results["heldout_captions"] = [s.caption() for s in held]
    save_tiny_janus(model, processor, out_dir)
    info = {"recipe": asdict(recipe), "results": results}
    (Path(out_dir) / "pretrain_janus.json").write_text(json.dumps(info, indent=2))
    return info
