"""The seam between the language server and any backend: token ids in, token ids out.

The engine knows nothing of LSP and little of text: it owns one backend (which owns a KV cache),
reuses the cached prefix of the previous prompt, runs greedy decoding with stop conditions, and
can be cancelled from another thread. Text enters only for stop strings and streaming.

Two ways a generation ends early, kept apart (after nanochat's ``Engine.generate``, whose caller
breaks out of the loop when it has what it needs):

- *done*: the caller's ``on_text`` returns False: the text so far is all it needs (post-processing
  has decided the completion). The result is used.
- *cancelled*: a ``CancelToken`` set from any thread (``$/cancelRequest``, a newer request): the
  result is unwanted.

Each stop rule has one owner: EOS, stop strings, the token budget, the context and the deadline
are the engine's (``_Run``); what ends a completion (a line break for a single-line one, leaving
the cursor's scope) is post-processing's, reached through ``on_text``.

A backend implements ``Backend``: ``forward`` appends tokens to its cache and returns the last
position's logits; ``truncate`` forgets the cache past a length. ``greedy_step`` and
``greedy_loop`` have Python defaults that a device backend overrides (the TPU keeps the argmax
and the loop on the device side, and stops there on EOS). The loop only produces tokens; every
decision about them is ``_Run.accept``, so that another producer can feed the same rules: the
draft-and-verify step of ``Engine._decode`` (prompt-lookup speculation, ``inference/draft.py``),
which checks up to K guessed tokens with one ``verify`` call and keeps what greedy decoding
would have produced.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .draft import PromptLookup
from .errors import ContextOverflowError, InferenceError
from .tokenizer import Tokenizer


class CancelToken:
    """Set from any thread; the engine checks it before every model call."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class Backend(abc.ABC):
    """Runs the model over a KV cache it owns. Knows nothing of text."""

    name: str = "backend"
    max_context: int
    vocab_size: int

    def __init__(self) -> None:
        self.tokens_fed = 0  # every token run through the model since load: what prefix reuse saves

    @property
    @abc.abstractmethod
    def cached_length(self) -> int:
        """Positions held in the KV cache."""

    @abc.abstractmethod
    def truncate(self, length: int) -> None:
        """Forget cached positions from ``length`` on."""

    @abc.abstractmethod
    def forward(self, token_ids: Sequence[int]) -> np.ndarray:
        """Append ``token_ids`` at the end of the cache; return the logits [vocab] of the last."""

    slots: int = 1  # KV caches the backend keeps, one prefix each (``select_slot``)

    def select_slot(self, index: int) -> None:
        """Make slot ``index`` the cache that ``forward``, ``truncate`` and ``cached_length`` use.
        A backend with one cache has slot 0 only."""
        if index != 0:
            raise InferenceError(f"the {self.name} backend keeps one KV cache (slot 0), not slot {index}")

    def greedy_step(self, token_ids: Sequence[int]) -> int:
        return int(np.argmax(self.forward(token_ids)))

    def verify(self, token_ids: Sequence[int]) -> list[int]:
        """Append all of ``token_ids`` at the end of the cache; return the argmax after each one
        (``[i]`` is the greedy token that follows ``token_ids[:i + 1]``): a draft checked against
        the model. This default runs one call per token, correct on every backend and faster on
        none; a backend overrides it with one call over all the rows (the CPU backend does)."""
        return [self.greedy_step([token]) for token in token_ids]

    def greedy_loop(self, first_token: int, max_steps: int, on_token: Callable[[int], bool]) -> None:
        """Feed ``first_token``, then each argmax, up to ``max_steps`` model calls; ``on_token``
        receives each new token and returns False to stop."""
        token = first_token
        for _ in range(max_steps):
            token = self.greedy_step([token])
            if not on_token(token):
                return

    def close(self) -> None:
        """Release the device or session."""


OnText = Callable[[str], bool]  # the text so far -> whether to go on (False: done, not cancelled)


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    stop_strings: tuple[str, ...] = ()  # text that ends it (not included in the result)
    deadline: float | None = None  # time.monotonic() after which generation stops
    speculate: int = 0  # tokens drafted by prompt lookup per verify call at most (8 is usual); 0: off
    heal: str = ""  # token healing: text taken off the prompt's end that the first tokens must spell again


