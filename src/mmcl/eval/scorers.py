"""Scorers: pure functions of (prediction, references) -> score in [0, 1].

Every scorer takes the model's prediction and a non-empty sequence of reference
strings (a single ``str`` is accepted as one reference) and returns a float in
[0, 1]. Scorers are registered by name in :data:`SCORERS`; a task declares its
scorer by that name and the evaluator calls :func:`score`.

Registered scorers:

- ``exact_match``: normalised string equality, max over references. Strict:
  ``"3"`` vs ``"3.0"`` is a mismatch (use ``relaxed_numeric`` for numbers).
- ``vqa_score``: the VQA-v2 accuracy exactly as the official ``vqaEval.py`` computes it for
  questions with >= 4 human answers (VQA-v2 has 10), quirks included; with 1-3 answers
  mmcl's ``#matches / N`` instead (see :func:`vqa_score`).
- ``vqa_score_normalized``: mmcl's own variant: always normalise, every period stripped.
- ``token_f1``: SQuAD-style bag-of-tokens F1, max over references (differs from the SQuAD
  v1.1 script only on empty or article-only answers, on purpose).
- ``box_f1``: grounding F1 over boxes matched one-to-one at IoU >= 0.5.
- ``relaxed_numeric``: mmcl's relaxed accuracy (5 % relative tolerance; reads "1,000",
  "45%", "two"), falling back to ``exact_match`` for non-numbers.
- ``chartqa_relaxed``: the ChartQA relaxed accuracy exactly as pix2struct's
  ``relaxed_correctness`` computes it.
- ``contains``: 1.0 if a normalised reference occurs, token-aligned, in the
  normalised prediction.

A benchmark's own scorers live in its package and register themselves in :data:`SCORERS` when
it is imported (``import mmcl.benchmarks.builtin`` imports every built-in benchmark): the
official MLLM-CL rules (``mllmcl_*``, :mod:`mmcl.benchmarks.mllm_cl.scorers`) and the
Continual-NExT (MAGE) rules (``cnext_*``, :mod:`mmcl.benchmarks.continual_next.scorers` and
:mod:`mmcl.benchmarks.continual_next.image_scorers`). Whoever looks a scorer up by name imports
``mmcl.benchmarks.builtin`` first.

Names after an official script give exactly what that script gives (quirks included); mmcl's
better-behaved variants have names of their own. ``docs/scorers.md`` lists which is which.

Sample-aware scorers: a scorer that needs more than the answers (the image file name, a
question category, the image size...) is marked with :func:`sample_aware` and has the signature
``(prediction, references, sample=None) -> float``. :func:`call_scorer` (used by
``mmcl.eval.evaluator.score_predictions``) passes it the :class:`~mmcl.data.sample.Sample`
as ``sample=``; plain scorers are still called as ``(prediction, references)``. Such a scorer
may also declare (:func:`sample_aware`'s ``context=``) which entries of the sample it reads;
:func:`sample_context` gathers them for every registered sample-aware scorer, the evaluator
saves them with each prediction (``sample_meta``), and ``mmcl rescore`` rebuilds a sample
from them (:func:`sample_from_context`).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from mmcl.data.sample import Sample
from mmcl.registry import Registry
from mmcl.synth.boxes import Box, iou, parse_boxes

Scorer = Callable[[str, Sequence[str]], float]
"""A pure function ``(prediction, references) -> score in [0, 1]``."""

SCORERS: Registry[Scorer] = Registry("scorer")

IOU_THRESHOLD = 0.5
"""A predicted box matches a reference box when their IoU is at least this."""

RELATIVE_TOLERANCE = 0.05
"""``relaxed_numeric`` accepts ``|pred - ref| <= RELATIVE_TOLERANCE * |ref|``."""

_ARTICLES = frozenset({"a", "an", "the"})


def get_scorer(name: str) -> Scorer:
    """Return the scorer registered under ``name`` (raises with the valid names if unknown)."""
    return SCORERS.get(name)


SampleContext = Callable[["Sample"], dict[str, Any]]
"""What a sample-aware scorer reads from a sample, as JSON-able ``meta`` entries."""


def sample_aware(
    fn: Callable[..., float] | None = None, *, context: SampleContext | None = None
) -> Any:
    """Mark ``fn`` as sample-aware: it is called as ``fn(prediction, references, sample=sample)``.

    Such a scorer must accept ``sample=None`` as a keyword (and may raise when it needs it).
    ``context(sample)`` returns the ``meta`` entries the scorer reads (e.g.
    ``{"answer_type": ...}``); they are saved with the predictions so that ``mmcl rescore``
    can call the scorer again without the benchmark. The scorer must read them from
    ``sample.meta`` first. Use it under the registration decorator::

        @SCORERS.register("my_scorer")
        @sample_aware(context=lambda s: {"category": s.meta.get("category", "")})
        def my_scorer(prediction, references, sample=None) -> float: ...

    (``@sample_aware`` without arguments also works, for a scorer with no context to save.)
    """

    def mark(f: Callable[..., float]) -> Callable[..., float]:
        f.needs_sample = True  # type: ignore[attr-defined]
        f.sample_context = context  # type: ignore[attr-defined]
        return f

    return mark if fn is None else mark(fn)


def sample_context(sample: Sample) -> dict[str, Any]:
    """The ``meta`` entries every registered sample-aware scorer reads from ``sample`` (JSON-able).

    Empty values ("" or None) are left out: a scorer reads a missing entry the same way.
    """
    out: dict[str, Any] = {}
    for name in SCORERS.names():
        ctx = getattr(SCORERS.get(name), "sample_context", None)
        if ctx is not None:
            out.update({k: v for k, v in ctx(sample).items() if v not in ("", None)})
    return out


def sample_from_context(row: dict[str, Any]) -> Sample:
    """A :class:`~mmcl.data.sample.Sample` rebuilt from a saved prediction row (``sample_meta``).

    It has the id, question and answers of the row and the saved context as ``meta``; no image.
    """
    return Sample(
        id=str(row.get("question_id", "")),
        question=str(row.get("question", "")),
        answers=list(row["answers"]),
        meta=dict(row.get("sample_meta") or {}),
    )


def needs_sample(fn: Callable[..., Any]) -> bool:
    """True when ``fn`` was marked with :func:`sample_aware`."""
    return bool(getattr(fn, "needs_sample", False))


def call_scorer(
    fn: Callable[..., float], prediction: str, references: Sequence[str], sample: Sample | None = None
) -> float:
    """Call a scorer, passing ``sample=`` only to a sample-aware one."""
    if needs_sample(fn):
        return fn(prediction, references, sample=sample)
    return fn(prediction, references)


def score(name: str, prediction: str, references: Sequence[str], sample: Sample | None = None) -> float:
    """Score ``prediction`` against ``references`` with the scorer named ``name``.

    ``sample`` is passed to a sample-aware scorer (see :func:`sample_aware`) and ignored otherwise.
    """
    return call_scorer(get_scorer(name), prediction, references, sample)


def as_refs(references: Sequence[str] | str) -> list[str]:
    """A list of references; a bare string is one reference, an empty list is an error (every scorer calls it)."""
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("a scorer needs at least one reference answer, got none")
    return refs


def _drop_articles(words: list[str]) -> list[str]:
    """Remove a/an/the, unless the answer is nothing but articles (e.g. option "A")."""
    kept = [w for w in words if w not in _ARTICLES]
    return kept or words


# ---------------------------------------------------------------------------
# exact_match
# ---------------------------------------------------------------------------

# Punctuation stripped from the ends of an answer. Signs, "%", "$" and "#" are
# kept because they change meaning; a leading "." is kept so ".5" stays ".5".
_EDGE_PUNCT_RIGHT = "\"'`\u201c\u201d\u2018\u2019()[]{}<>.,;:!?*_"
_EDGE_PUNCT_LEFT = _EDGE_PUNCT_RIGHT.replace(".", "")
_EDGE_WS_LEFT = _EDGE_PUNCT_LEFT + string.whitespace
_EDGE_WS_RIGHT = _EDGE_PUNCT_RIGHT + string.whitespace


def normalize_answer(text: str) -> str:
    """Normalise a short answer for ``exact_match`` and ``contains``.

    Lower-case, collapse whitespace, strip surrounding quotes, brackets,
    ``* _ , ; : ! ?`` and a trailing period, and drop the articles a/an/the
    (kept when the answer is only an article, so option "A" is not erased).
    Numbers are not rewritten: "3" and "3.0" stay different.
    """
    text = " ".join(text.lower().split())
    text = text.lstrip(_EDGE_WS_LEFT).rstrip(_EDGE_WS_RIGHT)
    text = " ".join(_drop_articles(text.split()))
    return text.lstrip(_EDGE_WS_LEFT).rstrip(_EDGE_WS_RIGHT)


@SCORERS.register("exact_match")
def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised reference, else 0.0.

    See :func:`normalize_answer`. Deliberately strict about numbers: "3" vs
    "3.0" and "1,000" vs "1000" score 0.0 here; ``relaxed_numeric`` accepts them.
    """
    pred = normalize_answer(prediction)
    return max(float(pred == normalize_answer(ref)) for ref in as_refs(references))


