"""The seam between the language server and any backend: token ids in, token ids out.

The engine knows nothing of LSP and little of text: it owns one backend (which owns a KV cache),
reuses the cached prefix of the previous prompt, runs greedy decoding with stop conditions, and
can be cancelled from another thread. Text enters only for stop strings and streaming.

A backend implements ``Backend``: ``forward`` appends tokens to its cache and returns the last
position's logits; ``truncate`` forgets the cache past a length. ``greedy_step`` and
``greedy_loop`` have Python defaults that a device backend overrides (the TPU keeps the argmax
and the loop on the device side).
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

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

    def greedy_step(self, token_ids: Sequence[int]) -> int:
        return int(np.argmax(self.forward(token_ids)))

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


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    stop_at_newline: bool = False  # single-line completion: the first line break ends it
    stop_strings: tuple[str, ...] = ()  # text that ends it (not included in the result)
    deadline: float | None = None  # time.monotonic() after which generation stops


@dataclass
class Generation:
    token_ids: list[int]
    text: str
    stop_reason: str  # eos | newline | stop_string | max_tokens | deadline | cancelled | context
    prompt_tokens: int
    reused_tokens: int  # prompt tokens whose keys/values came from the cache
    prefill_ms: float
    decode_ms: float
    timings: dict[str, float] = field(default_factory=dict)


class Engine:
    """One backend, one generation at a time (a lock makes concurrent callers wait)."""

    def __init__(self, backend: Backend, tokenizer: Tokenizer, model_name: str = ""):
        self.backend = backend
        self.tokenizer = tokenizer
        self.model_name = model_name
        self._cached_ids: list[int] = []  # the ids whose keys/values the backend holds, in order
        self._lock = threading.Lock()

    @property
    def max_context(self) -> int:
        return self.backend.max_context

    def generate(self, prompt_ids: Sequence[int], params: GenerationParams = GenerationParams(),
                 cancel: CancelToken | None = None,
                 on_text: Callable[[str], None] | None = None) -> Generation:
        """Greedy continuation of ``prompt_ids``. ``on_text`` receives the text so far after each
        token that completes a character (streaming)."""
        if not prompt_ids:
            raise InferenceError("empty prompt")
        if len(prompt_ids) >= self.max_context:
            raise ContextOverflowError(f"prompt of {len(prompt_ids)} tokens does not fit the context of {self.max_context}")
        with self._lock:
            return self._generate(list(prompt_ids), params, cancel or CancelToken(), on_text)

    def _generate(self, prompt: list[int], params: GenerationParams, cancel: CancelToken,
                  on_text: Callable[[str], None] | None) -> Generation:
        started = time.perf_counter()
        reused = self._reuse_prefix(prompt)
        generated: list[int] = []
        state = {"reason": "max_tokens", "text": ""}
        budget = min(params.max_new_tokens, self.max_context - len(prompt))

        def stopped_early() -> str | None:
            if cancel.cancelled:
                return "cancelled"
            if params.deadline is not None and time.monotonic() > params.deadline:
                return "deadline"
            return None

        def accept(token: int) -> bool:
            """Record one new token; False ends the generation."""
            if token in self.tokenizer.stop_ids:
                state["reason"] = "eos"
                return False
            generated.append(token)
            text = self.tokenizer.decode(generated)
            cut = self._stop_cut(text, params)
            if cut is not None:
                state["reason"], state["text"] = cut
                return False
            state["text"] = text
            if on_text is not None and not text.endswith("\ufffd"):
                on_text(text)
            if len(generated) >= budget:
                state["reason"] = "max_tokens" if budget == params.max_new_tokens else "context"
                return False
            early = stopped_early()
            if early:
                state["reason"] = early
                return False
            self._cached_ids.append(token)  # the next model call feeds it
            return True

        early = stopped_early()
        if early or budget <= 0:
            state["reason"] = early or "context"
            return Generation([], "", state["reason"], len(prompt), reused, 0.0, 0.0)
        try:
            first = self.backend.greedy_step(prompt[reused:])
            self._cached_ids = list(prompt)
            prefill_done = time.perf_counter()
            if accept(first):
                self.backend.greedy_loop(first, budget - 1, accept)
        except BaseException:
            self._cached_ids = []  # the cache may hold a half-fed call: trust none of it
            self.backend.truncate(0)
            raise
        finished = time.perf_counter()
        return Generation(generated, state["text"], state["reason"], len(prompt), reused,
                          (prefill_done - started) * 1e3, (finished - prefill_done) * 1e3)

    def _reuse_prefix(self, prompt: list[int]) -> int:
        """Keep the cache's common prefix with ``prompt`` (at least one token is always fed, for
        its logits); returns how many prompt tokens are reused."""
        cached = self._cached_ids[: self.backend.cached_length]
        common = 0
        for a, b in zip(cached, prompt):
            if a != b:
                break
            common += 1
        common = min(common, len(prompt) - 1)
        self.backend.truncate(common)
        self._cached_ids = cached[:common]
        return common

    @staticmethod
    def _stop_cut(text: str, params: GenerationParams) -> tuple[str, str] | None:
        """(reason, text kept) when ``text`` reached a stop condition."""
        cuts = []
        if params.stop_at_newline and "\n" in text:
            cuts.append((text.index("\n"), "newline"))
        for stop in params.stop_strings:
            if stop and stop in text:
                cuts.append((text.index(stop), "stop_string"))
        if not cuts:
            return None
        at, reason = min(cuts)
        return reason, text[:at]

    def reset(self) -> None:
        with self._lock:
            self._cached_ids = []
            self.backend.truncate(0)

    def close(self) -> None:
        self.backend.close()
