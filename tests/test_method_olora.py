"""O-LoRA: one adapter per task, old ones frozen but active, new A rows kept orthogonal to old ones."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from conftest import build_test_method, quick_overrides, run_quick

import mmcl.methods.olora  # noqa: F401  (registers "o-lora")
from mmcl.config import load_config
from mmcl.methods import RunContext
from mmcl.methods.olora import OLora
from mmcl.train.encode import Encoder, collate_train
from mmcl.train.loop import train_on


def _method(model_dir: Path, *extra: str) -> tuple[OLora, Any, Any]:
    method = build_test_method(model_dir, "o-lora", *extra)
    assert isinstance(method, OLora)
    return method, method.ctx.benchmark, method.ctx.bundle


def _train(method: OLora, bench: Any, bundle: Any, stage: int) -> None:
    task = bench.tasks[stage]
    method.before_task(stage, task)
    enc = Encoder(bundle.processor).encode(method.train_samples(stage, task), with_answer=True)
    cfg = method.ctx.config
    train_on(method, enc, cfg.train, Accelerator(cpu=True), stage, cfg.seed, bundle.tokenizer.pad_token_id)
    method.after_task(stage, task)


def _overlap(method: OLora, old: str, new: str) -> float:
    """Mean over LoRA layers of ||A_old A_new^T||_F / (||A_old||_F ||A_new||_F)."""
    vals = []
    for _, layer in method._layers:
        a, b = layer.lora_A[old].weight.detach(), layer.lora_A[new].weight.detach()
        vals.append(float((a @ b.T).norm() / (a.norm() * b.norm())))
    return sum(vals) / len(vals)


# enough steps at a high learning rate that the orthogonality term clearly acts (a few seconds each)
TRAIN = ("train.max_steps=40", "train.lr=0.01")


@pytest.fixture(scope="module")
def two_stages(tiny_llava_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for lam in (0.5, 0.0):
        method, bench, bundle = _method(tiny_llava_dir, *TRAIN, f"method.lambda_orth={lam}")
        _train(method, bench, bundle, 0)
        after_first = method.state_dict()
        _train(method, bench, bundle, 1)
        out[lam] = {"method": method, "bench": bench, "bundle": bundle, "after_first": after_first}
    return out


def test_new_adapter_is_orthogonal_to_the_old_one(two_stages: dict[str, Any]) -> None:
    with_orth = _overlap(two_stages[0.5]["method"], "task_0", "task_1")
    without = _overlap(two_stages[0.0]["method"], "task_0", "task_1")
    assert without > 0.05  # random / task-trained A rows overlap (about 1/sqrt(in_features) for random ones)
    assert with_orth < 0.25 * without, (with_orth, without)


def test_old_adapter_frozen_and_bit_identical(two_stages: dict[str, Any]) -> None:
    method: OLora = two_stages[0.5]["method"]
    before = two_stages[0.5]["after_first"]["weights"]["task_0"]
    now = method.state_dict()
    assert now["adapters"] == ["task_0", "task_1"] and now["current"] == "task_1"
    assert set(before) == set(now["weights"]["task_0"])
    for k, t in before.items():
        assert torch.equal(t, now["weights"]["task_0"][k]), k
    # the new adapter did train, from a fresh init
    assert any(bool(t.abs().sum() > 0) for k, t in now["weights"]["task_1"].items() if k.endswith("lora_B"))
    for name, p in method.model.named_parameters():
        assert p.requires_grad == (".task_1." in name), name
    trainable = {id(p) for p in method.trainable_parameters()}
    assert trainable == {id(p) for n, p in method.model.named_parameters() if ".task_1." in n}


def test_every_adapter_is_active_in_the_forward(two_stages: dict[str, Any]) -> None:
    s = two_stages[0.5]
    method: OLora = s["method"]
    model = method.model
    assert model.base_model.active_adapters == ["task_0", "task_1"]
    enc = Encoder(s["bundle"].processor).encode(s["bench"].tasks[0].test[:4], with_answer=True)
    batch = collate_train(enc, s["bundle"].tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():
        both = model(**batch).logits
        model.base_model.set_adapter(["task_1"])
        new_only = model(**batch).logits
        model.base_model.set_adapter(["task_0"])
        old_only = model(**batch).logits
        method._activate("task_1")  # restore
        again = model(**batch).logits
        with model.disable_adapter():
            base = model(**batch).logits
    # peft re-enables grads of every active adapter when disable_adapter() exits;
    # trainable_parameters() (called by the loop at every stage) freezes the old ones again
    assert {id(p) for p in method.trainable_parameters()} == {
        id(p) for n, p in model.named_parameters() if ".task_1." in n
    }
    assert not torch.allclose(both, new_only, atol=1e-4)  # the old adapter contributes
    assert not torch.allclose(both, old_only, atol=1e-4)  # so does the new one
    assert not torch.allclose(both, base, atol=1e-4)
    assert torch.equal(both, again)
    assert [n for n, p in model.named_parameters() if p.requires_grad and ".task_0." in n] == []


def test_extra_loss_matches_the_definition(two_stages: dict[str, Any], tiny_llava_dir: Path) -> None:
    method: OLora = two_stages[0.5]["method"]
    loss = method.extra_loss({}, None, 1)
    expected = sum(
        (layer.lora_A["task_0"].weight @ layer.lora_A["task_1"].weight.T).abs().sum() for _, layer in method._layers
    )
    assert loss is not None and torch.allclose(loss, 0.5 * expected)
    assert loss.requires_grad
    method.options = method.Options(lambda_orth=2.0, lambda_l2=0.1, orth_loss="squared")
    try:
        sq = method.extra_loss({}, None, 1)
        exp_sq = sum(
            (layer.lora_A["task_0"].weight @ layer.lora_A["task_1"].weight.T).pow(2).sum()
            for _, layer in method._layers
        )
        l2 = sum(p.norm() for p in method._adapter_params("task_1"))
        assert sq is not None and torch.allclose(sq, 2.0 * exp_sq + 0.1 * l2)
    finally:
        method.options = method.Options(lambda_orth=0.5)
    # the first stage has no old adapter: no orthogonality term
    first, _, _ = _method(tiny_llava_dir)
    assert first.extra_loss({}, None, 0) is None


def test_state_dict_round_trip(two_stages: dict[str, Any], tiny_llava_dir: Path) -> None:
    s = two_stages[0.5]
    state = s["method"].state_dict()
    fresh, _, bundle = _method(tiny_llava_dir)
    fresh.load_state_dict(state)
    assert fresh.adapters == ["task_0", "task_1"] and fresh.current == "task_1"
    enc = Encoder(bundle.processor).encode(s["bench"].tasks[1].test[:3], with_answer=True)
    batch = collate_train(enc, bundle.tokenizer.pad_token_id)
    s["method"].model.eval()
    fresh.model.eval()
    with torch.no_grad():
        assert torch.allclose(s["method"].model(**batch).logits, fresh.model(**batch).logits, atol=1e-5)
    assert [n for n, p in fresh.model.named_parameters() if p.requires_grad] == [
        n for n, p in s["method"].model.named_parameters() if p.requires_grad
    ]


def test_cost(two_stages: dict[str, Any]) -> None:
    method: OLora = two_stages[0.5]["method"]
    per = sum(p.numel() for p in method._adapter_params("task_0"))
    c = method.cost()
    assert c["params_added_per_task"] == per > 0
    assert c["held_bytes"] == {"frozen_adapters": per * 4}  # one frozen float32 adapter


def test_bad_options_are_refused(tiny_llava_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"method 'o-lora': method.lamda_orth: .*Valid options: lambda_orth"):
        OLora.parse_options({"lamda_orth": 1.0})
    with pytest.raises(ValueError, match=r"lambda_orth.*greater than or equal to 0"):
        OLora.parse_options({"lambda_orth": -1})
    with pytest.raises(ValueError, match=r"orth_loss"):
        OLora.parse_options({"orth_loss": "l3"})
    cfg = load_config(overrides=quick_overrides(tiny_llava_dir, "method.name=o-lora", "model.train_projector=true"))
    with pytest.raises(ValueError, match="train_projector"):
        OLora(RunContext(cfg, SimpleNamespace(model=None), None), OLora.parse_options({}))  # type: ignore[arg-type]


@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
def test_end_to_end_three_tasks(tiny_llava_dir: Path, tmp_path: Path) -> None:
    res = run_quick(tiny_llava_dir, tmp_path, "method.name=o-lora")
    assert res["method"] == "o-lora" and len(res["matrix"]["primary"]) == 3
    cost = res["cost"]
    assert cost["params_added_per_task"] > 0
    assert cost["held_bytes"]["frozen_adapters"] == 2 * cost["params_added_per_task"] * 4  # 2 frozen fp32 adapters
    # one adapter's worth trains at every stage; the model holds three
    assert [s["trainable_params"] for s in res["stage_stats"]] == [cost["params_added_per_task"]] * 3
    assert cost["trainable_params"] == cost["params_added_per_task"]
    assert len(res["zero_shot"]["primary"]) == 3