# ---------------------------------------------------------------------------
# vqa_score: normalisation of the official VQA evaluation script (vqaEval.py)
# ---------------------------------------------------------------------------

_VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    # The next four keys have capitals, so after lower-casing they never match;
    # kept as in the official script.
    "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",  # sic: the official map has this entry backwards
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd",
    "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip

_VQA_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip

_VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")  # fmt: skip
# As in the official script. "(?!<=\d)" is a negative *lookahead* (a typo for a
# lookbehind) and is always true at a ".", so this removes every "." that is not
# followed by a digit: "yes." -> "yes", "2.5" stays. The official script is Python 2 and
# compiles these without re.UNICODE, so "\d" is an ASCII digit there: re.ASCII here.
_VQA_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
_VQA_COMMA_STRIP = re.compile(r"(\d)(,)(\d)", re.ASCII)

VQA_OFFICIAL_MAX_PERIODS = int(re.UNICODE)
"""The official ``processPunctuation`` passes ``re.UNICODE`` (= 32) as the ``count`` of its
period substitution, so it removes at most the first 32 periods of an answer."""


def _vqa_process_punctuation(text: str, max_periods: int = 0) -> str:
    """``processPunctuation`` of vqaEval.py: drop or space out punctuation, strip periods.

    A punctuation mark is deleted when it touches a space somewhere in the text
    or when the text contains a digit-comma-digit ("1,000" -> "1000");
    otherwise it is replaced by a space ("yes/no" -> "yes no"). ``max_periods``
    caps the periods removed (0: all of them; the official script: 32).
    """
    out = text
    has_digit_comma = _VQA_COMMA_STRIP.search(text) is not None
    for p in _VQA_PUNCT:
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _VQA_PERIOD_STRIP.sub("", out, count=max_periods)


