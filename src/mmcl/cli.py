"""The ``mmcl`` command line: run, pretrain, rescore, compare, report, list."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Continual learning of multimodal LLMs.")
console = Console(stderr=True)
out = Console()


def _fail(msg: str, code: int = 2) -> None:
    from rich.markup import escape

    # data values are not markup; no hard wrapping, so paths stay whole
    console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _interrupt_handled(command: Callable[..., None]) -> Callable[..., None]:
    """While ``command`` runs, SIGTERM interrupts it like Ctrl-C; an interrupt it does not handle
    itself (while the config is read or the libraries load) gets its one line too."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        with _sigterm_as_interrupt():
            try:
                command(*args, **kwargs)
            except KeyboardInterrupt as e:
                _interrupted(e, None, kwargs.get("output"))

    return wrapper


@app.command()
@_interrupt_handled
def run(
    configs: Annotated[list[Path] | None, typer.Argument(help="YAML config file(s); later ones override earlier ones.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set method.name=ewc")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run directory (default runs/<time>-<name>/).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate config, data and model; print the plan; no training.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --output from its last finished stage and evaluation cell (same config required).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Run in a non-empty --output that is not an mmcl run; files the run would overwrite are moved into mmcl-displaced-<time>/ there.")] = False,
    verify_data: Annotated[bool, typer.Option("--verify-data", help="Fingerprint the data files by content (SHA-256), not only size and modification time, so that --resume compares contents.")] = False,
) -> None:
    """Run a continual-learning stream. With no CONFIG, runs the embedded default.

    A run directory that already holds a run is refused unless --resume is given; --resume
    continues it (or starts it, when the directory is new). See mmcl.checkpoint for details.
    """
    from mmcl.config import ConfigError, load_config

    try:
        cfg = load_config(list(configs or []), list(set_ or []))
    except ConfigError as e:
        _fail(str(e))
    from mmcl.data.errors import DataError
    from mmcl.models.loader import ModelLoadError
    from mmcl.registry import UnknownNameError
    from mmcl.runner import Runner

    runner = None
    try:
        runner = Runner(cfg, output_dir=output, console=console, resume=resume, force=force, verify_data=verify_data)
        if dry_run:
            plan = runner.dry_run()
            _print_plan(plan, runner)
            return
        run_dir = runner.run()
    except (DataError, ModelLoadError, UnknownNameError, ValueError, OSError) as e:
        _fail(str(e) + ("" if dry_run else _resume_hint(runner, e)))
    except KeyboardInterrupt as e:  # SIGINT, or SIGTERM (see _interrupt_handled): say what is kept, how to continue
        _interrupted(e, runner, output or cfg.output.dir)
    except Exception as e:  # a bug or an environment failure (torch, out of memory...): one line, the traceback kept
        if os.environ.get(DEBUG_ENV):
            raise
        _fail(_unexpected(e, runner) + ("" if dry_run else _resume_hint(runner, e)), code=1)
    if not runner.accelerator.is_main_process:
        return  # under several processes (accelerate launch, torchrun) the main one reports
    results = json.loads((run_dir / "results.json").read_text())
    m = results["metrics"]["primary"]
    fmt = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    console.print(
        f"[bold green]done[/]: last {fmt(m['last'])}, average {fmt(m['average'])}, BWT {fmt(m['bwt'])}, "
        f"forgetting {fmt(m['forgetting'])} (primary track, ×100)"
    )
    console.print(f"results: {run_dir / 'results.json'}")
    for name in ("report.md", "report.html"):
        if (run_dir / name).exists():
            console.print(f"report:  {run_dir / name}")
    out.print(str(run_dir))


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C (SIGINT) so that the same clean-up runs and the same advice is printed."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated()


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While a run goes on, SIGTERM (``kill``, a scheduler's time limit) interrupts it like Ctrl-C.

    Not under several processes (``WORLD_SIZE`` > 1): a process waiting in a collective would not see
    the exception until it returned, so there SIGTERM keeps its default (the process ends at once).
    """
    if threading.current_thread() is not threading.main_thread() or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(error: KeyboardInterrupt, runner, output: Path | str | None) -> None:
    """One line on SIGINT/SIGTERM: what is kept and how to continue; exit 130 (SIGINT) or 143 (SIGTERM)."""
    from rich.markup import escape

    # nothing is imported here: the interrupt may have cut an import short (torch half-initialised)
    config_file = getattr(sys.modules.get("mmcl.checkpoint"), "CONFIG_FILE", "config.yaml")
    name, code = ("SIGTERM", 143) if isinstance(error, _Terminated) else ("SIGINT", 130)
    if runner is not None and not runner.accelerator.is_main_process:
        raise typer.Exit(code)  # under several processes the main one reports
    d = runner.output_dir if runner is not None else (Path(output) if output else None)
    if d is not None and (d / config_file).is_file():
        msg = (f"interrupted ({name}): everything {d} holds so far is kept; continue with the same command "
               f"plus --resume --output {d}")
    else:
        msg = f"interrupted ({name}) before the run directory was written; nothing to continue: run the command again"
    console.print(escape(msg), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


DEBUG_ENV = "MMCL_DEBUG"  # set to 1: an unexpected error raises with its traceback instead of one line
ERROR_LOG = "error.log"


def _unexpected(error: Exception, runner) -> str:
    """One line for an error mmcl did not expect; its traceback goes to ``<run dir>/error.log``."""
    import traceback

    from mmcl.checkpoint import CONFIG_FILE

    text = str(error)
    text = text if len(text) <= 300 else text[:300] + "…"
    msg = f"unexpected {type(error).__name__}: {text}"
    d = getattr(runner, "output_dir", None)
    if d is not None and (d / CONFIG_FILE).is_file():
        try:
            with open(d / ERROR_LOG, "a", encoding="utf-8") as f:
                f.write("".join(traceback.format_exception(error)) + "\n")
            return msg + f" (traceback in {d / ERROR_LOG}; {DEBUG_ENV}=1 prints it)"
        except OSError:
            pass
    return msg + f" (run again with {DEBUG_ENV}=1 for the traceback)"


def _resume_hint(runner, error: Exception) -> str:
    """For a run that failed after it started writing: say that its files are kept and how to continue."""
    from mmcl.checkpoint import CONFIG_FILE, RunDirError

    if runner is None or isinstance(error, RunDirError) or not (runner.output_dir / CONFIG_FILE).is_file():
        return ""
    d = runner.output_dir
    return (
        f"\nEverything {d} holds so far is kept (config, finished stages, predictions, checkpoint). "
        f"Fix the cause, then continue with the same command plus --resume --output {d}"
    )


def _print_plan(plan, runner) -> None:
    table = Table(title=f"plan: {runner.benchmark.name} × {plan.method} ({plan.schedule})")
    for col in ("#", "task", "train", "test", "steps", "scorers"):
        table.add_column(col)
    for i, t in enumerate(plan.tasks, 1):
        table.add_row(str(i), t["name"], str(t["train"]), str(t["test"]), str(t["steps"]), ", ".join(t["scorers"]))
    out.print(table)
    out.print(
        f"model: {plan.model_source}; parameters: {plan.total_params:,}; trainable: {plan.trainable_params:,}; "
        f"stages: {plan.stages}; evaluation cells: {plan.eval_cells}; output: {runner.output_dir}"
    )
    out.print("dry run: config, data and model are valid; nothing was trained or written.")


SEED_MAX = 2**31 - 1  # as mmcl.config.SEED_MAX (not imported here: the CLI starts without pydantic)


def _positive_finite(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise typer.BadParameter(f"must be a finite number > 0, got {value}")
    return value


@app.command()
def pretrain(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to save the base (default: the shipped preset dir).")] = None,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX)] = 0,
    n_captions: Annotated[int, typer.Option(min=1, help="Synthetic image-caption pairs (plus a quarter as many text-only \"say\" samples).")] = 8000,
    epochs: Annotated[float, typer.Option(callback=_positive_finite)] = 4.0,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many steps (for smoke tests).")] = None,
    vision_steps: Annotated[int, typer.Option(min=1, help="Vision warm-up steps (per-patch colour/shape/mark).")] = 800,
    recipe: Annotated[str, typer.Option(
        help="caption: the tiny-llava preset (captions only). generalist: the tiny-llava-generalist preset "
             "(the caption base, then visual instruction tuning on generic scenes; docs/generalist-base.md).")] = "caption",
    caption_base: Annotated[Path | None, typer.Option(
        help="generalist: the caption-stage model to start from (default: the shipped tiny-llava preset; "
             "built first when missing).")] = None,
    instruct_samples: Annotated[int | None, typer.Option(min=1, help="generalist: instruction samples (default: the recipe's).")] = None,
    instruct_epochs: Annotated[float | None, typer.Option(
        callback=lambda v: v if v is None else _positive_finite(v),
        help="generalist: epochs of the instruction stage (default: the recipe's).")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: torch's).")] = None,
) -> None:
    """Build and pre-train the tiny LLaVA base (``--recipe caption``) or the generalist one (``--recipe generalist``)."""
    from mmcl.models.loader import ASSETS_DIR

    if threads:
        import torch

        torch.set_num_threads(threads)
    if recipe == "generalist":
        from mmcl.pretrain.generalist import GeneralistRecipe, pretrain_generalist

        target = output or ASSETS_DIR / "tiny-llava-generalist"
        r = GeneralistRecipe(seed=seed, max_steps=max_steps)
        if instruct_samples is not None:
            r.n_instruct = instruct_samples
        if instruct_epochs is not None:
            r.epochs = instruct_epochs
        pretrain_generalist(target, r, caption_base=caption_base, console=console)
        out.print(str(target))
        return
    if recipe != "caption":
        _fail(f"unknown recipe {recipe!r}; recipes: caption, generalist")
    from mmcl.pretrain.llava import pretrain as do_pretrain

    target = output or ASSETS_DIR / "tiny-llava"
    do_pretrain(target, seed=seed, n_captions=n_captions, epochs=epochs, max_steps=max_steps,
                vision_steps=vision_steps, console=console)
    out.print(str(target))


@app.command("pretrain-janus")
def pretrain_janus(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to save the tiny Janus.")],
    recipe: Annotated[str, typer.Option(
        help="base: the tiny-janus preset (captions and drawing, from scratch). generalist: the tiny-janus-generalist "
             "preset (the base, instruction-tuned on generic samples of every Continual-NExT form; docs/continual-next.md).")] = "base",
    base: Annotated[Path | None, typer.Option(
        help="generalist: the tiny Janus to start from (default: the shipped tiny-janus preset).")] = None,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX)] = 0,
    vq_steps: Annotated[int | None, typer.Option(min=1, help="VQ tokenizer/decoder training steps (default: the recipe's).")] = None,
    lm_steps: Annotated[int | None, typer.Option(min=1, help="LM steps: text-to-image + modality decision + captioning each step (default: the recipe's).")] = None,
    reuse_image_stages: Annotated[Path | None, typer.Option(
        help="An earlier pretrain-janus output with the same VQ/vision recipe: load its VQ and vision encoder, run only the LM stage.")] = None,
) -> None:
    """Build and pre-train the tiny dual-to-dual Janus base (the shipped one: src/mmcl/assets/tiny-janus, about 57 min on one CPU thread).

    Scores its generations with the image judge in src/mmcl/assets/image-judge when present.
    ``--recipe generalist`` instruction-tunes a built base instead and writes its card.
    """
    from mmcl.pretrain.janus import JanusPretrainRecipe, pretrain_tiny_janus
    from mmcl.pretrain.janus_generalist import JanusGeneralistRecipe, pretrain_janus_generalist

    if recipe == "generalist":
        card = pretrain_janus_generalist(output, JanusGeneralistRecipe(seed=seed), base=base, log=console.print)
        out.print(json.dumps(card, indent=2, default=str))
        return
    if recipe != "base":
        _fail(f"unknown recipe {recipe!r}; recipes: base, generalist")

    overrides = {k: v for k, v in {"vq_steps": vq_steps, "lm_steps": lm_steps}.items() if v is not None}
    results = pretrain_tiny_janus(output, JanusPretrainRecipe(seed=seed, **overrides), log=console.print,
                                  reuse_from=reuse_image_stages)
    out.print(json.dumps(results, indent=2, default=str))


@app.command()
def rescore(
    run_dir: Path,
    scorer: Annotated[str | None, typer.Option("--scorer", help="Scorer name, e.g. relaxed_numeric.")] = None,
    task: Annotated[
        list[str] | None,
        typer.Option("--task", help="Rescore only this task (repeatable); the track is null elsewhere. Default: every task."),
    ] = None,
    intrusion: Annotated[
        bool,
        typer.Option("--intrusion", help="Instead of a scorer: add the `intrusion` and `intrusion_form` tracks (the "
                                         "share of each earlier task's answers that are answers, or have the "
                                         "answer forms, of tasks learned after it)."),
    ] = False,
) -> None:
    """Recompute a run's matrices and metrics from its saved predictions with another scorer.

    Sample-aware scorers (mllmcl_sci, mllmcl_ocr, mllmcl_ocr_strict, cnext_grounding) use what the
    evaluator saved with each prediction (sample_meta); predictions saved without it are refused.
    Scorers and their sources: docs/scorers.md; the intrusion track: docs/metrics.md#intrusion.
    """
    from mmcl.registry import UnknownNameError
    from mmcl.rescore import INTRUSION, INTRUSION_FORM, intrusion_run, rescore_run

    if (scorer is None) == (not intrusion):
        _fail("give exactly one of --scorer NAME and --intrusion")
    if intrusion and task:
        _fail("--task applies to --scorer only: the intrusion track reads every task")
    try:
        if intrusion:
            results, tracks = intrusion_run(run_dir), [INTRUSION, INTRUSION_FORM]
        else:
            assert scorer is not None
            results, tracks = rescore_run(run_dir, scorer, tasks=task or None), [scorer]
    except (UnknownNameError, ValueError, OSError) as e:
        _fail(str(e))
    out.print(json.dumps({track: results["metrics"][track] for track in tracks}, indent=2))


@app.command()
def compare(
    run_dirs: list[Path],
    scorer: Annotated[str, typer.Option(help="Track to compare (default: each task's primary scorer).")] = "primary",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write compare.md and compare.json here.")] = None,
    protocol: Annotated[str | None, typer.Option(help="Instead: a benchmark protocol's summary (`mmcl list` shows the protocols, e.g. per-scenario VQA/F1 or the Continual-NExT metrics); writes protocol-<name>.md/.json with -o.")] = None,
    also: Annotated[list[str] | None, typer.Option("--also", help="Add a column: TRACK or TRACK:METRIC (metric last unless named), e.g. --also drift_probe --also intrusion --also vqa_score:forgetting. Repeatable.")] = None,
) -> None:
    """Side-by-side table of runs (seeds of the same config grouped as mean ± std)."""
    from mmcl.report import compare as cmp

    if protocol is not None:
        import mmcl.benchmarks.builtin  # noqa: F401  registers the benchmarks' protocols
        from mmcl.registry import UnknownNameError
        from mmcl.report.protocols import PROTOCOLS

        try:
            compared = PROTOCOLS.get(protocol).compare(run_dirs, out_dir=output)
        except (UnknownNameError, ValueError, OSError) as e:
            _fail(str(e))
        out.print(compared.shown)
        if compared.files:
            console.print(f"wrote {' and '.join(str(f) for f in compared.files)}")
        return
    try:
        table = cmp.compare_runs(run_dirs, scorer=scorer, also=also or ())
    except (ValueError, OSError) as e:
        _fail(str(e))
    out.print(cmp.render_rich(table))
    if output:
        cmp.write_comparison(table, output)
        console.print(f"wrote {output / 'compare.md'} and {output / 'compare.json'}")


@app.command("validate-data")
def validate_data(
    configs: Annotated[list[Path], typer.Argument(help="YAML config file(s) with a `benchmark:` section naming a benchmark with a data validator (`mmcl list`).")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set benchmark.path=/data/msvqa")] = None,
    images: Annotated[bool, typer.Option("--images/--no-images", help="Open every image (slow on a full dataset).")] = True,
) -> None:
    """Check a benchmark's data without training (MSVQA: per scenario/task counts, boxes, missing images,
    unmapped scenario values, every problem)."""
    import mmcl.benchmarks.builtin  # noqa: F401  registers the data validators
    from mmcl.benchmarks import DATA_VALIDATORS
    from mmcl.config import ConfigError, load_config

    try:
        cfg = load_config(list(configs), list(set_ or []))
        if cfg.benchmark.name not in DATA_VALIDATORS:
            checked = ", ".join(repr(n) for n in DATA_VALIDATORS.names())
            _fail(f"validate-data checks benchmark {checked}, not {cfg.benchmark.name!r} (use mmcl run --dry-run)")
        report = DATA_VALIDATORS.get(cfg.benchmark.name)(cfg.benchmark, check_images=images)
    except ConfigError as e:
        _fail(str(e))
    out.print(report.render(), markup=False, highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (seeds of one config are grouped).")],
    html: Annotated[Path | None, typer.Option("--html", help="Instead: write ONE self-contained HTML page of all the runs here (figures also as PNGs in <stem>-figures/ beside it); run directories are only read.")] = None,
) -> None:
    """Rewrite each run's report.md, heatmaps and matrix.csv from its results.json (or, with --html, one HTML page)."""
    from mmcl.benchmarks.builtin import build_benchmark  # also registers the benchmarks' protocols
    from mmcl.report.markdown import write_report
    from mmcl.report.results import load_results, write_matrix_csv

    if html is not None:
        from mmcl.report.html import write_html_report

        try:
            out.print(str(write_html_report(run_dirs, html, rebuild=build_benchmark)))
        except (ValueError, OSError) as e:
            _fail(str(e))
        return
    for run_dir in run_dirs:
        try:
            results = load_results(run_dir)
        except (ValueError, OSError) as e:
            _fail(str(e))
        write_matrix_csv(run_dir, results)
        out.print(str(write_report(run_dir, results)))


@app.command("list")
def list_names() -> None:
    """List the registered benchmarks, methods, scorers, protocols and model presets."""
    from mmcl.benchmarks import DATA_VALIDATORS
    from mmcl.benchmarks.builtin import benchmark_names  # registers scorers, protocols
    from mmcl.eval.scorers import SCORERS
    from mmcl.methods import METHODS
    from mmcl.models.loader import PRESETS
    from mmcl.report.protocols import PROTOCOLS

    out.print(f"benchmarks: {', '.join(benchmark_names())}")
    out.print(f"methods:    {', '.join(METHODS.names())}")
    out.print(f"scorers:    {', '.join(SCORERS.names())}")
    out.print(f"protocols:  {', '.join(PROTOCOLS.names())} (mmcl compare --protocol NAME)")
    out.print(f"validators: {', '.join(DATA_VALIDATORS.names())} (mmcl validate-data)")
    out.print(f"models:     {', '.join(sorted(PRESETS))} (or model.path=<local HF dir>)")


@app.command()
def bench(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the results as JSON here.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Every part small: a smoke test (well under a minute on a quiet machine).")] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, max=1024, help="torch CPU threads (default: torch's default, as mmcl run). On a busy machine use 1.")] = None,
) -> None:
    """Speed benchmarks, measured side by side: training loop vs a plain peft loop (and MFU), batched vs
    per-sample generation, routing methods vs LoRA, and a stage's time and memory as tasks accumulate."""
    from rich.markup import escape

    from mmcl.bench import render_table, run_bench
    from mmcl.utils.io import atomic_write_json

    results = run_bench(quick=quick, threads=threads, log=lambda msg: console.print(f"[dim]{escape(msg)}[/]"))
    out.print(render_table(results))
    for note in results["notes"]:
        console.print(f"note: {escape(note)}", highlight=False)
    if output:
        try:
            atomic_write_json(output, results)
        except OSError as e:
            _fail(f"cannot write {output}: {e}")
        console.print(f"wrote {escape(str(output))}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
