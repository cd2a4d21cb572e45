"""The one stand-in tokenizer: the tiny random checkpoints come without vocabulary files.

The engine needs a tokenizer only for ``eos_id`` and for text (stop strings, ``on_text``); these
tests feed ids, so ``decode`` renders them as space-separated numbers, a text whose length in
words is the number of tokens.
"""

from __future__ import annotations

from collections.abc import Sequence


class IdsTokenizer:
    def __init__(self, eos_id: int = -1):
        self.eos_id = eos_id  # -1: no token ends the generation
        self.stop_ids = frozenset({eos_id})  # the engine stops on any of these

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(map(str, ids))
