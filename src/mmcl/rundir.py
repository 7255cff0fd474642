"""One writer per run directory, and no run written over a directory that is not a run.

**The lock.** ``RUN_DIR/mmcl.lock`` is locked exclusively (``fcntl.flock``) for as long as a command
writes the directory: a run (``--resume`` included, from before the directory is inspected until
the report is written) and ``mmcl rescore``. It holds the locking process's pid, host and start
time, which a refused second writer names. The kernel releases the lock when the process ends,
however it ends (a SIGKILL included), so a stale file never blocks anyone; the file is removed on
a normal exit. On a filesystem without ``flock`` (some network mounts) the lock is not taken and
a note says so.

**Foreign directories.** An existing, non-empty ``--output`` that is not an mmcl run directory
(no ``config.yaml``, ``stages/``, ``checkpoint/`` or lock file) is refused. With ``--force`` the
run goes ahead there: files and folders whose names the run writes (``results.json``, ``report.md``,
``predictions/``, ...) are first moved into ``RUN_DIR/mmcl-displaced-<time>/`` and every other
entry is left where it is; the message lists both. Nothing of the user's is deleted or overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

from mmcl.checkpoint import CHECKPOINT_DIR, CONFIG_FILE, STAGES_DIR, RunDirError

LOCK_FILE = "mmcl.lock"
DISPLACED_PREFIX = "mmcl-displaced-"
# what a run writes at the top of its directory (see mmcl.runner); shell patterns
RUN_OUTPUTS = (
    CONFIG_FILE, "results.json", "matrix.csv", "report.md", "report.html", "report-figures",
    "heatmap-*.png", "predictions", STAGES_DIR, CHECKPOINT_DIR, "tensorboard", "wandb", LOCK_FILE,
)
RUN_MARKERS = (CONFIG_FILE, STAGES_DIR, CHECKPOINT_DIR, LOCK_FILE)


class RunLockedError(RunDirError):
    """Another process holds the run directory's lock."""


class ForeignDirError(RunDirError):
    """The output directory holds files that are not an mmcl run."""


class RunLock:
    """An exclusive lock on a run directory (see the module docstring). Use :meth:`acquire` / :meth:`release`."""

    def __init__(self, run_dir: Path, what: str = "mmcl run") -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.what = what
        self._fd: int | None = None
        self.note: str | None = None  # said when the filesystem cannot lock

    def acquire(self) -> RunLock:
        import fcntl

        for _ in range(10):  # retried when the file was replaced between open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunLockedError(self._busy_message()) from None
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    self.note = f"{self.run_dir}: the filesystem does not support file locks; not locked against a second run"
                    return self
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # a finishing holder removed the file after we opened it: lock the new one
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat(timespec="seconds"),
                    "command": self.what}
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(info) + "\n").encode())
            os.fsync(fd)
            self._fd = fd
            return self
        raise RunLockedError(self._busy_message())

    def _busy_message(self) -> str:
        try:
            info: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            info = {}
        if info.get("pid"):
            who = (f"{info.get('command', 'an mmcl command')} (pid {info['pid']} on {info.get('host', '?')}, "
                   f"started {info.get('started', '?')})")
        else:
            who = "another mmcl process (just starting)"
        return (f"{self.run_dir} is in use by {who}, which holds {self.path}; wait for it to finish "
                "(or stop it), or use another --output. Two writers would mix their files.")

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # before unlocking: a waiting process then locks a new file
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *a: object) -> None:
        self.release()


def is_run_dir(folder: Path) -> bool:
    """Whether ``folder`` holds (or is starting) an mmcl run."""
    return any((folder / name).exists() for name in RUN_MARKERS)


def foreign_entries(folder: Path) -> list[str]:
    """Names in an existing ``folder`` that is neither empty nor an mmcl run directory (else [])."""
    if not folder.is_dir() or is_run_dir(folder):
        return []
    return sorted(p.name for p in folder.iterdir())


def _is_run_output(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_OUTPUTS)


def check_foreign(folder: Path, force: bool) -> str | None:
    """Refuse (:class:`ForeignDirError`) a non-empty non-run ``folder`` unless ``force``; with ``force``,
    move the entries a run would overwrite into ``mmcl-displaced-<time>/`` and return what was done."""
    entries = foreign_entries(folder)
    if not entries:
        return None
    clashing = [n for n in entries if _is_run_output(n)]
    shown = ", ".join(entries[:10]) + (f", ... ({len(entries)} entries)" if len(entries) > 10 else "")
    if not force:
        clash = f"; the run would overwrite {', '.join(clashing)}" if clashing else ""
        raise ForeignDirError(
            f"{folder} is not empty and is not an mmcl run directory (it holds {shown}){clash}. "
            "Use a new or empty --output, or add --force to run there anyway (files the run would "
            f"overwrite are then moved into {folder}/{DISPLACED_PREFIX}<time>/, nothing is deleted)"
        )
    if not clashing:
        return f"--force: {folder} is not a run directory; nothing in it has a name the run writes, all left in place: {shown}"
    backup = folder / (DISPLACED_PREFIX + datetime.now().strftime("%Y%m%d-%H%M%S"))
    backup.mkdir()
    for name in clashing:
        os.replace(folder / name, backup / name)
    kept = [n for n in entries if n not in clashing]
    return (f"--force: moved {', '.join(clashing)} (names the run writes) from {folder} into {backup}/"
            + (f"; left in place: {', '.join(kept[:10])}{' ...' if len(kept) > 10 else ''}" if kept else ""))
