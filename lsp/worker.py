"""The one thread that runs the model, so that the asyncio event loop never waits on inference.

Jobs wait in a FIFO queue; a job whose ``CancelToken`` is set before its turn is skipped without
touching the engine. The job function receives its token and must pass it on to
``Engine.generate``, so that a cancellation that arrives mid-generation stops the model within a
token. ``run`` awaits a job from the event loop. ``on_state`` hears "busy" before a job runs and
"idle" when the queue has drained (from the worker thread: the server marshals it onto the loop).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from ..inference.engine import CancelToken

T = TypeVar("T")
log = logging.getLogger(__name__)


class _Job:
    def __init__(self, fn: Callable[[CancelToken], Any], cancel: CancelToken, label: str):
        self.fn = fn
        self.cancel = cancel
        self.label = label
        self.future: Future[Any] = Future()


class InferenceWorker:
    def __init__(self, on_state: Callable[[str, str], None] | None = None):
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._on_state = on_state or (lambda state, label: None)
        self.skipped = 0  # jobs cancelled before their turn
        self._thread = threading.Thread(target=self._run, name="wizardcoder-inference", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[CancelToken], T], cancel: CancelToken | None = None,
               label: str = "") -> Future[T]:
        """Queue ``fn(cancel)``; the future resolves with its result, or is cancelled when the
        token was set before the job's turn."""
        job = _Job(fn, cancel or CancelToken(), label)
        self._queue.put(job)
        return job.future

    async def run(self, fn: Callable[[CancelToken], T], cancel: CancelToken, label: str = "") -> T | None:
        """``fn(cancel)`` in the worker thread, awaited; None when it was skipped because
        ``cancel`` was set before its turn (a superseded request). Cancelling the awaiting task
        raises as usual."""
        future = self.submit(fn, cancel, label)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if future.cancelled() and task is not None and not task.cancelling():
                return None
            raise

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if job.cancel.cancelled or not job.future.set_running_or_notify_cancel():
                self.skipped += 1
                job.future.cancel()
                log.debug("skipped cancelled job %s", job.label)
                continue
            self._state("busy", job.label)
            try:
                job.future.set_result(job.fn(job.cancel))
            except BaseException as exc:  # delivered to the awaiting handler, which converts it
                job.future.set_exception(exc)
            if self._queue.empty():
                self._state("idle", job.label)

    def _state(self, state: str, label: str) -> None:
        try:
            self._on_state(state, label)
        except Exception:  # a status that cannot be sent must not stop the worker
            log.exception("status callback failed")
