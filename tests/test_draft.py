"""The prompt-lookup drafter: which earlier n-gram it copies from, and that its incremental index
answers what a search of the whole context would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wizardcoder_tpu.inference.draft import PromptLookup


def searched_draft(context: list[int], limit: int, max_ngram: int = 3) -> list[int]:
    """The drafter's rule as a plain search: the longest tail n-gram that occurred before the
    tail, its most recent such occurrence, then copy what followed (reading the copy itself once
    it runs past the end)."""
    if limit <= 0:
        return []
    for n in range(max_ngram, 0, -1):
        if len(context) <= n:
            continue
        tail = context[-n:]
        for start in range(len(context) - n - 1, -1, -1):
            if context[start:start + n] == tail:
                out = list(context)
                for i in range(limit):
                    out.append(out[start + n + i])
                return out[len(context):]
    return []


def test_copies_what_followed_the_last_bigram():
    assert PromptLookup([1, 2, 3, 4, 5, 1, 2]).draft(4) == [3, 4, 5, 1]


def test_the_longest_ngram_wins_over_a_more_recent_shorter_one():
    # (2, 3) last occurred at 5 (then 5), but (1, 2, 3) occurred at 0 (then 4).
    assert PromptLookup([1, 2, 3, 4, 9, 2, 3, 5, 1, 2, 3]).draft(2) == [4, 9]


def test_the_most_recent_occurrence_wins():
    assert PromptLookup([7, 8, 1, 7, 8, 2, 7, 8]).draft(1) == [2]


def test_a_repeating_pattern_copies_past_the_end_of_the_context():
    assert PromptLookup([1, 2, 1, 2, 1, 2]).draft(5) == [1, 2, 1, 2, 1]
    assert PromptLookup([4, 4]).draft(3) == [4, 4, 4]


def test_no_earlier_ngram_no_draft():
    assert PromptLookup([1, 2, 3]).draft(8) == []
    assert PromptLookup([]).draft(8) == []
    assert PromptLookup([1, 2, 1]).draft(0) == []


def test_extend_updates_the_lookup():
    lookup = PromptLookup([5, 6, 7])
    assert lookup.draft(3) == []
    lookup.extend([5, 6])
    assert lookup.draft(3) == [7, 5, 6]
    lookup.extend([9])
    assert lookup.draft(3) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 4), max_size=40), st.lists(st.integers(0, 4), max_size=10), st.integers(0, 9))
def test_incremental_lookup_equals_a_search_of_the_whole_context(prompt, generated, limit):
    lookup = PromptLookup(prompt)
    lookup.extend(generated)
    assert lookup.draft(limit) == searched_draft(prompt + generated, limit)
