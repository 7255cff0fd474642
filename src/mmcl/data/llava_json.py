"""Loader for the LLaVA conversation JSON used by MCITlib, CoIN and MLLM-CL.

Train items::

    {"id": ..., "image": "images/x.png",
     "conversations": [{"from": "human", "value": "<image>\\nQuestion"}, {"from": "gpt", "value": "Answer"}, ...]}

Test items::

    {"question_id": ..., "image": "images/x.png", "text": "Question", "answer": "A" or ["A", "B"]}

A file is a JSON array (``.json``) or JSON Lines (``.jsonl``, one object per line). Items
without ``image`` (or with ``"image": null``) are text-only. Every problem found is collected
and raised as one :class:`DataError` naming the file, the item index (JSON) or line (JSONL),
and the field.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmcl.data.errors import DataError, DataProblem
from mmcl.data.sample import Sample, open_image, too_many_pixels

IMAGE_TOKEN = "<image>"
ROLES = ("human", "gpt")
TRAIN_FIELDS = ("id", "image", "conversations")
TEST_FIELDS = ("question_id", "image", "text", "answer")

# What an image check looks at: a file path, or a callable giving encoded bytes (or a path).
ImageCheckSource = Path | Callable[[], bytes | str | Path | None]


def image_error(source: ImageCheckSource) -> str | None:
    """Open an image with PIL, check its size against the pixel limit, ``verify()`` it and decode it
    in full (``load()``: ``verify()`` alone passes PNGs with valid CRCs over corrupt compressed data);
    return what is wrong, or None if it is fine."""
    try:
        if callable(source):
            source = source()
            if source is None:
                return "image is empty (no bytes and no path)"
            if isinstance(source, bytes):
                return _decode_error(lambda: io.BytesIO(source), "")  # type: ignore[arg-type]
        path = Path(source)
        if not path.is_file():
            return f"image file not found: {path}"
        return _decode_error(lambda: path, f" {path}")
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        what = f" {source}" if isinstance(source, (str, Path)) else ""
        return f"image{what} is unreadable or truncated ({type(e).__name__}: {e})"


def _decode_error(open_source: Callable[[], Any], what: str) -> str | None:
    with open_image(open_source()) as im:
        if (big := too_many_pixels(im.size)) is not None:
            return big.replace("image is", f"image{what} is", 1)
        im.verify()
    with open_image(open_source()) as im:
        im.load()  # decode fully: truncated or corrupt data fails here
    return None


def _check_all(sources: list[ImageCheckSource]) -> list[str | None]:
    """Check many images (file paths only once each), in a few threads when there are many."""
    unique: dict[Path, str | None] = {}
    for s in sources:
        if isinstance(s, Path):
            unique.setdefault(s, None)
    todo: list[ImageCheckSource] = [*unique, *(s for s in sources if not isinstance(s, Path))]
    if len(todo) > 64:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = list(pool.map(image_error, todo))
    else:
        results = [image_error(s) for s in todo]
    by_path = dict(zip(unique, results, strict=False))
    others = iter(results[len(unique) :])
    return [by_path[s] if isinstance(s, Path) else next(others) for s in sources]


@dataclass
class ParsedFile:
    """Samples parsed from one source, where each came from, and the problems found so far.

    ``locations[k]`` is the item index (or 1-based line when ``by_line``) of ``samples[k]``;
    ``image_sources[k]`` is what :meth:`image_problems` verifies for it (None = text-only);
    ``rejected_images`` holds the images of items rejected for other problems.
    Image files are not checked while parsing, so a caller can check only the samples it keeps.
    """

    file: str
    samples: list[Sample] = field(default_factory=list)
    locations: list[int] = field(default_factory=list)
    image_sources: list[ImageCheckSource | None] = field(default_factory=list)
    problems: list[DataProblem] = field(default_factory=list)
    by_line: bool = False
    rejected_images: list[tuple[int, ImageCheckSource]] = field(default_factory=list)

    def add(self, sample: Sample, location: int, image_source: ImageCheckSource | None) -> None:
        self.samples.append(sample)
        self.locations.append(location)
        self.image_sources.append(image_source)

    def problem(self, message: str, item: int | None = None, field: str | None = None) -> None:
        self.problems.append(DataProblem(self.file, message, item=item, field=field, line=self.by_line))

    def image_problems(
        self, samples: Iterable[Sample] | None = None, image_field: str = "image"
    ) -> list[DataProblem]:
        """Verify the images of ``samples``, returning every missing or broken one.

        ``samples=None`` checks every image named in the source, also those of items rejected
        for other problems, so that one run reports them all.
        """
        if samples is None:
            index = range(len(self.samples))
        else:
            pos = {id(s): k for k, s in enumerate(self.samples)}
            index = [pos[id(s)] for s in samples if id(s) in pos]
        todo = [
            (self.locations[k], self.image_sources[k]) for k in index if self.image_sources[k] is not None
        ]
        if samples is None:
            todo = sorted(todo + self.rejected_images, key=lambda t: t[0])
        errors = _check_all([src for _, src in todo])  # type: ignore[misc]
        return [
            DataProblem(self.file, err, item=loc, field=image_field, line=self.by_line)
            for (loc, _), err in zip(todo, errors, strict=True)
            if err is not None
        ]

    def result(self, check_images: bool = True) -> list[Sample]:
        """Return the samples, or raise one DataError with every problem (images included)."""
        problems = list(self.problems)
        if not problems and not self.samples:
            problems.append(DataProblem(self.file, "task has no samples (no items to load)"))
        if check_images:
            problems += self.image_problems()
        if problems:
            raise DataError(problems)
        return self.samples


@dataclass
class JsonRecords:
    """The raw items of a JSON or JSONL file: (item index or line number, value) pairs."""

    file: str
    records: list[tuple[int, Any]]
    by_line: bool
    problems: list[DataProblem]


def read_json_records(path: str | Path) -> JsonRecords:
    """Read a JSON array (``.json``) or JSON Lines (``.jsonl``) file without raising.

    Problems (missing file, malformed JSON with line and column, top level not a list) are
    returned in ``problems``; for JSONL every well-formed line is still read.
    """
    path = Path(path)
    file = str(path)
    by_line = path.suffix.lower() == ".jsonl"
    out = JsonRecords(file, [], by_line, [])
    if not path.exists():
        out.problems.append(DataProblem(file, "file not found"))
        return out
    if not path.is_file():
        out.problems.append(DataProblem(file, "is a directory, expected a JSON or JSONL file"))
        return out
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        out.problems.append(DataProblem(file, f"cannot read the file as UTF-8 text: {e}"))
        return out

    if by_line:
        # split on "\n" only: str.splitlines() would also split on U+2028 inside JSON strings
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                out.records.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                out.problems.append(
                    DataProblem(file, f"not valid JSON: {e.msg} (column {e.colno})", item=lineno, line=True)
                )
            except RecursionError:
                out.problems.append(DataProblem(file, TOO_DEEP, item=lineno, line=True))
        _check_text(out)
        return out

    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        hint = ""
        if e.msg == "Extra data" and e.lineno > 1:
            hint = "; it looks like JSON Lines (one object per line): name the file .jsonl"
        out.problems.append(
            DataProblem(file, f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno}){hint}")
        )
        return out
    except RecursionError:
        out.problems.append(DataProblem(file, TOO_DEEP))
        return out
    if not isinstance(data, list):
        out.problems.append(
            DataProblem(file, f"the top level must be a JSON array of items, got {_json_type(data)}")
        )
        return out
    out.records = list(enumerate(data))
    _check_text(out)
    return out


TOO_DEEP = "not readable: its JSON is nested too deeply (more levels of arrays/objects than Python can read)"


def _bad_text_fields(value: Any) -> list[str]:
    """Field paths (``conversations[0].value``) of the strings in ``value`` that cannot be encoded
    as UTF-8: lone surrogates, which JSON's ``\\udXXX`` escapes can produce. Keys are checked too."""
    found: list[str] = []
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                found.append(where)
        elif isinstance(v, dict):
            for k, x in v.items():
                key = f"{where}.{k}" if where else str(k)
                try:
                    str(k).encode("utf-8")
                except UnicodeEncodeError:
                    found.append(key.encode("utf-8", "backslashreplace").decode("utf-8"))
                    continue
                stack.append((key, x))
        elif isinstance(v, list):
            stack += [(f"{where}[{i}]", x) for i, x in enumerate(v)]
    return sorted(found)