@dataclass
class Generation:
    token_ids: list[int]
    text: str
    stop_reason: str  # eos | stop_string | done | max_tokens | deadline | cancelled | context
    prompt_tokens: int
    reused_tokens: int  # prompt tokens whose keys/values came from the cache
    prefill_ms: float
    decode_ms: float
    timings: dict[str, float] = field(default_factory=dict)
    drafted_tokens: int = 0  # tokens guessed by prompt lookup and run through the model to check
    accepted_draft_tokens: int = 0  # of those, the ones greedy decoding produced and the run kept


@dataclass
class _Slot:
    """One of the backend's KV caches: the ids whose keys/values it holds, in order."""

    ids: list[int] = field(default_factory=list)
    last_used: int = 0  # the engine's request count when it last served (0: never)


REUSE_FRACTION = 0.25  # a slot serves a prompt that shares at least this much of it; else the LRU slot


class Engine:
    """One backend, one generation at a time (a lock makes concurrent callers wait).

    Token healing (``GenerationParams.heal``, after guidance's ``token_healing``): the prompt
    builder took the prompt's last tokens off (the word the cursor ends, where the prompt's
    tokenization is one the model rarely saw: ``pre_tokeni``), and the first tokens generated are
    the argmax among those that spell that text again, one that starts with what is left of it
    or is a start of it; then plain greedy decoding. The text the caller sees starts after it.

    The backend's KV caches are slots, each holding one earlier prompt and its completion. A
    prompt goes to the slot with the longest common prefix when that covers at least
    ``REUSE_FRACTION`` of it (the same document, typed on), else to the least recently used slot
    (an empty one first), so that switching between documents or clients and back prefills only
    what changed (after llama.cpp's server, whose slots pick by prompt similarity)."""

    heals = True  # constrains its first tokens (GenerationParams.heal); a remote server cannot

    def __init__(self, backend: Backend, tokenizer: Tokenizer, model_name: str = ""):
        self.backend = backend
        self.tokenizer = tokenizer
        self.model_name = model_name
        self._slots = [_Slot() for _ in range(max(1, backend.slots))]
        self._active = 0  # the slot the backend has selected
        self._requests = 0
        self.reused_tokens = 0  # prompt tokens served from a slot, since load
        self.prompt_tokens = 0
        self._lock = threading.Lock()

    @property
    def _cached_ids(self) -> list[int]:
        """The active slot's ids."""
        return self._slots[self._active].ids

    @_cached_ids.setter
    def _cached_ids(self, ids: list[int]) -> None:
        self._slots[self._active].ids = ids

    def slot_use(self) -> list[dict[str, int]]:
        """Each slot's cached tokens and when it last served (for the server's status)."""
        return [{"tokens": len(slot.ids), "lastUsed": slot.last_used} for slot in self._slots]

    @property
    def max_context(self) -> int:
        return self.backend.max_context

    def generate(self, prompt_ids: Sequence[int], params: GenerationParams = GenerationParams(),
                 cancel: CancelToken | None = None, on_text: OnText | None = None) -> Generation:
        """Greedy continuation of ``prompt_ids``. ``on_text`` receives the text so far after each
        token that completes a character and returns whether to go on: False ends the generation
        as ``done`` (the caller has what it needs), which is not a cancellation; ``cancel`` is the
        other way to stop early (the result is unwanted: ``cancelled``)."""
        check_prompt(prompt_ids, self.max_context)
        with self._lock:
            return self._generate(list(prompt_ids), params, cancel or CancelToken(), on_text)

    def _generate(self, prompt: list[int], params: GenerationParams, cancel: CancelToken,
                  on_text: OnText | None) -> Generation:
        started = time.perf_counter()
        reused = self._reuse_prefix(prompt)
        budget = min(params.max_new_tokens, self.max_context - len(prompt))
        run = _Run(self.tokenizer, params, cancel, on_text, budget)
        early = run.interrupted()
        if early or budget <= 0:
            return Generation([], "", early or "context", len(prompt), reused, 0.0, 0.0)
        try:
            first = self._first_token(prompt[reused:], params.heal, run)
            prefill_done = time.perf_counter()
            if first is not None and run.accept(first):
                self._decode(prompt, first, budget - len(run.tokens), run)
            self._cached_ids = prompt + run.tokens[:run.fed]
        except BaseException:
            self._cached_ids = []  # the cache may hold a half-fed call: trust none of it
            self.backend.truncate(0)
            raise
        finished = time.perf_counter()
        return Generation(run.tokens, run.text, run.reason, len(prompt), reused,
                          (prefill_done - started) * 1e3, (finished - prefill_done) * 1e3,
                          drafted_tokens=run.drafted, accepted_draft_tokens=run.accepted_drafts)

    def _first_token(self, feed: list[int], heal: str, run: _Run) -> int | None:
        """The first token after the text ``heal`` is spelled: the prompt's argmax without
        healing; with it, the constrained tokens that spell ``heal`` are given to ``run`` here,
        and the one that completes it is returned (None when ``run`` stopped before)."""
        if not heal:
            return self.backend.greedy_step(feed)
        remaining = heal
        while True:
            logits = self.backend.forward(feed)
            choices = self.tokenizer.spelling_ids(remaining)
            token = int(choices[np.argmax(logits[choices])])
            piece = self.tokenizer.pieces[token]
            if piece.startswith(remaining):
                return token
            remaining = remaining[len(piece):]
            if not run.accept(token):
                return None
            feed = [token]

    def _decode(self, prompt: list[int], first: int, max_steps: int, run: _Run) -> None:
        """The tokens after ``first`` (at most ``max_steps``), each given to ``run.accept`` in
        order until it says stop; leaves the backend holding the prompt and
        ``run.tokens[:run.fed]``.

        With ``speculate`` K > 0: each call feeds the last accepted token and a prompt-lookup
        draft of up to K tokens (``verify``); the model's argmax after each row is accepted while
        it equals the next drafted token, then once more (the model's own token after the last
        match), and the cache is cut back to what was accepted. The tokens are those of plain
        greedy decoding; only the number of model calls changes. With no draft the step is the
        one-row ``greedy_step``. The draft's length adapts: halved after a draft of which nothing
        was accepted, doubled (up to K) after one accepted whole, since a rejected row costs a
        K-row call more than the one-row step it replaced (``bench/results/engine-speculation.md``)."""
        most = limit = run.params.speculate
        if limit <= 0:
            self.backend.greedy_loop(first, max_steps, run.accept)
            return
        lookup = PromptLookup(prompt)
        lookup.extend([first])
        pending, produced = first, 0  # pending: accepted, not yet fed (run.tokens[-1])
        while produced < max_steps:
            draft = lookup.draft(min(limit, max_steps - produced - 1))
            base = self.backend.cached_length
            predicted = self.backend.verify([pending, *draft]) if draft else [self.backend.greedy_step([pending])]
            run.drafted += len(draft)
            accepted_before = run.accepted_drafts
            for i, token in enumerate(predicted):
                produced += 1
                if not run.accept(token):  # stopped: the cache keeps what was fed before this token
                    self.backend.truncate(base + 1 + i)
                    return
                if i < len(draft) and token == draft[i]:
                    run.accepted_drafts += 1  # its keys/values are already in the cache
                    continue
                self.backend.truncate(base + 1 + i)  # forget the rejected rest of the draft
                lookup.extend(predicted[: i + 1])
                pending = token
                break
            if draft:
                kept = run.accepted_drafts - accepted_before
                limit = max(1, limit // 2) if kept == 0 else min(most, limit * 2) if kept == len(draft) else limit

    def _reuse_prefix(self, prompt: list[int]) -> int:
        """Select the slot for ``prompt`` (see the class) and keep its common prefix with it (at
        least one token is always fed, for its logits); returns how many prompt tokens are reused."""
        index, common = self._pick_slot(prompt)
        if len(self._slots) > 1:
            self.backend.select_slot(index)
            self._active = index
        self._requests += 1
        self._slots[index].last_used = self._requests
        cached = self._cached_ids[: self.backend.cached_length]
        common = min(common, len(cached), len(prompt) - 1)
        self.backend.truncate(common)
        self._cached_ids = cached[:common]
        self.reused_tokens += common
        self.prompt_tokens += len(prompt)
        return common

    def _pick_slot(self, prompt: list[int]) -> tuple[int, int]:
        """The slot to serve ``prompt`` and its common prefix with it."""
        commons = [_common_prefix(slot.ids, prompt) for slot in self._slots]
        best = max(range(len(commons)), key=lambda i: (commons[i], self._slots[i].last_used))
        if len(self._slots) == 1 or commons[best] >= REUSE_FRACTION * len(prompt):
            return best, commons[best]
        lru = min(range(len(self._slots)), key=lambda i: self._slots[i].last_used)
        return lru, commons[lru]

    def reset(self) -> None:
        with self._lock:
            for index in reversed(range(len(self._slots))):
                if len(self._slots) > 1:
                    self.backend.select_slot(index)
                self._slots[index] = _Slot()
                self.backend.truncate(0)
            self._active = 0

    def close(self) -> None:
        self.backend.close()


class TextEngine(Protocol):
    """What the language server uses of an engine: ``Engine`` (a backend in this process, token by
    token) or ``remote.RemoteEngine`` (an inference server over HTTP, text as it streams). The
    prompt, the stop rules and post-processing above stay one code path for both."""

    tokenizer: Tokenizer
    model_name: str
    heals: bool  # honours GenerationParams.heal (build prompts with healing only then)

    @property
    def max_context(self) -> int: ...

    def generate(self, prompt_ids: Sequence[int], params: GenerationParams = ..., cancel: CancelToken | None = None,
                 on_text: OnText | None = None) -> Generation: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


def check_prompt(prompt_ids: Sequence[int], max_context: int) -> None:
    """InferenceError for a prompt no engine can continue: empty, or no room left after it."""
    if not prompt_ids:
        raise InferenceError("empty prompt")
    if len(prompt_ids) >= max_context:
        raise ContextOverflowError(f"prompt of {len(prompt_ids)} tokens does not fit the context of {max_context}")


def interruption(params: GenerationParams, cancel: CancelToken) -> str | None:
    """Why a generation must stop now from outside (``cancelled``, ``deadline``), or None: the one
    rule for every engine, token by token here and piece by piece in ``remote``."""
    if cancel.cancelled:
        return "cancelled"
    if params.deadline is not None and time.monotonic() > params.deadline:
        return "deadline"
    return None


class _Run:
    """One generation's state and the engine's stop rules, applied to each new token in order:
    EOS, stop strings, the caller's ``on_text`` (done), the budget (max_tokens or context), then
    cancellation and the deadline (checked once per token: the one cancel path, whichever loop
    produces the tokens)."""

    def __init__(self, tokenizer: Tokenizer, params: GenerationParams, cancel: CancelToken,
                 on_text: OnText | None, budget: int):
        self.tokenizer = tokenizer
        self.params = params
        self.cancel = cancel
        self.on_text = on_text
        self.budget = budget
        self.tokens: list[int] = []
        self.fed = 0  # tokens[:fed] went on to the next model call: their keys/values are cached
        self.drafted = 0  # speculation's counts (Generation.drafted_tokens, accepted_draft_tokens)
        self.accepted_drafts = 0
        self.text = ""
        self.reason = "max_tokens"
        self.heal = params.heal  # the generated text starts with it; the caller's text after it

    def interrupted(self) -> str | None:
        return interruption(self.params, self.cancel)

    def accept(self, token: int) -> bool:
        """Record one new token; False ends the generation (``reason`` says why)."""
        if token in self.tokenizer.stop_ids:  # the end-of-text token and the family's other stops
            self.reason = "eos"
            return False
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens)
        if self.heal:
            if not text.startswith(self.heal):  # still spelling what healing took off: no text yet
                return self._within_budget()
            text = text[len(self.heal):]
        cut = _stop_string_cut(text, self.params.stop_strings)
        if cut is not None:
            self.reason, self.text = "stop_string", text[:cut]
            return False
        self.text = text
        if self.on_text is not None and not text.endswith("\ufffd") and not self._go_on(text):
            self.reason = "done"
            return False
        return self._within_budget()

    def _within_budget(self) -> bool:
        """The budget, cancellation and the deadline after a token; True: it is fed on."""
        if len(self.tokens) >= self.budget:
            self.reason = "max_tokens" if self.budget == self.params.max_new_tokens else "context"
            return False
        early = self.interrupted()
        if early:
            self.reason = early
            return False
        self.fed += 1  # the next model call feeds it
        return True

    def _go_on(self, text: str) -> bool:
        """The caller's answer to the text so far (True: go on)."""
        go_on = self.on_text(text)
        if not isinstance(go_on, bool):  # a streaming callback of old that returns None would end every run
            raise TypeError(f"on_text must return whether to go on (a bool), not {go_on!r}")
        return go_on


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    common = 0
    for x, y in zip(a, b):
        if x != y:
            break
        common += 1
    return common


def _stop_string_cut(text: str, stop_strings: Sequence[str]) -> int | None:
    """Where ``text`` is cut by the earliest stop string in it, or None."""
    found = [text.index(stop) for stop in stop_strings if stop and stop in text]
    return min(found) if found else None
