"""End to end on the Continual-NExT stream: a tiny random Janus learns text and image answers in one
run; results.json gets the modality pairs, the error-class tracks and the Continual-NExT summary;
the generated images are saved and shown in report.md; MAGE trains exactly the gated experts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import small_janus_size

from mmcl.benchmarks.continual_next.protocol import compare_cnext
from mmcl.config import load_config
from mmcl.runner import Runner

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "continual-next-quick.yaml"
SMALL = small_janus_size()


@pytest.fixture(scope="module")
def janus_dir(tiny_janus_dir: Path) -> Path:
    return tiny_janus_dir


def overrides(model_dir: Path, *extra: str) -> list[str]:
    return [f"model.path={model_dir}", "model.preset=null", "benchmark.train_size=8", "benchmark.test_size=3",
            "train.max_steps=2", "train.batch_size=4", "eval.batch_size=8", *extra]


def run(model_dir: Path, out: Path, *extra: str) -> dict:
    cfg = load_config([CONFIG], overrides=overrides(model_dir, *extra))
    Runner(cfg, output_dir=out).run()
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow  # ~7 s each: Janus runs on the stream
@pytest.mark.parametrize("method", ["lora-ft", "mage", "lwf"])
def test_a_run_on_the_stream_records_images_error_classes_and_the_summary(
    janus_dir: Path, tmp_path: Path, method: str
) -> None:
    res = run(janus_dir, tmp_path / method, f"method.name={method}")
    assert res["tasks"] == ["vqa", "classification", "t2i", "ocr-vqa", "grounding", "editing"]
    assert res["modality_pairs"][2] == "text->image" and res["modality_pairs"][5] == "image+text->image"
    for track in ("hal", "iuf", "oth"):
        assert len(res["matrix"][track]) == 6
    summary = res["continual_next"]
    assert set(summary) >= {"Avg.ACC", "Forgetting", "New.ACC", "Avg.HAL", "Avg.IUF", "Avg.OTH",
                            "transfer_same_pair", "transfer_different_pair"}
    assert summary["Avg.ACC"] == pytest.approx(res["metrics"]["primary"]["last"])
    # every seen answer falls in exactly one class: correct + HAL + IUF + OTH = 1 per cell
    rows = [json.loads(x) for x in (tmp_path / method / "predictions" / "stage-06" / "t2i.jsonl").read_text().splitlines()]
    for r in rows:
        assert sum(r["tracks"].values()) == (0 if r["error_class"] == "correct" else 1)
        if r["prediction"] == "<image>":
            assert (tmp_path / method / r["image"]).is_file()
    report = (tmp_path / method / "report.md").read_text()
    assert "## Continual-NExT metrics" in report and "Avg.HAL" in report
    if method == "mage":  # gating from each task's modalities, on the real stream
        assert res["cost"]["trained_experts"] == {
            "0": ["gen_text_in", "gen_image_in", "exp_text_out"], "1": ["gen_text_in", "gen_image_in", "exp_text_out"],
            "2": ["gen_text_in", "exp_image_out"], "3": ["gen_text_in", "gen_image_in", "exp_text_out"],
            "4": ["gen_text_in", "gen_image_in", "exp_text_out"], "5": ["gen_text_in", "gen_image_in", "exp_image_out"]}
    cmp = compare_cnext([tmp_path / method], out_dir=tmp_path / "cmp")
    stats = cmp["rows"][0]["stats"]
    assert stats["Avg.HAL"]["mean"] == pytest.approx(summary["Avg.HAL"]) and stats["Avg.HAL"]["n"] == 1
    assert f"| {100 * summary['Avg.IUF']:.1f} |" in (tmp_path / "cmp" / "protocol-cnext.md").read_text()


def test_a_stream_with_image_answers_refuses_a_model_without_an_image_head(tiny_llava_dir: Path, tmp_path: Path) -> None:
    cfg = load_config([CONFIG],
                      overrides=[f"model.path={tiny_llava_dir}", "model.preset=null", "benchmark.train_size=4",
                                 "benchmark.test_size=2"])
    with pytest.raises(ValueError, match="image generation head"):
        Runner(cfg, output_dir=tmp_path / "r")


def test_a_method_without_image_answers_is_refused_before_anything_runs(janus_dir: Path, tmp_path: Path) -> None:
    cfg = load_config([CONFIG], overrides=overrides(janus_dir, "method.name=quad"))
    with pytest.raises(ValueError, match="'quad' does not support tasks answered with images .*methods that do: .*mage"):
        Runner(cfg, output_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------- a Janus checkpoint not made by mmcl
REAL_SPECIAL = {"bos": "<｜begin▁of▁sentence｜>", "eos": "<｜end▁of▁sentence｜>", "pad": "<｜▁pad▁｜>"}


@pytest.fixture(scope="module")
def foreign_janus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``JanusForConditionalGeneration`` + ``JanusProcessor`` saved with ``save_pretrained`` the way a
    converted Janus checkpoint is, not by mmcl's tiny-Janus builder: the released checkpoints' special
    token names, transformers' default generation config (no ``boi_token_id``), no chat template, the
    VQ's default (1, 1, 2, 2, 4)-style downsampling (here 8x) and images of another size than the
    stream's (32 px model, 64 px scenes: the targets are resized to the model, its images to the judge)."""
    import torch
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusImageProcessor,
        JanusProcessor,
        PreTrainedTokenizerFast,
    )

    from mmcl.models import tiny_janus as tj
    from mmcl.models.tokenizer import train_tokenizer

    torch.set_num_threads(1)
    backend = train_tokenizer(tj.tokenizer_corpus(), vocab_size=400).backend_tokenizer
    backend.add_special_tokens([*REAL_SPECIAL.values(), *tj.JANUS_SPECIAL_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=REAL_SPECIAL["bos"], eos_token=REAL_SPECIAL["eos"],
        pad_token=REAL_SPECIAL["pad"], unk_token="<unk>", padding_side="left",
        extra_special_tokens={"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
                              "eoi_token": "<end_of_image>"})
    config = JanusConfig(
        text_config=dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, vocab_size=len(tok),
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
                           projection_dim=64, num_image_tokens=16),
        vq_config=dict(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32,
                       channel_multiplier=[1, 1, 2, 2], num_res_blocks=1, projection_dim=64, image_token_embed_dim=64),
        image_token_id=tok.convert_tokens_to_ids("<image_placeholder>"))
    torch.manual_seed(0)
    model = JanusForConditionalGeneration(config)
    processor = JanusProcessor(image_processor=JanusImageProcessor(size={"height": 32, "width": 32}, min_size=8),
                               tokenizer=tok, num_image_tokens=16)
    out = tmp_path_factory.mktemp("foreign-janus")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.mark.slow  # ~7 s