def _check_text(out: JsonRecords) -> None:
    """Add a problem for every string of the records that is not valid Unicode text (lone surrogates)."""
    for loc, record in out.records:
        for where in _bad_text_fields(record):
            out.problems.append(DataProblem(
                out.file,
                "holds a lone surrogate (an unpaired \\ud800-\\udfff escape): not valid Unicode text, "
                "which no tokenizer can encode; fix the escape or remove the character",
                item=loc, field=where or None, line=out.by_line,
            ))


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    for t, name in names.items():
        if isinstance(value, t):
            return name
    return "a number" if isinstance(value, (int, float)) else type(value).__name__


def resolve_image(image: str, base: Path) -> Path:
    """An image path as given in the data, made absolute against ``base`` when relative."""
    p = Path(image).expanduser()
    return p if p.is_absolute() else base / p


def _read_id(pf: ParsedFile, obj: dict[str, Any], key: str, loc: int, seen: dict[str, int]) -> str | None:
    if key not in obj:
        pf.problem("missing required field", loc, key)
        return None
    raw = obj[key]
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        pf.problem(f"must be a string or an integer, got {_json_type(raw)}", loc, key)
        return None
    sid = str(raw)
    if not sid.strip():
        pf.problem("is empty", loc, key)
        return None
    if sid in seen:
        where = "line" if pf.by_line else "item"
        pf.problem(f"duplicate {key} {sid!r} (first at {where} {seen[sid]})", loc, key)
        return None
    seen[sid] = loc
    return sid