def _vqa_process_digit_article(text: str) -> str:
    """``processDigitArticle`` of vqaEval.py: lower-case, number words 0-10, drop articles, contractions."""
    words = [_VQA_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_VQA_CONTRACTIONS.get(w, w) for w in words)


def _vqa_clean(text: str) -> str:
    """What vqaEval.py does to every answer first: tabs and newlines to spaces, then ``strip()``."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_normalize(text: str, *, max_periods: int = 0) -> str:
    """Normalise an answer as the official VQA evaluation does (punctuation, then digits/articles).

    ``max_periods=0`` (default, mmcl's ``vqa_score_normalized``) strips every period;
    :data:`VQA_OFFICIAL_MAX_PERIODS` reproduces the official script's cap of 32.
    """
    return _vqa_process_digit_article(_vqa_process_punctuation(_vqa_clean(text), max_periods))


def _leave_one_out(pred: str, refs: list[str]) -> float:
    """Mean over the N subsets that leave one reference out of ``min(#matches / 3, 1)``."""
    n_match = sum(r == pred for r in refs)
    # Leave reference i out: the others hold n_match minus (1 if ref i matched).
    accs = [min(1.0, (n_match - (r == pred)) / 3.0) for r in refs]
    return sum(accs) / len(refs)


def _vqa_few_references(prediction: str, refs: list[str]) -> float:
    """mmcl's rule for 1-3 references: normalised ``#matches / N``."""
    pred = vqa_normalize(prediction)
    return sum(vqa_normalize(r) == pred for r in refs) / len(refs)


@SCORERS.register("vqa_score")
def vqa_score(prediction: str, references: Sequence[str]) -> float:
    """VQA-v2 accuracy of ``prediction`` against the human ``references``, as ``vqaEval.py`` gives it.

    With N >= 4 references (VQA-v2 has 10) this is the official script
    (GT-Vision-Lab/VQA ``vqaEval.py`` at a013f00), quirks included:

    - every answer has tabs/newlines turned into spaces and is stripped;
    - the answers and the prediction are normalised (:func:`vqa_normalize`) only when the
      references are not all identical: with 10x "yes", "Yes" scores 0, "yes." scores 0,
      and with 10x "2", "two" scores 0; with 10x "dog", "a dog" scores 0;
    - the normalisation removes at most 32 periods (``re.UNICODE`` passed as ``count``) and
      its ``\\d`` is ASCII (the script is Python 2);
    - accuracy = mean over the N leave-one-out subsets of ``min(#matches / 3, 1)``: 10 refs of
      which 1 matches -> 0.3, 2 -> 0.6, 3 or more -> 1.0.

    With N <= 3 references this **departs from the official code on purpose**: there each
    leave-one-out subset holds at most 2 answers, so the official rule can never reach 1 and
    a question with one answer always scores 0 (whatever the prediction). mmcl uses
    ``#matches / N`` on normalised answers (= :func:`vqa_score_normalized`): with one
    reference a match scores 1.0; with 2 references, one match scores 0.5.
    """
    refs = [_vqa_clean(r) for r in as_refs(references)]
    if len(refs) <= 3:
        return _vqa_few_references(prediction, refs)
    pred = _vqa_clean(prediction)
    if len(set(refs)) > 1:
        refs = [vqa_normalize(r, max_periods=VQA_OFFICIAL_MAX_PERIODS) for r in refs]
        pred = vqa_normalize(pred, max_periods=VQA_OFFICIAL_MAX_PERIODS)
    return _leave_one_out(pred, refs)


@SCORERS.register("vqa_score_normalized")
def vqa_score_normalized(prediction: str, references: Sequence[str]) -> float:
    """mmcl's VQA accuracy: :func:`vqa_score` without the official script's quirks.

    Prediction and references are always normalised with :func:`vqa_normalize` (every period
    removed), so "Yes" matches 10x "yes". N >= 4 references: the leave-one-out
    ``min(#matches / 3, 1)`` rule; N <= 3: ``#matches / N``. Use it to judge a model; use
    ``vqa_score`` to compare with a paper's VQA-v2 table. This is what ``vqa_score`` computed
    before it followed the official script, except that ``\\d`` in the period and comma rules is
    now an ASCII digit (as in the script) rather than any Unicode digit.
    """
    refs = as_refs(references)
    if len(refs) <= 3:
        return _vqa_few_references(prediction, refs)
    return _leave_one_out(vqa_normalize(prediction), [vqa_normalize(r) for r in refs])


# ---------------------------------------------------------------------------
# token_f1
# ---------------------------------------------------------------------------

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def _squad_tokens(text: str) -> list[str]:
    """SQuAD normalisation: lower-case, delete ASCII punctuation, drop articles, split on whitespace."""
    return _drop_articles(text.lower().translate(_PUNCT_TABLE).split())


def _token_f1_single(pred_tokens: list[str], ref_tokens: list[str]) -> float:
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    n_same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if n_same == 0:
        return 0.0
    precision = n_same / len(pred_tokens)
    recall = n_same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


@SCORERS.register("token_f1")
def token_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD-style token F1 (multiset overlap of normalised tokens), max over references.

    Normalisation as SQuAD's ``normalize_answer`` (punctuation is deleted, so
    "3.5" becomes "35"), except that an answer made only of articles keeps them.
    Two empty answers score 1.0; one empty answer scores 0.0.

    mmcl's own rule: against the SQuAD v1.1 evaluation script it differs only on empty or
    article-only answers (there, both empty score 0, and "A" vs "a" scores 0 since the
    articles are removed) — a documented choice, so that option "A" is not erased.
    """
    pred = _squad_tokens(prediction)
    return max(_token_f1_single(pred, _squad_tokens(ref)) for ref in as_refs(references))


# ---------------------------------------------------------------------------
# box_f1
# ---------------------------------------------------------------------------

def _max_matching(pred: list[Box], ref: list[Box], threshold: float) -> int:
    """Size of a maximum one-to-one matching of pred to ref boxes with IoU >= threshold.

    Exact (augmenting paths, Kuhn's algorithm), not greedy.
    """
    adj = [[j for j, r in enumerate(ref) if iou(p, r) >= threshold] for p in pred]
    owner = [-1] * len(ref)  # owner[j] = index of the pred box matched to ref box j

    def augment(i: int, seen: list[bool]) -> bool:
        for j in adj[i]:
            if not seen[j]:
                seen[j] = True
                if owner[j] == -1 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return sum(augment(i, [False] * len(ref)) for i in range(len(pred)))


def _box_f1_single(pred: list[Box], ref: list[Box]) -> float:
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    matched = _max_matching(pred, ref, IOU_THRESHOLD)
    # F1 = 2PR/(P+R) with P = matched/len(pred), R = matched/len(ref).
    return 2 * matched / (len(pred) + len(ref))


@SCORERS.register("box_f1")
def box_f1(prediction: str, references: Sequence[str]) -> float:
    """Grounding F1: boxes read with :func:`mmcl.synth.boxes.parse_boxes`, matched one-to-one at IoU >= 0.5.

    Each reference string is one complete answer (it may hold several boxes).
    The matching is a maximum-cardinality bipartite matching (exact), so the
    number of true positives is the largest possible. Precision = matched /
    predicted boxes, recall = matched / reference boxes, F1 = 2PR/(P+R).
    No boxes in both -> 1.0; in exactly one -> 0.0. Max over references.
    """
    pred = parse_boxes(prediction)
    return max(_box_f1_single(pred, parse_boxes(ref)) for ref in as_refs(references))


# ---------------------------------------------------------------------------
# relaxed_numeric
# ---------------------------------------------------------------------------

_NUMBER_WORD_LIST = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)  # fmt: skip
_NUMBER_WORDS = {w: float(i) for i, w in enumerate(_NUMBER_WORD_LIST)}
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_FLOAT_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?")


def parse_number(text: str) -> float | None:
    """The number an answer states, or None.

    Accepts "42", "-3.5", "3.", "1,000" (thousands commas only), "45%" and
    "45 percent" (read as 45, not 0.45), "$12" (leading currency symbol), and
    the words zero..twenty. Anything else ("1,5", "3 apples", "nan") is None.
    """
    t = normalize_answer(text)
    for suffix in ("%", " percent", "percent"):
        if t.endswith(suffix):
            t = t[: -len(suffix)].rstrip()
            break
    t = t.lstrip("$\u20ac\u00a3\u00a5").strip()
    if t in _NUMBER_WORDS:
        return _NUMBER_WORDS[t]
    if _THOUSANDS_RE.fullmatch(t):
        t = t.replace(",", "")
    return float(t) if _FLOAT_RE.fullmatch(t) else None


def _relaxed_single(prediction: str, reference: str) -> float:
    pred, ref = parse_number(prediction), parse_number(reference)
    if pred is None or ref is None:
        return exact_match(prediction, [reference])
    if ref == 0:
        return float(pred == 0)
    return float(abs(pred - ref) <= RELATIVE_TOLERANCE * abs(ref))


@SCORERS.register("relaxed_numeric")
def relaxed_numeric(prediction: str, references: Sequence[str]) -> float:
    """ChartQA relaxed accuracy: numbers match within 5 % of the reference, else exact match.

    When both strings parse with :func:`parse_number`, 1.0 if
    ``|pred - ref| <= 0.05 * |ref|`` (a reference of 0 needs exactly 0), so
    "3" vs "3.0" and "1,000" vs "1000" score 1.0. Otherwise falls back to
    ``exact_match``. Max over references.

    mmcl's own rule, not the ChartQA script (that is ``chartqa_relaxed``): "45%" is read as
    45 (pix2struct: 0.45), thousands commas and the words zero..twenty are read, a reference
    of 0 accepts any way of writing 0 ("0.0"), and the fallback is the normalised
    ``exact_match`` rather than a lower-cased comparison. Measured against pix2struct's rule on
    450 generated cases it disagrees on 128 (percent signs, thousands commas, target 0, number
    words): a documented choice, for judging a model; compare with a paper via ``chartqa_relaxed``.
    """
    return max(_relaxed_single(prediction, ref) for ref in as_refs(references))


# ---------------------------------------------------------------------------
# chartqa_relaxed: pix2struct's relaxed_correctness
# ---------------------------------------------------------------------------


def _chartqa_number(text: str) -> float | None:
    """A ChartQA answer as a float: ``float(text)``, or ``float(text without trailing '%') / 100``.

    Python's ``float`` decides, so "1e3", "inf", "nan", " 7 ", "1_000" are numbers and
    "1,000" or "$5" are not. None when it is not a number.
    """
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def _chartqa_single(prediction: str, target: str) -> bool:
    pred, ref = _chartqa_number(prediction), _chartqa_number(target)
    if pred is not None and ref:  # a target of 0 (or unparsable) falls to the string test
        return abs(pred - ref) / abs(ref) <= RELATIVE_TOLERANCE
    return prediction.lower() == target.lower()


@SCORERS.register("chartqa_relaxed")
def chartqa_relaxed(prediction: str, references: Sequence[str]) -> float:
    """ChartQA relaxed accuracy as pix2struct's ``relaxed_correctness`` gives it (max over references).

    Official rule (google-research/pix2struct ``pix2struct/metrics.py`` at 945f27e), no
    normalisation of the strings: when the prediction parses as a float and the target
    parses as a *non-zero* float, correct when ``|pred - target| / |target| <= 0.05``;
    otherwise correct when ``prediction.lower() == target.lower()``. Parsing is Python's
    ``float``, after turning a trailing "%" into ``/ 100`` (so "45%" = 0.45 and "45%" vs
    "45" is wrong). Consequences kept on purpose: target "0" needs the string "0" ("0.0"
    is wrong); "1,000" is not a number (string test); target "1e3" accepts "1000"; "inf"
    vs "inf" is wrong (inf - inf is nan) and so is anything vs "nan"; surrounding spaces
    are ignored by the number test but not by the string test.
    """
    return max(float(_chartqa_single(prediction, ref)) for ref in as_refs(references))


# ---------------------------------------------------------------------------
# contains
# ---------------------------------------------------------------------------

# Numbers with their decimal/thousands separators are one token, so "3" is not
# found in "3.5"; words are one token; other symbols are single tokens.
_TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)*|\w+|[^\w\s]")


def _contains_tokens(haystack: list[str], needle: list[str]) -> bool:
    if not needle:
        return not haystack
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


@SCORERS.register("contains")
def contains(prediction: str, references: Sequence[str]) -> float:
    """1.0 if a normalised reference occurs in the normalised prediction as whole tokens.

    Both sides go through :func:`normalize_answer` and are split into word,
    number and symbol tokens; the reference must appear as a contiguous token
    sequence ("cat" is found in "a black cat." but not in "category"; "3" is
    not found in "3.5"). An empty reference only matches an empty prediction.
    """
    pred = _TOKEN_RE.findall(normalize_answer(prediction))
    return max(
        float(_contains_tokens(pred, _TOKEN_RE.findall(normalize_answer(ref))))
        for ref in as_refs(references)
    )

