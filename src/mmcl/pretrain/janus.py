"""``mmcl pretrain-janus``: the recipe that pre-trains the tiny Janus (:mod:`mmcl.models.tiny_janus`).

Status (measured, seed 0, default recipe, one CPU thread, 57 min = VQ 8.0 min + encoder alignment
3.0 + decoder fine-tune 1.4 + understanding warm-up 2.5 + LM 41.4 + evaluation 0.6; the shipped
asset is that run). ``encode`` of a held-out canonical scene returns the LM's image-token targets
on 99.9 % of the cells (13 % before the alignment stage), so a stream's image answers are what
the LM was pre-trained to generate. Held-out text-to-image (97 unseen combinations): the image
judge (held-out accuracy shape 0.995, others 1.0) scores the generations 0.91 at CFG 1.05, 1.2
and 1.5 (0.79 at 2, 0.39 at 3): colour, position and background 1.0, shape 0.65, which is
exactly its score on the decoded target codes (the decoder's shape rendering is the limit, not
the LM: the teacher-forced first object cell is right for every held-out prompt). The modality
decision is learnt: the greedy first text token after every held-out generation prompt is
``<begin_of_image>`` (1.0) and after every caption question it is not (1.0). Understanding:
held-out caption exact match 1.0 (with the encoder warm-up, :mod:`mmcl.pretrain.janus_vision`;
0.09 without it on the earlier 900-step recipe). VQ: held-out object-pixel MAE 0.065 on canonical
scenes, 0.152 on jittered ones (0.106 before the alignment, which fits the encoder to canonical
renderings). The earlier 900-step recipe without the alignment scored 0.60 (colour 0.25, shape
0.15): the colour/shape binding appears only after about 2,000 LM steps (docs/continual-next.md).

Pre-training (:func:`pretrain_tiny_janus`, deterministic from ``seed``) uses its own synthetic
scenes (:func:`mmcl.synth.janus_world.draw_scene`): one generic shape (circle, square, triangle,
diamond, bar, ring) in one of the six palette colours on a plain white / black / gray background, at one of the 3 x 3
grid points 16, 32, 48 px, captioned "a red triangle at the top left on a white background.".
The canonical object is 16 px and centred on a grid point, so it covers exactly 2 x 2 VQ latent
cells (8 px): every canonical image is made of background cells and four object quarter-cells,
which a 1024-code VQ can represent exactly (with the former 18 px objects at 1/3 cell centres an
object straddled 3-4 cells at position-dependent sub-cell offsets and the VQ returned blobs).
Steps:

1. BPE tokenizer (``train_tokenizer``) over the captions, prompts and the phrases other tasks
   use (``PROMPT_PHRASES``: "Draw", "make the", "What colour is the", digits, ...), plus the
   Janus special tokens (``<image_placeholder>``, ``<begin_of_image>``, ``<end_of_image>``,
   ``<|User|>``, ``<|Assistant|>``);
2. VQ-VAE: encoder -> ``quant_conv`` -> ``quantize`` -> ``post_quant_conv`` -> decoder, on
   jittered scenes (size 13-19 px, offset +-2 px) and, 90 % of each batch, the canonical
   renderings of the LM's training combinations; L1 + MSE reconstruction with object pixels
   weighted 3x, + the quantizer's own codebook/commitment loss. ``JanusVQVAE.decode`` looks codes
   up L2-normalised (``get_codebook_entry``), so training quantizes the L2-normalised encoder
   output against a codebook kept on the unit sphere: then ``encode`` (Euclidean argmin on the
   raw output) picks the same code as training (cosine argmin), and ``decode`` sees the vectors it
   was trained on. Unused codes are restarted on encoder outputs every ``restart_every`` steps.
   The first ``warmup_frac`` of the steps train a plain auto-encoder on the normalised latent (no
   quantization), then the codebook starts from a spherical k-means of the latents; the first
   ``crop_frac`` of the steps see 32 x 32 crops around the object (aligned to the latent grid; a
   quarter of the cost), the rest whole images. With 32 channels, ``JanusVQVAE``'s GroupNorm(32
   groups) is a per-channel instance norm that erases the absolute colour of flat images, hence
   64 channels (channel pairs per group);
3. canonical image tokens (:func:`canonical_codes`): GroupNorm statistics and the mid-block
   attention make a cell's code depend on the whole image, so the LM targets give every
   background cell the one code of its background colour and the object's 2 x 2 cells the codes
   of the same object rendered at the centre. The VQ encoder (+ ``quant_conv``) is then fine-tuned
   so that ``encode`` of a canonical rendering returns exactly these codes
   (:func:`align_encoder`): a stream's image answers are tokenised by ``encode``, and without the
   alignment they agreed with the pre-training targets on only 63 % of the cells, so training on
   them taught the LM a code "dialect" it had not been pre-trained on. The decoder
   (+ ``post_quant_conv``) is fine-tuned briefly to decode the canonical codes
   (:func:`finetune_decoder`). Without canonical targets the LM had to predict object-dependent
   background codes everywhere and drifted (objects at the bottom, wrong colour: held-out score
   0.61 at best CFG, 0.28 at CFG 3);
4. LM, VQ frozen: text-to-image (chat prompt + ``<begin_of_image>`` -> the 64 canonical image
   tokens, through ``language_model`` + ``generation_head`` exactly as ``generate`` runs them,
   with the prompt blanked to pad tokens with probability ``uncond_prob`` for classifier-free
   guidance), the modality decision (``lm_head`` cross-entropy of ``<begin_of_image>`` at the
   last prompt position of the conditional generation prompts, so plain text generation after a
   caption-only request starts an image; the CFG-dropped prompts are left out of this term: they
   are never a text-mode input and ``generate`` never asks ``lm_head`` about them, and teaching
   "empty prompt -> image" would only blur the decision) and understanding (image + "Describe the
   image." -> caption, through the model's forward with ``labels``) in every step; all non-VQ
   weights train;
5. ``save_pretrained`` model + processor + ``pretrain_janus.json`` (recipe; VQ reconstruction
   error on held-out jittered scenes and on held-out canonical scenes; caption exact-match;
   modality-decision shares; image-judge scores of generations and of VQ reconstructions for the
   held-out combinations when a judge is saved in ``mmcl/assets/image-judge``; times).

A fraction of the (shape, colour, position, background) combinations is held out of the LM
training and of the VQ's canonical images (``heldout_split``) so that evaluation measures
composition, not recall.

Every stage is a loss function and a batch source run by the shared primitive
:func:`mmcl.train.steps.fit` (Adam/AdamW, a per-step learning rate, the gradient norm clipped to 1,
the gradients zeroed before each backward pass).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mmcl.eval.image_judge import evaluate_text_to_image, t2i_score
from mmcl.models.image_judge import default_judge_dir, load_judge
from mmcl.models.tiny_janus import (
    TinyJanusSize,
    build_model,
    build_processor,
    build_tokenizer,
    generation_prompt,
    images_to_tensor,
    question_prompt,
    save_tiny_janus,
    t2i_and_modality_loss,
    t2i_logits,
    tensor_to_images,
    unconditional_ids,
    vq_forward,
    vq_reconstruct,
)
from mmcl.pretrain.janus_vision import warm_up_vision
from mmcl.synth.janus_world import (
    ATTRIBUTES,
    BACKGROUND_COLOURS,
    CAPTION_INSTRUCTION,
    IMAGE_SIZE,
    POSITION_NAMES,
    POSITIONS,
    Scene,
    all_scenes,
    draw_scene,
    random_scene,
)
from mmcl.train.steps import Optim, PerStepLR, Updates, fit


def heldout_split(seed: int, fraction: float = 0.1) -> tuple[list[Scene], list[Scene]]:
    """(train, held-out) combinations; held-out ones are never seen by the LM in pre-training."""
    scenes = all_scenes()
    rng = np.random.default_rng([seed % 2**32, 71])
    order = rng.permutation(len(scenes))
    n_held = int(round(fraction * len(scenes)))
    held = {int(i) for i in order[:n_held]}
    return [s for i, s in enumerate(scenes) if i not in held], [s for i, s in enumerate(scenes) if i in held]


def _stage_updates(params: list[torch.nn.Parameter], optim: Optim, lr_at: Any) -> Updates:
    """The optimizer side shared by the stages: ``lr_at(step)`` set before every step, the gradient
    norm clipped to 1, the gradients zeroed before each backward pass."""
    return Updates(params, optim, PerStepLR(lr_at), max_grad_norm=1.0, zero_grad="before_backward")


def _random_picks(n: int, batch_size: int, g: torch.Generator) -> Any:
    """Batch source: ``batch_size`` random indices into ``n`` items per step, drawn from ``g``."""
    while True:
        yield torch.randint(n, (batch_size,), generator=g)


def _final(loss: torch.Tensor | None) -> float:
    """The last step's loss (0.0 when a stage ran no step)."""
    return float(loss.item()) if loss is not None else 0.0


