"""Names that become paths, and paths that must stay inside a run directory.

Every file a run writes is named from a run name, a task name, a stage or a fixed file name.
:func:`check_name` is the one validator for the names that come from configs and data (run
name, task names); it is applied where they enter (config validation, benchmark build, a
``results.json`` read back by ``mmcl rescore`` / ``mmcl report``). :func:`inside` is the one
check every writer (and a reader of names from ``results.json``) applies to the path it built:
it must resolve inside the run directory, symbolic links included.
"""

from __future__ import annotations

from pathlib import Path

MAX_NAME_BYTES = 200  # a file name is at most 255 bytes on common filesystems; ".jsonl" etc. is added


class UnsafeNameError(ValueError):
    """A name that cannot be used as a file or folder name inside a run directory."""


class UnsafePathError(ValueError):
    """A path that would resolve outside the run directory."""


def name_problem(name: object) -> str | None:
    """What makes ``name`` unusable as one path component, or None when it is fine."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if not name.strip():
        return "is empty"
    for bad, what in (("/", "'/'"), ("\\", "'\\'"), ("\x00", "a NUL character")):
        if bad in name:
            return f"contains {what}"
    if ".." in name:
        return "contains '..'"
    if name.startswith("."):
        return "starts with '.'"
    control = next((c for c in name if ord(c) < 32 or ord(c) == 127), None)
    if control is not None:
        return f"contains the control character {control!r}"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode text (it holds a lone surrogate)"
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long (at most {MAX_NAME_BYTES})"
    return None


def check_name(name: object, what: str) -> str:
    """Return ``name`` when it is safe as one path component, else raise :class:`UnsafeNameError`.

    Refused: ``/``, ``\\``, ``..``, NUL and control characters, a leading ``.``, an empty name,
    lone surrogates and names over :data:`MAX_NAME_BYTES` bytes. ``what`` says whose name it is.
    """
    problem = name_problem(name)
    if problem is not None:
        raise UnsafeNameError(
            f"{what} {name!r} cannot be used as a file name: it {problem} "
            "(names become files in the run directory: no '/', '\\', '..', NUL or control characters, "
            "no leading '.')"
        )
    return name  # type: ignore[return-value]


def inside(root: str | Path, *parts: str) -> Path:
    """``root / parts...``, refused with :class:`UnsafePathError` when it resolves outside ``root``."""
    root = Path(root)
    path = root.joinpath(*parts)
    resolved, base = path.resolve(), root.resolve()
    if resolved != base and base not in resolved.parents:
        raise UnsafePathError(
            f"refusing to use {path}: it resolves to {resolved}, outside the run directory {root}"
        )
    return path
