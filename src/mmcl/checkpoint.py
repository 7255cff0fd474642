"""Stage checkpoints and ``mmcl run --resume``: continue an interrupted run where it stopped.

A run directory (see :mod:`mmcl.runner`) gains a ``checkpoint/`` folder::

    checkpoint/manifest.json         which stage the saved state belongs to (written last: the commit point)
    checkpoint/stage-XX/model.safetensors   the model's trainable state after training stage XX
    checkpoint/stage-XX/method.pt    method.state_dict() (torch.save; loaded with weights_only=True)
    checkpoint/stage-XX/rng.pt       Python, NumPy, torch (and CUDA) RNG states

``manifest.json`` holds ``format``, ``mmcl_version``, ``config_hash`` (sha256 of the resolved
config without the keys in :data:`IGNORED_KEYS`), ``stage`` (1-based: stages 1..stage are
trained; 0 = none yet), ``task``, ``dir`` (the stage-XX folder), ``stats`` (the stage's training
statistics), ``trainable`` (parameter names with ``requires_grad`` when saved), ``training``
(the model's train/eval mode), ``eval_seconds`` (evaluation time so far), ``complete`` (true
once results.json, matrix.csv and the report are written) and ``data`` (the data files'
fingerprint from when the run started, see :mod:`mmcl.data.fingerprint`; ``--resume`` refuses
data changed since). Only the latest stage's folder is
kept: a new one is written in full, the manifest is switched to it, then older folders go.

**What "the model's trainable state" is.** Every parameter a method added to the base model
(peft adapters, frozen old O-LoRA adapters and LwF's teacher included, UNIFIER's branches,
MoE-LoRA's experts), found by identity against the parameters of the model as loaded, plus
every base parameter that was ever trainable (e.g. the projector with ``model.train_projector``
on a method that trains it in place). Frozen base weights never change and are not saved.
Buffers are not saved (no built-in method trains one).

**When a checkpoint is written.** Right after a stage's training (``method.after_task``
included), before its evaluation. Then each evaluation cell writes
``predictions/stage-XX/<task>.jsonl`` atomically as it finishes, and the stage ends with its
``stages/stage-XX.json`` marker.

**What ``--resume`` does** (the same command, the same output directory, plus ``--resume``):

1. The saved ``config.yaml`` is compared with the new config, ignoring :data:`IGNORED_KEYS`;
   any other difference refuses the resume, naming the keys. Without ``--resume``, a
   directory that already holds a run (a ``config.yaml``) is refused.
2. A run whose manifest says ``complete`` (and whose results.json exists) is left alone.
3. Rows of stages with a marker are reloaded from the markers; zero-shot cells and the cells
   of a trained but not finished stage are reloaded from their predictions files (scores
   recomputed from the saved predictions with the task's scorers, which gives the same numbers);
   missing cells are evaluated. A cell whose file is missing, unreadable or for other
   questions is evaluated again. With ``eval.save_predictions=false`` there are no cell files,
   so an interrupted stage's evaluation restarts from its first cell.
4. The checkpoint is restored: ``method.load_state_dict`` first (it may re-create adapters),
   then the saved tensors, the ``requires_grad`` flags, the train/eval mode and the RNG states.
   A saved tensor the model does not have yet is skipped with a note: a method that rebuilds it
   at ``before_task`` (LwF's and QUAD's teacher adapter is a copy of the student) needs nothing more.
5. A stage interrupted during training is trained again from its start. Optimizer and scheduler
   are new for every stage (``train_on``), so nothing of them is lost, and a stage's randomness
   is fixed by the run seed and the stage index alone: the runner calls
   ``seed_everything(seed * 7919 + stage)`` before ``before_task`` and the data order comes from
   a generator seeded ``seed * 1000 + stage``. Retraining from the restored state therefore
   reproduces the interrupted stage exactly (on the same hardware and thread count).

Cost figures in results.json (seconds, peak memory, bytes a method holds in rebuilt copies)
describe the processes that did the work and may differ from an uninterrupted run's; the
matrix, the metrics, the predictions and the stages' losses do not.

Scope: resuming is tested on one process (CPU, tests/test_resume.py) and was checked by hand
under 2 DDP processes on CPU (killed in training and in evaluation, resumed with 2 processes:
the same matrix and predictions as the uninterrupted 2-process run). Under DDP only the main
process reads the run directory's state (:func:`inspect_run_dir`, :func:`load_cell`) and writes
(config, manifest, checkpoint, predictions, markers, results); the runner broadcasts what it read.
Every process loads the checkpoint itself (:func:`load_checkpoint`), so on several machines
the run directory must be on a filesystem they all see. The saved RNG states are the main
process's; the training loop makes every process's RNG equal to them after each stage. A run
is resumed with the same number of processes (the config does not record it; another number
trains the remaining stages with another global batch). Under FSDP / ZeRO-3 parameters are
sharded and a process sees only its shard, which this checkpoint does not gather: not supported
there.

**Test hook.** ``MMCL_TEST_KILL_AT`` makes the process kill itself with SIGKILL at a given
point, so that tests can interrupt a run deterministically: ``train:stage=S:step=N`` after
update step N of stage S (1-based), ``eval:stage=S:task=J`` after the J-th evaluation cell of
stage S computed in this process is written (stage 0 is the zero-shot row). Not for users.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

import mmcl
from mmcl.config import RunConfig, to_yaml
from mmcl.data.sample import Task
from mmcl.eval.evaluator import TaskResult, score_predictions, track_means
from mmcl.methods.base import Method
from mmcl.utils.io import atomic_write_bytes, atomic_write_json, read_jsonl

FORMAT = 1
CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"
STAGES_DIR = "stages"
CHECKPOINT_DIR = "checkpoint"
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.safetensors"
METHOD_FILE = "method.pt"
RNG_FILE = "rng.pt"
KILL_ENV = "MMCL_TEST_KILL_AT"
# keys that say where and how results are written, not what they are
# (and benchmark.max_image_pixels: a limit on what is accepted, not part of the results; train.feature_cache*:
# the cache gives the same results on or off, tests/test_feature_cache.py)
IGNORED_KEYS = frozenset({"output.dir", "output.report", "benchmark.max_image_pixels", "train.feature_cache",
                          "train.feature_cache_mb"})


class RunDirError(ValueError):
    """An output directory that cannot be used as asked (holds another run, or an inconsistent one)."""


def stage_dir_name(stage: int) -> str:
    """``stage-XX`` for a 1-based stage."""
    return f"stage-{stage:02d}"


# ---------------------------------------------------------------------- config identity
def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def comparable_config(data: dict[str, Any]) -> dict[str, Any]:
    """A config as flat ``a.b.c`` keys, without :data:`IGNORED_KEYS`."""
    return {k: v for k, v in _flatten(data).items() if k not in IGNORED_KEYS}


def config_data(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as written to config.yaml (through YAML, so values compare like reloaded ones)."""
    return yaml.safe_load(to_yaml(cfg))


