"""MoE-LoRA: gated LoRA experts per target layer; equals the base at init; generation stays consistent."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from conftest import build_test_method, quick_overrides, run_quick

import mmcl.methods.moelora  # noqa: F401  (registers "moelora")
from mmcl.config import load_config
from mmcl.eval.generate import generate_answers
from mmcl.methods import RunContext
from mmcl.methods.moelora import MoELoRA, MoELoRALinear
from mmcl.train.encode import IGNORE_INDEX, Encoder, collate_prompts, collate_train
from mmcl.train.loop import train_on

GATES = ["token", "sample"]


def _build(model_dir: Path, *extra: str) -> tuple[MoELoRA, Any, Any]:
    method = build_test_method(model_dir, "moelora", *extra, setup=False)
    assert isinstance(method, MoELoRA)
    return method, method.ctx.benchmark, method.ctx.bundle


def _train_batch(bundle: Any, samples: list) -> dict[str, torch.Tensor]:
    return collate_train(Encoder(bundle.processor).encode(samples, with_answer=True), bundle.tokenizer.pad_token_id)


@pytest.fixture(scope="module", params=GATES)
def trained(request: pytest.FixtureRequest, tiny_llava_dir: Path) -> dict[str, Any]:
    """A few steps of training (so that B != 0 and the gates matter); base predictions kept from before."""
    method, bench, bundle = _build(
        tiny_llava_dir, f"method.gate={request.param}", "train.max_steps=10", "train.lr=0.01"
    )
    prompts = Encoder(bundle.processor).encode(bench.tasks[0].test[:6], with_answer=False)
    base_preds = generate_answers(bundle.model, bundle.tokenizer, prompts, batch_size=6, max_new_tokens=6)
    method.setup(bundle.model)
    task = bench.tasks[0]
    method.before_task(0, task)
    enc = Encoder(bundle.processor).encode(method.train_samples(0, task), with_answer=True)
    cfg = method.ctx.config
    train_on(method, enc, cfg.train, Accelerator(cpu=True), 0, cfg.seed, bundle.tokenizer.pad_token_id)
    method.after_task(0, task)
    return {"method": method, "bench": bench, "bundle": bundle, "prompts": prompts, "base_preds": base_preds,
            "gate": request.param}


@pytest.mark.parametrize("gate", GATES)
def test_wrapped_model_equals_base_at_init(tiny_llava_dir: Path, gate: str) -> None:
    method, bench, bundle = _build(tiny_llava_dir, f"method.gate={gate}")
    batch = _train_batch(bundle, bench.tasks[1].train[:4])
    bundle.model.eval()
    with torch.no_grad():
        base = bundle.model(**batch).logits
        model = method.setup(bundle.model)
        wrapped = model(**batch).logits
    assert model is bundle.model  # the HF model, wrapped in place
    assert len(method.layers) == 2 * 7  # q k v o gate up down in both layers of the test model
    assert all(isinstance(model.get_submodule(n), MoELoRALinear) for n in method.layers)
    assert torch.equal(base, wrapped)


def _capture(layer: MoELoRALinear) -> tuple[dict[str, torch.Tensor], Any]:
    seen: dict[str, torch.Tensor] = {}

    def hook(mod: MoELoRALinear, args: tuple, out: torch.Tensor) -> None:
        seen["x"], seen["y"] = args[0].detach(), out.detach()
        seen["g"] = mod.gate_weights(args[0]).detach()  # inside the forward: the model's mask is set

    return seen, layer.register_forward_hook(hook)


def test_gates_sum_to_one_depend_on_input_and_mix_the_experts(trained: dict[str, Any]) -> None:
    method: MoELoRA = trained["method"]
    bundle = trained["bundle"]
    name = "model.language_model.layers.1.self_attn.q_proj"
    layer = method.layers[name]
    batch = _train_batch(bundle, [trained["bench"].tasks[0].train[0], trained["bench"].tasks[2].train[0]])
    seen, handle = _capture(layer)
    method.model.eval()
    with torch.no_grad():
        method.model(**batch)
    handle.remove()
    x, y, g = seen["x"], seen["y"], seen["g"]
    E = method.opts.experts
    if trained["gate"] == "token":
        assert g.shape == (*x.shape[:2], E)
        assert not torch.allclose(g[0, 0], g[0, -1], atol=1e-4)  # two tokens
    else:
        assert g.shape == (x.shape[0], 1, E)
    assert torch.allclose(g.sum(-1), torch.ones_like(g.sum(-1)), atol=1e-5)
    assert bool((g > 0).all())
    assert not torch.allclose(g[0].mean(0), g[1].mean(0), atol=1e-4)  # two different samples
    # the layer computes base(x) + sum_e g_e B_e A_e x * alpha / r_e (reference loop over experts)
    with torch.no_grad():
        ref = layer.base_layer(x)
        for e in range(E):
            ref = ref + g[..., e : e + 1] * (x @ layer.experts_A[e].T @ layer.experts_B[e].T) * layer.scaling
    assert torch.allclose(y, ref, atol=1e-5)
    assert not torch.allclose(y, layer.base_layer(x), atol=1e-5)  # the trained experts do contribute


@pytest.mark.parametrize("trained", ["sample"], indirect=True)
def test_sample_gate_does_not_see_the_answer(trained: dict[str, Any]) -> None:
    """Only the sample gate pools over tokens, so only it could leak the answer into the gate."""
    method: MoELoRA = trained["method"]
    layer = method.layers["model.language_model.layers.0.mlp.down_proj"]
    batch = _train_batch(trained["bundle"], trained["bench"].tasks[0].train[:3])
    other = {k: v.clone() for k, v in batch.items()}
    answer = (other["labels"] != IGNORE_INDEX) & (other["labels"] != trained["bundle"].tokenizer.eos_token_id)
    other["input_ids"][answer] = (other["input_ids"][answer] + 7) % 100 + 5
    other["labels"][answer] = other["input_ids"][answer]
    gates = []
    for b in (batch, other):
        seen, handle = _capture(layer)
        with torch.no_grad():
            method.model(**b)
        handle.remove()
        gates.append(seen["g"])
    assert torch.equal(gates[0], gates[1])


def test_only_experts_and_gates_get_gradients(trained: dict[str, Any]) -> None:
    method: MoELoRA = trained["method"]
    model = method.model
    model.train()
    model.zero_grad(set_to_none=True)
    batch = _train_batch(trained["bundle"], trained["bench"].tasks[1].train[:4])
    model(**batch).loss.backward()
    moe_names = {f"{n}.{p}" for n in method.layers for p in ("experts_A", "experts_B", "gate.weight")}
    for name, p in model.named_parameters():
        if name in moe_names:
            assert p.requires_grad and p.grad is not None and bool(p.grad.abs().sum() > 0), name
        else:
            assert not p.requires_grad and p.grad is None, name
    assert {id(p) for p in method.trainable_parameters()} == {
        id(p) for n, p in model.named_parameters() if n in moe_names
    }
    model.zero_grad(set_to_none=True)
    model.eval()


def test_generate_with_kv_cache_matches_a_full_forward(trained: dict[str, Any]) -> None:
    """Cached greedy generation (as the runner evaluates) == the logits of one full forward pass.

    For the sample gate the full forward marks the generated tokens as answer tokens (labels), so
    that its gate is the prompt's, which is what the cache keeps during decoding.
    """
    method: MoELoRA = trained["method"]
    model, tok = method.model, trained["bundle"].tokenizer
    batch = collate_prompts(trained["prompts"][:4], tok.pad_token_id)
    model.eval()
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=5, do_sample=False, num_beams=1, use_cache=True, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id, output_logits=True, return_dict_in_generate=True,
        )
        seq = out.sequences
        L, k = batch["input_ids"].shape[1], len(out.logits)
        full_ids = seq[:, : L + k - 1]
        mask = torch.cat([batch["attention_mask"], torch.ones(seq.shape[0], k - 1, dtype=torch.long)], 1)
        labels = full_ids.clone()
        labels[:, :L] = IGNORE_INDEX
        full = model(input_ids=full_ids, attention_mask=mask, pixel_values=batch["pixel_values"], labels=labels)
    for j in range(k):
        assert torch.allclose(full.logits[:, L - 1 + j], out.logits[j], atol=1e-4), j


def test_generate_and_disable_adapter(trained: dict[str, Any]) -> None:
    method: MoELoRA = trained["method"]
    model, tok = method.model, trained["bundle"].tokenizer
    preds = generate_answers(model, tok, trained["prompts"], batch_size=6, max_new_tokens=6)
    assert len(preds) == 6 and all(isinstance(p, str) for p in preds)
    assert preds != trained["base_preds"]  # training changed the answers
    with model.disable_adapter():  # what the runner uses for the zero-shot row
        base = generate_answers(model, tok, trained["prompts"], batch_size=6, max_new_tokens=6)
    assert base == trained["base_preds"]
    assert generate_answers(model, tok, trained["prompts"], batch_size=6, max_new_tokens=6) == preds


def test_state_dict_round_trip_and_cost(trained: dict[str, Any], tiny_llava_dir: Path) -> None:
    method: MoELoRA = trained["method"]
    state = method.state_dict()
    assert len(state["weights"]) == 3 * len(method.layers)
    fresh, _, bundle = _build(tiny_llava_dir, f"method.gate={trained['gate']}")
    fresh.setup(bundle.model)
    fresh.load_state_dict(state)
    batch = _train_batch(bundle, trained["bench"].tasks[2].train[:3])
    method.model.eval()
    fresh.model.eval()
    with torch.no_grad():
        assert torch.allclose(method.model(**batch).logits, fresh.model(**batch).logits, atol=1e-5)
    with pytest.raises(ValueError, match="missing"):
        fresh.load_state_dict({"weights": dict(list(state["weights"].items())[1:])})
    cost = method.cost()
    n_lora = sum(layer.experts_A.numel() + layer.experts_B.numel() for layer in method.layers.values())
    n_gate = sum(layer.gate.weight.numel() for layer in method.layers.values())
    assert cost == {"params_added_per_task": 0, "trainable_params": n_lora + n_gate, "held_bytes": {}}


def test_bad_options_are_refused(tiny_llava_dir: Path) -> None:
    def make(*extra: str) -> MoELoRA:
        cfg = load_config(overrides=quick_overrides(tiny_llava_dir, "method.name=moelora", *extra))
        cls = MoELoRA
        return cls(RunContext(cfg, SimpleNamespace(model=None), None), cls.parse_options(cfg.method.options()))  # type: ignore[arg-type]

    with pytest.raises(ValueError, match=r"method.rank=10\) must be divisible by method.experts=4"):
        make("method.rank=10")
    with pytest.raises(ValueError, match=r"model.lora_rank=16\) must be divisible by method.experts=3"):
        make("method.experts=3")
    with pytest.raises(ValueError, match=r"method 'moelora': method.expert: .*Valid options: experts, rank, gate"):
        make("method.expert=4")
    with pytest.raises(ValueError, match=r"method.gate"):
        make("method.gate=layer")
    with pytest.raises(ValueError, match=r"method.experts: .*greater than or equal to 1"):
        make("method.experts=0")
    m = make("method.experts=8", "method.rank=32")
    assert (m.total_rank, m.rank_per_expert) == (32, 4)
    assert make("method.experts=2").rank_per_expert == 8


@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
def test_end_to_end_three_tasks(tiny_llava_dir: Path, tmp_path: Path) -> None:
    res = run_quick(tiny_llava_dir, tmp_path, "method.name=moelora")
    assert res["method"] == "moelora" and len(res["matrix"]["primary"]) == 3
    cost = res["cost"]
    assert cost["params_added_per_task"] == 0 and cost["held_bytes"] == {}
    assert cost["trainable_params"] > 0
    assert [s["trainable_params"] for s in res["stage_stats"]] == [cost["trainable_params"]] * 3
    assert len(res["zero_shot"]["primary"]) == 3
