"""Per-document request state: when the document last changed, and its live completion request.

One completion request per document runs at a time: a newer request supersedes the live one
(its cancel token is set, so the engine stops within a token and the stale request answers with
nothing), and so does a change or the close of the document. The debounce waits from the last
change. Everything here runs on the event loop thread; only ``CancelToken.cancel`` crosses to the
worker, and it is thread-safe.
"""

from __future__ import annotations

import time

from ..inference.engine import CancelToken


class RequestState:
    """One document's: its last change (``time.monotonic()``) and the live request's token."""

    def __init__(self) -> None:
        self.last_change = 0.0
        self.after_deletion = False  # the last edit removed text and inserted none (trigger.py)
        self._live: CancelToken | None = None

    def touch(self) -> None:
        self.last_change = time.monotonic()

    def supersede(self) -> CancelToken:
        """A token for a new request; the previous live one is cancelled."""
        self.cancel()
        self._live = CancelToken()
        return self._live

    def release(self, token: CancelToken) -> None:
        """``token``'s request has ended (the token stays as it is)."""
        if self._live is token:
            self._live = None

    def cancel(self) -> None:
        """The live request is stale (the document changed or closed, a newer request came)."""
        if self._live is not None:
            self._live.cancel()
            self._live = None


class DocumentRequests:
    """The ``RequestState`` of each open document, by URI."""

    def __init__(self) -> None:
        self._states: dict[str, RequestState] = {}

    def of(self, uri: str) -> RequestState:
        state = self._states.get(uri)
        if state is None:
            state = self._states[uri] = RequestState()
        return state

    def opened(self, uri: str) -> None:
        self.of(uri).touch()

    def changed(self, uri: str, deletion: bool = False) -> None:
        """The document changed (``deletion``: the edit only removed text): its in-flight
        completion is stale."""
        state = self.of(uri)
        state.touch()
        state.after_deletion = deletion
        state.cancel()

    def closed(self, uri: str) -> None:
        state = self._states.pop(uri, None)
        if state is not None:
            state.cancel()

    def cancel_all(self) -> None:
        for state in self._states.values():
            state.cancel()