def _read_image(pf: ParsedFile, obj: dict[str, Any], loc: int) -> str | None:
    """The item's image path as written, or None for a text-only item ('' marks a bad value)."""
    raw = obj.get("image")
    if raw is None:
        return None
    if isinstance(raw, list):
        pf.problem(f"is a list of {len(raw)} images; only one image per item is supported", loc, "image")
        return ""
    if not isinstance(raw, str):
        pf.problem(f"must be a string path, got {_json_type(raw)}", loc, "image")
        return ""
    if not raw.strip():
        pf.problem("is an empty path (leave the field out for text-only items)", loc, "image")
        return ""
    return raw


def _extra(obj: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in known}


def _strip_token(text: str) -> str:
    return text.replace(IMAGE_TOKEN, "").strip()


def _parse_train_item(
    pf: ParsedFile,
    obj: dict[str, Any],
    loc: int,
    seen: dict[str, int],
    base: Path,
    task: str,
    scenario: str | None,
) -> None:
    sid = _read_id(pf, obj, "id", loc, seen)
    image = _read_image(pf, obj, loc)
    n_before = len(pf.problems)
    if "conversations" not in obj:
        pf.problem("missing required field", loc, "conversations")
        return
    convs = obj["conversations"]
    if not isinstance(convs, list):
        pf.problem(f"must be a list of turns, got {_json_type(convs)}", loc, "conversations")
        return
    if not convs:
        pf.problem("is empty; expected human/gpt turns", loc, "conversations")
        return
    turns: list[tuple[str, str]] = []
    for i, turn in enumerate(convs):
        f = f"conversations[{i}]"
        if not isinstance(turn, dict):
            pf.problem(f"must be an object with 'from' and 'value', got {_json_type(turn)}", loc, f)
            continue
        role, value = turn.get("from"), turn.get("value")
        ok = True
        if "from" not in turn:
            pf.problem("missing required field", loc, f + ".from")
            ok = False
        elif role not in ROLES:
            pf.problem(f"unknown speaker {role!r}; expected 'human' or 'gpt'", loc, f + ".from")
            ok = False
        if "value" not in turn:
            pf.problem("missing required field", loc, f + ".value")
            ok = False
        elif not isinstance(value, str):
            pf.problem(f"must be a string, got {_json_type(value)}", loc, f + ".value")
            ok = False
        if ok:
            turns.append((role, value))  # type: ignore[arg-type]
    if len(pf.problems) > n_before:
        return
    for i, (role, _) in enumerate(turns):
        expected = ROLES[i % 2]
        if role != expected:
            pf.problem(
                f"expected a {expected!r} turn (turns alternate human, gpt, starting with human), got {role!r}",
                loc,
                f"conversations[{i}].from",
            )
            return
    if len(turns) % 2:
        pf.problem(
            "the last turn must be a 'gpt' answer, got 'human'", loc, f"conversations[{len(turns) - 1}].from"
        )
        return

    # <image> tokens: exactly one, in the first human turn, when the item has an image; none otherwise
    counts = [v.count(IMAGE_TOKEN) for _, v in turns]
    total = sum(counts)
    if image is None and total:
        k = next(i for i, c in enumerate(counts) if c)
        pf.problem(
            f"text-only item (no 'image' field) has {total} '{IMAGE_TOKEN}' token(s); expected none",
            loc,
            f"conversations[{k}].value",
        )
    elif image is not None and total == 0:
        pf.problem(
            f"the item has an image but no '{IMAGE_TOKEN}' token; put one in the first human turn",
            loc,
            "conversations[0].value",
        )
    elif image is not None and total > 1:
        pf.problem(f"{total} '{IMAGE_TOKEN}' tokens but the item has 1 image", loc, "conversations")
    elif image is not None and counts[0] != 1:
        k = next(i for i, c in enumerate(counts) if c)
        pf.problem(f"'{IMAGE_TOKEN}' must be in the first human turn", loc, f"conversations[{k}].value")

    question, answer = _strip_token(turns[-2][1]), turns[-1][1].strip()
    if not question:
        pf.problem("empty question", loc, f"conversations[{len(turns) - 2}].value")
    if not answer:
        pf.problem("empty answer", loc, f"conversations[{len(turns) - 1}].value")
    if len(pf.problems) > n_before or sid is None or image == "":
        return
    history = [(_strip_token(turns[i][1]), turns[i + 1][1].strip()) for i in range(0, len(turns) - 2, 2)]
    path = resolve_image(image, base) if image is not None else None
    sample = Sample(
        id=sid,
        question=question,
        answers=[answer],
        image=str(path) if path is not None else None,
        task=task,
        scenario=scenario,
        history=history,
        meta=_extra(obj, TRAIN_FIELDS),
    )
    pf.add(sample, loc, path)


