from pathlib import Path

import pytest
import yaml

from mmcl.config import ConfigError, RunConfig, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_default_yaml_equals_builtin_defaults() -> None:
    shipped = load_config([ROOT / "configs" / "default.yaml"])
    assert shipped.model_dump() == RunConfig().model_dump()


def test_overrides_parse_yaml_values() -> None:
    cfg = load_config(overrides=["train.lr=1e-4", "eval.zero_shot=false", "benchmark.order=[a, b]", "method.lam=3"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.eval.zero_shot is False
    assert cfg.benchmark.order == ["a", "b"]
    assert cfg.method.options() == {"lam": 3}


def test_unknown_key_names_key_and_suggests() -> None:
    with pytest.raises(ConfigError, match=r"'train\.lrr'.*Did you mean 'lr'.*Valid keys: epochs"):
        load_config(overrides=["train.lrr=1"])
    with pytest.raises(ConfigError, match="unknown config key 'modle'"):
        load_config(overrides=["modle.preset=x"])


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(overrides=["train.batch_size=many"])


def test_yaml_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml, line \d+"):
        load_config([bad])


def test_include_and_later_files_override(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"train": {"epochs": 5, "lr": 0.1}}))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"include": "base.yaml", "train": {"lr": 0.2}}))
    cfg = load_config([tmp_path / "run.yaml"], ["train.epochs=7"])
    assert (cfg.train.epochs, cfg.train.lr) == (7, 0.2)


def test_every_shipped_config_validates() -> None:
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config([path])


def test_shipped_configs_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    """An installed wheel has no configs/ folder beside the user: `configs/quick.yaml`, `quick.yaml` and
    `quick` name the shipped file; a file in the current folder wins; an unknown name lists the shipped ones."""
    from mmcl.config import find_config, packaged_configs

    monkeypatch.chdir(tmp_path)
    shipped = packaged_configs() / "quick.yaml"
    assert shipped.is_file()
    for name in ("configs/quick.yaml", "quick.yaml", "quick"):
        assert find_config(name) == shipped
    assert load_config(["configs/quick.yaml"]).benchmark.tasks == load_config([shipped]).benchmark.tasks
    assert find_config("configs/accelerate/ddp-cpu.yaml").is_file()
    (tmp_path / "quick.yaml").write_text("seed: 3\n")
    assert find_config("quick.yaml") == Path("quick.yaml") and load_config(["quick.yaml"]).seed == 3
    with pytest.raises(ConfigError, match=r"config file not found: nope\.yaml \(shipped configs, usable by name "
                                          r"from any folder: .*\bquick\b"):
        load_config(["nope.yaml"])
