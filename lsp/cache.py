"""Completions already computed, served again without the model: the same place, or the user
typing the first characters of the completion just shown (typed-ahead reuse).

An entry remembers the text before the cursor (its length and a hash) and a hash of the text
after it. A later request hits when its text after the cursor is the same and its text before
the cursor is the entry's plus a beginning of the completion: the rest of the completion is
served. Documents change under the cache, so hashes (not positions) decide; settings that change
what the model would say clear it.
"""

from __future__ import annotations

import hashlib
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


class CompletionCache:
    def __init__(self, size: int = 64):
        self._entries: OrderedDict[tuple[str, int, bytes, bytes], _Entry] = OrderedDict()
        self._size = size
        self.hits = 0

    def store(self, uri: str, prefix: str, suffix: str, result: Processed) -> None:
        entry = _Entry(uri, len(prefix), _digest(prefix), _digest(suffix), result)
        key = (uri, entry.prefix_len, entry.prefix_hash, entry.suffix_hash)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def lookup(self, uri: str, prefix: str, suffix: str) -> Processed | None:
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
            return Processed(shown[len(typed):], entry.result.replace)
        return None

    def forget(self, uri: str | None = None) -> None:
        """Drop the entries of ``uri`` (all when None)."""
        for key in [k for k in self._entries if uri is None or k[0] == uri]:
            del self._entries[key]