# ---------------------------------------------------------------- VQ-VAE training

@torch.no_grad()
def _encode_tokens(vq: Any, x: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """``vq.encode`` image tokens of ``x`` [B, 3, H, W] -> [B, cells], in chunks of ``chunk`` images."""
    return torch.cat([vq.encode(x[i:i + chunk]).image_tokens.view(len(x[i:i + chunk]), -1) for i in range(0, len(x), chunk)])


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
             canonical_scenes: list[Scene] | None = None, canonical_frac: float = 0.0,
             log: Any = print) -> dict[str, float]:
    """Train the VQ on jittered random scenes and, a ``canonical_frac`` share of each batch, on the
    canonical renderings of ``canonical_scenes`` (the images the LM learns to generate)."""
    vq = model.model.vqmodel
    vq.train()
    warmup = int(warmup_frac * steps)
    rng = np.random.default_rng([seed % 2**32, 5])
    drawn = [random_scene(rng) for _ in range(max(2048, batch_size * 8))]
    n_jitter = len(drawn)
    canonical_scenes = list(canonical_scenes or [])
    if not canonical_scenes:
        canonical_frac = 0.0
    drawn += [(s, draw_scene(s)) for s in canonical_scenes]
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
    cb = vq.quantize.embedding.weight
    usage = torch.zeros(cb.shape[0])
    g = torch.Generator().manual_seed(seed)

    def batches() -> Any:
        for step in range(steps):
            pick = torch.randint(n_jitter, (batch_size,), generator=g)
            if canonical_frac > 0:
                canon = torch.rand(batch_size, generator=g) < canonical_frac
                pick = torch.where(canon, n_jitter + torch.randint(len(pool) - n_jitter, (batch_size,), generator=g), pick)
            x, w = pool[pick], weights[pick]
            if c and step < crop_frac * steps:  # cheap: a c x c crop holding the object (conv nets are local)
                jy = (oy[pick] + torch.randint(-1, 2, (batch_size,), generator=g)).clamp(0, hi) * f
                jx = (ox[pick] + torch.randint(-1, 2, (batch_size,), generator=g)).clamp(0, hi) * f
                x = torch.stack([x[i, :, a:a + c, b:b + c] for i, (a, b) in enumerate(zip(jy.tolist(), jx.tolist(), strict=True))])
                w = torch.stack([w[i, :, a:a + c, b:b + c] for i, (a, b) in enumerate(zip(jy.tolist(), jx.tolist(), strict=True))])
            yield step, x, w

    last: dict[str, torch.Tensor] = {}  # the quantized forward's codes and latents, for the restarts

    def loss_fn(batch: tuple[int, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        step, x, w = batch
        if step < warmup:  # plain auto-encoder on the normalised latents, no quantization
            z = F.normalize(vq.quant_conv(vq.encoder(x)), dim=1)
            rec, emb_loss = vq.decoder(vq.post_quant_conv(z)), torch.tensor(0.0)
        else:
            if step == warmup:  # the codebook starts from a k-means of the latents
                _kmeans_codebook(vq, pool[torch.randint(len(pool), (128,), generator=g)], g)
            rec, emb_loss, last["codes"], last["z"] = vq_forward(vq, x)
        return (w * ((rec - x).abs() + (rec - x) ** 2)).mean() / w.mean() + emb_loss

    def on_step(done: int, loss: torch.Tensor) -> None:
        step = done - 1
        if step % 50 == 0 or step == steps - 1:
            log(f"vq step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        if step < warmup:
            return
        restart_dead_codes(step, last["codes"], last["z"])

    @torch.no_grad()
    def restart_dead_codes(step: int, codes: torch.Tensor, z: torch.Tensor) -> None:
        """Keep the codebook on the unit sphere; every ``restart_every`` steps restart the unused codes on latents."""
        cb.copy_(F.normalize(cb, dim=-1))
        usage.add_(torch.bincount(codes, minlength=cb.shape[0]).float())
        if (step + 1) % restart_every == 0 and step < 0.8 * steps:
            dead = (usage == 0).nonzero().flatten()
            if len(dead):
                zs = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                pick = torch.randint(len(zs), (len(dead),), generator=g)
                cb[dead] = F.normalize(zs[pick] + 0.01 * torch.randn(len(dead), zs.shape[1], generator=g), dim=-1)
            usage.zero_()

    def lr_at(step: int) -> float:
        return lr * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))

    updates = _stage_updates(list(vq.parameters()), Optim("adam", lr), lr_at)
    t0 = time.time()
    loss = fit(updates, batches(), loss_fn, steps, on_step=on_step)
    vq.eval()
    return {"vq_final_loss": _final(loss), "vq_seconds": time.time() - t0}


# ---------------------------------------------------------------- canonical image tokens, encoder alignment, decoder fine-tune

@torch.no_grad()
def canonical_codes(model: Any, scenes: list[Scene]) -> torch.Tensor:
    """The LM's image-token targets for the canonical renderings of ``scenes`` [B, 64]: one code for
    every background cell of a background colour, and for the 2 x 2 cells the object covers the
    codes of the same (shape, colour, background) rendered at the centre.

    The background code is the commonest code the VQ gives the cells of the empty image of that
    colour. The VQ's GroupNorm statistics and mid-block attention make a cell's code depend on the
    whole image (a white background took about 15 different codes per image, an object's codes
    changed with its position); the LM then had to predict object-dependent codes everywhere and
    drifted (objects at the bottom, chance colour and shape). With these targets a cell's code
    depends only on what covers it, which is also what a convolutional encoder can be taught to
    return (:func:`align_encoder`: the real tokenisation path, ``vqmodel.encode``, then produces the
    LM's targets); the decoder is fine-tuned on them (:func:`finetune_decoder`). An earlier version
    kept the empty image's position-dependent codes for the background: ``encode`` of a canonical
    scene then agreed with the targets on 63 % of the cells, and could not be taught more than
    about 80 %."""
    vq = model.model.vqmodel
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size  # 8 latent cells
    bg_code = background_codes(model)
    # the object's 2 x 2 block of codes, taken from its rendering at the centre (the block at cells 3-4):
    # every position uses the same block, so the codes depend on (shape, colour, background) only
    centre = POSITION_NAMES[4]
    looks = sorted({(s.shape, s.colour, s.background) for s in scenes})
    x = images_to_tensor([draw_scene(Scene(sh, co, centre, bg)) for sh, co, bg in looks])
    blocks = vq.encode(x).image_tokens.view(len(looks), side, side)[:, 3:5, 3:5]
    block = dict(zip(looks, blocks, strict=True))
    out = []
    for s in scenes:
        col, row = POSITIONS[POSITION_NAMES.index(s.position)]
        grid = torch.full((side, side), bg_code[s.background], dtype=torch.long)
        grid[2 * row + 1: 2 * row + 3, 2 * col + 1: 2 * col + 3] = block[(s.shape, s.colour, s.background)]
        out.append(grid.flatten())
    return torch.stack(out)


def _empty_images() -> torch.Tensor:
    return images_to_tensor([Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), c) for c in BACKGROUND_COLOURS.values()])


