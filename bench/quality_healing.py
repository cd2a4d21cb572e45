"""A prototype row for ``bench/quality.py``: the default row's prompt with token healing.

Token healing (guidance's ``token_healing``; llama.cpp's ``--token-healing``): the text before the
cursor usually ends inside a word (``pre_tokeni``, ``BM_NOT_SUPPO``) or after an indentation
(``"    "``), where the prompt's last token is one the model rarely saw there in training (it has
seen ``pre_tokenizers`` as ``pre``/``_token``/``izers``, never with a lone ``i`` token before
``zers``). Healing backs the prompt off by that last token and constrains the first generated
tokens to spell it again: each must either start with the removed text, or be a start of it
(the next is then constrained to the rest); after that, plain greedy decoding. The completion is
what follows the removed text.

This needs a constrained first step that the engine (``inference/engine.py``, the lead's) does not
have, so the row runs in this process on the engine's own backend (``forward``: the logits of the
last position) with the server's prompt (``build_prompt``, mode auto, the default budget, no
other files' code), the server's stop check (``should_stop``) and post-processing
(``postprocess``): the ``default`` row with healing, to measure what healing would change before
the engine gets it. ``heal=False`` gives the default row's answers (a check of the prototype).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quality_holes import Hole
from quality_score import Outcome

from wizardcoder_tpu.inference.loader import load_engine
from wizardcoder_tpu.inference.postprocess import Surroundings, completion_kind, postprocess, should_stop
from wizardcoder_tpu.inference.prompt import build_prompt

DEFAULT_PROMPT_TOKENS = 1024  # lsp/settings.py's promptTokens
DEFAULT_MAX_NEW_TOKENS = 64  # and maxNewTokens


def back_off(ids: list[int], suffix_id: int, special: frozenset[int], pieces: list[str],
             word: bool = False) -> tuple[list[int], str]:
    """The FIM prompt without the prefix's last token, and that token's text ('' when there is
    nothing to heal: an empty prefix, or a token that is not whole text). With ``word``, as many
    last tokens as cover the word the cursor ends (``#inclu`` is ``#``, ``incl``, ``u``: backing
    off ``u`` alone leaves the model an ``#incl`` it never saw), at most ``MAX_WORD_TOKENS``."""
    at = ids.index(suffix_id)  # the first one: the user's text never holds a special token
    start = at
    removed = ""
    while start > 0 and at - start < (MAX_WORD_TOKENS if word else 1):
        last = ids[start - 1]
        piece = pieces[last]
        if last in special or "\ufffd" in piece or not piece or "\n" in piece:
            break
        start, removed = start - 1, piece + removed
        if not word or not _inside_word(removed):
            break
    return ids[:start] + ids[at:], removed


MAX_WORD_TOKENS = 6


def _inside_word(text: str) -> bool:
    """The backed-off text is still all word characters: the word may begin in an earlier token."""
    return all(ch.isalnum() or ch == "_" for ch in text)


def allowed(remaining: str, pieces: list[str], special: frozenset[int]) -> np.ndarray:
    """Ids of text (not special tokens) that starts with ``remaining``, or is a start of it."""
    return np.fromiter((i for i, p in enumerate(pieces)
                        if p and i not in special and (p.startswith(remaining) or remaining.startswith(p))),
                       dtype=np.int64)


@dataclass
class HealingSystem:
    name: str
    description: str
    model_name: str = "default"
    heal: bool = True
    word: bool = False  # back off the whole word at the cursor, not only its last token
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    warnings: list[str] = field(default_factory=list)
    model: str = ""

    async def start(self) -> None:
        self._engine = await asyncio.to_thread(load_engine, self.model_name, "cpu")
        tok = self._engine.tokenizer
        self._pieces = [tok.decode([i], skip_special=False) for i in range(tok.vocab_size)]
        self._special = frozenset(i for i in range(tok.vocab_size) if self._pieces[i] in tok.special_tokens)
        self.model = f"{self._engine.model_name} on cpu, in this process"

    async def complete(self, hole: Hole) -> Outcome:
        started = time.perf_counter()
        try:
            text = await asyncio.to_thread(self._complete, hole)
            error = None
        except Exception as exc:  # a failure is a result of the row
            text, error = "", f"{type(exc).__name__}: {exc}"
        return Outcome(hole, text, (time.perf_counter() - started) * 1e3, error)

    def _complete(self, hole: Hole) -> str:
        engine, tok = self._engine, self._engine.tokenizer
        around = Surroundings.of(hole.prefix, hole.suffix)
        kind = completion_kind(around)
        if kind is None:
            return ""
        budget = min(self.prompt_tokens, engine.max_context - self.max_new_tokens - 8)  # lsp/completion.py's room
        prompt = build_prompt(hole.prefix, hole.suffix, tok, "auto", budget, "", hole.language)
        ids, removed = prompt.ids, ""
        if self.heal and tok.fim is not None:
            ids, removed = back_off(prompt.ids, tok.require(tok.fim.suffix), self._special, self._pieces,
                                   self.word)
        backend = engine.backend
        backend.truncate(0)
        logits = backend.forward(ids)
        generated: list[int] = []
        remaining = removed
        text = ""
        while len(generated) < self.max_new_tokens:
            if remaining:
                choices = allowed(remaining, self._pieces, self._special)
                token = int(choices[np.argmax(logits[choices])])
                piece = self._pieces[token]
                remaining = "" if piece.startswith(remaining) else remaining[len(piece):]
            else:
                token = int(np.argmax(logits))
            if token in tok.stop_ids:
                break
            generated.append(token)
            whole = tok.decode(generated)
            if remaining or whole.endswith("\ufffd"):
                logits = backend.forward([token])
                continue
            text = whole[len(removed):]
            cut = min((text.index(s) for s in prompt.stop_strings if s in text), default=None)
            if cut is not None:
                text = text[:cut]
                break
            if should_stop(text, around, kind):
                break
            logits = backend.forward([token])
        processed = postprocess(text, around, kind)
        return processed.text if processed is not None else ""

    async def stop(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.close()


def make(name: str, **options: Any) -> HealingSystem:
    return HealingSystem(name, "the default row's prompt with token healing (a prototype in this process: the "
                         "prefix's last token backed off, the first tokens constrained to spell it again)", **options)
