"""The dual-to-dual base (tiny Janus), the image generation helper and the independent image judge.

The model tests use a randomly initialised tiny config written with ``save_pretrained`` in a
temporary directory (not the pre-trained asset), so they are fast and offline.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmcl.eval.generate_image import NoImageProduced, generate_images, generate_images_or_none
from mmcl.eval.image_judge import attributes_from_caption, edit_score, t2i_score
from mmcl.models import tiny_janus as tj
from mmcl.models.image_judge import load_judge, save_judge
from mmcl.pretrain import janus as pj
from mmcl.pretrain.judge import JudgeRecipe, train_judge
from mmcl.synth import janus_world as world

SMALL = tj.TinyJanusSize(patch_size=16, vision_hidden=32, vision_layers=1, vision_heads=2, vq_codebook=64,
                         text_hidden=64, text_layers=2, text_heads=2, text_intermediate=128)


@pytest.fixture(scope="module")
def janus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    tok = tj.build_tokenizer(SMALL.vocab_size)
    out = tmp_path_factory.mktemp("tiny-janus")
    tj.save_tiny_janus(tj.build_model(tok, SMALL, seed=0), tj.build_processor(tok, SMALL), out)
    return out


def test_generates_an_image_for_a_generation_prompt_and_text_for_a_question(janus_dir: Path) -> None:
    model, processor = tj.load_tiny_janus(janus_dir)
    captions = ["a red circle at the top left on a white background.", "a blue bar in the center on a gray background."]
    images = generate_images(model, processor, captions, cfg_scale=3.0)
    assert len(images) == 2 and all(isinstance(im, Image.Image) and im.size == (64, 64) for im in images)
    sampled = generate_images(model, processor, captions[:1], cfg_scale=3.0, do_sample=True, seed=1)
    assert sampled[0].size == (64, 64)

    prompt = tj.question_prompt(processor, "What colour is the shape?")
    enc = processor(text=[prompt], images=[world.draw_scene(world.all_scenes()[0])], return_tensors="pt")
    assert (enc["input_ids"] == model.config.image_token_id).sum() == SMALL.num_image_tokens
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    new = out[0, enc["input_ids"].shape[1]:]
    assert 0 < len(new) <= 4 and isinstance(processor.tokenizer.decode(new, skip_special_tokens=True), str)


def test_save_load_round_trip(janus_dir: Path, tmp_path: Path) -> None:
    model, processor = tj.load_tiny_janus(janus_dir)
    tj.save_tiny_janus(model, processor, tmp_path / "again")
    again, processor2 = tj.load_tiny_janus(tmp_path / "again")
    sd, sd2 = model.state_dict(), again.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    boi = processor.tokenizer.convert_tokens_to_ids("<begin_of_image>")
    assert again.generation_config.generation_kwargs["boi_token_id"] == boi
    assert processor2.num_image_tokens == SMALL.num_image_tokens == again.config.vision_config.num_image_tokens
    ids, mask = pj._prompt_batch(processor2, ["a green ring on the left on a black background."])
    assert ids[0, -1] == boi
    a = model.generate(input_ids=ids, attention_mask=mask, generation_mode="image", guidance_scale=2.0)
    b = again.generate(input_ids=ids, attention_mask=mask, generation_mode="image", guidance_scale=2.0)
    assert torch.equal(a, b) and a.shape == (1, SMALL.num_image_tokens)


def test_loads_through_the_project_loader(janus_dir: Path) -> None:
    from mmcl.config import ModelConfig
    from mmcl.models.loader import load_model

    bundle = load_model(ModelConfig(path=str(janus_dir)))
    assert bundle.family.name == "janus" and type(bundle.model).__name__ == "JanusForConditionalGeneration"


def test_vq_training_pass_matches_the_inference_round_trip(janus_dir: Path) -> None:
    """Training quantizes the normalised latent against a unit codebook: encode/decode pick the same codes."""
    model, _ = tj.load_tiny_janus(janus_dir)
    x = tj.images_to_tensor([world.draw_scene(s) for s in world.all_scenes()[:3]])
    with torch.no_grad():
        rec_train, _, codes, _ = tj.vq_forward(model.model.vqmodel, x)
    rec, codes_inf = tj.vq_reconstruct(model, x)
    assert torch.equal(codes.view(3, -1), codes_inf)
    assert torch.allclose(rec_train, rec, atol=1e-5)


def test_no_image_is_reported() -> None:
    not_janus = types.SimpleNamespace()
    with pytest.raises(NoImageProduced):
        generate_images(not_janus, None, ["a red circle."])
    assert generate_images_or_none(not_janus, None, ["a", "b"]) == [None, None]


@pytest.mark.slow  # trains for a few seconds: CI's full suite, not the inner loop
def test_judge_accuracy_is_computed_untrained_near_chance_trained_well_above(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    base = dict(n_train=1200, n_heldout=400, width=16, batch_size=32, lr=3e-3)
    untrained = train_judge(JudgeRecipe(steps=0, **base), log=lambda *_: None)
    trained = train_judge(JudgeRecipe(steps=150, **base), log=lambda *_: None)
    u, t = untrained.info["heldout_accuracy"], trained.info["heldout_accuracy"]
    assert u["all"] < 0.05 and max(u["colour"], u["shape"]) < 0.45
    assert t["background"] > 0.9 and t["colour"] > 0.65 and t["position"] > 0.6  # one seed: a loose floor
    assert t["shape"] + t["colour"] + t["position"] + t["background"] > u["shape"] + u["colour"] + u["position"] + u["background"] + 1.5
    save_judge(trained, tmp_path / "judge")
    again = load_judge(tmp_path / "judge")
    imgs = [world.draw_scene(s) for s in world.all_scenes()[:5]]
    assert again(imgs) == trained(imgs)


# Held-out colour accuracy after 150 steps, seeds 0-5, one thread on this CPU: 0.842 0.980 0.800
# 0.827 0.875 0.837 (mean 0.860, sd 0.06); another CPU gave 0.78 at seed 0 (float rounding). The
# mean over seeds 0-2 is 0.874 here; its spread over CPUs and seed sets is about 0.035 (sd / sqrt 3),
# so a floor of 0.78 on the three-seed mean leaves 2.7 of those under the figure measured here.
JUDGE_COLOUR_MEAN_MIN = 0.78


@pytest.mark.slow
def test_judge_colour_over_three_seeds() -> None:
    torch.set_num_threads(1)
    base = dict(n_train=1200, n_heldout=400, width=16, batch_size=32, lr=3e-3, steps=150)
    colour = [train_judge(JudgeRecipe(seed=s, **base), log=lambda *_: None).info["heldout_accuracy"]["colour"]
              for s in range(3)]
    assert sum(colour) / 3 >= JUDGE_COLOUR_MEAN_MIN, colour


class _TruthJudge:
    """A stub judge that 'sees' a fixed answer, to test the scoring arithmetic."""

    def __init__(self, attrs: dict[str, str]):
        self.attrs = attrs

    def __call__(self, images: list) -> list[dict[str, str]]:
        return [dict(self.attrs) for _ in images]


def test_scores() -> None:
    scene = world.Scene("triangle", "red", "at the top left", "white")
    assert attributes_from_caption(scene.caption()) == scene.attributes()
    assert attributes_from_caption("An orange ring at the top on a gray background.") == {
        "shape": "ring", "colour": "orange", "position": "at the top", "background": "gray"}
    img = world.draw_scene(scene)
    judge = _TruthJudge(dict(scene.attributes(), colour="blue"))
    assert t2i_score(judge, None, scene.caption()) == 0.0
    assert t2i_score(judge, img, scene.caption()) == pytest.approx(0.75)
    assert t2i_score(judge, img, {"shape": "triangle"}) == 1.0
    assert edit_score(judge, None, img) == 0.0
    assert edit_score(_TruthJudge(scene.attributes()), img, img, scene.attributes()) == pytest.approx(1.0)
    other = world.draw_scene(world.Scene("triangle", "red", "at the top left", "black"))
    s = edit_score(_TruthJudge(scene.attributes()), other, img, scene.attributes(), weight=0.5)
    assert 0.5 < s < 1.0


def test_modality_decision_loss_teaches_begin_of_image_first(janus_dir: Path) -> None:
    """A few steps of the LM's modality-decision term make ``<begin_of_image>`` the likelier first text token
    after a generation prompt (and leave the CFG-dropped rows out of it)."""
    torch.manual_seed(0)
    model, processor = tj.load_tiny_janus(janus_dir)
    boi = processor.tokenizer.convert_tokens_to_ids("<begin_of_image>")
    captions = ["a red circle at the top left on a white background.", "a blue bar in the center on a gray background."]
    text = processor(text=[tj.generation_prompt(processor, captions[0])], return_tensors="pt")

    def boi_logprob() -> float:
        with torch.no_grad():
            return float(model(**text).logits[0, -1].log_softmax(-1)[boi])

    ids, mask = pj._prompt_batch(processor, captions)
    codes = torch.randint(SMALL.vq_codebook, (2, SMALL.num_image_tokens))
    _, none = tj.t2i_and_modality_loss(model, ids, mask, codes, decide=torch.tensor([False, False]))
    assert float(none.detach()) == 0.0
    before = boi_logprob()
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(5):
        l_img, l_boi = tj.t2i_and_modality_loss(model, ids, mask, codes, decide=torch.tensor([True, True]))
        opt.zero_grad()
        (l_img + l_boi).backward()
        opt.step()
    model.eval()
    after = boi_logprob()
    assert after > before + 1.0
    assert pj.first_text_tokens(model, processor, [tj.generation_prompt(processor, captions[0])]) == [boi]


ASSET = Path(tj.__file__).resolve().parent.parent / "assets" / "tiny-janus"


def test_shipped_tiny_janus_generates_what_its_record_claims() -> None:
    """The shipped pre-trained asset loads and its recorded figures hold when re-measured here on 16
    held-out combinations with the shipped judge: the modality decision; ``encode`` returns the
    LM's canonical targets (recorded 0.999 of the cells); the generated images read right for
    colour, position and background (recorded 1.0 each; shape 0.65, the decoder's own ceiling);
    a judge score near the recorded 0.91 (the target was 0.8); captions exactly right (recorded 1.0)."""
    import json

    from mmcl.eval.image_judge import evaluate_text_to_image
    from mmcl.models.image_judge import default_judge_dir

    torch.set_num_threads(1)
    assert (ASSET / "model.safetensors").exists() and (ASSET / "pretrain_janus.json").exists()
    info = json.loads((ASSET / "pretrain_janus.json").read_text())
    res, recipe = info["results"], info["recipe"]
    assert res["judge_t2i_heldout"]["cfg_scale"] == recipe["cfg_scale"]
    decision = res["modality_decision_heldout"]
    assert decision["generation_prompt_first_token_boi"] >= 0.95 and decision["caption_question_first_token_not_boi"] >= 0.95
    model, processor = tj.load_tiny_janus(ASSET)
    judge = load_judge(default_judge_dir())
    assert min(judge.info["heldout_accuracy"][k] for k in world.ATTRIBUTES) >= 0.95
    _, held = pj.heldout_split(recipe["seed"], recipe["heldout_fraction"])
    assert [s.caption() for s in held] == res["heldout_captions"]
    sub = held[:: max(1, len(held) // 16)][:16]
    got = evaluate_text_to_image(model, processor, judge, [s.caption() for s in sub], cfg_scale=recipe["cfg_scale"])
    boi = processor.tokenizer.convert_tokens_to_ids("<begin_of_image>")
    first = pj.first_text_tokens(model, processor, [tj.generation_prompt(processor, s.caption()) for s in sub[:4]])
    assert first == [boi] * 4
    assert all(got["per_attribute"][k] >= 0.9 for k in ("colour", "position", "background")), got
    assert res["judge_t2i_heldout"]["t2i_score"] >= 0.8
    assert abs(got["t2i_score"] - res["judge_t2i_heldout"]["t2i_score"]) <= 0.1, got
    assert pj.encode_agreement(model, sub)["all"] >= 0.99
    assert pj.caption_accuracy(model, processor, sub) >= 0.9



def test_reuse_image_stages_loads_the_vq_and_the_warmed_up_encoder_only(janus_dir: Path, tmp_path: Path) -> None:
    import json
    from dataclasses import asdict

    from safetensors.torch import save_file

    torch.set_num_threads(1)
    recipe = pj.JanusPretrainRecipe(size=SMALL)
    trained, processor = tj.load_tiny_janus(janus_dir)
    with torch.no_grad():  # stand-in for trained weights: every tensor moved, LM included
        for t in trained.parameters():
            t.add_(0.01)
    src = tmp_path / "src"
    tj.save_tiny_janus(trained, processor, src)
    done = trained.state_dict()
    save_file({k: v.contiguous() for k, v in done.items() if k.startswith(pj.VISION_PREFIX)},
              str(src / pj.VISION_WARMUP_FILE))
    (src / "pretrain_janus.json").write_text(json.dumps(
        {"recipe": asdict(recipe), "results": {"vq_final_loss": 0.5, "vision_seconds": 2.0, "lm_final_t2i_loss": 3.0}}))

    fresh = tj.build_model(processor.tokenizer, SMALL, seed=0).state_dict()
    model = tj.build_model(processor.tokenizer, SMALL, seed=0)
    got = pj.reuse_image_stages(model, src, recipe)
    after = model.state_dict()
    for k, v in after.items():
        expected = done[k] if k.startswith((pj.VQ_PREFIX, pj.VISION_PREFIX)) else fresh[k]
        assert torch.equal(v, expected), k
    assert got == {"vq_final_loss": 0.5, "vision_seconds": 2.0, "image_stages_reused_from": str(src),
                   "vision_warmup_reused": True}

    (src / pj.VISION_WARMUP_FILE).unlink()  # an older output: the VQ only; the caller reruns the warm-up
    model = tj.build_model(processor.tokenizer, SMALL, seed=0)
    assert pj.reuse_image_stages(model, src, recipe)["vision_warmup_reused"] is False
    vision = [k for k in fresh if k.startswith(pj.VISION_PREFIX)]
    assert vision and all(torch.equal(model.state_dict()[k], fresh[k]) for k in vision)

    with pytest.raises(ValueError, match="recipe.vq_steps"):
        pj.reuse_image_stages(model, src, pj.JanusPretrainRecipe(size=SMALL, vq_steps=7))
    with pytest.raises(FileNotFoundError, match="pretrain_janus.json"):
        pj.reuse_image_stages(model, tmp_path, recipe)


def test_canonical_codes_and_encoder_alignment() -> None:
    """One background code per colour, the object's 2 x 2 block the same at every position, and the
    alignment stage moves ``encode`` toward those codes, training the encoder side only."""
    torch.set_num_threads(1)
    size = tj.TinyJanusSize(vision_hidden=32, vision_layers=1, vq_base_channels=32, vq_latent_channels=32,
                            vq_codebook=64, text_hidden=64, text_layers=1, text_heads=2, text_intermediate=128)
    model = tj.build_model(tj.build_tokenizer(size.vocab_size), size, seed=0)
    scenes = [world.Scene("circle", "red", p, b) for p in world.POSITION_NAMES[:3] for b in ("white", "black")]
    scenes += [world.Scene("bar", "blue", world.POSITION_NAMES[8], "gray")]
    codes = pj.canonical_codes(model, scenes)
    bg = pj.background_codes(model)
    obj = pj._object_cells(model, scenes) > 0
    assert obj.sum(1).tolist() == [4] * len(scenes)
    for i, s in enumerate(scenes):
        assert set(codes[i][~obj[i]].tolist()) == {bg[s.background]}
    assert torch.equal(codes[0][obj[0]], codes[2][obj[2]])  # same object, other position: same block

    vq = model.model.vqmodel
    frozen = {k: v.clone() for k, v in vq.state_dict().items() if not k.startswith(("encoder.", "quant_conv."))}
    before = pj.encode_agreement(model, scenes)
    got = pj.align_encoder(model, scenes, steps=80, batch_size=8, lr=3e-3, seed=0, log=lambda m: None)
    after = pj.encode_agreement(model, scenes)
    assert after["all"] >= max(0.9, before["all"] + 0.2), (before, after, got)
    assert all(torch.equal(vq.state_dict()[k], v) for k, v in frozen.items())