def config_hash(cfg: RunConfig) -> str:
    return data_hash(config_data(cfg))


def data_hash(data: dict[str, Any]) -> str:
    """The hash of a config as config.yaml holds it (what the manifest records)."""
    return hashlib.sha256(json.dumps(comparable_config(data), sort_keys=True).encode()).hexdigest()


def config_differences(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: saved -> new`` for every key (outside :data:`IGNORED_KEYS`) whose value differs."""
    a, b = comparable_config(saved), comparable_config(new)
    missing = object()
    diffs = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, missing), b.get(k, missing)
        if va != vb:
            show = lambda v: "(absent)" if v is missing else repr(v)  # noqa: E731
            diffs.append(f"{k}: {show(va)} in the saved config, {show(vb)} now")
    return diffs


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """The saved config with the defaults of keys it does not name filled in, as config.yaml would
    hold them now: a run written before a key existed resumes when the key keeps its default.
    A saved config the current version cannot read is compared as written (the keys then differ)."""
    try:
        return config_data(RunConfig.model_validate(saved))
    except (ValueError, TypeError):
        return saved


# ---------------------------------------------------------------------- run directory
@dataclass
class ResumePoint:
    """What an existing run directory holds: finished stages, the latest checkpoint, completion."""

    markers: list[dict[str, Any]] = field(default_factory=list)  # stages/stage-01.json.. in order
    manifest: dict[str, Any] | None = None

    @property
    def done_stages(self) -> int:
        """Stages with a stage-complete marker."""
        return len(self.markers)

    @property
    def trained_stages(self) -> int:
        """Stages whose training is in the checkpoint (``done_stages`` or one more)."""
        return int(self.manifest["stage"]) if self.manifest else 0

    @property
    def complete(self) -> bool:
        return bool(self.manifest and self.manifest.get("complete"))


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / CHECKPOINT_DIR / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError, UnicodeDecodeError, RecursionError) as e:
        raise RunDirError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, dict):
        raise RunDirError(f"{path}: cannot be read (expected a JSON object)")
    return manifest


def read_markers(out: Path) -> list[dict[str, Any]]:
    """The stage-complete markers stage-01, stage-02, ... up to the first missing one."""
    markers = []
    while (path := out / STAGES_DIR / f"{stage_dir_name(len(markers) + 1)}.json").is_file():
        try:
            markers.append(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, OSError, UnicodeDecodeError, RecursionError) as e:
            raise RunDirError(f"{path}: cannot be read ({e})") from None
    return markers


def inspect_run_dir(out: Path, cfg: RunConfig, resume: bool) -> ResumePoint | None:
    """Check that ``out`` may be used; None for a fresh run, else what is there to resume.

    Raises :class:`RunDirError` when ``out`` holds a run and ``resume`` is off, when it was
    written by a different config (the message names the keys), or when its files disagree.
    """
    saved = out / CONFIG_FILE
    if not saved.is_file():
        if (out / STAGES_DIR).is_dir() or (out / CHECKPOINT_DIR).is_dir():
            raise RunDirError(f"{out} holds stages or a checkpoint but no {CONFIG_FILE}: not a run mmcl can continue")
        return None
    if not resume:
        raise RunDirError(
            f"{out} already holds a run ({CONFIG_FILE}); use --resume to continue it, "
            "or --output to start a new run elsewhere"
        )
    try:
        saved_data = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, OSError) as e:
        raise RunDirError(f"{saved}: cannot be read ({e})") from None
    diffs = config_differences(_with_defaults(saved_data), config_data(cfg))
    if diffs:
        raise RunDirError(
            f"cannot resume {out}: it was written by a different config ({'; '.join(diffs)}); "
            "run with the same config, or use --output for a new run"
        )
    point = ResumePoint(read_markers(out), read_manifest(out))
    m = point.manifest
    if m is not None and m.get("config_hash") != data_hash(saved_data):  # as written, whatever version wrote it
        raise RunDirError(
            f"cannot resume {out}: its checkpoint was written by another config than its {CONFIG_FILE} "
            "(was config.yaml edited?)"
        )
    if point.done_stages and m is None:
        raise RunDirError(
            f"cannot resume {out}: it has {point.done_stages} finished stage(s) but no {CHECKPOINT_DIR}/ "
            "(written by an mmcl without resume support, or deleted), so the trained weights are lost"
        )
    if not point.done_stages <= point.trained_stages <= point.done_stages + 1:
        raise RunDirError(
            f"cannot resume {out}: {point.done_stages} stage marker(s) but a checkpoint of stage "
            f"{point.trained_stages}; the directory was changed by hand"
        )
    if point.complete and not (out / RESULTS_FILE).is_file():
        m["complete"] = False  # results.json removed: write it again from the markers
    return point


# ---------------------------------------------------------------------- what to save
class TrainableTracker:
    """Knows which parameters a checkpoint must hold (see the module docstring).

    Built on the model as loaded, before ``method.setup``: those parameters are the base.
    """

    def __init__(self, base_model: torch.nn.Module) -> None:
        self._base = {id(p): p for p in base_model.parameters()}  # values keep the ids alive
        self.ever_trainable: set[str] = set()

    def note(self, model: torch.nn.Module) -> None:
        """Remember the parameters that are trainable now."""
        self.ever_trainable |= {n for n, p in model.named_parameters() if p.requires_grad}

    def state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``{name: CPU copy}`` of every added or ever-trainable parameter of ``model``."""
        self.note(model)
        return {
            n: p.detach().cpu().clone().contiguous()
            for n, p in model.named_parameters()
            if id(p) not in self._base or n in self.ever_trainable
        }


# ---------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------- save / load
def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(out / CHECKPOINT_DIR / MANIFEST_FILE, manifest)


def start_manifest(out: Path, cfg: RunConfig, data: dict[str, Any] | None = None) -> None:
    """The manifest of a fresh run: nothing trained yet; ``data``: the data files' fingerprint."""
    write_manifest(out, new_manifest(cfg, stage=0, **({"data": data} if data is not None else {})))


def new_manifest(cfg: RunConfig, stage: int, **fields: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "mmcl_version": mmcl.__version__,
        "config_hash": config_hash(cfg),
        "stage": stage,
        "complete": False,
        **fields,
        "time": datetime.now().isoformat(timespec="seconds"),
    }


def save_checkpoint(
    out: Path,
    cfg: RunConfig,
    stage: int,
    task: str,
    method: Method,
    tracker: TrainableTracker,
    stats: dict[str, Any],
    eval_seconds: float,
    data: dict[str, Any] | None = None,
) -> None:
    """Write stage ``stage`` (1-based)'s checkpoint, switch the manifest to it, drop older ones.

    ``data``: the fingerprint of the run's data files (kept from manifest to manifest)."""
    model = method.model
    ckpt = out / CHECKPOINT_DIR
    name = stage_dir_name(stage)
    atomic_write_bytes(ckpt / name / MODEL_FILE, save_safetensors(tracker.state(model)))
    atomic_write_bytes(ckpt / name / METHOD_FILE, _torch_bytes(method.state_dict()))
    atomic_write_bytes(ckpt / name / RNG_FILE, _torch_bytes(rng_state()))
    manifest = new_manifest(
        cfg,
        stage,
        task=task,
        dir=name,
        stats=stats,
        trainable=sorted(n for n, p in model.named_parameters() if p.requires_grad),
        training=model.training,
        eval_seconds=round(eval_seconds, 3),
        **({"data": data} if data is not None else {}),
    )
    write_manifest(out, manifest)
    for old in ckpt.glob("stage-*"):
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out: Path, manifest: dict[str, Any], method: Method, tracker: TrainableTracker) -> list[str]:
    """Restore method state, saved tensors, ``requires_grad`` flags, mode and RNG; returns skipped names."""
    folder = out / CHECKPOINT_DIR / str(manifest["dir"])

    def read(name: str, load: Any) -> Any:
        try:
            return load(folder / name)
        except Exception as e:  # safetensors, pickle and torch raise many types for a damaged file
            raise RunDirError(
                f"cannot resume {out}: checkpoint file {folder / name} cannot be read ({type(e).__name__}: {e}); "
                "it is damaged or cut short (a full disk, a copy interrupted), so the trained state of stage "
                f"{manifest.get('stage')} is lost: start a new run (another --output)"
            ) from None

    method_state = read(METHOD_FILE, lambda p: torch.load(p, map_location="cpu", weights_only=True))
    tensors = read(MODEL_FILE, lambda p: load_safetensors(p.read_bytes()))
    rng = read(RNG_FILE, lambda p: torch.load(p, weights_only=True))
    method.load_state_dict(method_state)  # first: it may add adapters the tensors belong to
    model = method.model
    params = dict(model.named_parameters())
    skipped = sorted(set(tensors) - set(params))
    with torch.no_grad():
        for n, t in tensors.items():
            if n in params:
                p = params[n]
                if tuple(t.shape) != tuple(p.shape):
                    raise RunDirError(
                        f"cannot resume {out}: checkpoint tensor {n} has shape {tuple(t.shape)}, "
                        f"the model's {tuple(p.shape)}"
                    )
                p.copy_(t.to(p.device, p.dtype))
    trainable = set(manifest.get("trainable", []))
    for n, p in params.items():
        p.requires_grad_(n in trainable)
    model.train(bool(manifest.get("training", True)))
    tracker.ever_trainable |= set(tensors) & set(params)
    set_rng_state(rng)
    return skipped


