"""Fingerprints of a run's data files, so that ``--resume`` can refuse data changed since the run started.

A stream built from files (``llava-json``, ``hf-dataset``, ``msvqa``, ``mllm-cl``) names them in each
task's ``meta`` (``train_file``/``test_file``, or ``train_files``/``test_files``); a saved dataset
directory counts as every file under it. The fingerprint of a file is its size and modification
time (``mtime_ns``), plus a SHA-256 of its content with ``--verify-data``. Synthetic streams have
no files: their generator settings are in the config, which ``--resume`` already compares.
Image files are not fingerprinted (a stream may name hundreds of thousands).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from mmcl.data.sample import Benchmark

_SPLIT_LABEL = re.compile(r" \(split '[^']*'\)$")  # "DIR (split 'train')": how hf-dataset names a source
META_KEYS = ("train_file", "test_file", "train_files", "test_files")


def data_files(benchmark: Benchmark) -> list[Path]:
    """Every data file the stream's tasks were read from, sorted (directories expanded to their files)."""
    names: set[str] = set()
    for task in benchmark.tasks:
        for key in META_KEYS:
            value = task.meta.get(key)
            for name in [value] if isinstance(value, str) else (value or []):
                if isinstance(name, str):
                    names.add(_SPLIT_LABEL.sub("", name))
    files: set[Path] = set()
    for name in names:
        p = Path(name)
        if p.is_file():
            files.add(p.absolute())
        elif p.is_dir():
            files.update(f.absolute() for f in p.rglob("*") if f.is_file())
    return sorted(files)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(files: list[Path], content: bool = False) -> dict[str, dict[str, Any]]:
    """``{path: {"size", "mtime_ns"[, "sha256"]}}``; a file that cannot be read has ``{"missing": true}``."""
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        try:
            st = f.stat()
            entry: dict[str, Any] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
            if content:
                entry["sha256"] = _sha256(f)
        except OSError:
            entry = {"missing": True}
        out[str(f)] = entry
    return out


def _when(ns: Any) -> str:
    try:
        return datetime.fromtimestamp(int(ns) / 1e9).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def data_changes(saved: dict[str, dict[str, Any]], verify: bool = False) -> list[str]:
    """How the files of a saved fingerprint differ now, one line per changed, missing or unreadable file.

    A file whose size and mtime are unchanged is taken as unchanged, unless ``verify`` and the
    saved fingerprint has a hash. One whose mtime changed but whose saved hash still matches
    (touched, or copied back) is unchanged.
    """
    changes = []
    for name, old in sorted(saved.items()):
        path = Path(name)
        now = fingerprint([path])[name]
        if now.get("missing"):
            if not old.get("missing"):
                changes.append(f"{name}: missing or unreadable now")
            continue
        same_stat = now.get("size") == old.get("size") and now.get("mtime_ns") == old.get("mtime_ns")
        if "sha256" in old and (verify or not same_stat):
            if _sha256(path) != old["sha256"]:
                changes.append(f"{name}: content changed (SHA-256 differs; size {old.get('size')} -> {now['size']} "
                               f"bytes)")
            continue
        if not same_stat:
            before, after = _when(old.get("mtime_ns")), _when(now["mtime_ns"])
            when = f"modified {before} -> {after}" if before != after else f"modified again at {after}"
            changes.append(f"{name}: changed (size {old.get('size')} -> {now['size']} bytes, {when})")
    return changes
