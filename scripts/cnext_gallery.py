"""A PNG grid of generated images before and after forgetting, from Continual-NExT runs.

    python scripts/cnext_gallery.py OUT.png RUN_DIR [RUN_DIR ...] [--task t2i] [--n 6]

For each run: one row per image of the task's first N test prompts that has a saved image after
the task's own stage, the same prompt after the last stage, and (top row) the target drawn by the
generator. Images come from ``predictions/stage-XX/<task>/`` of each run (``eval.save_predictions``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

from mmcl.benchmarks.builtin import build_benchmark
from mmcl.config import load_config


def _rows(run: Path, stage: int, task: str) -> dict[str, dict]:
    path = run / "predictions" / f"stage-{stage:02d}" / f"{task}.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    return {r["question_id"]: r for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--task", default="t2i")
    ap.add_argument("--n", type=int, default=6)
    args = ap.parse_args()
    runs = [Path(r) for r in args.runs]
    res = json.loads((runs[0] / "results.json").read_text())
    own, last = res["tasks"].index(args.task) + 1, len(res["tasks"])
    task = build_benchmark(load_config([runs[0] / "config.yaml"])).task(args.task)
    samples = task.test[: args.n]
    cell, label = 64, 150
    lines = [("target", None)] + [(f"{r.name} own stage", (r, own)) for r in runs] + [
        (f"{r.name} last stage", (r, last)) for r in runs]
    canvas = Image.new("RGB", (label + cell * len(samples), cell * len(lines)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, where) in enumerate(lines):
        draw.text((4, i * cell + cell // 2 - 6), name, fill="black")
        rows = _rows(*where, args.task) if where else {}
        for j, s in enumerate(samples):
            if where is None:
                im = s.load_target_image()
            else:
                r = rows.get(s.id)
                im = Image.open(where[0] / r["image"]) if r and r.get("image") else None
            if im is None:  # answered with text: a grey cell with an x
                draw.line((label + j * cell, i * cell, label + (j + 1) * cell, (i + 1) * cell), fill="gray")
                continue
            canvas.paste(im.convert("RGB").resize((cell, cell)), (label + j * cell, i * cell))
    canvas.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