def mark_complete(out: Path) -> None:
    """Record in the manifest that the run's results, tables and report are written."""
    manifest = read_manifest(out)
    if manifest is None:
        raise RunDirError(f"{out}: no {CHECKPOINT_DIR}/{MANIFEST_FILE} to mark complete")
    manifest["complete"] = True
    write_manifest(out, manifest)


# ---------------------------------------------------------------------- evaluation cells
def load_cell(path: Path, task: Task) -> TaskResult | None:
    """A finished evaluation cell from its predictions file, or None when it must be evaluated.

    The scores are recomputed from the saved predictions with the task's scorers (the same
    numbers the evaluation gave); a file for other questions, or unreadable, gives None.
    """
    if not path.is_file():
        return None
    try:
        rows = read_jsonl(path)
    except (ValueError, OSError):
        return None
    if [r.get("question_id") for r in rows] != [s.id for s in task.test]:
        return None
    if not all(isinstance(r.get("prediction"), str) for r in rows):
        return None
    means, _ = score_predictions(task, [r["prediction"] for r in rows])
    means.update(track_means(rows))
    return TaskResult(task.name, means, rows)


# ---------------------------------------------------------------------- test hook
def kill_if_asked(event: str, stage: int, index: int) -> None:
    """Test hook: SIGKILL this process when ``MMCL_TEST_KILL_AT`` names this point (see module docstring)."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    unit = "step" if event == "train" else "task"
    if spec.strip() == f"{event}:stage={stage}:{unit}={index}":
        os.kill(os.getpid(), signal.SIGKILL)
