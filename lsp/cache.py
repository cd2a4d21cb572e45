"""Completions already computed, served again without the model: the same place, or the user
typing the first characters of the completion just shown (typed-ahead reuse).

An entry remembers the text before the cursor (its length and a hash) and a hash of the text
after it. A later request hits when its text after the cursor is the same and its text before
the cursor is the entry's plus a beginning of the completion: the rest of the completion is
served. Documents change under the cache, so hashes (not positions) decide; settings that change
what the model would say clear it.

Each stored completion gets a tag, the suggestion's id for the acceptance statistics
(``acceptance.py``): a rest served later keeps its entry's tag, so one suggestion counts once.
Entries stored by the prefetch (``prefetch.py``) say so, and their hits too.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..inference.postprocess import Processed


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


@dataclass(frozen=True)
class _Entry:
    uri: str
    prefix_len: int
    prefix_hash: bytes
    suffix_hash: bytes
    result: Processed
    tag: str
    prefetched: bool


@dataclass(frozen=True)
class Hit:
    """What a lookup found: the rest to show, and the suggestion it is a rest of."""

    result: Processed
    tag: str
    prefetched: bool  # computed ahead by the prefetch, not for a request
    typed: int  # characters of the suggestion already in the document (typed or partly accepted)


class CompletionCache:
    def __init__(self, size: int = 64):
        self._entries: OrderedDict[tuple[str, int, bytes, bytes], _Entry] = OrderedDict()
        self._size = size
        self.hits = 0
        self._tags = itertools.count(1)
        self._session = f"{int(time.time())}-{os.getpid()}"

    def store(self, uri: str, prefix: str, suffix: str, result: Processed, prefetched: bool = False) -> str:
        """Remember ``result`` at this cursor; its tag (the suggestion's id)."""
        tag = f"{self._session}-{next(self._tags)}"
        entry = _Entry(uri, len(prefix), _digest(prefix), _digest(suffix), result, tag, prefetched)
        key = (uri, entry.prefix_len, entry.prefix_hash, entry.suffix_hash)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return tag

    def holds(self, uri: str, prefix: str, suffix: str) -> bool:
        """Whether a completion is stored at exactly this cursor (not counted as a hit)."""
        key = (uri, len(prefix), _digest(prefix), _digest(suffix))
        return key in self._entries

    def lookup(self, uri: str, prefix: str, suffix: str) -> Hit | None:
        """The completion still to show at this cursor, or None."""
        suffix_hash = None
        for key, entry in reversed(self._entries.items()):
            if entry.uri != uri or entry.prefix_len > len(prefix):
                continue
            typed = prefix[entry.prefix_len:]
            shown = entry.result.text
            if len(typed) >= len(shown) or not shown.startswith(typed) or not shown[len(typed):].strip():
                continue
            suffix_hash = suffix_hash or _digest(suffix)
            if entry.suffix_hash != suffix_hash or entry.prefix_hash != _digest(prefix[: entry.prefix_len]):
                continue
            self._entries.move_to_end(key)
            self.hits += 1
            return Hit(Processed(shown[len(typed):], entry.result.replace), entry.tag, entry.prefetched, len(typed))
        return None

    def forget(self, uri: str | None = None) -> None:
        """Drop the entries of ``uri`` (all when None)."""
        for key in [k for k in self._entries if uri is None or k[0] == uri]:
            del self._entries[key]
