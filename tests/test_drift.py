"""The drift probe: labels, the closed-form probe, and that it sees vision features move."""

from __future__ import annotations

import pytest
import torch

from mmcl.config import BenchmarkConfig, ModelConfig
from mmcl.data.sample import Sample
from mmcl.eval.drift import LinearProbe, can_probe, image_features, labelled, probe_label


def _sample(objects: list[dict] | None) -> Sample:
    return Sample(id="x", question="q", answers=["a"], meta={"objects": objects} if objects is not None else {})


def test_label_is_the_largest_object() -> None:
    small = {"category": "cup", "box": [0.0, 0.0, 0.1, 0.1]}
    large = {"category": "table", "box": [0.2, 0.2, 0.8, 0.9]}
    assert probe_label(_sample([small, large])) == "table"
    assert probe_label(_sample([])) is None  # an empty scene has nothing to name
    assert probe_label(_sample(None)) is None
    kept, labels = labelled([_sample([small]), _sample([]), _sample([large])])
    assert labels == ["cup", "table"] and len(kept) == 2
    assert can_probe([_sample([small]), _sample([large])]) and not can_probe([_sample([small])])


def test_probe_separates_clusters_and_not_noise() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 3
    labels = [c for c in "abc" for _ in range(40)]
    x = torch.cat([centres[i] + torch.randn(40, 16, generator=g) for i in range(3)])
    probe = LinearProbe.fit(x, labels)
    x_test = torch.cat([centres[i] + torch.randn(40, 16, generator=g) for i in range(3)])
    assert probe.accuracy(x_test, labels) > 95
    # features that no longer carry the categories: the probe falls to about chance (1/3)
    assert probe.accuracy(torch.randn(120, 16, generator=g) * 3, labels) < 55
    with pytest.raises(ValueError, match="one label per feature row"):
        LinearProbe.fit(x, labels[:-1])


@pytest.fixture(scope="module")
def llava_and_task():
    from mmcl.benchmarks.builtin import build_benchmark
    from mmcl.config import RunConfig
    from mmcl.models.loader import load_model

    bundle = load_model(ModelConfig(preset="tiny-llava-generalist"))
    cfg = RunConfig(benchmark=BenchmarkConfig(name="msvqa-synth", steps=5, scenario="underwater",
                                              train_size=80, test_size=40))
    task = build_benchmark(cfg).tasks[0]
    return bundle, task


def test_probe_reads_the_base_and_sees_the_projector_drift(llava_and_task) -> None:
    bundle, task = llava_and_task
    train, y_train = labelled(task.train)
    test, y_test = labelled(task.test)
    base_train = image_features(bundle.model, bundle.processor, train)
    assert base_train.shape == (len(train), bundle.model.config.text_config.hidden_size)
    probe = LinearProbe.fit(base_train, y_train)
    before = probe.accuracy(image_features(bundle.model, bundle.processor, test), y_test)
    assert before >= 70  # the base separates an unseen scenario's categories (measured 90 on these 40 items; 32.5 after the scramble)
    projector = bundle.model.model.multi_modal_projector
    saved = {k: v.clone() for k, v in projector.state_dict().items()}
    try:
        with torch.no_grad():  # scramble what the LM receives: a stand-in for heavy visual drift
            for p in projector.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * p.std())
        after = probe.accuracy(image_features(bundle.model, bundle.processor, test), y_test)
    finally:
        projector.load_state_dict(saved)
    assert after < before - 20
    again = probe.accuracy(image_features(bundle.model, bundle.processor, test), y_test)
    assert again == before  # reading features changes nothing