def _parse_test_item(
    pf: ParsedFile,
    obj: dict[str, Any],
    loc: int,
    seen: dict[str, int],
    base: Path,
    task: str,
    scenario: str | None,
) -> None:
    n_before = len(pf.problems)
    sid = _read_id(pf, obj, "question_id", loc, seen)
    image = _read_image(pf, obj, loc)
    text = obj.get("text")
    if "text" not in obj:
        pf.problem("missing required field", loc, "text")
    elif not isinstance(text, str):
        pf.problem(f"must be a string, got {_json_type(text)}", loc, "text")
    else:
        n = text.count(IMAGE_TOKEN)
        if image is None and n:
            pf.problem(
                f"text-only item (no 'image' field) has {n} '{IMAGE_TOKEN}' token(s); expected none",
                loc,
                "text",
            )
        elif image is not None and n > 1:
            pf.problem(f"{n} '{IMAGE_TOKEN}' tokens but the item has 1 image", loc, "text")
        elif not _strip_token(text):
            pf.problem("empty question", loc, "text")
    answers = _read_answers(pf, obj, "answer", loc)
    if len(pf.problems) > n_before or sid is None or image == "" or answers is None:
        return
    path = resolve_image(image, base) if image is not None else None
    sample = Sample(
        id=sid,
        question=_strip_token(text),  # type: ignore[arg-type]
        answers=answers,
        image=str(path) if path is not None else None,
        task=task,
        scenario=scenario,
        meta=_extra(obj, TEST_FIELDS),
    )
    pf.add(sample, loc, path)


