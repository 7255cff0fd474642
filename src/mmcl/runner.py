"""One continual-learning run: stages of train -> evaluate every task, then metrics and report.

Output directory layout::

    config.yaml                      the resolved config
    results.json                     tasks, matrices per scorer track, zero-shot row, metrics, cost
    matrix.csv                       the matrices as CSV
    predictions/zero-shot/<task>.jsonl, predictions/stage-XX/<task>.jsonl
    stages/stage-XX.json             stage-complete markers (written last, atomically)
    checkpoint/                      the latest stage's trainable weights, method state, RNG (resume point)
    report.md, heatmap-<track>.png
    mmcl.lock                        held (flock) by the process writing the run; see mmcl.rundir

Every file is written atomically (temporary file, fsync, rename). Predictions are written
per task as each evaluation cell finishes. ``Runner(..., resume=True)`` (``mmcl run --resume``)
continues an interrupted run from its last finished stage and evaluation cell; see
:mod:`mmcl.checkpoint` for the checkpoint layout and what a resume restores.

Safety: file names come from names checked by :func:`mmcl.utils.paths.check_name` (the run name
at config validation, task names when the benchmark is built), and every path built from them
goes through :func:`mmcl.utils.paths.inside` (it must resolve inside the run directory). The run
directory is locked for the whole run, a non-empty directory that is not a run is refused
unless ``force`` (:mod:`mmcl.rundir`), and the manifest records the data files' fingerprint,
which ``--resume`` compares (:mod:`mmcl.data.fingerprint`). Before anything is written, every
prompt is checked against the model's context (:meth:`Runner.check_samples`, as ``--dry-run``).

Several processes (``accelerate launch`` / ``torchrun``, see docs/distributed.md): every process
builds the same model and method and trains its shard of each batch (DDP); evaluation splits each
test set into whole generation batches shared out over the processes and gathers the answers in
order (:mod:`mmcl.eval.generate`), so every process scores the same predictions and holds the
same results. Only the main process reads the run directory's state and writes files; what it
reads (the resume point, saved evaluation cells) and any error it meets are broadcast to the
others, so that no process waits forever on one that failed. Other processes print nothing.
"""

from __future__ import annotations

import pickle
import random
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from accelerate.utils.environment import parse_flag_from_env
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import mmcl
from mmcl import checkpoint as ckpt
from mmcl.benchmarks.builtin import build_benchmark
from mmcl.config import RunConfig, check_trackers_installed, flat_config, to_yaml
from mmcl.data.fingerprint import data_changes, data_files, fingerprint
from mmcl.data.sample import Benchmark, Sample, Task
from mmcl.eval import budget
from mmcl.eval.drift import DRIFT_TRACK, DriftTrack, supports_drift
from mmcl.eval.evaluator import ERROR_TRACKS, IMAGE_KEY, TRACK_PREFIX, TaskResult, evaluate_task
from mmcl.eval.generate import Shard, generate_answers
from mmcl.methods import METHODS, Method, RunContext, build_method
from mmcl.methods.base import count_trainable
from mmcl.models.dual import boi_token_id, supports_image_output
from mmcl.models.loader import ModelBundle, load_model
from mmcl.report.html import write_html_report
from mmcl.report.markdown import write_report
from mmcl.report.protocols import protocols
from mmcl.report.results import compute_track_metrics, write_matrix_csv
from mmcl.rundir import RunLock, check_foreign
from mmcl.train import feature_cache
from mmcl.train.dual import forward_batch
from mmcl.train.encode import Encoded, Encoder, collate_train
from mmcl.train.hooks import GradClip
from mmcl.train.loop import TrainStats, num_update_steps, train_on
from mmcl.utils.host import cpu_signature, host_info
from mmcl.utils.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from mmcl.utils.paths import inside

PRIMARY = "primary"
DUAL_PRESET = "tiny-janus"  # the default model of streams with image answers
DRIFT_FILE = "drift-probes.pt"  # the probes fitted on the base (eval.drift_probe), kept for --resume


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def default_output_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return inside(Path("runs"), f"{stamp}-{cfg.name}-{cfg.benchmark.name}-{cfg.method.name}-s{cfg.seed}")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@dataclass
class Plan:
    """What a run will do (printed by --dry-run)."""

    tasks: list[dict[str, Any]]
    method: str
    schedule: str
    trainable_params: int
    total_params: int
    model_source: str
    stages: int
    eval_cells: int


@dataclass
class RunState:
    """Rows of results collected so far."""

    stage_names: list[str] = field(default_factory=list)
    rows: dict[str, list[list[float | None]]] = field(default_factory=dict)
    zero_shot: dict[str, list[float | None]] | None = None
    stage_stats: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    cell_errors: list[dict[str, dict[str, float]]] = field(default_factory=list)  # per row: sampled cells' stderr


def distributed_setting(accelerator: Accelerator) -> str | None:
    """The distributed setting of this process group: ``ddp``, ``fsdp``, ``zero1..3``, or None (one process)."""
    dtype = str(accelerator.distributed_type).lower()
    if "deepspeed" in dtype:
        return f"zero{accelerator.state.deepspeed_plugin.zero_stage}"
    if "fsdp" in dtype:
        return "fsdp"
    if accelerator.num_processes > 1:
        return "ddp"
    return None