def test_a_janus_checkpoint_from_model_path_trains_and_generates_images(foreign_janus_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    from mmcl.models.dual import supports_image_output
    from mmcl.models.loader import load_model

    cfg = load_config([CONFIG], overrides=overrides(foreign_janus_dir, "method.name=mage"))
    bundle = load_model(cfg.model)
    assert bundle.family.name == "janus" and supports_image_output(bundle.model)
    assert bundle.model.generation_config.generation_kwargs["boi_token_id"] == \
        bundle.processor.tokenizer.convert_tokens_to_ids("<begin_of_image>")
    # image answers by task (Janus' own pipeline): t2i and editing are answered with images at every stage
    out = tmp_path / "r"
    res = run(foreign_janus_dir, out, "method.name=mage", "benchmark.modality_order=alternating",
              "eval.image_answers=task")
    assert res["tasks"] == ["vqa", "t2i", "classification", "editing", "ocr-vqa", "grounding"]
    assert all(s["steps"] == 2 for s in res["stage_stats"])
    for stage in range(1, 7):
        for task in ("t2i", "editing"):
            rows = [json.loads(x) for x in
                    (out / "predictions" / f"stage-{stage:02d}" / f"{task}.jsonl").read_text().splitlines()]
            assert len(rows) == 3 and all(r["prediction"] == "<image>" for r in rows)
            for r in rows:  # saved at the checkpoint's own image size (32 px), judged after resizing
                assert Image.open(out / r["image"]).size == (32, 32)
                assert r["error_class"] != "instruction_unfollowing"  # an image where one is asked
    assert "## Continual-NExT metrics" in (out / "report.md").read_text()
    t2i, editing = res["tasks"].index("t2i"), res["tasks"].index("editing")
    assert res["cost"]["trained_experts"][str(t2i)] == ["gen_text_in", "exp_image_out"]
    assert res["cost"]["trained_experts"][str(editing)] == ["gen_text_in", "gen_image_in", "exp_image_out"]
    assert res["cost"]["pema"]["mode"] == "adaptive" and len(res["cost"]["pema"]["per_task"]) == 5


def test_image_answers_by_task_train_the_image_head_of_the_checkpoint(foreign_janus_dir: Path, tmp_path: Path) -> None:
    """lora-ft on t2i alone: the generation head's loss is part of training (the image answers move)."""
    import torch
    from accelerate import Accelerator

    from mmcl.benchmarks.builtin import build_benchmark
    from mmcl.eval.dual import generate_images_for
    from mmcl.methods import RunContext, build_method
    from mmcl.models.loader import load_model
    from mmcl.train.encode import Encoder
    from mmcl.train.loop import train_on

    cfg = load_config([CONFIG], overrides=overrides(foreign_janus_dir, "method.name=lora-ft", "benchmark.tasks=[t2i]",
                                                     "train.max_steps=4", "train.lr=0.01"))
    bundle = load_model(cfg.model)
    method = build_method(RunContext(cfg, bundle, build_benchmark(cfg), seed=0))
    method.model = method.setup(bundle.model)
    task = method.ctx.benchmark.tasks[0]
    enc = Encoder.for_bundle(bundle)
    train = enc.encode(task.train, with_answer=True)
    assert all(e.image_target is not None and e.image_target.numel() == 16 for e in train)
    prompts = enc.encode(task.test, with_answer=False)
    boi = bundle.processor.tokenizer.convert_tokens_to_ids("<begin_of_image>")
    pad = bundle.processor.tokenizer.pad_token_id

    def pixels() -> torch.Tensor:
        ims = generate_images_for(method.model, prompts, pad, boi, batch_size=8, cfg_scale=1.5)
        return torch.stack([torch.tensor(list(im.getdata()), dtype=torch.float32) for im in ims])

    before = pixels()
    stats = train_on(method, train, cfg.train, Accelerator(cpu=True), 0, 0, pad)
    assert stats.steps == 4 and stats.final_loss > 0
    assert not torch.equal(before, pixels())
