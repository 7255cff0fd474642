"""Real model families beyond the tiny preset: LLaVA-1.5, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Janus.

Each test checkpoint is a tiny, randomly initialised model of the real transformers class with a
processor built from local pieces (a BPE tokenizer trained here with the family's special tokens,
the family's image processor at a small image size, a chat template), written with
``save_pretrained`` and loaded back through ``load_model`` (``model.path``), offline.
"""

from __future__ import annotations

import json
import re
import shutil
import string
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import build_test_method, quick_overrides, train_stage
from PIL import Image

from mmcl.config import ModelConfig
from mmcl.data.sample import Sample
from mmcl.eval.generate import generate_answers
from mmcl.models import chat
from mmcl.models.families import FAMILIES
from mmcl.models.loader import ModelLoadError, load_model
from mmcl.train.encode import Encoder, collate_prompts, collate_train

FAMILY_NAMES = ["llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "janus"]
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
# One step on two samples, LoRA on the vision encoder too, and the projector trained.
ONE_STEP = ("train.max_steps=1", "train.batch_size=2", "benchmark.train_per_task=2",
            "model.lora_vision=true", "model.train_projector=true")


def _tokenizer(specials: list[str], pad: str, eos: str, bos: str | None = None, extra: dict | None = None):
    """A small BPE tokenizer trained on the msvqa-synth corpus with the family's special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mmcl.benchmarks.msvqa.synth import tokenizer_corpus
    from mmcl.models.tokenizer import PRETOKENIZE_PATTERN

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated")
    tok.decoder = decoders.BPEDecoder()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", *specials],
                                  initial_alphabet=list(string.printable), show_progress=False)
    tok.train_from_iterator(list(tokenizer_corpus(0))[:2000], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token=pad, eos_token=eos,
                                   bos_token=bos, extra_special_tokens=extra or {}, padding_side="left")


def _text_config(tok, **extra) -> dict:
    return dict(TEXT, vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                bos_token_id=tok.bos_token_id, **extra)


def _llava_next(out: Path):
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tok = _tokenizer(["<pad>", "<s>", "</s>", "<image>"], "<pad>", "</s>", "<s>", {"image_token": "<image>"})
    pins = [[32, 64], [64, 32], [64, 64]]  # anyres: a 64x64 image -> base + 4 tiles of 32x32
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                              image_grid_pinpoints=pins)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=chat.LLAVA15_CHAT_TEMPLATE)
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32),
        text_config=dict(model_type="llama", **_text_config(tok)), image_token_id=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pins, vision_feature_select_strategy="default", vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return LlavaNextForConditionalGeneration(config), processor


def _qwen(out: Path, family: str):
    import transformers
    from transformers import Qwen2VLImageProcessor
    from transformers.utils import is_torchvision_available

    tok = _tokenizer(QWEN_TOKENS, "<|endoftext|>", "<|im_end|>",
                     extra={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    image_processor = Qwen2VLImageProcessor(min_pixels=16 * 16, max_pixels=32 * 32, patch_size=4,
                                            temporal_patch_size=2, merge_size=2)
    ids = {f"{k}_token_id": tok.convert_tokens_to_ids(f"<|{t}|>") for k, t in
           (("image", "image_pad"), ("video", "video_pad"), ("vision_start", "vision_start"),
            ("vision_end", "vision_end"))}
    text = _text_config(tok, rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]})  # sums to head_dim / 2
    vision = dict(depth=2, num_heads=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    if family == "qwen2-vl":
        vision.update(embed_dim=32, hidden_size=64, mlp_ratio=2)
        prefix = "Qwen2VL"
    else:
        vision.update(hidden_size=32, out_hidden_size=64, intermediate_size=64, window_size=16,
                      fullatt_block_indexes=[1])
        prefix = "Qwen2_5_VL"
    config = getattr(transformers, f"{prefix}Config")(text_config=text, vision_config=vision,
                                                      tie_word_embeddings=False, **ids)
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config)
    processor_class = getattr(transformers, f"{prefix}Processor")
    if is_torchvision_available():
        video = transformers.Qwen2VLVideoProcessor(patch_size=4, temporal_patch_size=2, merge_size=2)
        return model, processor_class(image_processor=image_processor, tokenizer=tok, video_processor=video,
                                      chat_template=chat.QWEN_CHAT_TEMPLATE)
    # transformers' video processors need torchvision, so the processor object cannot be built here:
    # write its pieces as a real checkpoint has them (the loader rebuilds it without video).
    tok.save_pretrained(out)
    image_processor.save_pretrained(out)
    (out / "chat_template.jinja").write_text(chat.QWEN_CHAT_TEMPLATE)
    (out / "processor_config.json").write_text(json.dumps({"processor_class": processor_class.__name__}))
    return model, None


def _janus(out: Path):
    from transformers import JanusConfig, JanusForConditionalGeneration, JanusImageProcessor, JanusProcessor

    tok = _tokenizer(["<pad>", "<s>", "</s>", "<image_placeholder>", "<begin_of_image>", "<end_of_image>"],
                     "<pad>", "</s>", "<s>", {"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
                                              "eoi_token": "<end_of_image>"})
    processor = JanusProcessor(image_processor=JanusImageProcessor(size={"height": 32, "width": 32}, min_size=8),
                               tokenizer=tok, num_image_tokens=16, chat_template=chat.JANUS_CHAT_TEMPLATE)
    config = JanusConfig(
        text_config=dict(model_type="llama", **_text_config(tok)),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
                           projection_dim=64, num_image_tokens=16, depth=2, mlp_ratio=2.0),
        vq_config=dict(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32, channel_multiplier=[1, 1],
                       num_res_blocks=1, projection_dim=64, image_token_embed_dim=64, num_hidden_layers=1),
        image_token_id=tok.convert_tokens_to_ids("<image_placeholder>"), tie_word_embeddings=False,
    )
    return JanusForConditionalGeneration(config), processor


def build_checkpoint(family: str, out: Path) -> Path:
    """Write a tiny random checkpoint + processor of ``family`` to ``out`` with save_pretrained."""
    torch.manual_seed(0)
    if family == "llava-next":
        model, processor = _llava_next(out)
    elif family in ("qwen2-vl", "qwen2.5-vl"):
        model, processor = _qwen(out, family)
    elif family == "janus":
        model, processor = _janus(out)
    else:
        raise ValueError(family)
    tok_pad = processor.tokenizer.pad_token_id if processor is not None else model.config.text_config.pad_token_id
    model.generation_config.pad_token_id = tok_pad
    model.save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def checkpoint(tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``checkpoint(family)``: the family's test checkpoint directory, built once per module."""
    built = {"llava": tiny_llava_dir}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_checkpoint(family, tmp_path_factory.mktemp(family))
        return built[family]

    return get


def _image_token_id(model) -> int:
    return model.config.image_token_id


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_family_loads_encodes_trains_and_generates(family: str, checkpoint) -> None:
    fam = FAMILIES[family]
    method = build_test_method(checkpoint(family), "lora-ft", *ONE_STEP)
    bundle = method.ctx.bundle
    assert bundle.family is fam and type(bundle.model).__name__ == fam.model_class
    assert type(bundle.processor).__name__ == fam.processor_class and bundle.processor.chat_template
    assert bundle.tokenizer.padding_side == "left"

    # Encoding two msvqa-synth samples: the loss sits on the answer, the vision tensors batch.
    samples = method.ctx.benchmark.tasks[0].train[:2]
    encoded = Encoder(bundle.processor).encode(samples, with_answer=True)
    batch = collate_train(encoded, bundle.tokenizer.pad_token_id)
    n_image_tokens = (batch["input_ids"] == _image_token_id(bundle.model)).sum(dim=1)
    pixels = batch["pixel_values"]
    if family.startswith("qwen"):
        grid = batch["image_grid_thw"]
        assert pixels.dim() == 2 and grid.shape == (2, 3) and pixels.shape[0] == int(grid.prod(-1).sum())
        assert n_image_tokens.tolist() == (grid.prod(-1) // 4).tolist()  # 2x2 patches merge into one token
        assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == _image_token_id(bundle.model))
    elif family == "llava-next":
        assert pixels.dim() == 5 and pixels.shape[:2] == (2, 5) and batch["image_sizes"].tolist() == [[64, 64]] * 2
    else:
        assert pixels.dim() == 4 and pixels.shape[0] == 2
        assert n_image_tokens.tolist() == [64 if family == "llava" else 16] * 2
    prompt = bundle.tokenizer.decode(encoded[0].input_ids[: encoded[0].prompt_len])
    target = encoded[0].labels[encoded[0].labels != -100]
    assert bundle.tokenizer.decode(target, skip_special_tokens=True).strip() == samples[0].answers[0]
    if family.startswith("qwen"):
        assert prompt.endswith("<|im_start|>assistant\n") and "<|vision_start|><|image_pad|>" in prompt

    # One training step of lora-ft through the shared loop: LoRA (LM and vision) and projector move.
    model = method.model
    lora = {n for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert any(re.fullmatch(fam.lora_targets, n.removeprefix("base_model.model.")) for n in lora)
    assert any(re.fullmatch(fam.vision_lora_targets, n.removeprefix("base_model.model.")) for n in lora)
    assert all("generation" not in n and "vqmodel" not in n for n in lora)  # Janus: understanding path only
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all("generation" not in n for n in before), "Janus' generation aligner/head must stay frozen"
    stats = train_stage(method, 0)
    assert stats.steps == 1 and stats.samples == 2 and stats.final_loss == stats.final_loss  # not NaN
    moved = {n for n, p in model.named_parameters() if n in before and not torch.equal(before[n], p.detach())}
    projector = fam.projector.rsplit(".", 1)[-1]
    assert any("lora_B" in n and "language_model" in n for n in moved)
    assert any("lora_B" in n and re.search(r"vision|visual", n) for n in moved)
    assert any(f"{projector}.modules_to_save" in n for n in moved), f"the projector {fam.projector} did not train"

    # Batched greedy generation (left padding, KV cache) equals one prompt at a time.
    prompts = Encoder(bundle.processor).encode(samples, with_answer=False)
    batched = generate_answers(model, bundle.tokenizer, prompts, batch_size=2, max_new_tokens=4)
    single = [generate_answers(model, bundle.tokenizer, [p], batch_size=1, max_new_tokens=4)[0] for p in prompts]
    assert len(batched) == 2 and batched == single


def test_qwen_packed_patches_split_and_batch_in_sample_order(checkpoint) -> None:
    bundle = load_model(ModelConfig(path=str(checkpoint("qwen2-vl"))))
    sizes = [(64, 64), (40, 64), (64, 24)]  # different grids: 64, 60 and 48 patches
    samples = [Sample(id=str(i), question="What colour is it?", answers=["red"], image=Image.new("RGB", s, "red"))
               for i, s in enumerate(sizes)]
    encoded = Encoder(bundle.processor).encode(samples, with_answer=False)
    whole = bundle.processor(text=[chat.build_prompt(bundle.processor, s, True) for s in samples],
                             images=[s.load_image() for s in samples], return_tensors="pt", padding=True)
    grids = [e.vision["image_grid_thw"] for e in encoded]
    assert [int(g.prod()) for g in grids] == [e.vision["pixel_values"].shape[0] for e in encoded] == [64, 60, 48]
    batch = collate_prompts(encoded, bundle.tokenizer.pad_token_id)
    assert torch.equal(batch["pixel_values"], whole["pixel_values"])
    assert torch.equal(batch["image_grid_thw"], whole["image_grid_thw"])
    # a batch of the second and first samples concatenates their patches in that order
    swapped = collate_prompts([encoded[1], encoded[0]], bundle.tokenizer.pad_token_id)
    assert torch.equal(swapped["pixel_values"][:60], encoded[1].vision["pixel_values"])
    assert swapped["image_grid_thw"].tolist() == [grids[1][0].tolist(), grids[0][0].tolist()]
    with torch.no_grad():
        assert bundle.model(**batch).logits.shape[:2] == batch["input_ids"].shape
    with pytest.raises(ValueError, match="do not match image_grid_thw"):
        Encoder._split_vision({"pixel_values": whole["pixel_values"][:-4], "image_grid_thw": whole["image_grid_thw"]}, 3)


def test_llava_next_anyres_patches_are_padded_when_batching(checkpoint) -> None:
    bundle = load_model(ModelConfig(path=str(checkpoint("llava-next"))))
    # a square image uses the 64x64 pinpoint (4 tiles), a wide one 64x32 (2 tiles); plus the base image
    samples = [Sample(id="sq", question="Colour?", answers=["red"], image=Image.new("RGB", (64, 64), "red")),
               Sample(id="wide", question="Colour?", answers=["blue"], image=Image.new("RGB", (64, 30), "blue"))]
    enc = [Encoder(bundle.processor).encode([s], with_answer=True)[0] for s in samples]  # encoded apart
    assert [e.vision["pixel_values"].shape[1] for e in enc] == [5, 3]
    batch = collate_train(enc, bundle.tokenizer.pad_token_id)
    assert batch["pixel_values"].shape == (2, 5, 3, 32, 32) and batch["image_sizes"].tolist() == [[64, 64], [30, 64]]
    assert torch.equal(batch["pixel_values"][1, :3], enc[1].vision["pixel_values"][0])
    assert not batch["pixel_values"][1, 3:].any()  # zero padding, never read by the model
    loss = bundle.model(**batch).loss
    assert torch.isfinite(loss)


def test_family_template_when_the_checkpoint_has_none(checkpoint, tmp_path: Path) -> None:
    src = checkpoint("qwen2.5-vl")
    dst = tmp_path / "no-template"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("chat_template.*"))
    bundle = load_model(ModelConfig(path=str(dst)))
    assert bundle.processor.chat_template == chat.QWEN_CHAT_TEMPLATE


def test_family_detected_from_architectures_and_unsupported_refused(checkpoint, tmp_path: Path) -> None:
    src = checkpoint("janus")
    cfg = json.loads((src / "config.json").read_text())
    renamed = tmp_path / "renamed"
    shutil.copytree(src, renamed)
    (renamed / "config.json").write_text(json.dumps({**cfg, "model_type": "janus_pro_custom"}))
    from mmcl.models.loader import _detect_family

    assert _detect_family(renamed).name == "janus"  # architectures: JanusForConditionalGeneration

    other = tmp_path / "blip"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "blip-2", "architectures": ["Blip2Model"]}))
    with pytest.raises(ModelLoadError, match="not supported; supported families: llava .*qwen2-vl.*janus"):
        load_model(ModelConfig(path=str(other)))


@pytest.mark.slow
def test_end_to_end_mmcl_run_on_qwen2_vl(checkpoint, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mmcl.cli import app

    out = tmp_path / "run"
    args = ["run", "--output", str(out)]
    for o in quick_overrides(checkpoint("qwen2-vl"), "train.max_steps=2", "benchmark.test_per_task=4"):
        args += ["--set", o]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "lora-ft"
    prim = results["matrix"]["primary"]
    assert len(prim) == 3 and all(len(r) == 3 and all(v is not None for v in r) for r in prim)
    preds = (out / "predictions" / "stage-03").glob("*.jsonl")
    assert sum(len(p.read_text().splitlines()) for p in preds) == 12