def image_answer_tasks(benchmark: Benchmark) -> list[str]:
    """Names of the tasks answered with images (judged by their first train / test sample)."""
    return [t.name for t in benchmark.tasks if any(s.wants_image for s in t.train[:1] + t.test[:1])]


def check_training_data(benchmark: Benchmark, method_cls: type[Method]) -> None:
    """Refuse, before anything is written, a stream whose tasks have no training samples to train on."""
    images = image_answer_tasks(benchmark)
    if images and not method_cls.image_answers:
        raise ValueError(
            f"method {method_cls.name!r} does not support tasks answered with images ({', '.join(images)} of "
            f"{benchmark.name!r}); methods that do: "
            + ", ".join(n for n in METHODS.names() if METHODS.get(n).image_answers)
        )
    if method_cls.schedule == "none":
        return
    empty = [t.name for t in benchmark.tasks if not t.train]
    if method_cls.schedule == "joint" and len(empty) < len(benchmark.tasks):
        return
    if empty:
        raise ValueError(
            f"benchmark {benchmark.name!r}: task(s) {', '.join(repr(n) for n in empty)} have no training samples, "
            f"and method {method_cls.name!r} trains on them (check benchmark.train_per_task and the tasks' train data)"
        )


def check_distributed_support(method_cls: type[Method], setting: str | None) -> None:
    """Refuse a method under a distributed setting it does not declare in ``supports``."""
    if setting and setting not in method_cls.supports:
        raise RuntimeError(
            f"method {method_cls.name!r} does not support {setting.upper()} "
            f"(supported: {', '.join(sorted(method_cls.supports)) or 'single process only'})"
        )


def _pass_stats(stats: TrainStats, n_samples: int) -> dict[str, Any]:
    """What a stage record keeps of one training pass."""
    return {
        "train_samples": n_samples,
        "steps": stats.steps,
        "train_seconds": round(stats.seconds, 3),
        "final_loss": stats.final_loss,
        "mean_loss": stats.mean_loss,
        "tokens": stats.tokens,
    }


