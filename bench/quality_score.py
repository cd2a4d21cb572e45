"""Scores of one completion against the hole it filled, and their summary per table row.

- exact: the completion's first line equals the deleted text's first line (trailing whitespace
  ignored), as RepoEval's line-level exact match; never for an empty completion, nor for a
  llama.vim suggestion that re-indents the cursor's line.
- edit similarity: 1 − Levenshtein distance / the longer length (RepoEval's ES), from
  ``rapidfuzz``; of the first lines (``es_line``) and of the whole completion against the whole
  deleted text (``es_all``: a completion that runs on past the hole loses here).
- repeats suffix: the completion holds, as one of its lines, the first non-blank line after the
  hole, when that line is substantial (``SUBSTANTIAL_CHARS`` non-blank characters and a letter or
  digit) and the author did not write it in the hole too: the completion writes again what is
  already there.
- empty: no completion, or only whitespace.
- latency: from the request to its answer, as the client sees it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

from quality_holes import Hole

SUBSTANTIAL_CHARS = 4


@dataclass(frozen=True)
class Outcome:
    """What one system answered for one hole."""

    hole: Hole
    text: str  # inserted at the cursor ("" for no completion)
    latency_ms: float
    error: str | None = None
    reindented: bool = False  # llama.vim only: the suggestion changes the cursor line's indentation


@dataclass(frozen=True)
class Score:
    exact: bool
    es_line: float
    es_all: float
    repeats_suffix: bool
    empty: bool


def first_line(text: str) -> str:
    return text.split("\n", 1)[0].rstrip()


def similarity(a: str, b: str) -> float:
    return Levenshtein.normalized_similarity(a, b)


def score(outcome: Outcome) -> Score:
    hole, text = outcome.hole, outcome.text
    empty = not text.strip()
    exact = not empty and not outcome.reindented and first_line(text) == first_line(hole.truth)
    return Score(exact, similarity(first_line(text), first_line(hole.truth)),
                 similarity(text.rstrip(), hole.truth.rstrip()), not empty and repeats_suffix(hole, text), empty)


def repeats_suffix(hole: Hole, text: str) -> bool:
    following = next((line.strip() for line in hole.suffix.split("\n") if line.strip()), "")
    if len(following.replace(" ", "")) < SUBSTANTIAL_CHARS or not any(ch.isalnum() for ch in following):
        return False
    if following in {line.strip() for line in (hole.line_prefix + hole.truth).split("\n")}:
        return False  # the author wrote that line twice: writing it again is right
    return any(line.strip() == following for line in (hole.line_prefix + text).split("\n"))


@dataclass(frozen=True)
class Summary:
    holes: int
    exact: float  # fractions of the holes
    es_line: float  # means
    es_all: float
    repeats: float  # fraction of the non-empty completions
    empty: float
    errors: int
    p50_ms: float
    p95_ms: float


def summarize(outcomes: list[Outcome]) -> Summary:
    scores = [score(o) for o in outcomes]
    count = len(scores)
    answered = [s for s in scores if not s.empty]
    latencies = sorted(o.latency_ms for o in outcomes if o.error is None)
    return Summary(
        holes=count,
        exact=_mean([s.exact for s in scores]),
        es_line=_mean([s.es_line for s in scores]),
        es_all=_mean([s.es_all for s in scores]),
        repeats=_mean([s.repeats_suffix for s in answered]),
        empty=_mean([s.empty for s in scores]),
        errors=sum(o.error is not None for o in outcomes),
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
    )


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank percentile (NaN for none): with few holes, an observed latency."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def _mean(values: list[float] | list[bool]) -> float:
    return statistics.fmean(values) if values else float("nan")
