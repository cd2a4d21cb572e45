"""What the sessions of one server process share: the loaded model, the one worker and its fair
queue, the server's own settings for the model, who may connect (``tokens.py``), and the counts
that ``wizardcoder/serverStatus`` reports.

Over stdio there is one session and its own ``Team``. Over TCP every connection is a session of
its own (documents, settings, request state, completion cache: a ``WizardServer``), and all of
them share one ``Team``. The model is the server's: a client's ``model``, ``backend``,
``fallbackToCpu``, ``weights``, ``threads`` and ``cacheSlots`` are the ones the server was started
with (a client asking for others is told so), because reloading the shared model for one client
would stall every other.

``ClientJobs`` is a session's door to the worker: it names the client on each job (the fair queue
turns by client name, so that several connections with one token share one turn), and writes the
one log line per request (client, kind, outcome, wait and run time; never document text).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..inference.engine import CancelToken, Engine
from ..inference.remote import RemoteAccess
from .model_host import ModelHost
from .settings import Settings
from .tokens import TokenTable
from .worker import MAX_PENDING, Continue, InferenceWorker, OnState

T = TypeVar("T")
log = logging.getLogger(__name__)
LATENCIES_KEPT = 2000  # per kind: the p50/p95 of serverStatus are over the latest ones
DEFAULT_CONNECTIONS_PER_CLIENT = 4


class Refused(Exception):
    """A connection that may not start a session (no valid token, too many connections)."""


@dataclass
class _Counts:
    outcomes: dict[str, int] = field(default_factory=dict)  # served | empty | superseded | cancelled | error
    latencies_ms: dict[str, deque[float]] = field(default_factory=dict)  # kind -> served requests' wall time

    def add(self, kind: str, outcome: str, total_ms: float) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if outcome in ("served", "empty"):
            self.latencies_ms.setdefault(kind, deque(maxlen=LATENCIES_KEPT)).append(total_ms)


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(round(fraction * len(ordered) + 0.5)))
    return ordered[min(rank, len(ordered)) - 1]


def process_memory() -> dict[str, int]:
    """This process's resident memory now and at its peak, in KiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    now = peak
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    now = int(line.split()[1])
    except OSError:
        pass
    return {"rssKib": now, "peakRssKib": peak}