@torch.no_grad()
def background_codes(model: Any) -> dict[str, int]:
    """Per background colour, the commonest VQ code among the cells of the empty image."""
    codes = model.model.vqmodel.encode(_empty_images()).image_tokens.view(len(BACKGROUND_COLOURS), -1)
    return {b: int(torch.mode(c).values) for b, c in zip(BACKGROUND_COLOURS, codes, strict=True)}


@torch.no_grad()
def encode_agreement(model: Any, scenes: list[Scene]) -> dict[str, float]:
    """Share of cells where ``vqmodel.encode`` of a canonical rendering returns the
    :func:`canonical_codes` (all cells, and the object's four): 1.0 means the stream's image
    answers, tokenised by ``encode``, are exactly what the LM was pre-trained to generate."""
    vq = model.model.vqmodel
    target = canonical_codes(model, scenes)
    x = images_to_tensor([draw_scene(s) for s in scenes])
    got = _encode_tokens(vq, x)
    obj = _object_cells(model, scenes) > 0
    same = got == target
    return {"all": float(same.float().mean()), "object": float(same[obj].float().mean())}


def _object_cells(model: Any, scenes: list[Scene], weight: float = 1.0) -> torch.Tensor:
    """[B, 64]: ``weight`` on the 2 x 2 latent cells each scene's canonical object covers, 0 elsewhere."""
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    out = torch.zeros(len(scenes), side, side)
    for i, s in enumerate(scenes):
        col, row = POSITIONS[POSITION_NAMES.index(s.position)]
        out[i, 2 * row + 1: 2 * row + 3, 2 * col + 1: 2 * col + 3] = weight
    return out.flatten(1)