class RunServices:
    """The services a method calls through its run context (:class:`mmcl.methods.base.Services`).

    ``encode``: the run's encoder; ``collate`` / ``forward``: the loop's collation and forward pass
    (without prompt blanking); ``generate``: batched greedy generation with ``eval.batch_size`` (every
    process generates all answers); ``update_steps``: the loop's step count for ``train.*``;
    ``clip_scale``: the factor the loop's gradient clipping is about to apply (``grad_clip``, which
    the runner hands to :func:`mmcl.train.loop.train_on`).
    """

    def __init__(self, cfg: RunConfig, bundle: ModelBundle, device: torch.device, encoder: Encoder | None = None,
                 num_processes: int = 1) -> None:
        self.cfg, self.bundle, self.device = cfg, bundle, device
        self.encoder = encoder if encoder is not None else Encoder.for_bundle(bundle)
        self.num_processes = num_processes
        self.grad_clip = GradClip()

    def encode(self, samples: Sequence[Sample], with_answer: bool) -> list[Encoded]:
        return self.encoder.encode(samples, with_answer=with_answer)

    def collate(self, encoded: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        return collate_train(encoded, self.bundle.tokenizer.pad_token_id)

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        return forward_batch(model, batch)

    def generate(self, model: torch.nn.Module, samples: Sequence[Sample], max_new_tokens: int,
                 adapter_names: Sequence[str] | None = None) -> list[str]:
        return generate_answers(
            model, self.bundle.tokenizer, self.encode(samples, with_answer=False),
            batch_size=self.cfg.eval.batch_size, max_new_tokens=max_new_tokens, adapter_names=adapter_names,
            device=self.device,
        )

    def update_steps(self, n_samples: int) -> int:
        return num_update_steps(n_samples, self.cfg.train, self.num_processes)

    def clip_scale(self) -> float:
        return self.grad_clip.scale()


def run_context(
    cfg: RunConfig,
    bundle: ModelBundle,
    benchmark: Benchmark,
    device: torch.device | None = None,
    seed: int | None = None,
    *,
    num_processes: int = 1,
    train_extra: Any = None,
) -> RunContext:
    """A method's run context with :class:`RunServices`, as :class:`Runner` builds it (tests and scripts use it)."""
    device = device if device is not None else torch.device("cpu")
    services = RunServices(cfg, bundle, device, num_processes=num_processes)
    return RunContext(cfg, bundle, benchmark, device, cfg.seed if seed is None else seed,
                      train_extra=train_extra, services=services)


class Runner:
    """Builds everything from a RunConfig and runs the stream."""

    def __init__(
        self,
        cfg: RunConfig,
        output_dir: str | Path | None = None,
        console: Console | None = None,
        resume: bool = False,
        force: bool = False,
        verify_data: bool = False,
    ):
        """``force``: run in a non-empty directory that is not a run (see :mod:`mmcl.rundir`);
        ``verify_data``: fingerprint the data files by content (SHA-256), not only size and mtime."""
        self.cfg = cfg
        self.force = force
        self.verify_data = verify_data
        self._lock = None  # the run directory's lock, held by the main process while run() writes
        self.console = console or Console(stderr=True)
        if resume and not (output_dir or cfg.output.dir):
            raise ckpt.RunDirError("--resume needs the run directory to continue: pass --output (or output.dir)")
        self.output_dir = Path(output_dir or cfg.output.dir or default_output_dir(cfg))
        self.resume = resume
        self.already_complete = False  # set by run() when --resume finds a finished run
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        seed_everything(cfg.seed)
        tracking: dict[str, Any] = {}  # logging.trackers: TensorBoard writes <run dir>/tensorboard/<name>/
        if cfg.logging.trackers:
            from accelerate.utils import ProjectConfiguration

            check_trackers_installed(cfg.logging.trackers)  # accelerate would skip a missing one silently
            tracking = {
                "log_with": list(cfg.logging.trackers),
                "project_config": ProjectConfiguration(
                    project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "tensorboard")
                ),
            }
        self.accelerator = Accelerator(mixed_precision=self._mixed_precision(), cpu=self._use_cpu(), **tracking)
        self.device = self.accelerator.device
        if not self.accelerator.is_main_process:
            self.console = Console(stderr=True, quiet=True)  # one process reports
        self.output_dir = self._on_main(lambda: self.output_dir)  # the default holds the main's clock time
        # cheap checks first: method name and options, then data, then the model
        method_cls = METHODS.get(cfg.method.name)
        method_cls.parse_options(cfg.method.options())
        check_distributed_support(method_cls, distributed_setting(self.accelerator))
        self.benchmark: Benchmark = build_benchmark(cfg)
        check_training_data(self.benchmark, method_cls)
        if (not cfg.model.path and "preset" not in cfg.model.model_fields_set
                and image_answer_tasks(self.benchmark)):
            # a stream with image answers needs a dual-to-dual model: its default is the tiny Janus
            cfg = self.cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"preset": DUAL_PRESET})})
            self.console.print(f"[dim]{self.benchmark.name} has image answers: model.preset defaults to {DUAL_PRESET}[/]")
        self.bundle = load_model(cfg.model)
        self.bundle.model.to(self.device)
        self.services = RunServices(cfg, self.bundle, self.device, num_processes=self.accelerator.num_processes)
        self.encoder = self.services.encoder
        self.ctx = RunContext(cfg, self.bundle, self.benchmark, self.device, cfg.seed, train_extra=self._train_extra,
                              services=self.services)
        self._extra_stats: list[dict[str, Any]] = []  # passes a method trained through ctx.train_extra this stage
        self.method: Method = build_method(self.ctx)
        self.tracker = ckpt.TrainableTracker(self.bundle.model)  # before setup: these are the base weights
        seed_everything(cfg.seed)
        self.model = self.method.setup(self.bundle.model)
        self._test_cache: dict[str, list[Encoded]] = {}
        self.feature_cache, self._feature_cache_state = feature_cache.attach(
            cfg.train.feature_cache, self.method.model, cfg.train.feature_cache_mb,
            self.output_dir / "feature-cache" / f"rank{self.accelerator.process_index}",
        )
        # a dual-to-dual model (Janus) may answer any prompt with an image: evaluation lets it choose
        self._image_token_id = (boi_token_id(self.bundle.processor) if supports_image_output(self.bundle.model)
                                else None)
        wants_images = image_answer_tasks(self.benchmark)
        if wants_images and self._image_token_id is None:
            raise ValueError(
                f"tasks {', '.join(wants_images)} ask for image answers, but the model "
                f"({self.bundle.family.model_class}) has no image generation head; use a dual-to-dual model "
                "(model.preset: tiny-janus, or a local Janus checkpoint)"
            )
        self._error_tracks = any("expect" in t.meta for t in self.benchmark.tasks)
        self.drift = DriftTrack(cfg.eval.drift_train_images) if cfg.eval.drift_probe else None
        if self.drift is not None and not supports_drift(self.method.model):
            raise ValueError(f"eval.drift_probe reads image features through get_image_features, which "
                             f"{self.bundle.family.model_class} does not have; set eval.drift_probe=false")

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _use_cpu() -> bool:
        """CPU when there is no GPU or when asked (``accelerate launch --cpu`` sets ACCELERATE_USE_CPU)."""
        return not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")

    def _mixed_precision(self) -> str:
        """``auto``: bf16 autocast on a GPU that supports it, full precision otherwise (CPU)."""
        mp = self.cfg.train.mixed_precision
        if mp == "auto":
            return "bf16" if not self._use_cpu() and torch.cuda.is_bf16_supported() else "no"
        return mp

    def _on_main(self, fn, *args: Any) -> Any:
        """``fn(*args)`` on the main process only; its result, or the error it raised, on every process.

        With one process it is a plain call. Every process must call it at the same point.
        """
        if self.accelerator.num_processes == 1:
            return fn(*args)
        payload: list[Any] = [None]
        if self.accelerator.is_main_process:
            try:
                payload[0] = ("ok", fn(*args))
            except Exception as e:  # shared, then raised on every process
                try:
                    pickle.dumps(e)
                    payload[0] = ("error", e)
                except Exception:
                    payload[0] = ("error", RuntimeError(f"{type(e).__name__}: {e}"))
        broadcast_object_list(payload, from_process=0)
        kind, value = payload[0]
        if kind == "error":
            raise value
        return value

    def _shard(self) -> Shard | None:
        """This process's share of an evaluation (None with one process)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return None
        return Shard(acc.process_index, acc.num_processes, gather_object)

    def plan(self) -> Plan:
        tasks = [
            {
                "name": t.name,
                "train": len(t.train),
                "test": len(t.test),
                "scorers": t.scorers,
                "steps": num_update_steps(len(t.train), self.cfg.train, self.accelerator.num_processes),
            }
            for t in self.benchmark.tasks
        ]
        T = len(self.benchmark.tasks)
        schedule = self.method.schedule
        stages = {"sequential": T, "joint": 1, "none": 0}[schedule]
        full = self.cfg.eval.matrix != "seen"
        rows = stages if schedule != "sequential" or full else T * (T + 1) // 2
        eval_cells = (rows if schedule == "sequential" else stages) * (T if full else 1)
        if self.cfg.eval.zero_shot or schedule == "none":
            eval_cells += T
        return Plan(
            tasks=tasks,
            method=self.method.name,
            schedule=schedule,
            trainable_params=count_trainable(self.model),
            total_params=sum(p.numel() for p in self.model.parameters()),
            model_source=self.bundle.source,
            stages=stages,
            eval_cells=eval_cells,
        )

    def dry_run(self) -> Plan:
        """Validate config, data and model without training (see :meth:`check_samples`)."""
        self.check_samples()
        return self.plan()

    def check_samples(self) -> None:
        """Encode one sample of every task and split, and check that every prompt fits the model's
        context (as the run's encoding would); raises before anything is written."""
        for t in self.benchmark.tasks:
            for split, samples in (("train", t.train), ("test", t.test)):
                if samples:
                    try:
                        self.encoder.encode(samples[:1], with_answer=(split == "train"), reserve=self._reserve(t, split))
                    except Exception as e:
                        raise ValueError(f"task {t.name!r} ({split}): cannot encode a sample: {e}") from e
                    self.encoder.check_lengths(samples, with_answer=(split == "train"), reserve=self._reserve(t, split))

    def _reserve(self, task: Task, split: str) -> int:
        """Tokens generation adds after a test prompt (0 for training samples)."""
        return 0 if split == "train" else int(self.cfg.eval.max_new_tokens or task.max_new_tokens)

    # ------------------------------------------------------------------ running
    def run(self) -> Path:
        """Run the stream into the output directory, holding its lock throughout (see :mod:`mmcl.rundir`)."""
        self.check_samples()  # what --dry-run checks, before the run directory is touched
        created = not self.output_dir.exists()
        try:
            return self._run()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
                if created and self.output_dir.is_dir() and not any(self.output_dir.iterdir()):
                    self.output_dir.rmdir()  # refused before anything was written: leave no empty folder

    def _take_run_dir(self) -> ckpt.ResumePoint | None:
        """(Main process.) Refuse a foreign directory, lock the run directory, inspect it, check the data."""
        out = self.output_dir
        note = check_foreign(out, self.force)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"output directory {out} is not writable: {e}") from None
        self._lock = RunLock(out, "mmcl run --resume" if self.resume else "mmcl run").acquire()
        for line in (note, self._lock.note):
            if line:
                self.console.print(escape(line), highlight=False, soft_wrap=True)
        point = ckpt.inspect_run_dir(out, self.cfg, self.resume)
        if point is None or not point.complete:  # a finished run reads no data again
            self._data = self._check_data(point)
        return point

    def _check_data(self, point: ckpt.ResumePoint | None) -> dict[str, Any] | None:
        """The data fingerprint to record: the saved one on resume (after refusing changed data), else a new one."""
        files = data_files(self.benchmark)
        saved = point.manifest.get("data") if point is not None and point.manifest is not None else None
        if saved is None:
            return fingerprint(files, content=self.verify_data)
        changes = data_changes(saved, verify=self.verify_data)
        changes += [f"{f}: a data file the run did not read when it started" for f in map(str, files) if f not in saved]
        if changes:
            shown = "\n".join(f"  - {c}" for c in changes[:20]) + (f"\n  ... and {len(changes) - 20} more" if len(changes) > 20 else "")
            raise ckpt.RunDirError(
                f"cannot resume {self.output_dir}: the data changed since the run started, so its finished cells "
                f"and the ones still to evaluate would not be on the same data:\n{shown}\n"
                "Put the data back as it was, or start a new run (another --output) on the new data."
            )
        if self.verify_data and not any("sha256" in v for v in saved.values()):
            self.console.print("[dim]--verify-data: the run was started without it; its data files were compared "
                               "by size and modification time[/]")
        return saved

    def _run(self) -> Path:
        out = self.output_dir
        point = self._on_main(self._take_run_dir)
        if point is not None and point.complete:
            self.already_complete = True
            self.console.print(f"nothing to do: the run in {escape(str(out))} is already complete")
            return out

        def start() -> None:
            try:
                if point is None:
                    out.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(out / "config.yaml", to_yaml(self.cfg))
                if point is None or point.manifest is None:
                    ckpt.start_manifest(out, self.cfg, data=self._data)
            except OSError as e:
                raise OSError(f"output directory {out} is not writable: {e}") from None

        self._on_main(start)
        if self.cfg.logging.trackers:  # trackers write on the main process only
            self.accelerator.init_trackers(
                project_name=self.cfg.name,
                config=flat_config(self.cfg),
                init_kwargs={"wandb": {"name": out.name, "dir": str(out)}},
            )
        state = RunState()
        tasks = self.benchmark.tasks
        schedule = self.method.schedule
        self._prepare_drift()
        with self._progress() as progress:
            self.progress = progress
            if self.cfg.eval.zero_shot or schedule == "none":
                with self._base_model():
                    row = self._evaluate_all("zero-shot", tasks, 0, reuse=point is not None)
                state.zero_shot = self._row_to_tracks(row)
                self._log_stage("zero-shot", None, row, state)
            done, trained = self._restore(point, state) if point is not None else (0, 0)
            for t, task in self._stages():
                if t < done:
                    continue
                joint = schedule == "joint"
                if t >= trained:
                    self._train_stage(t, task, state, label="joint" if joint else None)
                seen = tasks if joint else budget.stage_tasks(self.cfg.eval.matrix, tasks, t)
                row = self._evaluate_all(ckpt.stage_dir_name(t + 1), seen, t + 1, reuse=t < trained)
                self._add_row(state, self._row_name(t), row)
                self._finish_stage(t, None if joint else task, row, state)
            if schedule == "none":
                state.stage_names.append("zero-shot")
                for track, values in (state.zero_shot or {}).items():
                    state.rows.setdefault(track, []).append(list(values))
        results = self._results(state)

        def finish() -> None:
            atomic_write_json(out / "results.json", results)
            self._write_tables(results)
            ckpt.mark_complete(out)

        self._on_main(finish)  # the other processes return once the files are written
        if self.feature_cache is not None:
            self.feature_cache.close()  # its spilled entries are removed with it
        for tracker in self.accelerator.trackers:  # = accelerator.end_training(), minus destroying the process group
            tracker.finish()
        return out

    def _prepare_drift(self) -> None:
        """Fit the drift probes on the base model (or reload them: a resumed run's model is no longer the base)."""
        if self.drift is None:
            return
        path = inside(self.output_dir, DRIFT_FILE)
        if path.is_file():
            self.drift.load_state_dict(torch.load(path, weights_only=True))
            return
        t0 = time.perf_counter()
        with self._base_model(), self.accelerator.autocast():
            self.drift.fit(self.method.model, self.bundle.processor, self.benchmark.tasks, self.cfg.eval.batch_size)
        self._on_main(torch.save, self.drift.state_dict(), path)
        self.console.print(f"[dim]drift probes: {len(self.drift.probes)} tasks, fitted on the base's image "
                           f"features in {time.perf_counter() - t0:.1f}s[/]")

    def _stages(self) -> list[tuple[int, Task]]:
        """(stage index, task) of every training stage: one per task, one for joint, none for zero-shot."""
        tasks = self.benchmark.tasks
        return {"sequential": list(enumerate(tasks)), "joint": [(0, tasks[0])], "none": []}[self.method.schedule]

    def _row_name(self, t: int) -> str:
        if self.method.schedule == "joint":
            return "after joint training"
        return f"after {self.benchmark.tasks[t].name}"

    def _restore(self, point: ckpt.ResumePoint, state: RunState) -> tuple[int, int]:
        """Reload finished stages' rows and the latest checkpoint; returns (finished, trained) stage counts."""
        self.console.print(
            f"resuming {escape(str(self.output_dir))}: {point.done_stages} stage(s) finished"
            + (f", stage {point.trained_stages} trained" if point.trained_stages > point.done_stages else "")
        )
        tasks = {t.name: t for t in self.benchmark.tasks}
        for t, marker in enumerate(point.markers):
            row = {name: TaskResult(name, scores, []) for name, scores in marker["scores"].items() if name in tasks}
            self._add_row(state, self._row_name(t), row)
            state.stage_stats.append(marker["stats"])
        manifest = point.manifest
        if manifest is not None and point.trained_stages > 0:
            skipped = ckpt.load_checkpoint(self.output_dir, manifest, self.method, self.tracker)
            if skipped:
                self.console.print(
                    f"[dim]checkpoint: {len(skipped)} saved tensor(s) not in the model yet, left for the method "
                    f"to rebuild (e.g. {escape(skipped[0])})[/]"
                )
            if point.trained_stages > point.done_stages:
                state.stage_stats.append(manifest["stats"])
            self._eval_seconds = getattr(self, "_eval_seconds", 0.0) + float(manifest.get("eval_seconds", 0.0))
        state.train_seconds = sum(float(s.get("train_seconds", 0.0)) for s in state.stage_stats)
        return point.done_stages, point.trained_stages

    class _NullCtx:
        def __enter__(self) -> None:
            return None

        def __exit__(self, *a: object) -> None:
            return None

    def _base_model(self):
        """Context in which the model behaves as the untrained base (adapters disabled)."""
        disable = getattr(self.method.model, "disable_adapter", None)
        return disable() if callable(disable) else self._NullCtx()

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,
        )

    def _train_stage(self, t: int, task: Task, state: RunState, label: str | None = None) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed * 7919 + t)  # a stage's randomness depends on (seed, t) only: resumable
        self.method.before_task(t, task)
        self.tracker.note(self.method.model)
        if self.feature_cache is not None:
            self.feature_cache.begin_stage(self.method.model)  # the vision side's fingerprint, per stage
        samples = self.method.train_samples(t, task)
        if not samples:
            raise ValueError(f"task {task.name!r} has no training samples")
        encoded = self.encoder.encode(samples, with_answer=True)
        steps = num_update_steps(len(encoded), cfg.train, self.accelerator.num_processes)
        bar = self.progress.add_task(f"train {label or task.name}", total=steps, info="")

        done_steps = sum(int(s.get("steps", 0)) for s in state.stage_stats)  # global step: across stages, resumes

        def on_step(step: int, loss: float) -> None:
            self.progress.update(bar, completed=step, info=f"loss {loss:.3f}")
            if self.cfg.logging.trackers and (done_steps + step) % self.cfg.logging.log_every == 0:
                # the optimizer's rate after this step's scheduler step (the next update's), as HF Trainer logs it
                lr = self.accelerator._optimizers[-1].param_groups[0]["lr"]
                self.accelerator.log({"train/loss": loss, "train/lr": float(lr)}, step=done_steps + step)
            ckpt.kill_if_asked("train", t + 1, step)

        stats = train_on(
            self.method, encoded, cfg.train, self.accelerator, t, cfg.seed,
            self.bundle.tokenizer.pad_token_id, on_step, grad_clip=self.services.grad_clip,
        )
        self.progress.remove_task(bar)
        self._extra_stats = []
        self._stage = t
        self.method.after_task(t, task)
        extra_seconds = sum(float(s["train_seconds"]) for s in self._extra_stats)
        state.train_seconds += stats.seconds + extra_seconds
        state.stage_stats.append(
            {
                "stage": t + 1,
                "task": label or task.name,
                **_pass_stats(stats, len(encoded)),
                "trainable_params": count_trainable(self.method.model),
                "cpu": cpu_signature(),
                **({"extra_training": self._extra_stats} if self._extra_stats else {}),
            }
        )
        self._on_main(
            ckpt.save_checkpoint,
            self.output_dir, cfg, t + 1, label or task.name, self.method, self.tracker,
            state.stage_stats[-1], getattr(self, "_eval_seconds", 0.0), getattr(self, "_data", None),
        )

    def _train_extra(self, samples: list[Sample], label: str, **overrides: Any) -> dict[str, Any]:
        """Train ``samples`` with the shared loop on what the method left trainable (``ctx.train_extra``).

        Called by a method inside ``after_task``; ``overrides`` replace ``train.*`` fields for this
        pass. Its randomness depends on (seed, stage, pass), so a resumed run repeats it exactly.
        """
        t = getattr(self, "_stage", 0)
        tcfg = self.cfg.train.model_copy(update=overrides)
        encoded = self.encoder.encode(samples, with_answer=True)
        steps = num_update_steps(len(encoded), tcfg, self.accelerator.num_processes)
        bar = self.progress.add_task(f"train {label}", total=steps, info="")

        def on_step(step: int, loss: float) -> None:
            self.progress.update(bar, completed=step, info=f"loss {loss:.3f}")

        seed = self.cfg.seed * 7919 + 104729 * (len(self._extra_stats) + 1)  # differs from the stage's own pass
        stats = train_on(
            self.method, encoded, tcfg, self.accelerator, t, seed, self.bundle.tokenizer.pad_token_id, on_step,
            grad_clip=self.services.grad_clip,
        )
        self.progress.remove_task(bar)
        record = {"label": label, **_pass_stats(stats, len(encoded))}
        self._extra_stats.append(record)
        return record

    def _encoded_test(self, task: Task) -> list[Encoded]:
        if task.name not in self._test_cache:
            self._test_cache[task.name] = self.encoder.encode(task.test, with_answer=False,
                                                              reserve=self._reserve(task, "test"))
        return self._test_cache[task.name]

    def _cell(self, task: Task, stage: int) -> tuple[Task, list[Encoded]]:
        """What cell (``stage``, ``task``) evaluates: the task, or its subsample (``eval.matrix=sampled``)."""
        ev = self.cfg.eval
        final = stage == len(self._stages())
        index = self.benchmark.tasks.index(task)
        if not budget.is_sampled(ev.matrix, index, stage - 1 if stage > 0 else None, final, ev.sample_per_cell, task):
            return task, self._encoded_test(task)
        encoded = self._encoded_test(task)
        picked = budget.sample_indices(task, ev.sample_per_cell, self.cfg.seed)
        return budget.subsample(task, ev.sample_per_cell, self.cfg.seed), [encoded[i] for i in picked]

    def _evaluate_all(self, stage_dir: str, tasks: list[Task], stage: int, reuse: bool = False) -> dict[str, TaskResult]:
        """Evaluate ``tasks`` (``stage`` 0 is the zero-shot row); with ``reuse``, reload cells already written."""
        t0 = time.perf_counter()
        if self.feature_cache is not None:
            self.feature_cache.begin_stage(self.method.model)
        cells = {task.name: self._cell(task, stage) for task in tasks}
        total = sum(len(c.test) for c, _ in cells.values())
        bar = self.progress.add_task(f"eval {stage_dir}", total=total, info="")
        results: dict[str, TaskResult] = {}
        computed = 0
        for full_task in tasks:
            task, encoded = cells[full_task.name]
            path = inside(self.output_dir, "predictions", stage_dir, f"{task.name}.jsonl")
            saved = self._on_main(ckpt.load_cell, path, task) if reuse else None
            if saved is not None:
                if task is not full_task:
                    saved.scores.update(budget.standard_errors(task, saved.predictions, len(full_task.test)))
                results[task.name] = saved
                self.progress.advance(bar, len(task.test))
                continue
            with self.accelerator.autocast():  # bf16 autocast on a GPU with mixed precision; no-op on CPU
                res = evaluate_task(
                    self.method,
                    task,
                    encoded,
                    self.bundle.tokenizer,
                    batch_size=self.cfg.eval.batch_size,
                    max_new_tokens=self.cfg.eval.max_new_tokens,
                    device=self.device,
                    on_batch=lambda n: self.progress.advance(bar, n),
                    shard=self._shard(),
                    image_token_id=self._image_token_id,
                    cfg_scale=self.cfg.eval.cfg_scale,
                    image_answers=self.cfg.eval.image_answers,
                )
            if self.drift is not None:  # before the rows are saved: a reloaded cell reads the marks back
                acc = self.drift.mark(self.method.model, self.bundle.processor, task, res.predictions,
                                      self.cfg.eval.batch_size)
                if acc is not None:
                    res.scores[TRACK_PREFIX + DRIFT_TRACK] = acc
            if task is not full_task:
                res.scores.update(budget.standard_errors(task, res.predictions, len(full_task.test)))
            self._on_main(self._save_images, stage_dir, task, res)
            results[task.name] = res
            if self.cfg.eval.save_predictions:
                self._on_main(atomic_write_jsonl, path, res.predictions)
            computed += 1
            ckpt.kill_if_asked("eval", stage, computed)
        self.progress.remove_task(bar)
        self._eval_seconds = getattr(self, "_eval_seconds", 0.0) + time.perf_counter() - t0
        return results

    def _save_images(self, stage_dir: str, task: Task, res: TaskResult) -> None:
        """Write the generated images of ``res`` as PNGs next to the predictions; rows keep their path."""
        folder = inside(self.output_dir, "predictions", stage_dir, task.name)
        for r in res.predictions:
            image = r.pop(IMAGE_KEY, None)
            if image is None or not self.cfg.eval.save_predictions:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(r["question_id"])) + ".png"
            image.save(folder / name)
            r["image"] = str((folder / name).relative_to(self.output_dir))

    @property
    def _extra_track_names(self) -> list[str]:
        """Tracks beyond the scorers: the method's, and the error-class rates when tasks declare ``expect``."""
        names = list(self.method.extra_tracks)
        if self._error_tracks:
            names += [n for n in ERROR_TRACKS.values() if n not in names]
        if self.drift is not None:
            names.append(DRIFT_TRACK)
        return names

    def _row_to_tracks(self, row: dict[str, TaskResult]) -> dict[str, list[float | None]]:
        tracks: dict[str, list[float | None]] = {PRIMARY: []}
        for s in self.benchmark.scorer_names:
            tracks[s] = []
        extra = self._extra_track_names
        for name in extra:
            tracks[name] = []
        for task in self.benchmark.tasks:
            res = row.get(task.name)
            tracks[PRIMARY].append(res.scores[task.primary_scorer] if res else None)
            for s in self.benchmark.scorer_names:
                tracks[s].append(res.scores.get(s) if res else None)
            for name in extra:
                tracks[name].append(res.scores.get(TRACK_PREFIX + name) if res else None)
        return tracks

    def _add_row(self, state: RunState, name: str, row: dict[str, TaskResult]) -> None:
        state.stage_names.append(name)
        state.cell_errors.append({task: {k: v for k, v in res.scores.items()
                                         if k.startswith(budget.STDERR_PREFIX) or k == budget.SAMPLED_N}
                                  for task, res in row.items()})
        for track, values in self._row_to_tracks(row).items():
            state.rows.setdefault(track, []).append(values)

    def _finish_stage(self, t: int, task: Task | None, row: dict[str, TaskResult], state: RunState) -> None:
        marker = {
            "stage": t + 1,
            "task": task.name if task else "joint",
            "scores": {k: v.scores for k, v in row.items()},
            "stats": state.stage_stats[-1] if state.stage_stats else {},
            "time": datetime.now().isoformat(timespec="seconds"),
        }
        self._on_main(atomic_write_json, inside(self.output_dir, "stages", f"stage-{t + 1:02d}.json"), marker)
        self._log_stage(f"stage {t + 1}/{len(self.benchmark.tasks)}", task, row, state)

    def _log_stage(self, label: str, task: Task | None, row: dict[str, TaskResult], state: RunState) -> None:
        tasks = self.benchmark.tasks
        prim = [row[t.name].scores[t.primary_scorer] for t in tasks if t.name in row]
        msg = f"{label}"
        if task is not None:
            idx = tasks.index(task)
            seen = [row[t.name].scores[t.primary_scorer] for t in tasks[: idx + 1] if t.name in row]
            stats = state.stage_stats[-1]
            msg += (
                f" [cyan]{task.name}[/]: loss {stats['final_loss']:.3f}, {stats['train_seconds']:.0f}s train; "
                f"this task {row[task.name].scores[task.primary_scorer]:.3f}, seen mean {np.mean(seen):.3f}"
            )
        msg += f", all-task mean {np.mean(prim):.3f}"
        self.console.print(msg)
        if self.cfg.logging.trackers:  # step = stage index: rows so far (0 = zero-shot, T = last stage)
            stage = len(state.stage_names)
            scalars = {f"eval/{t.name}/{t.primary_scorer}": float(row[t.name].scores[t.primary_scorer])
                       for t in tasks if t.name in row}
            if stage > 0:  # joint training (task None) has seen every task
                scalars["eval/seen_mean"] = float(np.mean(seen if task is not None else prim))
            scalars["eval/all_mean"] = float(np.mean(prim))
            self.accelerator.log(scalars, step=stage)

    # ------------------------------------------------------------------ results
    def _results(self, state: RunState) -> dict[str, Any]:
        tasks = self.benchmark.tasks
        matrix = state.rows
        metrics = {
            track: compute_track_metrics(rows, (state.zero_shot or {}).get(track))
            for track, rows in matrix.items()
        }
        cost = {
            "trainable_params": count_trainable(self.method.model),
            "total_params": sum(p.numel() for p in self.method.model.parameters()),
            "train_seconds": round(state.train_seconds, 3),
            "eval_seconds": round(getattr(self, "_eval_seconds", 0.0), 3),
            "peak_memory_mb": round(peak_memory_mb(self.device), 1),
            "peak_memory_kind": "cuda_max_allocated" if self.device.type == "cuda" else "max_rss",
            "device": str(self.device),
            "mixed_precision": str(self.accelerator.mixed_precision),
            "num_processes": self.accelerator.num_processes,
            "torch_threads": torch.get_num_threads(),
            "feature_cache": self._feature_cache_state,
            **self.method.cost(),
        }
        if self.accelerator.num_processes > 1:  # every process's own figures; the ones above are the main's
            cost["peak_memory_mb_per_process"] = gather_object([cost["peak_memory_mb"]])
            cost["train_seconds_per_process"] = gather_object([cost["train_seconds"]])
        results = {
            "mmcl_version": mmcl.__version__,
            "name": self.cfg.name,
            "benchmark": self.benchmark.name,
            "method": self.method.name,
            "seed": self.cfg.seed,
            "model": self.bundle.source,
            "tasks": [t.name for t in tasks],
            "scorers": {t.name: t.scorers for t in tasks},
            "scenarios": {t.name: t.scenario for t in tasks},
            "stages": state.stage_names,
            "matrix": matrix,
            "zero_shot": state.zero_shot,
            "metrics": metrics,
            "cost": cost,
            "stage_stats": state.stage_stats,
            "stages_complete": len(state.stage_stats),
            "host": host_info(),
            "eval_matrix": self.cfg.eval.matrix,
        }
        if self.feature_cache is not None:
            results["feature_cache"] = self.feature_cache.summary()
        if self.cfg.eval.matrix == "sampled":
            results["sampling"] = self._sampling(state)
        for protocol in protocols():  # a benchmark's own summary (e.g. Continual-NExT's, under "continual_next")
            results.update(protocol.run_results(tasks, results))
        return results

    def _sampling(self, state: RunState) -> dict[str, Any]:
        """``results["sampling"]``: which cells were sampled, their sizes and standard errors, the metrics they touch."""
        tasks = self.benchmark.tasks
        cells = [[budget.SAMPLED_N in row.get(t.name, {}) for t in tasks] for row in state.cell_errors]
        stderr: dict[str, list[list[float | None]]] = {PRIMARY: []}
        for row in state.cell_errors:
            stderr[PRIMARY].append([row.get(t.name, {}).get(budget.STDERR_PREFIX + t.primary_scorer) for t in tasks])
            for s in self.benchmark.scorer_names:
                stderr.setdefault(s, []).append([row.get(t.name, {}).get(budget.STDERR_PREFIX + s) for t in tasks])
        return {
            "sample_per_cell": self.cfg.eval.sample_per_cell,
            "seed": self.cfg.seed,
            "cells": cells,
            "n": [[int(row[t.name][budget.SAMPLED_N]) if c else None for t, c in zip(tasks, r, strict=True)]
                  for row, r in zip(state.cell_errors, cells, strict=True)],
            "stderr": stderr,
            "metrics_from_sampled_cells": budget.metrics_from_sampled_cells(cells),
        }

    def _write_tables(self, results: dict[str, Any]) -> None:
        write_matrix_csv(self.output_dir, results)
        if self.cfg.output.report:
            write_report(self.output_dir, results)
            write_html_report(
                [self.output_dir], self.output_dir / "report.html", benchmark=self.benchmark, rebuild=build_benchmark
            )
