"""The one thread that runs the model, so that the asyncio event loop never waits on inference,
and the fair queue in front of it that every client of a team server shares.

Which job runs next:
1. by kind: loading a model, then inline completions, then explanations (a keystroke never waits
   behind an explanation for more than one slice of it: see ``Continue``), then the prefetch of
   the next suggestion (work nobody has asked for yet: it never delays a request);
2. among the clients with a job of that kind, round-robin: the client served least recently goes
   first, so one busy client cannot starve the others;
3. within one client, the newest job first (the one for what the user is looking at now; an older
   request of the same document has been superseded through its token already).

A job whose ``CancelToken`` is set before its turn is skipped without touching the engine; a client
with more than ``max_pending`` jobs waiting loses its oldest one the same way. The job function
receives its token and must pass it on to ``Engine.generate``, so that a cancellation that arrives
mid-generation stops the model within a token. A job may return ``Continue(next_fn)``: it has done
one slice of its work and waits for its next turn, behind every job of a higher kind. ``run``
awaits a job from the event loop. A job's ``on_state`` hears "busy" before it runs and "idle" when
its client has nothing left queued (from the worker thread: the server marshals it onto the loop).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from ..inference.engine import CancelToken

T = TypeVar("T")
log = logging.getLogger(__name__)
KINDS = ("load", "completion", "explain", "prefetch")  # in the order they are served
MAX_PENDING = 16  # jobs one client may have waiting; beyond, its oldest is skipped
OnState = Callable[[str, str], None]


@dataclass
class Continue:
    """What a sliced job returns after one slice: the function that does the rest."""

    next_fn: Callable[[CancelToken], Any]


class _Job:
    def __init__(self, fn: Callable[[CancelToken], Any], cancel: CancelToken, label: str, client: str, kind: str,
                 on_state: OnState | None):
        self.fn = fn
        self.cancel = cancel
        self.label = label
        self.client = client
        self.kind = kind
        self.on_state = on_state
        self.future: Future[Any] = Future()
        self.submitted = time.monotonic()
        self.started: float | None = None  # when its first slice began
        self.slices = 0


class InferenceWorker:
    def __init__(self, on_state: OnState | None = None, max_pending: int = MAX_PENDING):
        self._on_state = on_state  # for jobs submitted without one of their own
        self._max_pending = max_pending
        self._cond = threading.Condition()
        self._pending: dict[str, dict[str, list[_Job]]] = {kind: {} for kind in KINDS}  # kind -> client -> jobs
        self._rotation: list[str] = []  # clients, least recently served first
        self._newcomers: set[str] = set()  # clients at the front of the rotation, never served yet
        self._closed = False
        self.skipped = 0  # jobs cancelled before their turn
        self.running: _Job | None = None
        self._thread = threading.Thread(target=self._run, name="wizardcoder-inference", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[CancelToken], T], cancel: CancelToken | None = None, label: str = "", *,
               client: str = "", kind: str = "completion", on_state: OnState | None = None) -> Future[T]:
        """Queue ``fn(cancel)``; the future resolves with its result, or is cancelled when the
        token was set before the job's turn."""
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        job = _Job(fn, cancel or CancelToken(), label, client, kind, on_state or self._on_state)
        with self._cond:
            self._enqueue(job)
            self._cond.notify()
        return job.future

    async def run(self, fn: Callable[[CancelToken], T], cancel: CancelToken, label: str = "", **how: Any) -> T | None:
        """``fn(cancel)`` in the worker thread, awaited; None when it was skipped because
        ``cancel`` was set before its turn (a superseded request). Cancelling the awaiting task
        raises as usual. ``how``: ``client``, ``kind``, ``on_state`` as for ``submit``."""
        future = self.submit(fn, cancel, label, **how)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if future.cancelled() and task is not None and not task.cancelling():
                return None
            raise

    def depth(self) -> dict[str, int]:
        """Jobs waiting, by kind (the running one not counted)."""
        with self._cond:
            return {kind: sum(len(jobs) for jobs in by_client.values()) for kind, by_client in self._pending.items()}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    # The worker thread -------------------------------------------------------------------------
    def _enqueue(self, job: _Job) -> None:
        jobs = self._pending[job.kind].setdefault(job.client, [])
        jobs.append(job)
        if job.client not in self._rotation:  # never served: before every served client, after earlier newcomers
            self._rotation.insert(len(self._newcomers), job.client)
            self._newcomers.add(job.client)
        waiting = [j for by_kind in self._pending.values() for j in by_kind.get(job.client, []) if not j.cancel.cancelled]
        if len(waiting) > self._max_pending:
            oldest = min((j for j in waiting if j.kind != "load"), key=lambda j: j.submitted, default=None)
            if oldest is not None:
                log.info("client %s has %d jobs waiting: skipped its oldest (%s)", job.client, len(waiting), oldest.label)
                oldest.cancel.cancel()

    def _next(self) -> _Job | None:
        """The next job by the rules above; None once closed. Call holding the condition."""
        while True:
            if self._closed:
                return None
            for kind in KINDS:
                by_client = self._pending[kind]
                for client in self._rotation:
                    jobs = by_client.get(client)
                    if jobs:
                        job = jobs.pop()  # the newest
                        if not jobs:
                            del by_client[client]
                        self._rotation.remove(client)
                        self._rotation.append(client)
                        self._newcomers.discard(client)
                        return job
            self._cond.wait()

    def _has_pending(self, client: str) -> bool:
        return any(by_client.get(client) for by_client in self._pending.values())

    def _run(self) -> None:
        while True:
            with self._cond:
                job = self._next()
            if job is None:
                return
            if job.cancel.cancelled or (job.slices == 0 and not job.future.set_running_or_notify_cancel()):
                self.skipped += job.slices == 0
                if job.slices == 0:
                    job.future.cancel()
                else:
                    job.future.set_result(None)  # stopped between slices: nothing more to do
                log.debug("skipped cancelled job %s", job.label)
                self._idle_if_done(job)
                continue
            if job.slices == 0:
                job.started = time.monotonic()
                self._state(job, "busy")
            job.slices += 1
            self.running = job
            try:
                result = job.fn(job.cancel)
            except BaseException as exc:  # delivered to the awaiting handler, which converts it
                job.future.set_exception(exc)
            else:
                if isinstance(result, Continue):
                    job.fn = result.next_fn
                    with self._cond:
                        self._enqueue(job)
                    continue
                job.future.set_result(result)
            finally:
                self.running = None
            self._idle_if_done(job)

    def _idle_if_done(self, job: _Job) -> None:
        with self._cond:
            done = not self._has_pending(job.client)
        if done and job.slices:
            self._state(job, "idle")

    def _state(self, job: _Job, state: str) -> None:
        if job.on_state is None:
            return
        try:
            job.on_state(state, job.label)
        except Exception:  # a status that cannot be sent must not stop the worker
            log.exception("status callback failed")