def align_encoder(model: Any, scenes: list[Scene], steps: int, batch_size: int, lr: float, seed: int,
                  temperature: float = 0.01, log: Any = print) -> dict[str, float]:
    """Fine-tune the VQ encoder + ``quant_conv`` (codebook, decoder frozen) so that ``encode`` of the
    canonical rendering of each of ``scenes`` (and of the empty images) returns its
    :func:`canonical_codes`: cross-entropy of each cell's L2-normalised latent against the unit
    codebook, logits = cosine / ``temperature`` (``encode``'s Euclidean argmin on a unit codebook is
    the cosine argmax). The targets are fixed before the first step."""
    vq = model.model.vqmodel
    x = torch.cat([images_to_tensor([draw_scene(s) for s in scenes]), _empty_images()])
    with torch.no_grad():
        target = canonical_codes(model, scenes)
        empty = torch.tensor(list(background_codes(model).values()))[:, None].expand(-1, target.shape[1])
        target = torch.cat([target, empty])
    params = list(vq.encoder.parameters()) + list(vq.quant_conv.parameters())
    cb = F.normalize(vq.quantize.embedding.weight.detach(), dim=-1)
    g = torch.Generator().manual_seed(seed + 13)
    vq.encoder.train()

    def loss_fn(pick: torch.Tensor) -> torch.Tensor:
        z = F.normalize(vq.quant_conv(vq.encoder(x[pick])), dim=1)
        logits = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]) @ cb.T / temperature
        return F.cross_entropy(logits, target[pick].reshape(-1))

    def on_step(done: int, loss: torch.Tensor) -> None:
        if (done - 1) % 100 == 0 or done == steps:
            log(f"encoder alignment step {done - 1} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")

    updates = _stage_updates(params, Optim("adam", lr), lambda step: lr * 0.5 * (1 + math.cos(math.pi * step / steps)))
    t0 = time.time()
    loss = fit(updates, _random_picks(len(x), batch_size, g), loss_fn, steps, on_step=on_step)
    vq.eval()
    return {"encoder_align_final_loss": _final(loss), "encoder_align_seconds": time.time() - t0}


