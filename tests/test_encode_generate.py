"""Encoding puts the loss on the answer only; batched left-padded generation equals one-at-a-time."""

from pathlib import Path

import torch

from mmcl.benchmarks.builtin import build_benchmark
from mmcl.config import BenchmarkConfig, ModelConfig, RunConfig
from mmcl.eval.generate import generate_answers
from mmcl.models.loader import load_model
from mmcl.train.encode import IGNORE_INDEX, Encoder, collate_prompts, collate_train


def _samples(n: int = 6):
    cfg = RunConfig(benchmark=BenchmarkConfig(order=["underwater.attribute", "indoor.grounding"], test_per_task=n))
    bench = build_benchmark(cfg)
    return [s for t in bench.tasks for s in t.test[: n // 2]]


def test_labels_cover_answer_and_eos_only(tiny_llava_dir: Path) -> None:
    bundle = load_model(ModelConfig(path=str(tiny_llava_dir)))
    tok = bundle.tokenizer
    samples = _samples()
    enc = Encoder(bundle.processor).encode(samples, with_answer=True)
    for s, e in zip(samples, enc, strict=True):
        target = e.labels[e.labels != IGNORE_INDEX]
        assert tok.decode(target, skip_special_tokens=True).strip() == s.answers[0]
        assert int(target[-1]) == tok.eos_token_id
        assert bool((e.labels[: e.prompt_len] == IGNORE_INDEX).all())
        # the prompt holds the image placeholder tokens and ends with the assistant prefix
        assert int((e.input_ids == bundle.model.config.image_token_id).sum()) == 64
        assert tok.decode(e.input_ids[: e.prompt_len]).rstrip().endswith("ASSISTANT:")
    batch = collate_train(enc, tok.pad_token_id)
    assert batch["pixel_values"].shape[0] == len(samples)
    assert batch["input_ids"].shape == batch["labels"].shape


def test_prompts_are_left_padded(tiny_llava_dir: Path) -> None:
    bundle = load_model(ModelConfig(path=str(tiny_llava_dir)))
    enc = Encoder(bundle.processor).encode(_samples(), with_answer=False)
    batch = collate_prompts(enc, bundle.tokenizer.pad_token_id)
    assert bool((batch["attention_mask"][:, -1] == 1).all())  # every prompt ends at the right edge
    assert int(batch["attention_mask"][0].sum()) == enc[0].prompt_len


def test_batched_generation_equals_one_at_a_time(tiny_llava_dir: Path) -> None:
    bundle = load_model(ModelConfig(path=str(tiny_llava_dir)))
    model, tok = bundle.model, bundle.tokenizer
    samples = _samples(8)
    # a few training steps so that greedy decoding has clear winners (no near ties)
    train = Encoder(bundle.processor).encode(samples, with_answer=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(15):
        out = model(**collate_train(train, tok.pad_token_id))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    prompts = Encoder(bundle.processor).encode(samples, with_answer=False)
    batched = generate_answers(model, tok, prompts, batch_size=8, max_new_tokens=12)
    single = [generate_answers(model, tok, [p], batch_size=1, max_new_tokens=12)[0] for p in prompts]
    assert batched == single
    assert any(a for a in batched)