class Team:
    def __init__(self, settings: Settings, tokens: TokenTable | None = None,
                 connections_per_client: int = DEFAULT_CONNECTIONS_PER_CLIENT, shared: bool = False,
                 pending_per_client: int = MAX_PENDING, access: RemoteAccess = RemoteAccess()):
        """``shared``: several sessions (TCP); the model settings are then the server's.
        ``pending_per_client``: requests one client (token) may have waiting in the queue.
        ``access``: the remote backend's credentials, from the command line only."""
        self.settings = settings
        self.tokens = tokens
        self.connections_per_client = connections_per_client
        self.shared = shared
        self.host = ModelHost(access)
        self.worker = InferenceWorker(max_pending=pending_per_client)
        self.started = time.time()
        self._lock = threading.Lock()
        self._sessions: dict[int, str] = {}  # id(session) -> client name
        self._anonymous = 0
        self._counts: dict[str, _Counts] = {}  # client name -> its requests

    # Who is connected --------------------------------------------------------------------------
    def admit(self, session: object, token: object) -> str:
        """The client name of a session that presents ``token``; ``Refused`` when it may not."""
        with self._lock:
            if self.tokens is None:
                self._anonymous += 1
                name = f"local-{self._anonymous}" if self.shared else "local"
            else:
                found = self.tokens.name_of(token)
                if found is None:
                    raise Refused("wizardcoder: this server needs a valid token in initializationOptions.token")
                name = found
                live = sum(1 for other in self._sessions.values() if other == name)
                if live >= self.connections_per_client:
                    raise Refused(f"wizardcoder: client {name!r} already has {live} connections, the most this "
                                  "server allows one client")
            self._sessions[id(session)] = name
            self._counts.setdefault(name, _Counts())
            return name

    def leave(self, session: object) -> None:
        with self._lock:
            self._sessions.pop(id(session), None)

    # What happened -----------------------------------------------------------------------------
    def record(self, client: str, kind: str, outcome: str, total_ms: float) -> None:
        with self._lock:
            self._counts.setdefault(client, _Counts()).add(kind, outcome, total_ms)

    def status(self) -> dict[str, Any]:
        """The ``wizardcoder/serverStatus`` answer: no document text, no tokens."""
        with self._lock:
            connected: dict[str, int] = {}
            for name in self._sessions.values():
                connected[name] = connected.get(name, 0) + 1
            clients = []
            all_latencies: list[float] = []
            served = 0
            for name, counts in self._counts.items():
                latencies = list(counts.latencies_ms.get("completion", ()))
                all_latencies += latencies
                served += counts.outcomes.get("served", 0) + counts.outcomes.get("empty", 0)
                clients.append({"name": name, "connections": connected.get(name, 0), "requests": dict(counts.outcomes),
                                "completionP50Ms": _round(percentile(latencies, 0.5)),
                                "completionP95Ms": _round(percentile(latencies, 0.95))})
        engine, running = self.host.current, self.worker.running
        if not isinstance(engine, Engine):  # a remote engine keeps its cache on the inference server
            engine = None
        return {
            "model": self.host.description, "modelError": self.host.error, "loading": self.host.loading,
            "uptimeS": round(time.time() - self.started, 1),
            "clients": clients, "connections": sum(connected.values()),
            "queue": self.worker.depth(), "running": running.label if running is not None else None,
            "skippedJobs": self.worker.skipped,
            "slots": engine.slot_use() if engine is not None else [],
            "promptTokens": engine.prompt_tokens if engine is not None else 0,
            "reusedTokens": engine.reused_tokens if engine is not None else 0,  # served from a KV-cache slot
            "requestsServed": served,
            "completionP50Ms": _round(percentile(all_latencies, 0.5)),
            "completionP95Ms": _round(percentile(all_latencies, 0.95)),
            "memory": process_memory(), "pid": os.getpid(),
        }

    def close(self) -> None:
        self.worker.close()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class ClientJobs:
    """A session's worker: ``run`` as ``InferenceWorker.run``, with the client named, the state
    reported to this session only, and one log line per request."""

    def __init__(self, team: Team, on_state: OnState):
        self._team = team
        self._on_state = on_state
        self.client = ""  # the name ``Team.admit`` gave (empty until the session is admitted)

    @property
    def skipped(self) -> int:
        return self._team.worker.skipped

    def submit(self, fn: Callable[[CancelToken], T], cancel: CancelToken, label: str = "") -> Future[T]:
        """Queue work nobody waits on (the prefetch of the next suggestion), behind every request."""
        return self._team.worker.submit(fn, cancel, label, client=self.client, kind="prefetch",
                                        on_state=self._on_state)

    async def run(self, fn: Callable[[CancelToken], T], cancel: CancelToken, label: str = "",
                  kind: str = "completion", request_id: object = None) -> T | None:
        started = time.monotonic()
        ran: list[float] = []  # when its first slice began (worker thread)
        outcome = "error"

        def timed(step: Callable[[CancelToken], Any]) -> Callable[[CancelToken], Any]:
            def run_step(token: CancelToken) -> Any:
                ran.append(time.monotonic())
                result = step(token)
                return Continue(timed(result.next_fn)) if isinstance(result, Continue) else result
            return run_step

        try:
            result = await self._team.worker.run(timed(fn), cancel, label, client=self.client, kind=kind,
                                                 on_state=self._on_state)
            outcome = ("superseded" if cancel.cancelled else "empty") if result is None else "served"
            return result
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            total_ms = (time.monotonic() - started) * 1e3
            if kind != "load":
                self._team.record(self.client, kind, outcome, total_ms)
            waited_ms = ((ran[0] if ran else time.monotonic()) - started) * 1e3
            log.info("client %s request %s %s: %s in %.0f ms (queued %.0f ms, %d slice%s)", self.client,
                     request_id if request_id is not None else "-", kind, outcome, total_ms, waited_ms, len(ran),
                     "" if len(ran) == 1 else "s")