def finetune_decoder(model: Any, scenes: list[Scene], steps: int, batch_size: int, lr: float, seed: int,
                     log: Any = print) -> dict[str, float]:
    """Fine-tune ``post_quant_conv`` + decoder (codebook and encoder frozen) to decode the
    :func:`canonical_codes` of ``scenes`` (half of each batch) and their plain VQ codes (the other half)
    into the canonical renderings."""
    vq = model.model.vqmodel
    x = images_to_tensor([draw_scene(s) for s in scenes])
    with torch.no_grad():
        targets = canonical_codes(model, scenes)
        raw = _encode_tokens(vq, x)
    params = list(vq.post_quant_conv.parameters()) + list(vq.decoder.parameters())
    g = torch.Generator().manual_seed(seed + 11)
    vq.decoder.train()

    def loss_fn(pick: torch.Tensor) -> torch.Tensor:
        codes = torch.cat([targets[pick[: batch_size // 2]], raw[pick[batch_size // 2:]]])
        rec = model.decode_image_tokens(codes).permute(0, 3, 1, 2)
        return ((rec - x[pick]).abs() + (rec - x[pick]) ** 2).mean()

    def on_step(done: int, loss: torch.Tensor) -> None:
        if (done - 1) % 50 == 0 or done == steps:
            log(f"decoder step {done - 1} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")

    updates = _stage_updates(params, Optim("adam", lr), lambda step: lr * 0.5 * (1 + math.cos(math.pi * step / steps)))
    t0 = time.time()
    loss = fit(updates, _random_picks(len(x), batch_size, g), loss_fn, steps, on_step=on_step)
    vq.eval()
    return {"decoder_finetune_final_loss": _final(loss), "decoder_finetune_seconds": time.time() - t0}


# ---------------------------------------------------------------- LM training

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
             uncond_prob: float = 0.1, modality_weight: float = 1.0, i2t_frac: float = 0.5, object_token_weight: float = 1.0,
             log: Any = print) -> dict[str, float]:
    """Joint text-to-image + captioning on canonical renderings of ``scenes`` (VQ frozen)."""
    vq = model.model.vqmodel
    for p in vq.parameters():
        p.requires_grad_(False)
    images = [draw_scene(s) for s in scenes]
    with torch.no_grad():
        codes = canonical_codes(model, scenes)
        # the object's cells weigh ``object_token_weight`` times a background cell (4 of 64 tokens carry colour and shape)
        token_weights = 1.0 + _object_cells(model, scenes, object_token_weight - 1.0)
        # generation embeddings start from the (unit) VQ codebook: a code's input embedding matches its content
        model.model.generation_embeddings.weight.copy_(vq.quantize.embedding.weight)
    captions = [s.caption() for s in scenes]
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(seed)
    model.train()

    def batches() -> Any:
        while True:
            idx = torch.randint(len(scenes), (batch_size,), generator=g).tolist()
            ids, mask = _prompt_batch(processor, [captions[i] for i in idx])
            drop = torch.rand(batch_size, generator=g) < uncond_prob
            ids = torch.where(drop[:, None], unconditional_ids(ids, model), ids)
            jdx = torch.randint(len(scenes), (max(1, int(batch_size * i2t_frac)),), generator=g).tolist()
            yield idx, ids, mask, drop, _understanding_batch(processor, [images[j] for j in jdx], [captions[j] for j in jdx])

    parts = {"t2i": torch.tensor(0.0), "i2t": torch.tensor(0.0), "boi": torch.tensor(0.0)}

    def loss_fn(batch: Any) -> torch.Tensor:
        idx, ids, mask, drop, understanding = batch
        # the modality decision is learnt on the conditional prompts only: a CFG-dropped prompt (all pad
        # but BOS/BOI) is never a text-mode input, and generate() never asks lm_head about it
        parts["t2i"], parts["boi"] = t2i_and_modality_loss(model, ids, mask, codes[idx], decide=~drop,
                                                           token_weights=token_weights[idx])
        parts["i2t"] = model(**understanding).loss
        return parts["t2i"] + parts["i2t"] + modality_weight * parts["boi"]

    def on_step(done: int, loss: torch.Tensor) -> None:
        if (done - 1) % 50 == 0 or done == steps:
            log(f"lm step {done - 1} t2i {parts['t2i'].item():.3f} i2t {parts['i2t'].item():.3f} "
                f"boi {parts['boi'].item():.3f} ({time.time() - t0:.0f}s)")

    def lr_at(step: int) -> float:
        return lr * min(1.0, (step + 1) / 30) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))

    updates = _stage_updates(params, Optim("adamw", lr, {"weight_decay": 0.01}), lr_at)
    t0 = time.time()
    fit(updates, batches(), loss_fn, steps, on_step=on_step)
    model.eval()
    l_t2i, l_i2t, l_boi = parts["t2i"], parts["i2t"], parts["boi"]
    return {"lm_final_t2i_loss": float(l_t2i.item()), "lm_final_i2t_loss": float(l_i2t.item()),
            "lm_final_modality_loss": float(l_boi.item()), "lm_seconds": time.time() - t0}


# ---------------------------------------------------------------- evaluation (recorded in pretrain_janus.json)

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


@torch.no_grad()
def vq_eval_canonical(model: Any, scenes: list[Scene]) -> dict[str, float]:
    """Reconstruction error (pixels in [0, 1]) of the canonical renderings of ``scenes`` (what the LM generates)."""
    x = images_to_tensor([draw_scene(s) for s in scenes])
    bg = images_to_tensor([Image.new("RGB", (1, 1), BACKGROUND_COLOURS[s.background]) for s in scenes])
    obj = ((x - bg).abs().amax(1, keepdim=True) > 0.05).expand_as(x)
    rec, codes = vq_reconstruct(model, x)
    diff = ((rec.clamp(-1, 1) - x) / 2).abs()
    return {"vq_canonical_heldout_mae": float(diff.mean()), "vq_canonical_heldout_mae_object_pixels": float(diff[obj].mean()),
            "vq_canonical_heldout_codes_used": int(codes.unique().numel())}


def judge_eval(model: Any, processor: Any, scenes: list[Scene], cfg_scale: float,
               judge_dir: str | Path | None = None, cfg_sweep: tuple[float, ...] = ()) -> dict[str, Any]:
    """Image-judge scores (``mmcl.eval.image_judge``) on ``scenes``: text-to-image (greedy, CFG ``cfg_scale``;
    the score alone at each CFG of ``cfg_sweep``) and the VQ reconstructions of their canonical renderings;
    empty when no judge is saved."""
    path = Path(judge_dir) if judge_dir is not None else default_judge_dir()
    if not (path / "judge.json").exists():
        return {}
    judge = load_judge(path)
    captions = [s.caption() for s in scenes]
    t2i = evaluate_text_to_image(model, processor, judge, captions, cfg_scale=cfg_scale)
    t2i.pop("images")
    rec, _ = vq_reconstruct(model, images_to_tensor([draw_scene(s) for s in scenes]))
    with torch.no_grad():
        rec_canon = model.decode_image_tokens(canonical_codes(model, scenes)).permute(0, 3, 1, 2)
    out: dict[str, Any] = {"judge_t2i_heldout": t2i}
    if cfg_sweep:
        out["judge_t2i_heldout_cfg_sweep"] = {
            str(c): evaluate_text_to_image(model, processor, judge, captions, cfg_scale=c)["t2i_score"] for c in cfg_sweep}
    for key, r in (("judge_vq_reconstruction_heldout", rec), ("judge_vq_canonical_codes_heldout", rec_canon)):
        rec_images = tensor_to_images(r)
        got = judge(rec_images)
        out[key] = {
            "t2i_score": sum(t2i_score(judge, im, c) for im, c in zip(rec_images, captions, strict=True)) / len(scenes),
            "per_attribute": {k: sum(g[k] == s.attributes()[k] for g, s in zip(got, scenes, strict=True)) / len(scenes)
                              for k in ATTRIBUTES}}
    out["judge_heldout_accuracy"] = judge.info.get("heldout_accuracy")
    return out


@torch.no_grad()
def first_object_cell_accuracy(model: Any, processor: Any, scenes: list[Scene], batch_size: int = 64) -> float:
    """Teacher-forced accuracy of the greedy code for the first object cell in raster order: the one
    image token that must come from the prompt's colour and shape words (the other three follow
    from it, the background from the position and background words)."""
    codes = canonical_codes(model, scenes)
    first = (_object_cells(model, scenes) > 0).float().argmax(1)
    hits = 0
    for i in range(0, len(scenes), batch_size):
        b = slice(i, i + batch_size)
        ids, mask = _prompt_batch(processor, [s.caption() for s in scenes[b]])
        logits, _ = t2i_logits(model, ids, mask, codes[b])
        rows = torch.arange(len(ids))
        hits += int((logits[rows, first[b]].argmax(-1) == codes[b][rows, first[b]]).sum())
    return hits / max(1, len(scenes))


@torch.no_grad()
def first_text_tokens(model: Any, processor: Any, prompts: list[str], images: list[Image.Image] | None = None) -> list[int]:
    """The greedy first token of plain text generation (``generate``, default text mode), one prompt at a time."""
    out = []
    for i, prompt in enumerate(prompts):
        kw = {"images": [images[i]]} if images is not None else {}
        enc = processor(text=[prompt], return_tensors="pt", **kw)
        gen = model.generate(**enc, max_new_tokens=1, do_sample=False)
        out.append(int(gen[0, enc["input_ids"].shape[1]]))
    return out


def modality_decision(model: Any, processor: Any, scenes: list[Scene]) -> dict[str, float]:
    """Share of generation prompts (caption only) whose greedy first text token is ``<begin_of_image>``,
    and share of caption questions (image + "Describe the image.") whose first token is not."""
    boi = processor.tokenizer.convert_tokens_to_ids("<begin_of_image>")
    gen = first_text_tokens(model, processor, [generation_prompt(processor, s.caption()) for s in scenes])
    ask = first_text_tokens(model, processor, [question_prompt(processor, CAPTION_INSTRUCTION)] * len(scenes),
                            [draw_scene(s) for s in scenes])
    return {"generation_prompt_first_token_boi": sum(t == boi for t in gen) / max(1, len(gen)),
            "caption_question_first_token_not_boi": sum(t != boi for t in ask) / max(1, len(ask))}


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
    vq_steps: int = 1400
    vq_batch_size: int = 16
    vq_lr: float = 1e-3
    vq_object_weight: float = 3.0
    vq_canonical_frac: float = 0.9
    vq_crop: int = 32
    vq_crop_frac: float = 0.9
    vq_warmup_frac: float = 0.3
    encoder_align_steps: int = 1500  # VQ encoder fine-tuned so that encode() returns the canonical codes (0: off)
    encoder_align_lr: float = 1e-3
    encoder_align_temperature: float = 0.01  # 0.05: agreement 0.84 (black background 0.58); 0.02: 0.997; 0.01: 0.999
    decoder_steps: int = 100
    decoder_lr: float = 3e-4
    vision_steps: int = 2500  # understanding-encoder warm-up (mmcl.pretrain.janus_vision) before the LM stage
    lm_steps: int = 4000  # the colour/shape binding appears after ~2,000 steps (900: first object cell 0.08)
    lm_batch_size: int = 32
    lm_lr: float = 2e-3
    uncond_prob: float = 0.1
    modality_weight: float = 1.0
    object_token_weight: float = 4.0  # the object's 4 of 64 image tokens carry colour and shape
    heldout_fraction: float = 0.1
    cfg_scale: float = 1.5  # the CFG scale of the recorded held-out judge scores
    cfg_sweep: tuple[float, ...] = (1.05, 1.2, 2.0, 3.0)  # held-out text-to-image score recorded at these too


# recipe fields that decide the stages before the LM stage (VQ, decoder fine-tune, vision warm-up)
IMAGE_STAGE_FIELDS = ("seed", "size", "vq_steps", "vq_batch_size", "vq_lr", "vq_object_weight", "vq_canonical_frac",
                      "vq_crop", "vq_crop_frac", "vq_warmup_frac", "encoder_align_steps", "encoder_align_lr",
                      "encoder_align_temperature", "decoder_steps", "decoder_lr", "vision_steps", "heldout_fraction")
VQ_PREFIX = "model.vqmodel."
VISION_PREFIX = "model.vision_model."
VISION_WARMUP_FILE = "vision_warmup.safetensors"  # the understanding encoder as the warm-up left it


def reuse_image_stages(model: Any, source: str | Path, recipe: JanusPretrainRecipe) -> dict[str, Any]:
    """Load the VQ tokenizer/decoder (and the warmed-up understanding encoder, when saved) of an earlier
    pre-training into ``model``, instead of training them again.

    The LM stage keeps the VQ frozen, so the saved model's VQ is the VQ stage's result; the LM stage
    does train the understanding encoder (captioning), so its warm-up state is read from
    ``VISION_WARMUP_FILE`` and, when absent, the caller reruns the (seeded) warm-up. The LM weights
    are never loaded: they stay at the seeded initial values. Refused, naming the field, unless
    ``source``'s recorded recipe equals ``recipe`` on every field in ``IMAGE_STAGE_FIELDS``.
    Returns the source's recorded results for the reused stages, ``image_stages_reused_from`` and
    ``vision_warmup_reused`` (bool)."""
    source = Path(source)
    info_path = source / "pretrain_janus.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{info_path}: no pretrain record; reuse needs a directory written by pretrain-janus")
    info = json.loads(info_path.read_text())
    mine = asdict(recipe)
    for key in IMAGE_STAGE_FIELDS:
        if info["recipe"].get(key) != mine[key]:
            raise ValueError(f"{info_path}: recipe.{key} is {info['recipe'].get(key)!r}, this run has {mine[key]!r}; "
                             "the VQ and vision stages cannot be reused")
    from safetensors.torch import load_file

    prefixes = [VQ_PREFIX]
    state = {k: v for k, v in load_file(str(source / "model.safetensors")).items() if k.startswith(VQ_PREFIX)}
    warm = source / VISION_WARMUP_FILE
    if warm.exists():
        state.update(load_file(str(warm)))
        prefixes.append(VISION_PREFIX)
    missing = [k for k in model.state_dict() if k.startswith(tuple(prefixes)) and k not in state]
    if missing:
        raise ValueError(f"{source}: lacks {len(missing)} image-stage tensors, e.g. {missing[0]}")
    model.load_state_dict(state, strict=False)
    kept = {k: v for k, v in info["results"].items()
            if k.startswith(("vq_", "decoder_", "encoder_align_", "encode_canonical_")) or (warm.exists() and k.startswith("vision_"))}
    return {**kept, "image_stages_reused_from": str(source), "vision_warmup_reused": warm.exists()}


