"""Turn Samples into model inputs through the model's own processor and chat template.

Training examples are ``prompt + " " + answer + eos`` (no space after a prefix that ends
with whitespace, such as Qwen's ``<|im_start|>assistant\\n``) with the loss on the answer only
(and the eos); prompts for generation stop at the assistant prefix. Vision inputs
(``pixel_values`` and whatever else a processor returns) are kept per sample and concatenated
along dim 0 when batching, in sample order:

- LLaVA / Janus: ``pixel_values`` [1, C, H, W] per sample.
- LLaVA-NeXT: ``pixel_values`` [1, patches, C, H, W] (anyres tiles, zero-padded to the most
  patches when batched; the model reads each image's own count from ``image_sizes`` [1, 2]).
- Qwen2-VL / Qwen2.5-VL: packed ``pixel_values`` [patches_i, dim], split per sample by
  ``image_grid_thw`` [1, 3] (patches_i = t*h*w); a batch concatenates both, so the grid rows
  match the pixel rows. Their ``mm_token_type_ids`` (M-RoPE needs it) are kept per token.

Image-output samples (``Sample.target_image``, dual-to-dual models such as Janus) are trained as
``prompt + <begin_of_image> + N-1 image slots``: the loss of the language-model head is on
``<begin_of_image>`` (the model decides to answer with an image), and the N slots hold the
target's VQ codes (``Encoded.image_target``, from the encoder's ``image_tokenizer``) that
:mod:`mmcl.train.dual` feeds through the generation embeddings and scores with the generation
head (slot k holds code k; the hidden state at ``<begin_of_image>`` predicts code 0, slot k predicts
code k+1, as in ``generate(generation_mode="image")``). In ``input_ids`` the slots hold the pad
id; their embeddings are replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mmcl.data.errors import DataError, DataProblem
from mmcl.data.sample import Sample
from mmcl.models.chat import IGNORE_INDEX, answer_text, build_prompt
from mmcl.models.dual import boi_token_id, image_tokenizer, supports_image_output

MAX_CHARS_PER_TOKEN = 32  # a prompt longer than this many characters per context position is refused untokenized
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


@dataclass
class Encoded:
    """One encoded sample."""

    input_ids: torch.Tensor  # 1-D, prompt (+ answer + eos when training)
    labels: torch.Tensor | None  # 1-D, IGNORE_INDEX on the prompt
    prompt_len: int
    vision: dict[str, torch.Tensor] = field(default_factory=dict)
    index: int = 0  # position in the list that was encoded
    mm_token_type_ids: torch.Tensor | None = None  # 1-D like input_ids (0 text, 1 image) when the processor gives them
    image_target: torch.Tensor | None = None  # 1-D VQ codes of the target image (image-output samples, training)
    wants_image: bool = False  # the sample asks for an image answer

    @property
    def image_start(self) -> int:
        """Position of ``<begin_of_image>`` in ``input_ids`` (image-output training samples)."""
        return self.prompt_len


ImageTokenizer = Callable[[list[Any]], torch.Tensor]
"""PIL images -> their VQ codes [B, N] (the model's own image tokenizer, see :mod:`mmcl.models.dual`)."""


class Encoder:
    """Encodes samples with a processor; ``chunk`` samples per processor call.

    ``image_tokenizer`` and ``boi_token_id`` are needed only for image-output samples.
    """

    def __init__(self, processor: Any, chunk: int = 64, image_tokenizer: ImageTokenizer | None = None,
                 boi_token_id: int | None = None, max_positions: int | None = None) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.chunk = chunk
        self.image_tokenizer = image_tokenizer
        self.boi_token_id = boi_token_id
        self.max_positions = max_positions  # the model's context; None = not checked
        self._image_tokens = 0  # tokens an image adds to a prompt, once measured
        if self.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set one before training")

    @classmethod
    def for_bundle(cls, bundle: Any, chunk: int = 64) -> Encoder:
        """The encoder of a loaded model (``ModelBundle``): with its image tokenizer when it can answer with images."""
        positions = context_length(bundle.model)
        if supports_image_output(bundle.model):
            return cls(bundle.processor, chunk, image_tokenizer(bundle.model, bundle.processor),
                       boi_token_id(bundle.processor), max_positions=positions)
        return cls(bundle.processor, chunk, max_positions=positions)

    def check_lengths(self, samples: Sequence[Sample], with_answer: bool, reserve: int = 0) -> None:
        """Raise a DataError listing the samples whose prompt (+ answer when training, + ``reserve``
        generated tokens) cannot fit the model's context, before anything is allocated for them."""
        prompts = [build_prompt(self.processor, s, with_image=s.image is not None) for s in samples]
        problems = self._length_problems(samples, prompts, with_answer, reserve)
        if problems:
            raise DataError(problems)

    def _length_problems(self, samples: Sequence[Sample], prompts: Sequence[str], with_answer: bool, reserve: int,
                         measured: Sequence[int] | None = None) -> list[DataProblem]:
        limit = self.max_positions
        if limit is None:
            return []
        problems = []
        for k, (s, prompt) in enumerate(zip(samples, prompts, strict=True)):
            where, field = f"task {s.task!r}, sample {s.id!r}", "question"
            if measured is None and len(prompt) > MAX_CHARS_PER_TOKEN * limit:
                problems.append(DataProblem(where, (
                    f"the prompt is {len(prompt):,} characters, far more than the model's context of {limit:,} "
                    f"positions can hold (the question is {len(s.question):,} characters); shorten it or leave "
                    "the item out"), field=field))
                continue
            if measured is not None:
                n = measured[k]
            else:
                n = len(self.tokenizer(prompt)["input_ids"]) + (self._image_tokens if s.image is not None else 0)
            extra, what = reserve, f" + {reserve} new tokens"
            if with_answer and not s.wants_image:
                extra = len(self.tokenizer(answer_text(s.answers[0], prompt), add_special_tokens=False)["input_ids"]) + 1
                what = f" + {extra} answer tokens"
            if n + extra > limit:
                problems.append(DataProblem(where, (
                    f"the prompt is {n:,} tokens{what if extra else ''}, more than the model's context of "
                    f"{limit:,} positions (the question is {len(s.question):,} characters); shorten it or "
                    "leave the item out"), field=field))
        return problems

    def encode(self, samples: Sequence[Sample], with_answer: bool, reserve: int = 0) -> list[Encoded]:
        """Encode ``samples``; ``reserve``: tokens generation will add (checked against the model's context)."""
        out: list[Encoded | None] = [None] * len(samples)
        with_img = [i for i, s in enumerate(samples) if s.image is not None]
        without = [i for i, s in enumerate(samples) if s.image is None]
        for group, has_image in ((with_img, True), (without, False)):
            for start in range(0, len(group), self.chunk):
                idx = group[start : start + self.chunk]
                for i, enc in zip(idx, self._encode_chunk([samples[i] for i in idx], has_image, with_answer, reserve), strict=True):
                    enc.index = i
                    out[i] = enc
        return [e for e in out if e is not None]

    def _encode_chunk(self, samples: list[Sample], has_image: bool, with_answer: bool,
                      reserve: int = 0) -> list[Encoded]:
        prompts = [build_prompt(self.processor, s, with_image=has_image) for s in samples]
        problems = self._length_problems(samples, prompts, with_answer, reserve)  # before padding a batch to them
        if problems:
            raise DataError(problems)
        kwargs: dict[str, Any] = {"text": prompts, "return_tensors": "pt", "padding": True}
        if has_image:
            kwargs["images"] = [s.load_image() for s in samples]
        batch = self.processor(**kwargs)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.max_positions is not None:
            lengths = mask.sum(-1).tolist()
            if has_image and not self._image_tokens:
                self._image_tokens = max(0, int(lengths[0]) - len(self.tokenizer(prompts[0])["input_ids"]))
            problems = self._length_problems(samples, prompts, with_answer, reserve, measured=lengths)
            if problems:
                raise DataError(problems)
        types = batch.get("mm_token_type_ids")
        vision = {k: v for k, v in batch.items() if k not in TEXT_KEYS and isinstance(v, torch.Tensor)}
        per_sample_vision = self._split_vision(vision, len(samples))
        eos = self.tokenizer.eos_token_id
        targets = self._image_targets(samples) if with_answer else {}
        result = []
        for i, s in enumerate(samples):
            keep = mask[i].bool()
            prompt = ids[i][keep]
            prompt_types = torch.as_tensor(types[i])[keep].long() if types is not None else None
            full_types = prompt_types
            if with_answer and i in targets:
                codes = targets[i]
                ans_t = torch.full((codes.numel(),), self.tokenizer.pad_token_id, dtype=prompt.dtype)  # BOI + N-1 slots
                ans_t[0] = self.boi_token_id
                full = torch.cat([prompt, ans_t])
                labels = torch.cat([torch.full_like(prompt, IGNORE_INDEX), torch.full_like(ans_t, IGNORE_INDEX)])
                labels[prompt.numel()] = self.boi_token_id
                if prompt_types is not None:
                    full_types = torch.cat([prompt_types, torch.zeros_like(ans_t)])
                result.append(Encoded(full, labels, int(prompt.numel()), per_sample_vision[i],
                                      mm_token_type_ids=full_types, image_target=codes, wants_image=True))
                continue
            if with_answer:
                ans = self.tokenizer(answer_text(s.answers[0], prompts[i]), add_special_tokens=False)["input_ids"]
                ans_t = torch.tensor([*ans, eos], dtype=prompt.dtype)
                full = torch.cat([prompt, ans_t])
                labels = torch.cat([torch.full_like(prompt, IGNORE_INDEX), ans_t])
                if prompt_types is not None:
                    full_types = torch.cat([prompt_types, torch.zeros_like(ans_t)])
            else:
                full, labels = prompt, None
            result.append(
                Encoded(full, labels, int(prompt.numel()), per_sample_vision[i], mm_token_type_ids=full_types,
                        wants_image=s.wants_image)
            )
        return result

    def _image_targets(self, samples: list[Sample]) -> dict[int, torch.Tensor]:
        """VQ codes of the target images, by position in ``samples``."""
        idx = [i for i, s in enumerate(samples) if s.wants_image]
        if not idx:
            return {}
        if self.image_tokenizer is None or self.boi_token_id is None:
            raise ValueError(
                f"sample {samples[idx[0]].id!r} (task {samples[idx[0]].task!r}) asks for an image answer, but the "
                "model has no image tokenizer / generation head (use a dual-to-dual model such as Janus)"
            )
        codes = self.image_tokenizer([samples[i].load_target_image() for i in idx])
        return {i: codes[k].detach().cpu().long() for k, i in enumerate(idx)}

    @staticmethod
    def _split_vision(vision: dict[str, torch.Tensor], n: int) -> list[dict[str, torch.Tensor]]:
        """Split batched vision tensors per sample (one image per sample)."""
        per: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
        for k, v in vision.items():
            grid = vision.get("image_grid_thw")
            if k == "pixel_values" and grid is not None:
                # packed patches (Qwen2-VL style): split by each image's patch count t*h*w
                counts = grid.prod(-1).tolist()
                if grid.shape[0] != n or sum(counts) != v.shape[0]:
                    raise ValueError(
                        f"packed pixel_values of {v.shape[0]} patches do not match image_grid_thw "
                        f"{grid.tolist()} for {n} samples"
                    )
                for i, part in enumerate(torch.split(v, counts)):
                    per[i][k] = part
            elif v.shape[0] == n:
                for i in range(n):
                    per[i][k] = v[i : i + 1]
            else:
                raise ValueError(f"cannot split processor output {k!r} of shape {tuple(v.shape)} over {n} samples")
        return per


def context_length(model: Any) -> int | None:
    """The model's language context (``max_position_embeddings`` of its text config), or None if it has none."""
    config = getattr(model, "config", None)
    for sub in ("text_config", "language_config", None):
        c = getattr(config, sub, None) if sub else config
        n = getattr(c, "max_position_embeddings", None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def _stack_vision(batch: Sequence[Encoded]) -> dict[str, torch.Tensor]:
    """Concatenate each vision tensor along dim 0 in sample order; tensors that differ in a later
    dim (LLaVA-NeXT's patch count) are zero-padded to the largest first."""
    keys = {k for e in batch for k in e.vision}
    out = {}
    for k in sorted(keys):
        parts = [e.vision[k] for e in batch if k in e.vision]
        shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
        padded = []
        for p in parts:
            if list(p.shape[1:]) != shape:
                q = p.new_zeros((p.shape[0], *shape))
                q[tuple(slice(0, s) for s in p.shape)] = p
                p = q
            padded.append(p)
        out[k] = torch.cat(padded)
    return out


def _token_types(batch: Sequence[Encoded], n: int, left: bool) -> dict[str, torch.Tensor]:
    """``mm_token_type_ids`` padded like the ids (0 on padding), when the processor gave them."""
    if all(e.mm_token_type_ids is None for e in batch):
        return {}
    types = torch.zeros((len(batch), n), dtype=torch.long)
    for i, e in enumerate(batch):
        if e.mm_token_type_ids is None:
            continue
        t = e.mm_token_type_ids[: e.prompt_len] if left else e.mm_token_type_ids
        if left:
            types[i, n - t.numel() :] = t
        else:
            types[i, : t.numel()] = t
    return {"mm_token_type_ids": types}


def _image_targets(batch: Sequence[Encoded]) -> dict[str, torch.Tensor]:
    """``image_targets`` [B, N] (IGNORE_INDEX rows for text samples) and ``image_starts`` [B]
    (position of ``<begin_of_image>``, -1 for text samples), when the batch holds image answers."""
    withs = [e for e in batch if e.image_target is not None]
    if not withs:
        return {}
    n = withs[0].image_target.numel()
    targets = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
    starts = torch.full((len(batch),), -1, dtype=torch.long)
    for i, e in enumerate(batch):
        if e.image_target is not None:
            if e.image_target.numel() != n:
                raise ValueError(f"image targets of different lengths in one batch ({e.image_target.numel()} vs {n})")
            targets[i], starts[i] = e.image_target, e.image_start
    return {"image_targets": targets, "image_starts": starts}


def collate_train(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded training batch with labels (and image targets, see :func:`_image_targets`)."""
    n = max(e.input_ids.numel() for e in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, e in enumerate(batch):
        L = e.input_ids.numel()
        ids[i, :L] = e.input_ids
        mask[i, :L] = 1
        if e.labels is not None:
            labels[i, :L] = e.labels
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, **_token_types(batch, n, left=False),
            **_stack_vision(batch), **_image_targets(batch)}


def collate_prompts(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompt batch for generation."""
    n = max(e.prompt_len for e in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, e in enumerate(batch):
        L = e.prompt_len
        ids[i, n - L :] = e.input_ids[:L]
        mask[i, n - L :] = 1
    return {"input_ids": ids, "attention_mask": mask, **_token_types(batch, n, left=True), **_stack_vision(batch)}
