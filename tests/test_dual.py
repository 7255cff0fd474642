"""Image answers on a dual-to-dual model (tiny random Janus): encoding, the training loss, and the
evaluation path where the model itself chooses text or image (``mmcl.train.dual``, ``mmcl.eval.dual``)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from conftest import small_janus_size
from PIL import Image

from mmcl.data.sample import Sample
from mmcl.eval.dual import (
    IMAGE_PREDICTION,
    ImageOutput,
    _prompt_batch,
    generate_dual_answers,
    generate_image_tokens,
)
from mmcl.eval.generate import IMAGE_REQUEST
from mmcl.models import tiny_janus as tj
from mmcl.models.dual import boi_token_id, image_tokenizer, supports_image_output
from mmcl.synth import janus_world as world
from mmcl.train.dual import dual_forward, forward_batch
from mmcl.train.encode import IGNORE_INDEX, Encoder, collate_train

SMALL = small_janus_size()
N = SMALL.num_image_tokens
SCENE = world.Scene(world.ATTRIBUTES["shape"][0], world.ATTRIBUTES["colour"][0], world.POSITION_NAMES[0], world.BACKGROUND_NAMES[0])
OTHER = world.Scene(world.ATTRIBUTES["shape"][1], world.ATTRIBUTES["colour"][1], world.POSITION_NAMES[4], world.BACKGROUND_NAMES[1])


@pytest.fixture(scope="module")
def janus_dir(tiny_janus_dir: Path) -> Path:
    return tiny_janus_dir


@pytest.fixture()
def bundle(janus_dir: Path) -> types.SimpleNamespace:
    model, processor = tj.load_tiny_janus(janus_dir)
    return types.SimpleNamespace(model=model, processor=processor, tokenizer=processor.tokenizer)


def t2i_sample(scene: world.Scene = SCENE, i: int = 0) -> Sample:
    return Sample(id=f"t2i-{i}", question=f"Generate an image: {scene.caption()}", answers=[scene.caption()],
                  task="t2i", target_image=lambda: world.draw_scene(scene), meta={"attributes": scene.attributes()})


def vqa_sample(i: int = 0) -> Sample:
    return Sample(id=f"vqa-{i}", question="What colour is the shape?", answers=[SCENE.colour],
                  image=lambda: world.draw_scene(SCENE), task="vqa")


def edit_sample() -> Sample:
    return Sample(id="edit-0", question="Make it different.", answers=[OTHER.caption()], task="edit",
                  image=lambda: world.draw_scene(SCENE), target_image=lambda: world.draw_scene(OTHER))


def test_a_janus_bundle_gets_an_image_tokenizer(bundle: types.SimpleNamespace) -> None:
    assert supports_image_output(bundle.model)
    enc = Encoder.for_bundle(bundle)
    assert enc.image_tokenizer is not None and enc.boi_token_id == boi_token_id(bundle.processor)


def test_image_answers_encode_as_boi_and_slots(bundle: types.SimpleNamespace) -> None:
    enc = Encoder.for_bundle(bundle)
    boi = boi_token_id(bundle.processor)
    t2i, vqa, edit = enc.encode([t2i_sample(), vqa_sample(), edit_sample()], with_answer=True)
    for e in (t2i, edit):
        assert e.wants_image and e.image_target is not None and e.image_target.shape == (N,)
        assert e.input_ids[e.prompt_len] == boi and len(e.input_ids) == e.prompt_len + N  # BOI + N-1 slots
        labelled = (e.labels != IGNORE_INDEX).nonzero().flatten().tolist()
        assert labelled == [e.prompt_len] and e.labels[e.prompt_len] == boi
    codes = image_tokenizer(bundle.model, bundle.processor)([world.draw_scene(SCENE)])
    assert torch.equal(t2i.image_target, codes[0])
    assert "pixel_values" in edit.vision and "pixel_values" not in t2i.vision
    assert not vqa.wants_image and vqa.image_target is None
    batch = collate_train([t2i, vqa, edit], bundle.tokenizer.pad_token_id)
    assert batch["image_starts"].tolist() == [t2i.prompt_len, -1, edit.prompt_len]
    assert (batch["image_targets"][1] == IGNORE_INDEX).all() and torch.equal(batch["image_targets"][0], t2i.image_target)


def test_an_image_answer_without_a_generation_head_is_a_clear_error(bundle: types.SimpleNamespace) -> None:
    with pytest.raises(ValueError, match="asks for an image answer"):
        Encoder(bundle.processor).encode([t2i_sample()], with_answer=True)


def test_dual_loss_equals_the_model_loss_on_text_and_the_pretraining_loss_on_images(bundle: types.SimpleNamespace) -> None:
    model = bundle.model
    enc = Encoder.for_bundle(bundle)
    text = collate_train(enc.encode([vqa_sample(0), vqa_sample(1)], with_answer=True), bundle.tokenizer.pad_token_id)
    reference = model(**text).loss
    no_images = {**text, "image_targets": torch.full((2, N), IGNORE_INDEX), "image_starts": torch.tensor([-1, -1])}
    torch.testing.assert_close(dual_forward(model, no_images).loss, reference)
    assert forward_batch(model, text).loss == reference  # plain batches go straight to the model

    e = enc.encode([t2i_sample()], with_answer=True)[0]
    out = dual_forward(model, collate_train([e], bundle.tokenizer.pad_token_id))
    prompt = e.input_ids[: e.prompt_len + 1][None]  # prompt + <begin_of_image>, as tiny_janus.t2i_loss takes it
    expected = tj.t2i_loss(model, prompt, torch.ones_like(prompt), e.image_target[None])
    torch.testing.assert_close(out.image_loss, expected)
    boi_logp = torch.log_softmax(out.logits[0, e.prompt_len - 1], -1)[boi_token_id(bundle.processor)]
    torch.testing.assert_close(out.text_loss, -boi_logp)


def test_the_custom_image_loop_matches_the_real_generate(bundle: types.SimpleNamespace) -> None:
    model, processor = bundle.model, bundle.processor
    captions = [SCENE.caption(), OTHER.caption() + " and some more words"]
    enc = processor(text=[tj.generation_prompt(processor, c) for c in captions], generation_mode="image",
                    padding=True, return_tensors="pt")
    real = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], generation_mode="image",
                          do_sample=False, guidance_scale=3.0)
    mine = generate_image_tokens(model, enc["input_ids"], enc["attention_mask"], cfg_scale=3.0)
    assert torch.equal(real, mine)


@pytest.mark.slow  # trains for a few seconds: CI's full suite, not the inner loop
def test_training_teaches_the_model_to_choose_an_image_or_text(bundle: types.SimpleNamespace) -> None:
    model, tok = bundle.model, bundle.tokenizer
    enc = Encoder.for_bundle(bundle)
    train = enc.encode([t2i_sample(), edit_sample(), vqa_sample()], with_answer=True)
    batch = collate_train(train, tok.pad_token_id)
    params = [p for n, p in model.named_parameters() if "vqmodel" not in n]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    first = None
    for _ in range(400):  # until memorised (deterministic; about 150 steps)
        out = forward_batch(model, batch)
        first = first if first is not None else float(out.loss.detach())
        if float(out.image_loss.detach()) < 0.02 and float(out.text_loss.detach()) < 0.02:
            break
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert float(out.loss.detach()) < 0.01 * first
    prompts = enc.encode([t2i_sample(), edit_sample(), vqa_sample()], with_answer=False)
    answers = generate_dual_answers(model, tok, prompts, batch_size=4, max_new_tokens=4,
                                    boi_id=boi_token_id(bundle.processor), cfg_scale=2.0)
    assert isinstance(answers[0], ImageOutput) and isinstance(answers[1], ImageOutput)
    assert answers[0] == IMAGE_PREDICTION and answers[0].image.size == (64, 64)
    assert not isinstance(answers[2], ImageOutput) and answers[2] != IMAGE_REQUEST
    assert isinstance(answers[0].image, Image.Image)
    # the memorised images: the generated codes are the trained targets' (the random VQ is no
    # auto-encoder, so the codes are compared, not the decoded pixels). Guidance ~1: the
    # unconditional branch was not trained here (uncond_prob 0)
    batch = _prompt_batch(prompts[:2], tok.pad_token_id, boi_token_id(bundle.processor))
    codes = generate_image_tokens(model, batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"),
                                  cfg_scale=1.0001)
    assert (codes[0] == train[0].image_target).float().mean() > 0.8
    assert (codes[1] == train[1].image_target).float().mean() > 0.8



def test_image_prompts_are_answered_with_images_without_asking_the_model(bundle: types.SimpleNamespace) -> None:
    """eval.image_answers=task: flagged prompts get an image (the untrained model would answer text)."""
    enc = Encoder.for_bundle(bundle)
    prompts = enc.encode([t2i_sample(), vqa_sample(), edit_sample()], with_answer=False)
    boi = boi_token_id(bundle.processor)
    chosen = generate_dual_answers(bundle.model, bundle.tokenizer, prompts, batch_size=4, max_new_tokens=4,
                                   boi_id=boi, cfg_scale=2.0)
    assert not any(isinstance(a, ImageOutput) for a in chosen)  # a random model does not emit <begin_of_image>
    counted: list[int] = []
    forced = generate_dual_answers(bundle.model, bundle.tokenizer, prompts, batch_size=4, max_new_tokens=4,
                                   boi_id=boi, cfg_scale=2.0, image_prompts=[True, False, True], on_batch=counted.append)
    assert isinstance(forced[0], ImageOutput) and isinstance(forced[2], ImageOutput)
    assert forced[1] == chosen[1] and not isinstance(forced[1], ImageOutput)  # the text prompt: the same answer
    assert sum(counted) == 3
    # the forced image is the one generate_images_for gives after prompt + <begin_of_image>
    from mmcl.eval.dual import generate_images_for

    again = generate_images_for(bundle.model, [prompts[0], prompts[2]], bundle.tokenizer.pad_token_id, boi, 4,
                                cfg_scale=2.0)
    assert list(again[0].getdata()) == list(forced[0].image.getdata())
    assert list(again[1].getdata()) == list(forced[2].image.getdata())


def test_without_the_decision_loss_an_image_answer_trains_its_codes_only(bundle: types.SimpleNamespace) -> None:
    """``train.image_decision_loss: false``: <begin_of_image> is not a training target (as in Janus' own
    training); the codes' loss and the text answers' loss are unchanged."""
    model = bundle.model
    enc = Encoder.for_bundle(bundle)
    batch = collate_train(enc.encode([t2i_sample(), vqa_sample(0)], with_answer=True), bundle.tokenizer.pad_token_id)
    with_decision, without = dual_forward(model, batch), forward_batch(model, batch, decision_loss=False)
    torch.testing.assert_close(without.image_loss, with_decision.image_loss)
    text_only = collate_train(enc.encode([vqa_sample(0)], with_answer=True), bundle.tokenizer.pad_token_id)
    torch.testing.assert_close(without.text_loss, model(**text_only).loss)  # the VQA answer's tokens only
    images_only = collate_train(enc.encode([t2i_sample()], with_answer=True), bundle.tokenizer.pad_token_id)
    assert float(dual_forward(model, images_only, decision_loss=False).text_loss) == 0.0
    assert float(dual_forward(model, images_only).text_loss) > 0


def test_prompt_dropout_trains_the_unconditional_branch(bundle: types.SimpleNamespace) -> None:
    model = bundle.model
    enc = Encoder.for_bundle(bundle)
    e = enc.encode([t2i_sample()], with_answer=True)[0]
    batch = collate_train([e], bundle.tokenizer.pad_token_id)
    blanked = {**batch, "input_ids": tj.unconditional_ids(batch["input_ids"], model)}
    blanked["input_ids"][0, e.prompt_len:] = batch["input_ids"][0, e.prompt_len:]  # BOI and the slots stay
    torch.manual_seed(0)
    dropped = dual_forward(model, batch, uncond_prob=0.9999)
    torch.testing.assert_close(dropped.image_loss, dual_forward(model, blanked).image_loss)
    assert not torch.allclose(dual_forward(model, batch).image_loss, dropped.image_loss)


def test_image_scorers_use_the_judge_and_give_zero_without_an_image() -> None:
    import mmcl.benchmarks.continual_next  # noqa: F401  registers cnext_t2i and cnext_edit
    from mmcl.eval.scorers import score

    t2i, edit = t2i_sample(), edit_sample()
    truth = ImageOutput(world.draw_scene(SCENE))
    assert score("cnext_t2i", truth, t2i.answers, t2i) == 1.0  # the judge reads a real render right
    assert score("cnext_t2i", ImageOutput(world.draw_scene(OTHER)), t2i.answers, t2i) == 0.0  # all 4 attributes differ
    assert score("cnext_t2i", "a red circle", t2i.answers, t2i) == 0.0  # text where an image was asked
    assert score("cnext_edit", ImageOutput(world.draw_scene(OTHER)), edit.answers, edit) == pytest.approx(1.0)
    assert score("cnext_edit", IMAGE_PREDICTION, edit.answers, edit) == 0.0  # the string alone carries no image
    assert 0.0 < score("cnext_edit", truth, edit.answers, edit) < 0.5  # the unedited source: pixels only
    with pytest.raises(ValueError, match="sample-aware"):
        score("cnext_t2i", truth, t2i.answers)
