"""The HTML report: sections, self-contained images, seeds as mean ± std, forgetting examples with
thumbnails (and a note when the benchmark cannot be rebuilt), the CLI; and the page in headless Chromium.

Fake run directories are written here on the real 3-task msvqa-synth quick stream: config.yaml is
what the runner writes for it (``to_yaml`` of the loaded config), so the report can rebuild the
benchmark and find each question id's image. Predictions agree with the matrices: at a cell of
score k/6, the first k test samples are right.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ARTIFACTS, quick_overrides, run_quick
from PIL import Image
from typer.testing import CliRunner

from mmcl.benchmarks.builtin import build_benchmark
from mmcl.cli import app
from mmcl.config import load_config, to_yaml
from mmcl.data.sample import Benchmark
from mmcl.report.html import figures_dir_for, write_html_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA_PNG = "data:image/png;base64,"
SECTIONS = ("runs", "metrics", "comparison", "matrices", "curves", "protocol-msvqa", "cost", "examples", "config")
# lora-ft, 2 seeds: last = 0.5 and 2/3 -> mean 58.3, sample std 11.8 (×100).
LORA_FT = {
    0: [[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.5, 1.0]],
    1: [[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.5, 0.5, 1.0]],
}
REPLAY = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.5, 1.0, 1.0]]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


# ---------------------------------------------------------------- fake runs


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Benchmark]:
    """(config.yaml text of the quick msvqa-synth run, its benchmark)."""
    model_dir = tmp_path_factory.mktemp("unused-model")  # only named in the config
    cfg = load_config(overrides=quick_overrides(model_dir))
    return to_yaml(cfg), build_benchmark(cfg)


def _prediction_rows(bench: Benchmark, j: int, score: float) -> list[dict[str, Any]]:
    task = bench.tasks[j]
    n_right = round(score * len(task.test))
    rows = []
    for i, s in enumerate(task.test):
        right = i < n_right
        rows.append(
            {
                "question_id": s.id,
                "question": s.question,
                "prediction": s.answers[0] if right else f"wrong-{i}",
                "answers": s.answers,
                "scores": dict.fromkeys(task.scorers, 1.0 if right else 0.0),
            }
        )
    return rows


def make_run(
    root: Path,
    dirname: str,
    bench: Benchmark,
    config_text: str,
    method: str,
    seed: int,
    primary: list[list[float]],
    cost: dict[str, Any],
) -> Path:
    """A finished run directory: results.json, config.yaml and predictions/stage-XX/<task>.jsonl."""
    run = root / dirname
    run.mkdir(parents=True)
    tasks = bench.tasks
    vqa = [
        [v if "vqa_score" in t.scorers else None for v, t in zip(row, tasks, strict=True)] for row in primary
    ]
    results = {
        "mmcl_version": "0.1.0",
        "name": f"{method}-run",
        "benchmark": bench.name,
        "method": method,
        "seed": seed,
        "model": "test",
        "tasks": [t.name for t in tasks],
        "scorers": {t.name: t.scorers for t in tasks},
        "scenarios": {t.name: t.scenario for t in tasks},
        "stages": [f"after {t.name}" for t in tasks],
        "matrix": {"primary": primary, "vqa_score": vqa},
        "zero_shot": {
            "primary": [0.0] * len(tasks),
            "vqa_score": [0.0 if v is not None else None for v in vqa[0]],
        },
        "metrics": {},
        "cost": cost,
        "stages_complete": len(tasks),
    }
    (run / "results.json").write_text(json.dumps(results))
    (run / "config.yaml").write_text(config_text)
    for t, row in enumerate(primary):
        for j, score in enumerate(row):
            path = run / "predictions" / f"stage-{t + 1:02d}" / f"{tasks[j].name}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in _prediction_rows(bench, j, score)))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, quick: tuple[str, Benchmark]) -> dict[str, list[Path]]:
    """Two seeds of lora-ft (rebuildable config) and one replay run whose MSVQA data is missing."""
    config_text, bench = quick
    root = tmp_path_factory.mktemp("runs")
    lora = [
        make_run(
            root,
            f"lora-s{s}",
            bench,
            config_text,
            "lora-ft",
            s,
            LORA_FT[s],
            {"trainable_params": 1000, "train_seconds": 10.0 + 4 * s, "eval_seconds": 1.0},
        )
        for s in (0, 1)
    ]
    missing = yaml.safe_load(config_text)
    missing["benchmark"] = {"name": "msvqa", "path": str(root / "missing-msvqa")}
    replay = make_run(
        root,
        "replay-s0",
        bench,
        yaml.safe_dump(missing),
        "replay",
        0,
        REPLAY,
        {"trainable_params": 1000, "train_seconds": 12.0, "held_bytes": {"replay_buffer": 2048}},
    )
    return {"lora": lora, "replay": [replay]}


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory, runs: dict[str, list[Path]]) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert write_html_report([*runs["lora"], *runs["replay"]], out, rebuild=build_benchmark) == out
    return out


class _Tags(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parse(text: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


def _section(text: str, anchor: str) -> str:
    m = re.search(rf'<section id="{anchor}">(.*?)</section>', text, re.S)
    assert m, f"no section {anchor}"
    return m.group(1)


def _decode(src: str) -> bytes:
    assert src.startswith(DATA_PNG), src[:60]
    return base64.b64decode(src[len(DATA_PNG) :])


# ---------------------------------------------------------------- unit tests


def test_page_is_self_contained_with_all_sections(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    tags = parse(text)
    ids = [a.get("id") for _, a in tags if a.get("id")]
    assert [i for i in ids if i in SECTIONS] == list(SECTIONS)
    assert not [t for t, _ in tags if t == "script"]
    links = [v for _, a in tags for k, v in a.items() if k in ("src", "href") and v]
    assert not [v for v in links if re.match(r"\s*(https?:)?//", v)], "network URL in src/href"
    assert all(v.startswith(("#", "data:")) for v in links), links
    imgs = [a["src"] for t, a in tags if t == "img"]
    assert len(imgs) >= 8
    embedded = {_decode(src) for src in imgs}
    assert all(png.startswith(PNG_MAGIC) for png in embedded)
    # every figure is also a PNG file beside the page, byte for byte (thumbnails are page-only)
    folder = figures_dir_for(page)
    files = {p.read_bytes() for p in folder.glob("*.png")}
    assert folder.name == "report-figures" and len(files) >= 7
    assert files <= embedded
    assert {p.name for p in folder.glob("*.png")} >= {"methods-last-average.png"}
    config = _section(text, "config")
    assert config.count("<details>") == 3 and "msvqa-synth" in config and "train_per_task: 16" in config


def test_seeds_are_aggregated_as_mean_and_std(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    metrics = _section(text, "metrics")
    row = re.search(r"<tr><td>lora-ft · lora-ft-run</td>(.*?)</tr>", metrics)
    assert row, metrics[:2000]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))
    assert cells[:3] == ["2", "3/3", "58.3 ± 11.8"]  # seeds, tasks, last
    replay = re.search(r"<tr><td>replay · replay-run</td>(.*?)</tr>", metrics)
    assert replay and "±" not in replay.group(1)  # one seed: no std
    cost = _section(text, "cost")
    assert "12.0 ± 2.8" in cost  # train seconds 10 and 14
    assert "2.0" in cost and "replay_buffer" in cost  # 2048 held bytes = 2.0 KiB
    protocol = _section(text, "protocol-msvqa")
    assert "<td>overall</td>" in protocol and "<td>high-altitude</td>" in protocol
    # 2 seeds -> one heatmap set for the group, not one per run
    assert len(list(figures_dir_for(page).glob("heatmap-*lora-ft*-primary.png"))) == 1


def test_forgetting_examples_have_thumbnails(page: Path, quick: tuple[str, Benchmark]) -> None:
    _, bench = quick
    text = page.read_text(encoding="utf-8")
    examples = _section(text, "examples")
    lora = examples.split("<h3>replay")[0]
    # seed 0: task 1 fell from 100 (stage 1) to 0, task 2 from 100 (stage 2) to 50
    assert "best 100.0 after stage 1, final 0.0 (drop 100.0)" in lora
    assert "best 100.0 after stage 2, final 50.0 (drop 50.0)" in lora
    first, second = bench.tasks[0], bench.tasks[1]
    for s in first.test[:4]:  # 4 examples per task at most, all 6 went right -> wrong
        assert s.id in lora
    assert first.test[4].id not in lora
    for s in second.test[3:]:  # right at stage 2, wrong at the end
        assert s.id in lora
    assert second.test[0].id not in lora  # still right at the end
    assert "wrong-0" in lora and first.test[0].answers[0] in lora
    thumbs = [a for t, a in parse(lora) if t == "img" and a.get("class") == "thumb"]
    assert len(thumbs) == 7
    with Image.open(BytesIO(_decode(thumbs[0]["src"]))) as im:
        assert 0 < max(im.size) <= 128
    assert "Thumbnails not shown" not in lora


def test_unrebuildable_benchmark_shows_rows_without_thumbnails(
    page: Path, quick: tuple[str, Benchmark]
) -> None:
    _, bench = quick
    replay = _section(page.read_text(encoding="utf-8"), "examples").split("<h3>replay")[1]
    assert "Thumbnails not shown" in replay and "cannot be rebuilt" in replay
    assert "dataset directory not found" in replay  # the loader's own reason
    for s in bench.tasks[0].test[3:]:
        assert s.id in replay
    assert not [a for t, a in parse(replay) if t == "img"]


def test_given_benchmark_is_used_instead_of_rebuilding(
    runs: dict[str, list[Path]], quick: tuple[str, Benchmark], tmp_path: Path
) -> None:
    _, bench = quick
    text = write_html_report(runs["replay"], tmp_path / "r.html", benchmark=bench, rebuild=build_benchmark).read_text(
        encoding="utf-8"
    )
    examples = _section(text, "examples")
    assert "Thumbnails not shown" not in examples
    assert len([a for t, a in parse(examples) if t == "img" and a.get("class") == "thumb"]) == 3


def test_without_a_rebuild_function_only_the_given_benchmark_has_thumbnails(
    runs: dict[str, list[Path]], tmp_path: Path
) -> None:
    text = write_html_report(runs["lora"][:1], tmp_path / "r.html").read_text(encoding="utf-8")
    examples = _section(text, "examples")
    assert "Thumbnails not shown: no way to rebuild the benchmark was given" in examples
    assert not [a for t, a in parse(examples) if t == "img"]


def test_cli_report_html_and_markdown(runs: dict[str, list[Path]], tmp_path: Path) -> None:
    out = tmp_path / "site" / "all.html"
    result = CliRunner().invoke(app, ["report", *map(str, runs["lora"]), "--html", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and (tmp_path / "site" / "all-figures" / "methods-last-average.png").is_file()
    assert not (runs["lora"][0] / "report.md").exists()  # --html only reads the run directories
    single = tmp_path / "single"
    shutil.copytree(runs["replay"][0], single)
    result = CliRunner().invoke(app, ["report", str(single)])
    assert result.exit_code == 0, result.output
    assert (single / "report.md").is_file() and (single / "matrix.csv").is_file()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nope"), "--html", str(out)])
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())


@pytest.mark.slow
def test_report_of_a_real_run(tiny_llava_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_quick(tiny_llava_dir, run)
    out = write_html_report([run], tmp_path / "real.html", rebuild=build_benchmark)
    text = out.read_text(encoding="utf-8")
    assert all(f'<section id="{s}">' in text for s in SECTIONS)
    imgs = [a["src"] for t, a in parse(text) if t == "img"]
    assert imgs and all(_decode(s).startswith(PNG_MAGIC) for s in imgs)
    assert "Thumbnails not shown" not in text


# ---------------------------------------------------------------- the page in a browser


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed with apt-get when missing and we are root; otherwise a failure."""
    if CHROMIUM.exists():
        return CHROMIUM
    how = "apt-get update && apt-get install -y chromium"
    if os.geteuid() != 0:
        pytest.fail(f"{CHROMIUM} is missing; install Debian's chromium as root: {how}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(
            ["bash", "-c", f"{how} -q"], check=True, capture_output=True, text=True, timeout=900, env=env
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"installing chromium ({how}) took more than 900 s")
    except subprocess.CalledProcessError as e:
        pytest.fail(f"installing chromium ({how}) failed with exit code {e.returncode}:\n{e.stderr[-2000:]}")
    if not CHROMIUM.exists():
        pytest.fail(f"{how} succeeded but {CHROMIUM} does not exist")
    return CHROMIUM


def test_page_renders_in_headless_chromium(page: Path, chromium: Path) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[test]'")
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            tab.on("request", lambda r: requests.append(r.url))
            tab.goto(page.as_uri(), wait_until="load")
            tab.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
            tab.wait_for_function("Array.from(document.images).every(i => i.complete)")
            sizes = tab.evaluate(
                "Array.from(document.images).map(i => [i.alt, i.naturalWidth, i.naturalHeight])"
            )
            ARTIFACTS.mkdir(exist_ok=True)
            tab.screenshot(path=str(ARTIFACTS / "html-report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert len(sizes) >= 14  # 7 figures + 7 thumbnails
    broken = [alt for alt, w, h in sizes if w <= 0 or h <= 0]
    assert broken == [], f"images that did not render: {broken}"
    assert len([alt for alt, _, _ in sizes if alt.startswith("image of ")]) == 7  # thumbnails too
    with Image.open(ARTIFACTS / "html-report.png") as shot:
        assert shot.width == 1280 and shot.height > 2000
