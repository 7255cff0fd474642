"""The training forward pass for batches that mix text answers and image answers (Janus).

``model(**batch)`` covers text answers. A batch with ``image_targets`` (see
:func:`mmcl.train.encode.collate_train`) goes through :func:`dual_forward`, which runs the real
model's own modules in the order ``generate(generation_mode="image")`` uses them:

1. input embeddings of ``input_ids``, with the understanding encoder's features scattered into the
   ``<image_placeholder>`` positions (as ``JanusModel.forward`` does);
2. the image slots after ``<begin_of_image>`` replaced by the generation embeddings of the target
   codes (``prepare_embeddings_for_image_generation``: ``generation_embeddings`` + ``generation_aligner``);
3. ``language_model`` over the whole sequence (right padding, default positions);
4. text loss: the LM head's cross-entropy on the text labels (the answer tokens and, for image
   answers, ``<begin_of_image>``); image loss: the generation head's cross-entropy on the codes, read
   at ``<begin_of_image>`` and the first N-1 slots.

``loss = text loss + image_loss_weight * image loss``, each a mean over its own tokens (an image
answer has 64 codes and one text token: a pooled mean would drown the text). Both are returned
(``text_loss``, ``image_loss``) for logging. Adapters (peft LoRA, MoE-LoRA, MAGE) sit inside the
language model's layers, so they apply here as in ``model(**batch)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mmcl.models.dual import base_model
from mmcl.train.encode import IGNORE_INDEX

DUAL_KEYS = ("image_targets", "image_starts")
IMAGE_LOSS_WEIGHT = 1.0


@dataclass
class DualOutput:
    """What :func:`dual_forward` returns (``loss`` and ``logits`` like a transformers output)."""

    loss: torch.Tensor
    logits: torch.Tensor  # LM-head logits [B, L, V]
    text_loss: torch.Tensor
    image_loss: torch.Tensor
    image_logits: torch.Tensor  # generation-head logits at the image positions [n_image_samples, N, codebook]
    image_rows: torch.Tensor | None = None  # the batch rows of image_logits
    blanked_rows: torch.Tensor | None = None  # the rows whose prompt was blanked (``uncond_prob``)


def forward_batch(model: Any, batch: dict[str, torch.Tensor], uncond_prob: float = 0.0,
                  decision_loss: bool = True) -> Any:
    """``model(**batch)``, or :func:`dual_forward` when the batch holds image answers."""
    if "image_targets" in batch:
        return dual_forward(model, batch, uncond_prob=uncond_prob, decision_loss=decision_loss)
    return model(**batch)


def merged_input_embeddings(model: Any, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
    """Token embeddings with the understanding features in the image placeholder positions."""
    inner = base_model(model).model
    embeds = inner.get_input_embeddings()(input_ids)
    if pixel_values is not None:
        feats = inner.get_image_features(pixel_values, return_dict=True).pooler_output
        feats = feats.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        mask = inner.get_placeholder_mask(input_ids, inputs_embeds=embeds, image_features=feats)
        embeds = embeds.masked_scatter(mask, feats)
    return embeds


def dual_forward(model: Any, batch: dict[str, torch.Tensor], image_loss_weight: float = IMAGE_LOSS_WEIGHT,
                 uncond_prob: float = 0.0, decision_loss: bool = True) -> DualOutput:
    """Loss of a batch with text and image answers (see the module docstring).

    ``uncond_prob``: each image answer's prompt is blanked with this probability (every position
    before ``<begin_of_image>`` but BOS gets the pad embedding, image features included), so the
    unconditional branch of classifier-free guidance keeps being trained, as in Janus' training
    (10 %). Such a sample still learns its image codes, not ``<begin_of_image>``'s position loss.
    ``decision_loss=False`` (``train.image_decision_loss``): no image answer trains ``<begin_of_image>``
    (the model's choice to answer with an image); only its codes train, as in Janus' own training.
    """
    base = base_model(model)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    targets, starts = batch["image_targets"], batch["image_starts"]
    embeds = merged_input_embeddings(model, ids, batch.get("pixel_values"))
    rows = (starts >= 0).nonzero().flatten()
    n = targets.shape[1]
    if not decision_loss and len(rows):
        labels = labels.clone()
        labels[rows, starts[rows]] = IGNORE_INDEX  # the <begin_of_image> label: the image answer's text token
    drop = rows[:0]
    if len(rows) and uncond_prob > 0:
        drop = rows[torch.rand(len(rows)) < uncond_prob]
        if len(drop):
            pos = torch.arange(ids.shape[1], device=ids.device)[None, :]
            blank = (pos < starts[drop, None]) & (ids[drop] != base.generation_config.bos_token_id)
            pad = base.model.get_input_embeddings()(torch.tensor(base.generation_config.pad_token_id, device=ids.device))
            embeds = embeds.clone()
            sub = embeds[drop]
            sub[blank] = pad.to(sub.dtype)
            embeds[drop] = sub
    if len(rows):
        slot_embeds = base.prepare_embeddings_for_image_generation(targets[rows, :-1].clamp(min=0))
        pos = starts[rows, None] + 1 + torch.arange(n - 1, device=ids.device)[None, :]  # [R, N-1]
        embeds = embeds.clone()
        embeds[rows[:, None], pos] = slot_embeds.to(embeds.dtype)
    hidden = base.model.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    logits = base.lm_head(hidden)
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
    text_loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]).float(), shift_labels.reshape(-1),
                                ignore_index=IGNORE_INDEX)
    if not (shift_labels != IGNORE_INDEX).any():
        text_loss = logits.sum() * 0.0
    if len(rows):
        at = starts[rows, None] + torch.arange(n, device=ids.device)[None, :]  # BOI and the first N-1 slots
        image_logits = base.model.generation_head(hidden[rows[:, None], at])
        image_loss = F.cross_entropy(image_logits.reshape(-1, image_logits.shape[-1]).float(), targets[rows].reshape(-1))
    else:
        image_logits = hidden.new_zeros((0, n, 1))
        image_loss = hidden.sum() * 0.0
    return DualOutput(text_loss + image_loss_weight * image_loss, logits, text_loss, image_loss, image_logits,
                      image_rows=rows, blanked_rows=drop)