def read_answers(value: Any) -> tuple[list[str] | None, str | None]:
    """Normalise an answer field (a string or a list of strings) to a list; or say what is wrong."""
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, list):
        return None, f"must be a string or a list of strings, got {_json_type(value)} {value!r}"
    if not value:
        return None, "empty answer (an empty list)"
    out = []
    for i, a in enumerate(value):
        if not isinstance(a, str):
            return None, f"answer {i} must be a string, got {_json_type(a)} {a!r}"
        if not a.strip():
            return None, "empty answer" if len(value) == 1 else f"empty answer (answer {i} of the list)"
        out.append(a.strip())
    return out, None


def _read_answers(pf: ParsedFile, obj: dict[str, Any], key: str, loc: int) -> list[str] | None:
    if key not in obj:
        pf.problem("missing required field", loc, key)
        return None
    answers, err = read_answers(obj[key])
    if err:
        pf.problem(err, loc, key)
    return answers


Kind = Literal["train", "test", "auto"]


def detect_kind(item: Any) -> Literal["train", "test"] | None:
    """'train' for an item with ``conversations``, 'test' for one with ``question_id``/``text``."""
    if isinstance(item, dict):
        if "conversations" in item:
            return "train"
        if "question_id" in item or "text" in item:
            return "test"
    return None


def parse_llava_file(
    path: str | Path,
    image_folder: str | Path | None = None,
    task: str = "",
    scenario: str | None = None,
    kind: Kind = "auto",
) -> ParsedFile:
    """Parse a LLaVA train or test file into a :class:`ParsedFile`, collecting problems (no raise).

    Relative image paths are resolved against ``image_folder`` (default: the file's folder).
    Images are not opened here; see :meth:`ParsedFile.image_problems`.
    """
    raw = read_json_records(path)
    pf = ParsedFile(raw.file, problems=list(raw.problems), by_line=raw.by_line)
    base = Path(image_folder) if image_folder is not None else Path(path).parent
    if kind == "auto" and raw.records:
        loc, first = raw.records[0]
        detected = detect_kind(first)
        if detected is None:
            pf.problem(
                "cannot tell the format from the first item: a train item has 'conversations', "
                "a test item has 'question_id' and 'text'",
                loc,
            )
            return pf
        kind = detected
    parse = _parse_train_item if kind == "train" else _parse_test_item
    seen: dict[str, int] = {}
    for loc, obj in raw.records:
        if not isinstance(obj, dict):
            pf.problem(f"each item must be a JSON object, got {_json_type(obj)}", loc)
            continue
        n = len(pf.samples)
        parse(pf, obj, loc, seen, base, task, scenario)
        image = obj.get("image")
        if len(pf.samples) == n and isinstance(image, str) and image.strip():
            pf.rejected_images.append((loc, resolve_image(image, base)))
    return pf


def load_llava_train(
    path: str | Path,
    image_folder: str | Path | None = None,
    task: str = "",
    scenario: str | None = None,
    check_images: bool = True,
) -> list[Sample]:
    """Load a LLaVA conversation (train) file: one Sample per item, earlier turns in ``history``."""
    return parse_llava_file(path, image_folder, task, scenario, kind="train").result(check_images)


def load_llava_test(
    path: str | Path,
    image_folder: str | Path | None = None,
    task: str = "",
    scenario: str | None = None,
    check_images: bool = True,
) -> list[Sample]:
    """Load a LLaVA test file (``question_id``, ``image``, ``text``, ``answer``)."""
    return parse_llava_file(path, image_folder, task, scenario, kind="test").result(check_images)


def load_llava_auto(
    path: str | Path,
    image_folder: str | Path | None = None,
    task: str = "",
    scenario: str | None = None,
    check_images: bool = True,
) -> list[Sample]:
    """Load a LLaVA train or test file, telling which from its first item."""
    return parse_llava_file(path, image_folder, task, scenario, kind="auto").result(check_images)
