"""The core data vocabulary: Sample, Task, Benchmark (see DESIGN.md)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mmcl.data.errors import DataError, DataProblem

ImageSource = Image.Image | str | Path | Callable[[], Image.Image] | None

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
_max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS


def set_max_image_pixels(limit: int | None) -> None:
    """The largest image (width x height) a sample may load; None = no limit (``benchmark.max_image_pixels``)."""
    global _max_image_pixels
    _max_image_pixels = limit


def max_image_pixels() -> int | None:
    return _max_image_pixels


def too_many_pixels(size: tuple[int, int]) -> str | None:
    """What is wrong with an image of ``size`` (width, height) under the pixel limit, or None."""
    limit = _max_image_pixels
    w, h = size
    if limit is not None and w * h > limit:
        return (f"image is {w}x{h} = {w * h:,} pixels, over the limit of {limit:,} "
                "(benchmark.max_image_pixels; resize the image, or raise the limit)")
    return None


@contextmanager
def open_image(source: Any) -> Iterator[Image.Image]:
    """``Image.open`` with mmcl's pixel limit in charge instead of PIL's decompression-bomb guard.

    PIL warns past 89 M pixels and refuses past 179 M before the caller can look at the size;
    here its warning is silenced and its refusal becomes the same ``ValueError`` as
    :func:`too_many_pixels` (the caller checks ``im.size`` against the limit before decoding).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(source)
        except Image.DecompressionBombError as e:
            raise ValueError(f"image is too large to open ({e}; benchmark.max_image_pixels is "
                             f"{_max_image_pixels:,} pixels)" if _max_image_pixels else
                             f"image is too large to open ({e})") from None
    with im:
        yield im


@dataclass
class Sample:
    """One example: an image, a question, reference answer(s), and where it comes from.

    ``answers[0]`` is the training target; all of ``answers`` are references for scoring.
    ``history`` holds earlier (question, answer) turns of a multi-turn conversation;
    the image belongs to the first turn. ``meta`` carries ground truth a scorer or an
    analysis may need (boxes, object category, question type...).

    ``target_image`` makes the sample an image-output one (text-to-image, editing): the model
    is trained to answer with an image (``<begin_of_image>`` + the image's VQ tokens, on models
    with an image head such as Janus), and ``answers`` then hold a text description of the
    target (kept in the predictions for reading; image scorers read ``meta`` and the image).
    """

    id: str
    question: str
    answers: list[str]
    image: ImageSource = None
    task: str = ""
    scenario: str | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    target_image: ImageSource = None

    @property
    def wants_image(self) -> bool:
        """Whether the answer is an image (``target_image`` set)."""
        return self.target_image is not None

    def load_image(self) -> Image.Image | None:
        """Return the image as RGB PIL, loading it from disk or a factory if needed."""
        return self._load(self.image, "image")

    def load_target_image(self) -> Image.Image | None:
        """Return the target image (image-output samples) as RGB PIL."""
        return self._load(self.target_image, "target_image")

    def _load(self, img: ImageSource, what: str) -> Image.Image | None:
        if img is None:
            return None
        try:
            if callable(img) and not isinstance(img, Image.Image):
                img = img()
            if isinstance(img, (str, Path)):
                with open_image(img) as f:
                    if (big := too_many_pixels(f.size)) is not None:  # before decoding: no allocation
                        raise ValueError(big)
                    img = f.convert("RGB")
            elif isinstance(img, Image.Image) and (big := too_many_pixels(img.size)) is not None:
                raise ValueError(big)
        except DataError:
            raise
        except (OSError, SyntaxError, ValueError) as e:  # what PIL raises for a missing or broken image
            reason = f"({type(e).__name__}: {e})"
            if isinstance(img, (str, Path)):
                problem = DataProblem(str(img), f"{what} of sample {self.id!r} (task {self.task!r}) cannot be read {reason}")
            else:
                problem = DataProblem(f"task {self.task!r}, sample {self.id!r}", f"{what} cannot be read {reason}", field=what)
            raise DataError(problem) from None
        if img.mode != "RGB":
            img = img.convert("RGB")
        return img


@dataclass
class Task:
    """A named train/test split with its scorers (the first is the primary one)."""

    name: str
    train: list[Sample]
    test: list[Sample]
    scorers: list[str] = field(default_factory=lambda: ["exact_match"])
    scenario: str | None = None
    max_new_tokens: int = 16
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def primary_scorer(self) -> str:
        return self.scorers[0]


@dataclass
class Benchmark:
    """An ordered stream of tasks."""

    name: str
    tasks: list[Task]
    description: str = ""

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"benchmark {self.name!r} has no task {name!r}; tasks: {', '.join(self.task_names)}")

    @property
    def scorer_names(self) -> list[str]:
        """Every scorer declared by some task, in first-seen order."""
        seen: list[str] = []
        for t in self.tasks:
            for s in t.scorers:
                if s not in seen:
                    seen.append(s)
        return seen