def pretrain_tiny_janus(out_dir: str | Path, recipe: JanusPretrainRecipe | None = None, log: Any = print,
                        reuse_from: str | Path | None = None) -> dict[str, Any]:
    """Build and pre-train the tiny Janus (deterministic from ``recipe.seed``); save it to ``out_dir``.

    With ``reuse_from`` (an earlier output with the same image-stage recipe) the VQ and vision stages
    are loaded instead of trained (:func:`reuse_image_stages`): only the LM stage runs.
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
    train, held = heldout_split(recipe.seed, recipe.heldout_fraction)
    if reuse_from is not None:
        results.update(reuse_image_stages(model, reuse_from, recipe))
        log(f"VQ stage{' and vision warm-up' if results['vision_warmup_reused'] else ''} taken from {reuse_from}")
    else:
        results.update(train_vq(model, recipe.vq_steps, recipe.vq_batch_size, recipe.vq_lr, recipe.seed,
                                object_weight=recipe.vq_object_weight, warmup_frac=recipe.vq_warmup_frac,
                                crop=recipe.vq_crop, crop_frac=recipe.vq_crop_frac, canonical_scenes=train,
                                canonical_frac=recipe.vq_canonical_frac, log=log))
        if recipe.encoder_align_steps:
            results["encode_canonical_agreement_heldout_before_alignment"] = encode_agreement(model, held)
            results.update(align_encoder(model, train, recipe.encoder_align_steps, recipe.vq_batch_size,
                                         recipe.encoder_align_lr, recipe.seed, recipe.encoder_align_temperature, log=log))
        if recipe.decoder_steps:
            results.update(finetune_decoder(model, train, recipe.decoder_steps, recipe.vq_batch_size,
                                            recipe.decoder_lr, recipe.seed, log=log))
        results.update(vq_eval(model, 256, recipe.seed + 1))
        results.update(vq_eval_canonical(model, held))
        results["encode_canonical_agreement_heldout"] = encode_agreement(model, held)
        log(f"VQ held-out: {results}")
    if recipe.vision_steps and not results.get("vision_warmup_reused"):
        # captions alone do not teach the tiny ViT to see the object (see janus_vision)
        results.update(warm_up_vision(model, processor, recipe.vision_steps, seed=recipe.seed, log=log))
    vision_warmup = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(VISION_PREFIX)}
    results.update(train_lm(model, processor, train, recipe.lm_steps, recipe.lm_batch_size, recipe.lm_lr,
                            recipe.seed, recipe.uncond_prob, modality_weight=recipe.modality_weight,
                            object_token_weight=recipe.object_token_weight, log=log))
    results["train_seconds"] = time.time() - t0
    t1 = time.time()
    results["caption_exact_match_heldout"] = caption_accuracy(model, processor, held)
    results["caption_exact_match_train_sample"] = caption_accuracy(model, processor, train[::10])
    results["modality_decision_heldout"] = modality_decision(model, processor, held)
    results["first_object_cell_accuracy_heldout"] = first_object_cell_accuracy(model, processor, held)
    results["first_object_cell_accuracy_train_sample"] = first_object_cell_accuracy(model, processor, train[::10])
    results.update(judge_eval(model, processor, held, recipe.cfg_scale, cfg_sweep=recipe.cfg_sweep))
    results["eval_seconds"] = time.time() - t1
    results["pretrain_seconds"] = time.time() - t0
    results["heldout_captions"] = [s.caption() for s in held]
    log({k: v for k, v in results.items() if k != "heldout_captions"})
    save_tiny_janus(model, processor, out_dir)
    from safetensors.torch import save_file

    save_file(vision_warmup, str(Path(out_dir) / VISION_WARMUP_FILE))
    info = {"recipe": asdict(recipe), "results": results}
    (Path(out_dir) / "pretrain_janus.json").write_text(json.dumps(info, indent=2))
    return info
