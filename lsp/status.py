"""What the server tells about itself: the ``wizardcoder/status`` notification (loading, busy,
idle, error) that editor clients show, errors also as ``window/logMessage``, and the counters of
``wizardcoder/stats`` (engine calls, cache hits, the last generations) for tests and bug reports.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from ..inference.engine import Generation

if TYPE_CHECKING:
    from .server import WizardServer

STATUS = "wizardcoder/status"
STATS = "wizardcoder/stats"
SERVER_STATUS = "wizardcoder/serverStatus"  # the whole server's, for the person who runs it (team.py)
STATES = ("loading", "idle", "busy", "error")


class Status:
    """Sends status on change; call from the event loop thread only."""

    def __init__(self, server: WizardServer):
        self._server = server
        self.state = ""
        self.message = ""
        self.latency_ms: float | None = None

    def set(self, state: str, message: str, latency_ms: float | None = None) -> None:
        """Send the state (with the last suggestion's latency, once there is one) when it changed."""
        assert state in STATES, state
        latency_ms = round(latency_ms) if latency_ms is not None else self.latency_ms
        if (state, message, latency_ms) == (self.state, self.message, self.latency_ms):
            return
        new_error = state == "error" and message != self.message
        self.state, self.message, self.latency_ms = state, message, latency_ms
        params: dict[str, Any] = {"state": state, "message": message}
        if latency_ms is not None:
            params["lastLatencyMs"] = latency_ms
        self._server.protocol.notify(STATUS, params)
        if new_error:
            self.log(types.MessageType.Error, message)

    def log(self, level: types.MessageType, message: str) -> None:
        self._server.window_log_message(types.LogMessageParams(type=level, message=f"wizardcoder: {message}"))


class Stats:
    """Counters written by the worker thread and read on the loop (a lock keeps reads whole)."""

    def __init__(self, keep: int = 32):
        self._lock = threading.Lock()
        self.engine_calls = 0  # model runs for requests (completions, explanations)
        self.prefetch_calls = 0  # and for the prefetch (lsp/prefetch.py), counted apart
        self.generations: deque[dict[str, Any]] = deque(maxlen=keep)
        self.prefetches: deque[dict[str, Any]] = deque(maxlen=keep)  # apart: they interleave with requests

    def record(self, request_id: object, kind: str, generation: Generation, stop_reason: str, mode: str) -> None:
        with self._lock:
            if kind == "prefetch":
                self.prefetch_calls += 1
            else:
                self.engine_calls += 1
            (self.prefetches if kind == "prefetch" else self.generations).append({
                "requestId": request_id, "kind": kind, "mode": mode, "tokens": len(generation.token_ids),
                "stopReason": stop_reason, "promptTokens": generation.prompt_tokens,
                "reusedTokens": generation.reused_tokens, "prefillMs": round(generation.prefill_ms, 1),
                "decodeMs": round(generation.decode_ms, 1), "draftedTokens": generation.drafted_tokens,
                "acceptedDraftTokens": generation.accepted_draft_tokens})

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        with self._lock:
            return {"engineCalls": self.engine_calls, "prefetchCalls": self.prefetch_calls,
                    "generations": list(self.generations), "prefetches": list(self.prefetches), **extra}
