"""End to end on the Continual-NExT stream: a tiny random Janus learns text and image answers in one
run; results.json gets the modality pairs, the error-class tracks and the Continual-NExT summary;
the generated images are saved and shown in report.md; MAGE trains exactly the gated experts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import small_janus_size

from mmcl.config import load_config
from mmcl.report.continual_next import compare_cnext
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


@pytest.mark.parametrize("method", ["lora-ft", "mage"])
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
    cfg = load_config([CONFIG], overrides=overrides(janus_dir, "method.name=lwf"))
    with pytest.raises(ValueError, match="'lwf' does not support tasks answered with images .*methods that do: .*mage"):
        Runner(cfg, output_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()
