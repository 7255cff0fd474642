"""``unifier``: scenario branches in every vision block (VRE) and the consistency constraint (VCC)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import build_test_method, run_quick, train_stage

from mmcl.adapters.vision_branches import BranchModule, BranchOutputs, install_branches
from mmcl.methods.unifier import Unifier, consistency_loss, two_channel_kl
from mmcl.train.encode import Encoder, collate_train

# Scenarios: high-altitude (branch 0), underwater (branch 1), then high-altitude again.
ORDER = "benchmark.order=[high-altitude.attribute, underwater.existence, high-altitude.counting]"


def make(model_dir: Path, *options: str) -> Unifier:
    method = build_test_method(model_dir, "unifier", ORDER, *options)
    assert isinstance(method, Unifier)
    return method


def a_batch(method: Unifier, t: int = 0, n: int = 6) -> dict[str, torch.Tensor]:
    ctx = method.ctx
    encoded = Encoder(ctx.bundle.processor).encode(ctx.benchmark.tasks[t].train[:n], with_answer=True)
    return collate_train(encoded, ctx.bundle.tokenizer.pad_token_id)


def snapshot(method: Unifier) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in method.model.named_parameters()}


def changed(before: dict[str, torch.Tensor], method: Unifier) -> set[str]:
    return {n for n, p in method.model.named_parameters() if not torch.equal(before[n], p.detach())}


def test_branches_sit_in_every_vision_block_and_leave_the_model_unchanged(tiny_llava_dir: Path) -> None:
    base = build_test_method(tiny_llava_dir, "lora-ft", ORDER, setup=False)
    batch = a_batch(base)
    with torch.no_grad():
        expected = base.ctx.model.eval()(**batch).logits
    method = make(tiny_llava_dir)
    blocks = [n for n, _ in method.model.named_modules() if n.endswith("encoder.layers.0")]
    assert method.vision.branches is not None and len(method.vision.branches) == len(blocks) == 1
    assert method.vision.num_branches == 2 and method.vision.keys == ["high-altitude", "underwater"]
    with torch.no_grad():
        got = method.model.eval()(**batch).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_only_the_active_branch_and_the_projections_train(tiny_llava_dir: Path) -> None:
    method = make(tiny_llava_dir, "method.lm_lora=false")
    train_stage(method, 0)
    before = snapshot(method)
    train_stage(method, 1)  # underwater: branch 1
    moved = changed(before, method)
    assert moved, "stage 1 changed nothing"
    for name in moved:
        assert ".mmcl_branches." in name, f"{name} is not part of the branches but changed"
        assert ".down.0." not in name and ".up.0." not in name, f"branch 0 changed while learning branch 1: {name}"
    for part in (".down.1.weight", ".up.1.weight", ".proj.weight"):
        assert any(part in n for n in moved), f"nothing matching {part} trained"


def test_the_default_is_the_papers_vision_only_form(tiny_llava_dir: Path) -> None:
    method = make(tiny_llava_dir)
    assert method.options.lm_lora is False
    assert not any("lora_" in n for n, _ in method.model.named_parameters())  # no language-model LoRA at all
    quad = build_test_method(tiny_llava_dir, "unifier-quad", ORDER, setup=False)
    assert quad.options.lm_lora is True  # QUAD's side needs the language model's LoRA


def test_with_lm_lora_the_language_model_lora_trains_too(tiny_llava_dir: Path) -> None:
    method = make(tiny_llava_dir, "method.lm_lora=true")
    before = snapshot(method)
    train_stage(method, 0)
    moved = changed(before, method)
    assert any("lora_B" in n for n in moved) and any(".up.0." in n for n in moved)
    assert not any(".up.1." in n or ".down.1." in n for n in moved)
    assert not any("vision_tower" in n and "mmcl_branches" not in n and "lora" not in n for n in moved)


def test_a_scenario_branch_is_reopened_not_reinitialised(tiny_llava_dir: Path) -> None:
    method = make(tiny_llava_dir, "method.lm_lora=false")
    train_stage(method, 0)
    branch0 = {n: p.detach().clone() for n, p in method.model.named_parameters() if ".up.0." in n}
    assert all(p.abs().sum() > 0 for p in branch0.values()), "branch 0 did not learn in its first step"
    train_stage(method, 1)
    method.before_task(2, method.ctx.benchmark.tasks[2])  # high-altitude again: the same branch
    assert method.vision.branch == 0
    params = dict(method.model.named_parameters())
    for n, w in branch0.items():  # reopened exactly as it was left, and trainable again
        assert torch.equal(params[n].detach(), w) and params[n].requires_grad, n
    assert not any(p.requires_grad for n, p in params.items() if ".up.1." in n or ".down.1." in n)
    train_stage(method, 2)
    assert any(not torch.equal(params[n].detach(), w) for n, w in branch0.items()), "branch 0 did not train"


def test_every_trainable_part_gets_gradient_after_the_first_step(tiny_llava_dir: Path) -> None:
    method = make(tiny_llava_dir, "method.lm_lora=false", "train.max_steps=1")
    train_stage(method, 0)  # one step: up-projections leave zero
    task = method.ctx.benchmark.tasks[0]
    method.before_task(0, task)
    batch = a_batch(method)
    out = method.model.train()(**batch)
    loss = out.loss + method.extra_loss(batch, out, 0)
    loss.backward()
    params = dict(method.model.named_parameters())
    for name in method.model.state_dict():
        if re.search(r"mmcl_branches\.((down|up)\.0|proj)\.", name):
            grad = params[name].grad
            assert grad is not None and grad.abs().sum() > 0, f"{name} gets no gradient"
    method.after_task(0, task)


def test_consistency_is_zero_when_all_branches_are_equal() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    equal = BranchOutputs(branches=[x.clone() for _ in range(4)], projected=x.clone())
    assert consistency_loss([equal], tau=1.0).item() == pytest.approx(0.0, abs=1e-7)
    assert consistency_loss([equal], tau=2.0, teacher=[equal]).item() == pytest.approx(0.0, abs=1e-7)
    differ = BranchOutputs(branches=[x + i * torch.randn(2, 5, 8) for i in range(4)], projected=x)
    assert consistency_loss([differ], tau=1.0).item() > 1e-3
    moved = BranchOutputs(branches=equal.branches, projected=x + torch.randn(2, 5, 8))
    assert consistency_loss([moved], tau=1.0, teacher=[equal]).item() > 1e-3
    # A packed [tokens, d] sequence (Qwen2-VL) counts as one sample.
    assert two_channel_kl(x[0], x[0] + 1.0, 1.0).item() == pytest.approx(
        two_channel_kl(x[:1], x[:1] + 1.0, 1.0).item()
    )


def test_vcc_gradient_reaches_only_the_active_branch_and_projections(tiny_llava_dir: Path) -> None:
    method = make(tiny_llava_dir, "method.lm_lora=false", "method.lambda_vcc=1.0")
    train_stage(method, 0)
    task = method.ctx.benchmark.tasks[1]
    method.before_task(1, task)  # branch 1, teacher = the model after step 0
    batch = a_batch(method, 1)
    out = method.model.train()(**batch)
    with torch.no_grad():
        at_start = method.extra_loss(batch, out, 1)
    assert method.vision.branches is not None and method.vision.branches.has_teacher
    # The student equals its teacher at the start of the step, so L_p is 0; L_c is not (branch 0
    # learned, branch 1 is still zero).
    assert at_start.item() > 0
    vcc = method.extra_loss(batch, method.model(**batch), 1)
    method.model.zero_grad()
    vcc.backward()
    for name, p in method.model.named_parameters():
        if p.grad is not None and p.grad.abs().sum() > 0:
            assert re.search(r"mmcl_branches\.((down|up)\.1|proj)\.", name), name
    method.after_task(1, task)


def test_projector_term_is_zero_against_an_identical_teacher(tiny_llava_dir: Path) -> None:
    method = make(tiny_llava_dir, "method.lm_lora=false")
    train_stage(method, 0)
    method.before_task(1, method.ctx.benchmark.tasks[1])
    assert method.vision.branches is not None
    batch = a_batch(method, 1)
    method.model.eval()
    with torch.no_grad():
        method.model(**batch)
        student = method.vision.branches.recorded()
        teacher = method.vision.branches.teacher_outputs(lambda: method.vision.vision_forward({"pixel_values": batch["pixel_values"]}))
    for s, t in zip(student, teacher, strict=True):
        torch.testing.assert_close(s.projected, t.projected)
        assert two_channel_kl(t.projected, s.projected, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_state_dict_round_trip_and_cost(tiny_llava_dir: Path) -> None:
    method = make(tiny_llava_dir, "method.lm_lora=false")
    train_stage(method, 0)
    state = method.state_dict()
    other = make(tiny_llava_dir, "method.lm_lora=false")
    other.load_state_dict(state)
    for k, v in other.state_dict()["branches"].items():
        torch.testing.assert_close(v, state["branches"][k])
    cost = method.cost()
    assert cost["branches"] == 2 and cost["params_per_branch"] > 0 and cost["shared_projection_params"] > 0
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"branches": {}})


def test_too_few_branches_for_the_stream_is_refused(tiny_llava_dir: Path) -> None:
    with pytest.raises(ValueError, match="num_branches=1 is smaller than the 2 scenarios"):
        make(tiny_llava_dir, "method.num_branches=1")


@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
def test_end_to_end_quick_run(tiny_llava_dir: Path, tmp_path: Path) -> None:
    results = run_quick(tiny_llava_dir, tmp_path / "run", "method.name=unifier")
    assert results["method"] == "unifier"
    assert len(results["matrix"]["primary"]) == 3
    assert results["cost"]["branches"] == 3 and results["cost"]["held_bytes"]["teacher_branches"] > 0


def _tiny_qwen(kind: str):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    text = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=200, rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]},
    )
    common = dict(depth=2, num_heads=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    tokens = dict(image_token_id=199, video_token_id=198, vision_start_token_id=197)
    torch.manual_seed(0)
    if kind == "qwen2-vl":
        vision = dict(common, embed_dim=32, hidden_size=64, mlp_ratio=2)
        return Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision, **tokens))
    vision = dict(common, hidden_size=32, out_hidden_size=64, intermediate_size=64, window_size=16,
                  fullatt_block_indexes=[1])
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens))


@pytest.mark.parametrize("kind", ["qwen2-vl", "qwen2.5-vl"])
def test_branches_wrap_qwen_vision_blocks(kind: str) -> None:
    model = _tiny_qwen(kind).eval()
    grid = torch.tensor([[1, 4, 4]])
    pixels = torch.randn(16, 3 * 2 * 4 * 4)

    def features() -> torch.Tensor:
        out = model.get_image_features(pixel_values=pixels, image_grid_thw=grid)
        return torch.cat(list(out.pooler_output))

    before = features()
    branches = install_branches(model, num_branches=4, bottleneck=8)
    assert [s.name for s in branches.slots] == ["model.visual.blocks.0", "model.visual.blocks.1"]
    assert all(isinstance(m, BranchModule) and m.dim == 32 for m in branches.modules)
    torch.testing.assert_close(features(), before, rtol=0, atol=0)

    # Train branch 2 one step: only it and the projections move, and the features change.
    for p in model.parameters():
        p.requires_grad_(False)
    branches.set_trainable(2)
    branches.set_record(True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    for _ in range(2):
        out = features()
        loss = out.pow(2).mean() + consistency_loss(branches.recorded(), tau=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    branches.set_record(False)
    assert not torch.allclose(features(), before)
    for m in branches.modules:
        assert m.up[2].weight.abs().sum() > 0
        assert all(m.up[k].weight.abs().sum() == 0 for k in (0, 1, 3))
    with branches.disabled():
        torch.testing.assert_close(features(), before, rtol=0, atol=0)


# ---------------------------------------------------------------- unifier-quad


def test_unifier_quad_teacher_is_the_whole_previous_model(tiny_llava_dir: Path) -> None:
    from mmcl.methods.unifier_quad import UnifierQuad

    method = build_test_method(tiny_llava_dir, "unifier-quad", ORDER)
    assert isinstance(method, UnifierQuad)
    train_stage(method, 0)
    method.before_task(1, method.ctx.benchmark.tasks[1])
    assert method.replay.pairs and method.vision.branches is not None and method.vision.branches.has_teacher
    replay = method.replay.replay_batch(torch.device("cpu"))
    method.model.eval()
    with torch.no_grad():
        kl, attention = method.replay.stability_losses(replay)  # the student still is the teacher
    assert kl.item() == pytest.approx(0.0, abs=1e-6) and attention.item() == pytest.approx(0.0, abs=1e-6)
    teacher_before = method.replay.teacher.logits(replay)
    with torch.no_grad():  # move the live branches only: the teacher (its own frozen copies) must not move
        for m in method.vision.branches.modules:
            m.up[0].weight.add_(0.5)
    torch.testing.assert_close(method.replay.teacher.logits(replay), teacher_before)
    with torch.no_grad():
        kl, _ = method.replay.stability_losses(replay)
    assert kl.item() > 1e-4, "the student's changed branches did not show in the replay distillation"


def test_unifier_quad_needs_the_lm_lora(tiny_llava_dir: Path) -> None:
    with pytest.raises(ValueError, match="lm_lora must be true"):
        build_test_method(tiny_llava_dir, "unifier-quad", ORDER, "method.lm_lora=false", setup=False)


@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
def test_unifier_quad_end_to_end(tiny_llava_dir: Path, tmp_path: Path) -> None:
    results = run_quick(tiny_llava_dir, tmp_path / "run", "method.name=unifier-quad")
    cost = results["cost"]
    assert results["method"] == "unifier-quad" and len(results["matrix"]["primary"]) == 3
    assert cost["branches"] == 3 and cost["questions_stored"] > 0
    assert cost["held_bytes"]["teacher_branches"] > 0 and cost["held_bytes"]["teacher_adapter"] > 0


@pytest.mark.slow  # an end-to-end run: CI's full suite, not the inner loop
@pytest.mark.parametrize("method", ["unifier", "unifier-quad"])
def test_branches_off_track_answers_again_without_the_branches(tiny_llava_dir: Path, tmp_path: Path, method: str) -> None:
    import json

    results = run_quick(tiny_llava_dir, tmp_path / "run", f"method.name={method}", "method.branches_off_track=true",
                        "train.lr=0.01")
    m = results["matrix"]
    zero = results["zero_shot"]
    assert zero["branches_off_changed"] == [0.0] * len(zero["primary"])  # untrained branches add nothing
    assert zero["branches_off"] == zero["primary"]
    assert all(0.0 <= v <= 1.0 for row in m["branches_off_changed"] for v in row)
    assert len(m["branches_off"]) == len(m["primary"])
    stage = sorted((tmp_path / "run" / "predictions").glob("stage-*"))[-1]
    rows = [json.loads(line) for f in sorted(stage.glob("*.jsonl")) for line in f.read_text().splitlines()]
    for r in rows:  # each row: the answer without branches, and whether it differs
        assert r["tracks"]["branches_off_changed"] == float(r["branches_off_prediction"] != r["prediction"])
    without = run_quick(tiny_llava_dir, tmp_path / "plain", f"method.name={method}", "train.lr=0.01")
    assert without["matrix"]["primary"] == m["primary"]  # the extra answers change nothing else
    assert "branches_off" not in without["matrix"]
