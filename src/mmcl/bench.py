"""``mmcl bench``: speed and memory of mmcl's own code, measured side by side in one run.

Every comparison runs both sides in the same process on the same machine, interleaved
(A, B, A, B, ...), and reports medians, so that a busy machine slows both sides alike.
Nothing here is a test: the numbers depend on the machine; ``tests/test_bench.py`` only checks
that the harness runs and writes what it promises.

Parts (each a small function; :func:`run_bench` runs them all and :func:`render_table` prints them):

- **train** (:func:`bench_train`): :func:`mmcl.train.loop.train_on` with ``lora-ft`` on the shipped
  ``tiny-llava`` preset, with the feature cache (:mod:`mmcl.train.feature_cache`, a fresh one per
  repetition, over 4 epochs as the default run: the first epoch computes the image features) and
  without it, vs :func:`plain_train_loop`, the simplest honest transformers + peft loop
  (``loss = model(**batch).loss; loss.backward(); AdamW.step(); zero_grad()``) on the same model,
  the same LoRA, the same batches (the same samples in the same order: the plain loop's batches
  come from a DataLoader seeded as ``train_on``'s, collated before the clock starts) and the same
  number of steps. Both are timed around the whole call (optimizer creation included). mmcl's loop
  also clips gradients and steps an LR schedule every update; the plain loop does neither.

  **MFU** (model FLOPs utilisation) = achieved FLOP/s of mmcl's loop / the peak FLOP/s of this
  machine, where the peak is measured (:func:`matmul_peak`: a loop of ``size x size`` fp32
  ``torch.matmul``, interleaved with the training repetitions) and the FLOPs are *counted*:
  :class:`torch.utils.flop_counter.FlopCounterMode` over one whole repetition (forward, backward;
  matmuls, convolutions and attention, the CPU flash-attention kernels included), so that a LoRA
  run's frozen weights, which get no weight gradients, are not counted as if they did. The
  textbook estimate is reported beside it::

      flops_6N = 6 * N_text * text_tokens + 6 * N_vision * vision_tokens

  with ``N_text`` the weights of the language model's linear layers (``lm_head`` included,
  embeddings excluded), ``N_vision`` those of the vision tower's linear/conv layers and the
  projector, ``text_tokens`` the (padded) positions of the batches and ``vision_tokens`` the
  vision tower's positions (patches + class token per image). 6N assumes every weight gets a
  gradient; with LoRA only the adapters do, so the counted figure is lower (about 4N on the
  language model, 2N on the frozen vision tower, which needs no backward at all).

  One profiled step (:func:`profile_step`, ``torch.profiler``) splits the step's CPU time into
  matmul-like kernels and the rest, to say where the time that is not matmul goes.

- **eval** (:func:`bench_eval`): :func:`mmcl.eval.generate.generate_answers` (batches of 64, KV
  cache, left padding; with the feature cache warm, as in every evaluation of a run after the zero-shot
  row, and without it) vs :func:`per_sample_answers`: ``model.generate`` on one prompt at a time,
  same greedy settings, same encoded questions, same ``max_new_tokens`` (each task's own).
- **routing** (:func:`bench_routing`): eval samples/s of ``moelora`` and ``unifier`` relative to
  ``lora-ft`` (each freshly set up on the same base model: at setup all three compute the base
  model's answers, so they generate the same number of tokens and only the per-token cost differs).
- **scaling** (:func:`bench_scaling`): a stream of T tasks (5, 10, 20) for ``lora-ft`` and
  ``o-lora`` (one adapter per task): per stage, training time, evaluation time over all T tasks
  (the full matrix), evaluation time of a fixed probe set (the first task's questions: the cost
  of the accumulated adapters alone), the model's parameter bytes, the method's ``cost()`` held
  bytes, and the process RSS; bytes held per task is the slope of held bytes over T.
- **matrix** (:func:`bench_matrix`): a run's evaluation time with ``eval.matrix`` full vs sampled
  as T grows (5, 10, 20, 40), from full and sampled rows timed side by side.
- **compile** (:func:`bench_compile`): ``train.compile`` vs eager, and its net effect on a default run,
  compile time included (skipped by ``--quick``).
- **run** (:func:`bench_default_run`): the default ``mmcl run``'s wall time, measured on a reduced
  stream through the real :class:`mmcl.runner.Runner` (with and without the feature cache) and scaled.

Measured by hand, not part of the bench (this project's 2-core CPU machine, 1 thread, batch 16):
batch 64 instead of 16 left MFU unchanged (52%).

``--quick`` makes every part small (a smoke test: well under a minute on a laptop).
The run is on the CPU, with torch's default thread count unless ``--threads`` says otherwise (both
recorded in ``meta``). On a machine shared with other work use ``--threads 1``: OpenMP threads that
lose their core to another process stall each other, and timings scatter by several times.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import mmcl
from mmcl.data.sample import Benchmark, Task
from mmcl.methods.base import Method
from mmcl.utils.host import host_info

TARGETS = {"train.ratio_vs_plain": 1.2, "train.mfu": 0.6, "eval.ratio_vs_per_sample": 10.0}
"""Figures that must reach at least the target."""
TARGETS_AT_MOST = {"run.default_seconds": 480.0, "routing.slowest_vs_lora": 1.5}
"""Figures that must stay at or below the target (seconds; times slower than lora-ft)."""
DEFAULT_STREAM = {"tasks": 20, "train_per_task": 600, "test_per_task": 50, "epochs": 4.0, "batch_size": 16}
"""The default ``mmcl run`` (msvqa-synth's 20 tasks of 600 / 50 samples, configs/default.yaml: 4 epochs, batch 16)
that ``run.default_seconds`` scales to (tests/test_bench.py checks it against the shipped defaults)."""
EVAL_TASKS = ("high-altitude.counting", "indoor.grounding")  # short (4-token) and long (24-token) answers
ROUTING_STREAM = ("high-altitude.counting", "underwater.category", "low-altitude.attribute", "indoor.grounding")
MATMUL_OPS = frozenset(
    {
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::mkldnn_convolution",
        "aten::convolution_backward",
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    }
)

Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchSettings:
    """Sizes of every part (see :func:`settings`)."""

    quick: bool
    train_batch: int
    train_steps: int
    train_epochs: int  # the steps cover this many epochs (the default run trains 4)
    train_reps: int
    matmul_size: int
    matmul_seconds: float
    eval_questions: int  # per task of EVAL_TASKS
    eval_batch: int
    eval_reps: int
    routing_reps: int
    scaling_tasks: tuple[int, ...]
    scaling_train: int  # training samples per task (batch = scaling_batch, one epoch)
    scaling_batch: int
    scaling_test: int  # test questions per task
    matrix_tasks: tuple[int, ...]  # stream lengths T of the full-vs-sampled matrix cost
    matrix_test: int  # test questions per task there
    matrix_per_cell: int  # eval.sample_per_cell there
    run_tasks: int  # the reduced default run: its first tasks
    run_train: int
    run_test: int


def settings(quick: bool) -> BenchSettings:
    """The full benchmark (several minutes) or the ``--quick`` smoke test."""
    if quick:
        return BenchSettings(
            quick=True, train_batch=4, train_steps=4, train_epochs=2, train_reps=2, matmul_size=512,
            matmul_seconds=0.3, eval_questions=4, eval_batch=64, eval_reps=1, routing_reps=1,
            scaling_tasks=(2, 3), scaling_train=4, scaling_batch=4, scaling_test=2,
            matrix_tasks=(2, 3), matrix_test=4, matrix_per_cell=2, run_tasks=2, run_train=8, run_test=4,
        )
    return BenchSettings(
        quick=False, train_batch=16, train_steps=8, train_epochs=4, train_reps=3, matmul_size=2048,
        matmul_seconds=2.0, eval_questions=64, eval_batch=64, eval_reps=3, routing_reps=3,
        scaling_tasks=(5, 10, 20), scaling_train=8, scaling_batch=4, scaling_test=16,
        matrix_tasks=(5, 10, 20, 40), matrix_test=16, matrix_per_cell=4, run_tasks=5, run_train=48, run_test=16,
    )


# ---------------------------------------------------------------- building blocks


def make_benchmark(names: Sequence[str], train_size: int, test_size: int, seed: int = 0) -> Benchmark:
    """An msvqa-synth stream of the named tasks with small splits."""
    from mmcl.benchmarks.msvqa.synth import BENCHMARK_NAME, make_task

    return Benchmark(BENCHMARK_NAME, [make_task(n, seed, train_size, test_size) for n in names])


def build_method(name: str, benchmark: Benchmark, seed: int = 0) -> Method:
    """A fresh ``tiny-llava`` preset wrapped by method ``name`` (set up as the runner does)."""
    from mmcl.config import load_config
    from mmcl.methods import RunContext
    from mmcl.methods import build_method as build
    from mmcl.models.loader import load_model

    cfg = load_config(overrides=[f"method.name={name}", f"seed={seed}", "model.dtype=float32"])
    bundle = load_model(cfg.model)
    method = build(RunContext(cfg, bundle, benchmark, torch.device("cpu"), seed))
    torch.manual_seed(seed)
    method.setup(bundle.model)
    return method


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def ratio(a: float, b: float) -> float:
    """``a / b``, or NaN when it is not a finite positive number (never in a healthy run)."""
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else float("nan")


def spread(xs: Sequence[float]) -> float:
    """(max - min) / median of repeated timings: how noisy they were."""
    return (max(xs) - min(xs)) / median(xs) if xs and median(xs) > 0 else 0.0


def matmul_peak(size: int, seconds: float) -> float:
    """fp32 FLOP/s of ``torch.matmul`` on ``size x size`` matrices, looped for about ``seconds``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        torch.matmul(a, b)
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n >= 2:
            return 2 * size**3 * n / elapsed


def _sdpa_cpu_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward_flops(grad: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None,
                             **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad, query, key, value)


def flop_counter() -> Any:
    """A FlopCounterMode that also counts the CPU flash-attention kernels (not in torch's registry)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_backward_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


def plain_train_loop(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], lr: float,
                     weight_decay: float) -> float:
    """The simplest honest transformers + peft loop; returns its wall seconds (optimizer creation included)."""
    t0 = time.perf_counter()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay)
    model.train()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def linear_weights(model: torch.nn.Module) -> dict[str, int]:
    """Weights of the base model's linear and conv layers (LoRA's own excluded), split text/vision."""
    counts = {"text": 0, "vision": 0}
    for name, mod in model.named_modules():
        if ".lora_" in name or not isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        part = "vision" if ("vision" in name or "projector" in name or "visual" in name) else "text"
        counts[part] += mod.weight.numel()
    return counts


def vision_positions_per_image(model: torch.nn.Module) -> int:
    """Positions the vision tower runs per image (patches + class token), 0 if unknown."""
    vc = getattr(getattr(model, "config", None), "vision_config", None)
    if vc is None or not getattr(vc, "image_size", None) or not getattr(vc, "patch_size", None):
        return 0
    return (vc.image_size // vc.patch_size) ** 2 + 1


def profile_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], flops: float) -> dict[str, Any]:
    """CPU time of one forward+backward split into matmul-like kernels and the rest (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    model.train()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    rows = [(e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages()]
    total = sum(s for _, s in rows)
    mm = sum(s for k, s in rows if k in MATMUL_OPS)
    others = sorted(((k, s) for k, s in rows if k not in MATMUL_OPS), key=lambda r: -r[1])[:6]
    return {
        "step_cpu_seconds": total,
        "matmul_share": ratio(mm, total),
        "matmul_flops_per_s": ratio(flops, mm),
        "top_other_ops": {k: round(ratio(s, total), 4) for k, s in others},
    }


# ---------------------------------------------------------------- training


def bench_train(s: BenchSettings, log: Log) -> dict[str, Any]:
    """mmcl's ``train_on`` (with and without the feature cache) vs :func:`plain_train_loop`, interleaved,
    plus FLOPs, peak and MFU."""
    from accelerate import Accelerator

    from mmcl.config import TrainConfig
    from mmcl.train.encode import Encoder, collate_train
    from mmcl.train.feature_cache import FeatureCache, inner_model
    from mmcl.train.loop import train_on

    n = s.train_batch * s.train_steps // s.train_epochs
    bench = make_benchmark(["high-altitude.counting"], n, 1)
    method = build_method("lora-ft", bench)
    tok = method.ctx.bundle.tokenizer
    pad = tok.pad_token_id
    encoded = Encoder(method.ctx.bundle.processor).encode(bench.tasks[0].train, with_answer=True)
    cfg = TrainConfig(batch_size=s.train_batch, max_steps=s.train_steps)
    accelerator = Accelerator(cpu=True)
    seed, stage = 0, 0
    # the same batches, in the same order, as train_on's loader (seeded by seed * 1000 + stage), epoch after epoch
    gen = torch.Generator().manual_seed(seed * 1000 + stage)
    loader = DataLoader(encoded, batch_size=s.train_batch, shuffle=True, generator=gen,
                        collate_fn=lambda b: collate_train(b, pad))
    batches = [b for _ in range(s.train_epochs) for b in loader][: s.train_steps]
    model = method.model
    cache_stats: dict[str, Any] = {}

    def run_mmcl(cached: bool = True) -> float:
        # a fresh cache per call, as a run's stage meets its training images: the first epoch computes them
        cache = FeatureCache() if cached else None
        if cache is not None:
            cache.install(method.model)
        t0 = time.perf_counter()
        train_on(method, encoded, cfg, accelerator, stage, seed, pad)
        seconds = time.perf_counter() - t0
        if cache is not None:
            cache_stats.update(cache.summary())
            cache.close()
        return seconds

    def run_plain() -> float:
        return plain_train_loop(method.model, batches, cfg.lr, cfg.weight_decay)

    log(f"train: warm-up and FLOP count ({s.train_steps} steps of {s.train_batch}, {s.train_epochs} epochs)")
    run_mmcl(cached=False)
    counter = flop_counter()
    with counter:
        run_plain()  # the plain loop's warm-up, counted
    flops = float(counter.get_total_flops())
    # what mmcl's loop computes with the cache: the plain count less the vision side's forward of every hit
    # (FlopCounterMode's global module hooks make the cache stand aside, so it cannot count a cached run itself)
    run_mmcl(cached=True)
    counter = flop_counter()
    pixels = batches[0]["pixel_values"]
    with counter, torch.no_grad():
        inner_model(model).get_image_features(pixel_values=pixels, return_dict=True)
    vision_flops_per_image = float(counter.get_total_flops()) / len(pixels)
    flops_cached = flops - cache_stats["hits"] * vision_flops_per_image
    mmcl_s, uncached_s, plain_s, peaks = [], [], [], []
    sides = ("mmcl", "uncached", "plain")
    for r in range(s.train_reps):
        for side in sides[r % 3:] + sides[: r % 3]:  # rotate who goes first
            if side == "mmcl":
                mmcl_s.append(run_mmcl(cached=True))
            elif side == "uncached":
                uncached_s.append(run_mmcl(cached=False))
            else:
                plain_s.append(run_plain())
        peaks.append(matmul_peak(s.matmul_size, s.matmul_seconds))
        log(f"train: rep {r + 1}/{s.train_reps}: mmcl {mmcl_s[-1]:.2f}s, uncached {uncached_s[-1]:.2f}s, "
            f"plain {plain_s[-1]:.2f}s, peak {peaks[-1] / 1e9:.1f} GFLOP/s")
    prof = profile_step(model, batches[0], flops / len(batches))
    weights = linear_weights(model)
    text_tokens = sum(int(b["input_ids"].numel()) for b in batches)
    real_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    images = sum(int(b["pixel_values"].shape[0]) for b in batches if "pixel_values" in b)
    vision_tokens = images * vision_positions_per_image(model)
    flops_6n = 6 * weights["text"] * text_tokens + 6 * weights["vision"] * vision_tokens
    peak = median(peaks)
    t_mmcl, t_uncached, t_plain = median(mmcl_s), median(uncached_s), median(plain_s)
    samples = s.train_batch * s.train_steps
    return {
        "batch_size": s.train_batch,
        "steps": s.train_steps,
        "epochs": s.train_epochs,
        "reps": s.train_reps,
        "samples": samples,
        "distinct_samples": n,
        "samples_per_s": samples / t_mmcl,
        "samples_per_s_uncached": samples / t_uncached,
        "samples_per_s_plain": samples / t_plain,
        "ratio_vs_plain": ratio(t_plain, t_mmcl),
        "ratio_uncached_vs_plain": ratio(t_plain, t_uncached),
        "ratio_cached_vs_uncached": ratio(t_uncached, t_mmcl),
        "feature_cache": cache_stats,
        "seconds": mmcl_s,
        "seconds_uncached": uncached_s,
        "seconds_plain": plain_s,
        "spread": spread(mmcl_s),
        "spread_uncached": spread(uncached_s),
        "spread_plain": spread(plain_s),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "linear_weights": weights,
        "text_tokens": text_tokens,
        "text_tokens_unpadded": real_tokens,
        "vision_tokens": vision_tokens,
        "flops_per_rep": flops,
        "flops_per_rep_cached": flops_cached,
        "flops_per_step": flops / len(batches),
        "flops_method": "torch.utils.flop_counter.FlopCounterMode over one repetition of the plain loop "
                        "(same batches as mmcl's): forward + backward, matmul/conv/attention; "
                        "flops_per_rep_cached: that count less the vision tower + projector forward of every image "
                        "the feature cache served (counted on one batch of images)",
        "vision_flops_per_image": vision_flops_per_image,
        "flops_6N": float(flops_6n),
        "flops_6N_formula": "6 * N_text * text_tokens + 6 * N_vision * vision_tokens",
        "peak_flops": peak,
        "peak_flops_all": peaks,
        "peak_method": f"torch.matmul {s.matmul_size}x{s.matmul_size} fp32, {s.matmul_seconds:g}s per measure, "
                       "interleaved with the training reps; median",
        "achieved_flops": flops_cached / t_mmcl,
        "achieved_flops_uncached": flops / t_uncached,
        "achieved_flops_plain": flops / t_plain,
        "mfu": ratio(flops_cached / t_mmcl, peak),
        "mfu_uncached": ratio(flops / t_uncached, peak),
        "mfu_plain": ratio(flops / t_plain, peak),
        "mfu_6N": ratio(flops_6n / t_mmcl, peak),
        "profile": prof,
    }


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def per_sample_answers(model: torch.nn.Module, tokenizer: Any, encoded: Sequence[Any], max_new_tokens: int) -> list[str]:
    """``model.generate`` on one prompt at a time (greedy, KV cache): what a user writes without batching."""
    from mmcl.train.encode import collate_prompts

    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id
    answers = []
    for e in encoded:
        batch = collate_prompts([e], pad)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                             pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    model.train(was_training)
    return answers


EvalSet = list[tuple[Task, list[Any]]]  # (task, its encoded test prompts)


def encode_tests(method: Method, tasks: Sequence[Task]) -> EvalSet:
    from mmcl.train.encode import Encoder

    enc = Encoder(method.ctx.bundle.processor)
    return [(t, enc.encode(t.test, with_answer=False)) for t in tasks]


def batched_eval(method: Method, evalset: EvalSet, batch_size: int) -> tuple[float, list[str]]:
    """mmcl's generation over every task (routed as the evaluator routes); (seconds, answers)."""
    from mmcl.eval.generate import generate_answers

    tok = method.ctx.bundle.tokenizer
    answers: list[str] = []
    t0 = time.perf_counter()
    for task, encoded in evalset:
        answers += generate_answers(method.model, tok, encoded, batch_size=batch_size,
                                    max_new_tokens=task.max_new_tokens, adapter_names=method.route(task.test, task))
    return time.perf_counter() - t0, answers


def bench_eval(s: BenchSettings, log: Log) -> dict[str, Any]:
    """Batched KV-cache generation (batch 64) with the feature cache warm (as in every evaluation of a run but
    the first) and without it vs per-sample ``model.generate``, interleaved per task."""
    from mmcl.train.feature_cache import FeatureCache

    bench = make_benchmark(EVAL_TASKS, 1, s.eval_questions)
    method = build_method("lora-ft", bench)
    evalset = encode_tests(method, bench.tasks)
    tok = method.ctx.bundle.tokenizer
    n = sum(len(e) for _, e in evalset)
    cache = FeatureCache()
    batched_eval(method, evalset, s.eval_batch)  # warm-up
    cache.install(method.model)
    batched_eval(method, evalset, s.eval_batch)  # fills the cache, as a run's zero-shot row does
    cache.uninstall()
    sides = ("cached", "batched", "per_sample")
    times: dict[str, dict[str, list[float]]] = {t.name: {k: [] for k in sides} for t, _ in evalset}
    same, same_cached, total = 0, 0, 0
    for r in range(s.eval_reps):
        for task, enc in evalset:
            answers: dict[str, list[str]] = {}
            for side in sides[r % 3:] + sides[: r % 3]:  # rotate who goes first
                t0 = time.perf_counter()
                if side == "per_sample":
                    answers[side] = per_sample_answers(method.model, tok, enc, task.max_new_tokens)
                else:
                    if side == "cached":
                        cache.install(method.model)
                    answers[side] = batched_eval(method, [(task, enc)], s.eval_batch)[1]
                    cache.uninstall()
                times[task.name][side].append(time.perf_counter() - t0)
            if r == 0:
                same += sum(a == b for a, b in zip(answers["batched"], answers["per_sample"], strict=True))
                same_cached += sum(a == b for a, b in zip(answers["batched"], answers["cached"], strict=True))
                total += len(enc)
        log(f"eval: rep {r + 1}/{s.eval_reps}: " + ", ".join(
            f"{k} cached {v['cached'][-1]:.2f}s / uncached {v['batched'][-1]:.2f}s / per-sample "
            f"{v['per_sample'][-1]:.2f}s" for k, v in times.items()))
    # per repetition, the sum over tasks; then medians
    total_s = {k: [sum(v[k][r] for v in times.values()) for r in range(s.eval_reps)] for k in sides}
    tc, tb, ts = (median(total_s[k]) for k in sides)
    per_task = {
        t.name: {
            "questions": len(enc),
            "max_new_tokens": t.max_new_tokens,
            "samples_per_s": len(enc) / median(times[t.name]["cached"]),
            "samples_per_s_uncached": len(enc) / median(times[t.name]["batched"]),
            "samples_per_s_per_sample": len(enc) / median(times[t.name]["per_sample"]),
            "ratio_vs_per_sample": ratio(median(times[t.name]["per_sample"]), median(times[t.name]["cached"])),
            "ratio_uncached_vs_per_sample": ratio(median(times[t.name]["per_sample"]),
                                                  median(times[t.name]["batched"])),
        }
        for t, enc in evalset
    }
    return {
        "questions": n,
        "batch_size": s.eval_batch,
        "reps": s.eval_reps,
        "samples_per_s": n / tc,
        "samples_per_s_uncached": n / tb,
        "samples_per_s_per_sample": n / ts,
        "ratio_vs_per_sample": ratio(ts, tc),
        "ratio_uncached_vs_per_sample": ratio(ts, tb),
        "ratio_cached_vs_uncached": ratio(tb, tc),
        "seconds": total_s["cached"],
        "seconds_uncached": total_s["batched"],
        "seconds_per_sample": total_s["per_sample"],
        "spread": max(spread(total_s["cached"]), spread(total_s["per_sample"])),
        "answers_agree": same / max(1, total),
        "answers_agree_cached": same_cached / max(1, total),
        "per_task": per_task,
    }


# ---------------------------------------------------------------- routing


def bench_routing(s: BenchSettings, log: Log) -> dict[str, Any]:
    """Eval samples/s of ``moelora`` and ``unifier`` vs ``lora-ft`` on the same questions, interleaved."""
    names = ("lora-ft", "moelora", "unifier")
    bench = make_benchmark(ROUTING_STREAM, 1, s.eval_questions)
    eval_tasks = [t for t in bench.tasks if t.name in EVAL_TASKS]
    methods = {n: build_method(n, bench) for n in names}
    evalsets = {n: encode_tests(m, eval_tasks) for n, m in methods.items()}
    from mmcl.train.feature_cache import attach

    caches = {n: attach("auto", m.model, 2048, None)[0] for n, m in methods.items()}  # as `mmcl run` sets it
    questions = sum(len(e) for _, e in evalsets["lora-ft"])
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:
        batched_eval(methods[n], evalsets[n], s.eval_batch)  # warm-up
    for r in range(s.routing_reps):
        for n in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
            times[n].append(batched_eval(methods[n], evalsets[n], s.eval_batch)[0])
        log(f"routing: rep {r + 1}/{s.routing_reps}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names))
    base = median(times["lora-ft"])
    out: dict[str, Any] = {"questions": questions, "reps": s.routing_reps}
    for n in names:
        m = methods[n]
        out[n] = {
            "samples_per_s": questions / median(times[n]),
            "seconds": times[n],
            "ratio_vs_lora": ratio(base, median(times[n])),  # > 1: faster than lora-ft
            "trainable_params": sum(p.numel() for p in m.model.parameters() if p.requires_grad),
            "total_params": sum(p.numel() for p in m.model.parameters()),
        }
    out["unifier"]["branches"] = getattr(methods["unifier"], "num_branches", None)
    out["moelora"]["experts"] = getattr(methods["moelora"].options, "experts", None)
    for n, c in caches.items():
        out[n]["feature_cache"] = c.summary() if c is not None else None
        if c is not None:
            c.close()
    out["slowest_vs_lora"] = max(1 / out[n]["ratio_vs_lora"] for n in names if n != "lora-ft")  # times slower
    return out


# ---------------------------------------------------------------- scaling


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc), else the peak (``ru_maxrss``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def held_bytes(cost: dict[str, Any]) -> int:
    """Total of a method's ``cost()['held_bytes']`` (0 when it holds nothing between tasks)."""
    held = cost.get("held_bytes") or {}
    return int(sum(v for v in held.values() if isinstance(v, (int, float))))


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (0 for a single point)."""
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def bench_scaling_method(name: str, s: BenchSettings, log: Log) -> dict[str, Any]:
    """Run ``max(s.scaling_tasks)`` stages of ``name``; measure a stage at each T of ``s.scaling_tasks``."""
    from accelerate import Accelerator

    from mmcl.benchmarks.msvqa.synth import MSVQASynthOptions, task_order
    from mmcl.config import TrainConfig
    from mmcl.train.encode import Encoder
    from mmcl.train.loop import train_on

    T_max = max(s.scaling_tasks)
    bench = make_benchmark(task_order(MSVQASynthOptions())[:T_max], s.scaling_train, s.scaling_test)
    method = build_method(name, bench)
    encoder = Encoder(method.ctx.bundle.processor)
    pad = method.ctx.bundle.tokenizer.pad_token_id
    cfg = TrainConfig(batch_size=s.scaling_batch, epochs=1)
    accelerator = Accelerator(cpu=True)
    tests = encode_tests(method, bench.tasks)
    points = []
    for t, task in enumerate(bench.tasks):
        torch.manual_seed(t)
        method.before_task(t, task)
        encoded = encoder.encode(method.train_samples(t, task), with_answer=True)
        t0 = time.perf_counter()
        train_on(method, encoded, cfg, accelerator, t, 0, pad)
        train_s = time.perf_counter() - t0
        method.after_task(t, task)
        T = t + 1
        if T not in s.scaling_tasks:
            continue
        eval_s, _ = batched_eval(method, tests[:T], s.eval_batch)  # a stage's full-matrix row: all T tasks
        probe_s, _ = batched_eval(method, tests[:1], s.eval_batch)  # the same questions at every T
        cost = method.cost()
        points.append({
            "T": T,
            "train_seconds": train_s,
            "eval_seconds": eval_s,
            "stage_seconds": train_s + eval_s,
            "eval_questions": sum(len(e) for _, e in tests[:T]),
            "probe_eval_seconds": probe_s,
            "param_bytes": sum(p.numel() * p.element_size() for p in method.model.parameters()),
            "held_bytes": held_bytes(cost),
            "params_added_per_task": cost.get("params_added_per_task"),
            "rss_mb": rss_bytes() / 2**20,
        })
        log(f"scaling: {name} T={T}: train {train_s:.2f}s, eval {eval_s:.2f}s, probe {probe_s:.2f}s, "
            f"held {points[-1]['held_bytes']} B")
    Ts = [p["T"] for p in points]
    return {
        "points": points,
        "held_bytes_per_task": slope(Ts, [p["held_bytes"] for p in points]),
        "param_bytes_per_task": slope(Ts, [p["param_bytes"] for p in points]),
        "probe_slowdown": ratio(points[-1]["probe_eval_seconds"], points[0]["probe_eval_seconds"]),
        "stage_seconds_growth": ratio(points[-1]["stage_seconds"], points[0]["stage_seconds"]),
    }


def bench_scaling(s: BenchSettings, log: Log) -> dict[str, Any]:
    return {
        "tasks": list(s.scaling_tasks),
        "train_samples_per_task": s.scaling_train,
        "test_questions_per_task": s.scaling_test,
        "lora-ft": bench_scaling_method("lora-ft", s, log),
        "o-lora": bench_scaling_method("o-lora", s, log),
    }


# ---------------------------------------------------------------- compile


def bench_compile(s: BenchSettings, log: Log) -> dict[str, Any]:
    """``train.compile``: mmcl's loop compiled vs eager (both with the feature cache), and whether it pays over
    a whole default run: ``default steps x (eager - compiled seconds per step) - compile seconds``, where the
    compile seconds are the first compiled call's extra time on one task plus the recompilation a second task
    (other sequence lengths) costs. Skipped by ``--quick`` (compiling takes about a minute)."""
    if s.quick:
        return {"skipped": "quick"}
    from accelerate import Accelerator

    from mmcl.config import TrainConfig
    from mmcl.train.encode import Encoder
    from mmcl.train.feature_cache import FeatureCache
    from mmcl.train.loop import num_update_steps, train_on

    n = s.train_batch * s.train_steps // s.train_epochs
    bench = make_benchmark(["high-altitude.counting", "indoor.grounding"], n, 1)
    method = build_method("lora-ft", bench)
    pad = method.ctx.bundle.tokenizer.pad_token_id
    enc = [Encoder(method.ctx.bundle.processor).encode(t.train, with_answer=True) for t in bench.tasks]
    accelerator = Accelerator(cpu=True)
    cache = FeatureCache()
    cache.install(method.model)

    def run(compiled: bool, task: int = 0) -> float:
        cfg = TrainConfig(batch_size=s.train_batch, max_steps=s.train_steps, compile=compiled)
        t0 = time.perf_counter()
        train_on(method, enc[task], cfg, accelerator, 0, 0, pad)
        return time.perf_counter() - t0

    run(False, 0), run(False, 1)  # warm-up
    log("compile: compiling (first task, then a second task's shapes)")
    first = [run(True, 0), run(True, 1)]
    eager_first = [run(False, 0), run(False, 1)]
    compile_seconds = sum(f - e for f, e in zip(first, eager_first, strict=True))
    eager_s, compiled_s = [], []
    for r in range(s.train_reps):
        for side in (True, False) if r % 2 == 0 else (False, True):
            (compiled_s if side else eager_s).append(run(side))
        log(f"compile: rep {r + 1}/{s.train_reps}: compiled {compiled_s[-1]:.2f}s, eager {eager_s[-1]:.2f}s")
    cache.close()
    te, tc = median(eager_s), median(compiled_s)
    d = DEFAULT_STREAM
    default_steps = d["tasks"] * num_update_steps(d["train_per_task"], TrainConfig(epochs=d["epochs"],
                                                                                   batch_size=d["batch_size"]))
    saved = default_steps * (te - tc) / s.train_steps
    return {
        "steps": s.train_steps,
        "seconds_eager": eager_s,
        "seconds_compiled": compiled_s,
        "ratio_compiled_vs_eager": ratio(te, tc),
        "compile_seconds": compile_seconds,
        "default_run_seconds_saved": saved,
        "default_run_net_seconds": saved - compile_seconds,
        "pays": saved > compile_seconds,
    }


# ---------------------------------------------------------------- evaluation budget


def stream_of(T: int, train_size: int, test_size: int) -> Benchmark:
    """An msvqa-synth stream of T tasks: the default order, repeated under new names past its 20 tasks."""
    from dataclasses import replace

    from mmcl.benchmarks.msvqa.synth import MSVQASynthOptions, make_task, task_order

    order = task_order(MSVQASynthOptions())
    tasks = []
    for i in range(T):
        task = make_task(order[i % len(order)], i // len(order), train_size, test_size)
        tasks.append(task if i < len(order) else replace(task, name=f"{task.name}#{i // len(order) + 1}"))
    return Benchmark("msvqa-synth", tasks)


def bench_matrix(s: BenchSettings, log: Log) -> dict[str, Any]:
    """Evaluation time of a whole run's matrix, ``eval.matrix`` full vs sampled, as the stream grows.

    For each T, two kinds of rows are timed side by side (interleaved, medians of 2): a *full* row (every
    task's whole test set: the zero-shot row, the final row, and every row of ``full``) and a *sampled* row
    (the diagonal task's whole test set, ``matrix_per_cell`` items of every other task: the T-2 middle
    rows of ``sampled`` ... and its first row). A run's evaluation is then ``(T+1) x full row`` vs
    ``2 x full row + (T-1) x sampled row``. The feature cache is warm for both, as in a run; the model
    does not change between rows (the cost of a row does not depend on what was trained).
    """
    from mmcl.eval import budget
    from mmcl.train.feature_cache import FeatureCache

    T_max = max(s.matrix_tasks)
    bench = stream_of(T_max, 1, s.matrix_test)
    method = build_method("lora-ft", bench)
    cache = FeatureCache()
    cache.install(method.model)
    full_set = encode_tests(method, bench.tasks)
    batched_eval(method, full_set, s.eval_batch)  # warm-up, fills the feature cache
    points = []
    for T in s.matrix_tasks:
        rows: dict[str, list[float]] = {"full": [], "sampled": []}
        diag = T // 2
        sampled_set = []
        for j, (task, enc) in enumerate(full_set[:T]):
            if j == diag:
                sampled_set.append((task, enc))
                continue
            idx = budget.sample_indices(task, min(s.matrix_per_cell, len(task.test)), 0)
            sampled_set.append((budget.subsample(task, len(idx), 0), [enc[i] for i in idx]))
        for r in range(2):
            for side in ("full", "sampled") if r == 0 else ("sampled", "full"):
                rows[side].append(batched_eval(method, full_set[:T] if side == "full" else sampled_set,
                                               s.eval_batch)[0])
        full_row, sampled_row = median(rows["full"]), median(rows["sampled"])
        full_s = (T + 1) * full_row
        sampled_s = 2 * full_row + (T - 1) * sampled_row
        points.append({
            "T": T,
            "full_row_seconds": full_row,
            "sampled_row_seconds": sampled_row,
            "full_seconds": full_s,
            "sampled_seconds": sampled_s,
            "ratio_full_vs_sampled": ratio(full_s, sampled_s),
            "items_full": budget.cell_cost("full", T, s.matrix_test, s.matrix_per_cell),
            "items_sampled": budget.cell_cost("sampled", T, s.matrix_test, s.matrix_per_cell),
        })
        log(f"matrix: T={T}: full {full_s:.1f}s, sampled {sampled_s:.1f}s ({points[-1]['ratio_full_vs_sampled']:.2f}x)")
    cache.close()
    return {"test_questions_per_task": s.matrix_test, "sample_per_cell": s.matrix_per_cell, "points": points}


# ---------------------------------------------------------------- the default run


def bench_default_run(s: BenchSettings, log: Log) -> dict[str, Any]:
    """The default ``mmcl run``'s wall time, measured on a reduced stream and scaled.

    The reduced run is the default config (``lora-ft`` on msvqa-synth, tiny-llava, 4 epochs, batch 16,
    full matrix with zero-shot row) cut to its first ``run_tasks`` tasks (one scenario's question types:
    every answer length of the stream) of ``run_train`` / ``run_test`` samples, through :class:`Runner`
    (report included), with and without the feature cache, one after the other. Scaling to
    :data:`DEFAULT_STREAM`: training time x (default optimizer steps / measured steps); evaluation time x
    (default test items evaluated / measured ones); the rest (model loading, encoding, checkpoints, report)
    x (default tasks / measured tasks), a generous bound since loading happens once.
    """
    import shutil
    import tempfile

    from mmcl.config import load_config
    from mmcl.runner import Runner
    from mmcl.train.loop import num_update_steps

    d = DEFAULT_STREAM
    T = s.run_tasks
    out: dict[str, Any] = {"reduced": {"tasks": T, "train_per_task": s.run_train, "test_per_task": s.run_test},
                           "default": d}
    for mode in ("auto", "off"):
        tmp = Path(tempfile.mkdtemp(prefix="mmcl-bench-run-"))
        try:
            t0 = time.perf_counter()
            cfg = load_config(overrides=[f"benchmark.tasks={T}", f"benchmark.train_per_task={s.run_train}",
                                         f"benchmark.test_per_task={s.run_test}", f"train.feature_cache={mode}",
                                         f"train.num_threads={torch.get_num_threads()}"]
                              + (["train.epochs=1"] if s.quick else []))
            runner = Runner(cfg, output_dir=tmp / "run")
            runner.console.quiet = True
            runner.run()
            wall = time.perf_counter() - t0
            res = json.loads((tmp / "run" / "results.json").read_text())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        train_s, eval_s = float(res["cost"]["train_seconds"]), float(res["cost"]["eval_seconds"])
        other_s = max(0.0, wall - train_s - eval_s)
        steps = sum(int(x["steps"]) for x in res["stage_stats"])
        items = T * s.run_test * (T + 1)
        default_steps = d["tasks"] * num_update_steps(d["train_per_task"], cfg.train.model_copy(
            update={"epochs": d["epochs"], "batch_size": d["batch_size"]}))
        default_items = d["tasks"] * d["test_per_task"] * (d["tasks"] + 1)
        scaled = {"train": train_s * default_steps / steps, "eval": eval_s * default_items / items,
                  "other": other_s * d["tasks"] / T}
        key = "" if mode == "auto" else "_uncached"
        out[f"measured{key}"] = {"wall_seconds": wall, "train_seconds": train_s, "eval_seconds": eval_s,
                                 "other_seconds": other_s, "steps": steps, "eval_items": items,
                                 "feature_cache": res.get("feature_cache")}
        out[f"scaled{key}"] = scaled
        out[f"default_seconds{key}"] = sum(scaled.values())
        log(f"run: reduced default run (cache {mode}) {wall:.1f}s -> default run ~{sum(scaled.values()):.0f}s "
            f"(train {scaled['train']:.0f}s, eval {scaled['eval']:.0f}s, other {scaled['other']:.0f}s)")
    out["default_steps"], out["default_eval_items"] = default_steps, default_items
    out["ratio_cached_vs_uncached"] = ratio(out["default_seconds_uncached"], out["default_seconds"])
    return out


# ---------------------------------------------------------------- the whole run


def _get(results: dict[str, Any], dotted: str) -> float:
    node: Any = results
    for k in dotted.split("."):
        node = node[k]
    return float(node)


def make_notes(results: dict[str, Any]) -> list[str]:
    """Plain-language notes: missed targets and why (from the measured profile), noise, machine load."""
    tr, ev, m = results["train"], results["eval"], results["meta"]
    notes = []
    noise = max(tr["spread"], tr["spread_plain"])
    r = tr["ratio_vs_plain"]
    if r < TARGETS["train.ratio_vs_plain"]:
        within = " (within the repetitions' spread, i.e. noise)" if 1 - r <= noise else ""
        notes.append(
            f"train: mmcl's loop ran at {r:.2f}x the plain loop{within} (target {TARGETS['train.ratio_vs_plain']:g}x); "
            f"repetitions varied by up to {noise:.0%}. The feature cache gave {tr['ratio_cached_vs_uncached']:.2f}x "
            f"over mmcl's own loop without it: the frozen vision tower + projector are a small share of a step "
            "on this model (3 layers of width 128 on 65 positions, forward only, vs 4 LoRA'd layers of width 192 "
            f"on ~90 positions, forward and backward: {tr['vision_flops_per_image'] * tr['samples'] / tr['flops_per_rep']:.0%} "
            "of the counted FLOPs), and the first of the epochs computes them anyway. "
            "Beyond the plain loop, train_on collates its batches inside the timed call (the plain loop gets them "
            "collated beforehand), clips gradients, steps an LR schedule and prepares accelerate's wrappers."
        )
    p = tr["profile"]
    if tr["mfu"] < TARGETS["train.mfu"]:
        others = ", ".join(f"{k.removeprefix('aten::')} {v:.0%}" for k, v in list(p["top_other_ops"].items())[:4])
        notes.append(
            f"train: MFU {tr['mfu']:.1%} of a measured {tr['peak_flops'] / 1e9:.1f} GFLOP/s fp32 matmul peak "
            f"(target {TARGETS['train.mfu']:.0%}). The profiled step spends {p['matmul_share']:.0%} of its CPU time in matmul-like "
            f"kernels, which run at {p['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s "
            f"({ratio(p['matmul_flops_per_s'], tr['peak_flops']):.0%} of the peak): the model's matrices are "
            f"small (hidden 192/128, {tr['total_params'] / 1e6:.1f}M parameters); the rest is element-wise and "
            f"framework work ({others}, ...) that does no counted FLOPs (unmerged LoRA adds a scaling multiply "
            "and an add per target layer). What would raise it: larger matrices (a bigger model; sequence "
            "packing, which also removes padding), fusing the element-wise ops (torch.compile), bf16 on "
            "hardware with fast bf16 matmuls; a bigger batch alone does not change the matrices' inner sizes."
        )
    if ev["ratio_vs_per_sample"] < TARGETS["eval.ratio_vs_per_sample"]:
        per = "; ".join(f"{k} ({v['max_new_tokens']} new tokens) {v['ratio_vs_per_sample']:.1f}x"
                        for k, v in ev["per_task"].items())
        notes.append(
            f"eval: batched generation (feature cache warm) at {ev['ratio_vs_per_sample']:.1f}x per-sample generate "
            f"(target {TARGETS['eval.ratio_vs_per_sample']:g}x; {ev['ratio_uncached_vs_per_sample']:.1f}x without the "
            f"cache); per task: {per}. The prompt prefill (about 85 tokens, 64 of them image tokens) costs the same FLOPs "
            "either way and dominates short answers; batching saves the per-call and per-token overhead of "
            "decoding, so long answers gain most. What is left in the batched run is transformers' and peft's "
            "forward (unmerged LoRA element-wise ops on [batch, seq, 512] tensors, KV-cache torch.cat), not mmcl's "
            "code; merging the LoRA weights for evaluation would cut the prefill for both sides."
        )
    run = results["run"]
    if run["default_seconds"] > TARGETS_AT_MOST["run.default_seconds"]:
        sc = run["scaled"]
        notes.append(
            f"run: the default mmcl run comes to about {run['default_seconds']:.0f} s on this machine with this "
            f"thread count (target {TARGETS_AT_MOST['run.default_seconds']:.0f} s on 2 idle cores): training "
            f"{sc['train']:.0f} s ({run['default_steps']} optimizer steps of 16), evaluation {sc['eval']:.0f} s "
            f"({run['default_eval_items']} answers), the rest {sc['other']:.0f} s. "
            f"{'Training' if sc['train'] >= sc['eval'] else 'Evaluation'} dominates; with the feature cache the "
            f"whole run is {run['ratio_cached_vs_uncached']:.2f}x as fast as without it. eval.matrix=sampled "
            "cuts the evaluation share (see the matrix part), not training."
        )
    if ev["answers_agree"] < 1.0:
        notes.append(
            f"eval: {ev['answers_agree']:.0%} of batched answers equal the per-sample ones: left padding "
            "changes the fp32 summation order, which can flip a greedy choice on near-ties."
        )
    busy = m["load_before"][0] + m["torch_threads"] > (m["cpu_count"] or 1)
    machine = (
        f"machine: {m['cpu_count']} CPU core(s), torch threads {m['torch_threads']}, load average "
        f"{m['load_before'][0]:.1f} before / {m['load_after'][0]:.1f} after. Ratios are measured side by side "
        "(interleaved repetitions, medians); absolute numbers are only as good as the machine's quiet."
    )
    if busy and m["torch_threads"] > 1:
        machine += (
            " Other processes held the cores, so this run's threads were oversubscribed: OpenMP threads that "
            "lose their core stall each other, and timings (the matmul peak included) scatter widely; on a busy "
            "machine use --threads 1."
        )
    elif busy:
        machine += " Other processes shared the cores during this run."
    notes.append(machine)
    if m["quick"]:
        notes.append("quick: every part is tiny (a smoke test); its numbers are not representative.")
    return notes


def run_bench(quick: bool = False, log: Log = print, threads: int | None = None) -> dict[str, Any]:
    """Run every part; returns the JSON-able results (see the module docstring).

    ``threads`` sets torch's CPU thread count for the run (restored afterwards); None keeps torch's
    default, as ``mmcl run`` does without ``train.num_threads``.
    """
    s = settings(quick)
    before_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_parts(s, log)
    finally:
        torch.set_num_threads(before_threads)


def _load() -> list[float]:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else [0.0, 0.0, 0.0]


def _run_parts(s: BenchSettings, log: Log) -> dict[str, Any]:
    t0 = time.perf_counter()
    torch.manual_seed(0)
    results: dict[str, Any] = {
        "meta": {
            "mmcl_version": mmcl.__version__,
            **host_info(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "device": "cpu",
            "model": "preset:tiny-llava",
            "quick": s.quick,
            "settings": asdict(s),
            "load_before": _load(),
        }
    }
    results["train"] = bench_train(s, log)
    results["eval"] = bench_eval(s, log)
    results["routing"] = bench_routing(s, log)
    results["scaling"] = bench_scaling(s, log)
    results["matrix"] = bench_matrix(s, log)
    results["compile"] = bench_compile(s, log)
    results["run"] = bench_default_run(s, log)
    results["meta"]["load_after"] = _load()
    results["meta"]["seconds"] = time.perf_counter() - t0
    tr, ev, ro = results["train"], results["eval"], results["routing"]
    noise = {  # relative spread of the repetitions behind each figure
        "train.ratio_vs_plain": max(tr["spread"], tr["spread_plain"]),
        "train.mfu": max(tr["spread"], spread(tr["peak_flops_all"])),
        "eval.ratio_vs_per_sample": ev["spread"],
        "run.default_seconds": 0.0,  # one measurement
        "routing.slowest_vs_lora": max(spread(ro[n]["seconds"]) for n in ("lora-ft", "moelora", "unifier")),
    }
    results["targets"] = {}
    for k, v in [*TARGETS.items(), *TARGETS_AT_MOST.items()]:
        value = _get(results, k)
        at_most = k in TARGETS_AT_MOST
        miss = (value - v) / v if at_most else (v - value) / v
        results["targets"][k] = {
            "target": v,
            "at_most": at_most,
            "value": value,
            "met": miss <= 0,
            # missed by less than the repetitions' spread: not distinguishable from met on this machine
            "within_noise": 0 < miss <= noise[k],
        }
    results["notes"] = make_notes(results)
    return results


def render_table(results: dict[str, Any]) -> Any:
    """A rich table of the headline numbers."""
    from rich.table import Table

    tr, ev, ro, sc = results["train"], results["eval"], results["routing"], results["scaling"]
    targets = results["targets"]
    meta = results["meta"]
    table = Table(title=f"mmcl bench{' --quick' if meta['quick'] else ''} (CPU, {meta['torch_threads']} "
                        f"thread(s), {meta['seconds']:.0f}s)")
    for col in ("part", "measure", "value", "target"):
        table.add_column(col)

    def status(key: str) -> str:
        t = targets[key]
        goal = (f"{t['target']:.0%}" if key == "train.mfu" else f"{t['target']:g} s" if key.endswith("seconds")
                else f"{t['target']:g}×")
        verdict = "[green]met[/]" if t["met"] else "[yellow]within noise[/]" if t["within_noise"] else "[red]missed[/]"
        return f"{'≤' if t.get('at_most') else '≥'} {goal} {verdict}"

    table.add_row("train", f"mmcl loop samples/s (batch {tr['batch_size']}, {tr['steps']} steps, "
                  f"{tr['epochs']} epochs, feature cache)", f"{tr['samples_per_s']:.2f}", "")
    table.add_row("", "mmcl loop without the feature cache samples/s", f"{tr['samples_per_s_uncached']:.2f}", "")
    table.add_row("", "plain transformers+peft loop samples/s", f"{tr['samples_per_s_plain']:.2f}", "")
    table.add_row("", "ratio mmcl / plain", f"{tr['ratio_vs_plain']:.2f}×", status("train.ratio_vs_plain"))
    table.add_row("", "ratio cached / uncached (uncached / plain)",
                  f"{tr['ratio_cached_vs_uncached']:.2f}× ({tr['ratio_uncached_vs_plain']:.2f}×)", "")
    table.add_row("", "FLOPs per step (counted; 6N estimate)",
                  f"{tr['flops_per_step'] / 1e9:.2f} G ({tr['flops_6N'] / tr['steps'] / 1e9:.2f} G)", "")
    table.add_row("", "achieved / peak fp32 matmul FLOP/s",
                  f"{tr['achieved_flops'] / 1e9:.2f} / {tr['peak_flops'] / 1e9:.1f} G", "")
    table.add_row("", "MFU (plain loop)", f"{tr['mfu']:.1%} ({tr['mfu_plain']:.1%})", status("train.mfu"))
    table.add_row("eval", f"batched generate samples/s (batch {ev['batch_size']}, feature cache warm)",
                  f"{ev['samples_per_s']:.2f}", "")
    table.add_row("", "batched without the cache samples/s (cached / uncached)",
                  f"{ev['samples_per_s_uncached']:.2f} ({ev['ratio_cached_vs_uncached']:.2f}×)", "")
    table.add_row("", "per-sample model.generate samples/s", f"{ev['samples_per_s_per_sample']:.2f}", "")
    table.add_row("", "ratio batched / per-sample", f"{ev['ratio_vs_per_sample']:.2f}×",
                  status("eval.ratio_vs_per_sample"))
    for name, v in ev["per_task"].items():
        table.add_row("", f"  {name} ({v['max_new_tokens']} new tokens): batched / per-sample",
                      f"{v['samples_per_s']:.1f} / {v['samples_per_s_per_sample']:.1f} "
                      f"({v['ratio_vs_per_sample']:.2f}×)", "")
    table.add_row("", "answers equal (batched vs per-sample)", f"{ev['answers_agree']:.0%}", "")
    for n in ("lora-ft", "moelora", "unifier"):
        table.add_row("routing" if n == "lora-ft" else "", f"{n} eval samples/s (× lora-ft speed)",
                      f"{ro[n]['samples_per_s']:.2f} ({ro[n]['ratio_vs_lora']:.2f}×)", "")
    table.add_row("", "slowest routing method: times slower than lora-ft", f"{ro['slowest_vs_lora']:.2f}×",
                  status("routing.slowest_vs_lora"))
    for n in ("lora-ft", "o-lora"):
        m = sc[n]
        pts = m["points"]
        table.add_row("scaling" if n == "lora-ft" else "", f"{n} stage s (train+eval) at T=" +
                      "/".join(str(p["T"]) for p in pts),
                      " / ".join(f"{p['stage_seconds']:.1f}" for p in pts), "")
        table.add_row("", f"{n} probe eval s at T=" + "/".join(str(p["T"]) for p in pts),
                      " / ".join(f"{p['probe_eval_seconds']:.2f}" for p in pts), "")
        table.add_row("", f"{n} held bytes per task (cost())", f"{m['held_bytes_per_task']:,.0f}", "")
    co = results.get("compile") or {}
    if "ratio_compiled_vs_eager" in co:
        table.add_row("compile", "train.compile: compiled / eager step speed; compile s",
                      f"{co['ratio_compiled_vs_eager']:.2f}×; {co['compile_seconds']:.0f} s", "")
        table.add_row("", "default run: seconds saved - compile seconds = net",
                      f"{co['default_run_seconds_saved']:.0f} - {co['compile_seconds']:.0f} = "
                      f"{co['default_run_net_seconds']:.0f} s", "pays" if co["pays"] else "does not pay")
    mx = results["matrix"]
    table.add_row("matrix", f"eval s full / sampled ({mx['sample_per_cell']} per cell) at T=" +
                  "/".join(str(p["T"]) for p in mx["points"]),
                  " / ".join(f"{p['full_seconds']:.0f}:{p['sampled_seconds']:.0f} ({p['ratio_full_vs_sampled']:.1f}×)"
                             for p in mx["points"]), "")
    run = results["run"]
    sc_ = run["scaled"]
    table.add_row("run", f"default mmcl run, scaled from {run['reduced']['tasks']} tasks (train/eval/other s)",
                  f"{run['default_seconds']:.0f} s ({sc_['train']:.0f}/{sc_['eval']:.0f}/{sc_['other']:.0f})",
                  status("run.default_seconds"))
    table.add_row("", "the same without the feature cache", f"{run['default_seconds_uncached']:.0f} s "
                  f"({run['ratio_cached_vs_uncached']:.2f}× slower)", "")
    return table
