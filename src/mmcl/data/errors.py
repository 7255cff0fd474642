"""Data errors that say where the problem is: file, line or item index, and field."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataProblem:
    """One problem found while validating data."""

    file: str
    message: str
    item: int | None = None  # 0-based item index (JSON array) or 1-based line number (JSONL)
    field: str | None = None
    line: bool = False  # True when ``item`` is a 1-based line number

    def __str__(self) -> str:
        where = self.file
        if self.item is not None:
            where += f", line {self.item}" if self.line else f", item {self.item}"
        if self.field:
            where += f", field {self.field!r}"
        return f"{where}: {self.message}"


class DataError(ValueError):
    """Raised when input data is invalid. Holds every problem found, not only the first."""

    def __init__(self, problems: list[DataProblem] | DataProblem, max_shown: int = 20) -> None:
        if isinstance(problems, DataProblem):
            problems = [problems]
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:max_shown])
        more = f"\n  ... and {len(problems) - max_shown} more" if len(problems) > max_shown else ""
        super().__init__(f"{len(problems)} data problem(s):\n{shown}{more}")
