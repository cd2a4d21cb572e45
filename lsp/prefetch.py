"""The next suggestion before it is asked for (llama.vim's speculative FIM).

When a suggestion has been served, the document the user gets by accepting it whole is known:
the text before the cursor plus the suggestion, and the text after the cursor without the
characters the suggestion replaces. The prefetch computes the completion there, in the worker
while it is idle, and stores it in the cache (marked as prefetched), so that Tab after Tab is
served from the cache. A continuation after part of a suggestion (its first line, a word) needs
no prefetch: the cache serves the rest of the shown suggestion itself (typed-ahead reuse).

It never delays a real request: one prefetch runs at a time, as an ordinary worker job with its
own cancel token, and a real request cancels it (the engine stops within one model call: the
token is checked after each token), unless the request is at the very place the prefetch is
computing, which then awaits the prefetch's result instead of starting the model again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace

from ..inference.engine import CancelToken
from ..inference.postprocess import Kind, Processed, completion_kind
from . import trigger
from .cache import CompletionCache
from .documents import Cursor
from .loop_post import post
from .settings import Settings
from .team import ClientJobs
from .worker import InferenceWorker

log = logging.getLogger(__name__)
LABEL = "prefetching"  # the worker job's label (the server keeps the status idle for it)


@dataclass(frozen=True)
class Target:
    """Where a prefetch completes: the document as it would be after the accept."""

    uri: str
    prefix: str
    suffix: str

    def matches(self, uri: str, prefix: str, suffix: str) -> bool:
        return (self.uri, len(self.prefix), self.prefix, self.suffix) == (uri, len(prefix), prefix, suffix)


def after_accepting(cursor: Cursor, result: Processed) -> Target:
    """The cursor after accepting ``result`` whole at ``cursor``."""
    return Target(cursor.uri, cursor.prefix + result.text, cursor.suffix[result.replace:])


@dataclass
class _Running:
    target: Target
    cancel: CancelToken
    future: Future


class Prefetcher:
    """At most one prefetch at a time; call from the event loop thread."""

    def __init__(self) -> None:
        self._running: _Running | None = None
        self._nothing: deque[Target] = deque(maxlen=16)  # places where the prefetch found nothing to show
        self.started = 0
        self.stored = 0
        self.cancelled = 0  # cancelled by a real request (or by a newer prefetch)
        self.adopted = 0  # awaited by the real request at its place

    @property
    def running(self) -> Target | None:
        return self._running.target if self._running is not None else None

    def start(self, cursor: Cursor, result: Processed, *, settings: Settings, cache: CompletionCache,
              worker: InferenceWorker | ClientJobs, run: Callable[[Cursor, Kind, CancelToken], Processed | None]) -> Target | None:
        """Queue the prefetch after ``result`` (served at ``cursor``); the target, or None when
        there is nothing to do there (prefetch off, an automatic request would not run the model
        there, or the cache holds it already). ``run(cursor, kind, token)`` is the model run, in
        the worker thread."""
        if not settings.prefetch or not result.text.strip():
            return None
        target = after_accepting(cursor, result)
        if self._running is not None and self._running.target == target:
            return target
        if cache.holds(target.uri, target.prefix, target.suffix) or target in self._nothing:
            return None
        if trigger.model_refusal(settings, trigger.Request(True, target.prefix, target.suffix, False)) is not None:
            return None
        there = replace(cursor, prefix=target.prefix, suffix=target.suffix)  # its own ``around``, computed once
        kind: Kind = completion_kind(there.around)
        self.cancel()
        token = CancelToken()
        future = worker.submit(lambda cancel: run(there, kind, cancel), token, LABEL)
        running = _Running(target, token, future)
        self._running = running
        self.started += 1

        def done(finished: Future) -> None:  # worker thread
            post(loop, self._finished, running, finished, cache)

        loop = asyncio.get_running_loop()
        future.add_done_callback(done)
        return target

    def _finished(self, running: _Running, finished: Future, cache: CompletionCache) -> None:
        if self._running is running:
            self._running = None
        if finished.cancelled() or finished.exception() is not None or running.cancel.cancelled:
            return
        result = finished.result()
        if result is None:
            self._nothing.append(running.target)  # greedy decoding would find nothing there again
        else:
            target = running.target
            cache.store(target.uri, target.prefix, target.suffix, result, prefetched=True)
            self.stored += 1
            log.info("prefetched %d characters at offset %d of %s", len(result.text), len(target.prefix), target.uri)

    def cancel(self) -> None:
        """A real request (or a newer prefetch) comes first: stop the running prefetch."""
        if self._running is not None:
            self._running.cancel.cancel()
            self.cancelled += 1
            self._running = None

    async def claim(self, uri: str, prefix: str, suffix: str) -> Processed | None | bool:
        """For a real request at (``uri``, ``prefix``, ``suffix``) that the cache missed: the
        prefetch's result when it is computing exactly there (awaited), else False after
        cancelling whatever prefetch runs. None: the prefetch there found nothing to show."""
        if any(t.matches(uri, prefix, suffix) for t in self._nothing):
            self.adopted += 1
            return None
        running = self._running
        if running is None:
            return False
        if not running.target.matches(uri, prefix, suffix):
            self.cancel()
            return False
        self.adopted += 1
        try:
            return await asyncio.wrap_future(running.future)
        except asyncio.CancelledError:
            running.cancel.cancel()
            raise
