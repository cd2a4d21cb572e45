"""Prompt-lookup drafts: guess the next tokens by copying what followed the same n-gram earlier.

Code repeats itself (a name typed again, a line like the one above, a closing block that mirrors
an opening one), so the tokens that followed the last few tokens the previous time they occurred
are a cheap guess at what comes next (Saxena's prompt-lookup decoding; llama.cpp's
``--lookup``). The engine verifies a draft in one model call and keeps only what greedy decoding
would have produced, so a wrong guess costs time, never a token.

The lookup is incremental: ``extend`` indexes each new token's n-grams (n = 1..3), and ``draft``
reads the occurrence of the context's last n-gram before the tail itself, the longest n first
and the most recent occurrence of it. The copy may run into the tail (a repeating pattern): it
then reads its own drafted tokens, so "a b a b a b" drafts "a b a b …" rather than one token.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_NGRAM = 3


class PromptLookup:
    """The context so far (prompt, then accepted tokens) and where each of its n-grams last began."""

    def __init__(self, context: Iterable[int] = (), max_ngram: int = MAX_NGRAM):
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        self._last_start: dict[tuple[int, ...], int] = {}  # n-gram -> start of its latest occurrence
        self._earlier: list[int | None] = [None] * (max_ngram + 1)  # n -> start of the tail n-gram's previous one
        self.extend(context)

    def extend(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            self.tokens.append(token)
            end = len(self.tokens)
            for n in range(1, self.max_ngram + 1):
                if end < n:
                    self._earlier[n] = None
                    continue
                key = tuple(self.tokens[end - n:])
                self._earlier[n] = self._last_start.get(key)
                self._last_start[key] = end - n

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the longest, most recent earlier match of the
        context's last n-gram; [] when no n-gram of the tail occurred before."""
        if limit <= 0:
            return []
        for n in range(self.max_ngram, 0, -1):
            start = self._earlier[n]
            if start is None:
                continue
            copied: list[int] = []
            source = start + n  # the token that followed the match
            context = len(self.tokens)
            for i in range(limit):
                at = source + i
                copied.append(self.tokens[at] if at < context else copied[at - context])
            return copied
        return []
