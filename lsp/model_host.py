"""Which engine serves, and how it got loaded: the requested model, or the CPU default instead.

Loading runs as a worker job (seconds, never on the event loop). A model that cannot be loaded
(missing or corrupt file, TPU device unavailable, TPU backend not built) leaves an error that the
server shows as status and ``window/logMessage``; with ``fallbackToCpu`` the CPU default model is
loaded in its place and serves. With ``backend: remote`` the load asks the inference server what it
serves (a server that does not answer is a failed load, and falls back the same way); the API key
and ``--allow-http`` come from ``RemoteAccess``, which only the server's command line fills.

Requests run through ``run``: a backend that fails while serving (an inference server that
refuses, stalls or answers an error) leaves ``failure``, which the status shows as an error until
a request runs well. With ``fallbackToCpu`` a request the remote server failed is served by the
CPU default instead (loaded at the first such failure, kept until the next load), and for
``REMOTE_RETRY_S`` the requests go straight to it before the server is tried again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..inference.engine import TextEngine
from ..inference.errors import BackendError, InferenceError, ModelLoadError, RemoteError
from ..inference.loader import load_engine
from ..inference.remote import RemoteAccess, RemoteConfig
from .errors import NotReady
from .settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
REMOTE_RETRY_S = 30.0  # after a remote failure served by the fallback, how long before the server is tried again


@dataclass(frozen=True)
class LoadReport:
    loaded: str  # what now serves ('' when nothing)
    error: str  # why the requested model could not be loaded ('' when it could)
    fell_back: bool  # the CPU default serves instead of the requested model


def describe(model: str, backend: str) -> str:
    return f"{model} on {backend}"


class ModelHost:
    def __init__(self, access: RemoteAccess = RemoteAccess()) -> None:
        self.access = access
        self._engine: TextEngine | None = None
        self._fallback: TextEngine | None = None  # the CPU default behind a remote engine, once it was needed
        self._remote_retry_at = 0.0  # time.monotonic() before which requests skip the remote server
        self._lock = threading.Lock()
        self.loading = False
        self.description = ""
        self.error = ""
        self.failure = ""  # why the last request's backend failed ('' when it ran well)
        self.loaded_key: tuple | None = None  # the Settings.model_key of the last load, done or failed

    @property
    def current(self) -> TextEngine | None:
        """The engine that serves, or None (for status reports; requests use ``engine``)."""
        with self._lock:
            return self._engine

    def serves(self, settings: Settings) -> bool:
        """Whether the last finished load was for what ``settings`` ask (nothing to reload)."""
        with self._lock:
            return not self.loading and self.loaded_key == settings.model_key

    @property
    def engine(self) -> TextEngine:
        """The engine that serves; NotReady (with the reason) when there is none."""
        with self._lock:
            if self._engine is not None:
                return self._engine
            if self.loading:
                raise NotReady("the model is still loading")
            raise NotReady(f"no model is loaded: {self.error or 'not started'}")

    def load(self, settings: Settings, on_message: Callable[[str], None]) -> LoadReport:
        """Load what ``settings`` ask for (in the worker thread); falls back to the CPU default
        when allowed. The previous engine is closed first: the memory is needed for the next. A
        load for what was loaded last does nothing (a team server's next client asks again)."""
        with self._lock:
            if not self.loading and self.loaded_key == settings.model_key:
                return LoadReport(self.description, self.error, False)
            old, self._engine = self._engine, None
            fallback, self._fallback = self._fallback, None
            self.loading, self.error, self.failure, self._remote_retry_at = True, "", "", 0.0
        for engine_ in (old, fallback):
            if engine_ is not None:
                engine_.close()
        requested = describe(settings.model, settings.backend)
        engine, error, fell_back = None, "", False
        try:
            on_message(f"loading {requested}")
            engine = self._load(settings.model, settings.backend, settings)
            loaded = describe(engine.model_name or settings.model, settings.backend)
        except ModelLoadError as exc:
            error = f"cannot load {requested}: {exc}"
            log.error(error)
            fallback = describe("default", "cpu")
            if settings.fallback_to_cpu and requested != fallback:
                on_message(f"{error}; loading {fallback} instead")
                fell_back = True
                try:
                    engine = self._load("default", "cpu", settings)
                except ModelLoadError as second:
                    error += f"; the CPU default failed too: {second}"
            loaded = describe(engine.model_name or "default", "cpu") if engine is not None else ""
        with self._lock:
            self._engine, self.loading = engine, False
            self.description, self.error = loaded, error
            self.loaded_key = settings.model_key
        return LoadReport(loaded, error, fell_back)

    def run(self, settings: Settings, work: Callable[[TextEngine], T]) -> T:
        """(Worker thread) ``work`` on the engine that serves; a backend failure is kept in
        ``failure`` and raised, or, for a remote one with ``fallbackToCpu``, ``work`` runs again
        on the CPU default (the prompt is rebuilt with that model's tokenizer)."""
        engine = self.engine
        fallback = self._fallback if time.monotonic() < self._remote_retry_at else None
        if fallback is not None:
            return work(fallback)
        try:
            result = work(engine)
        except BackendError as exc:
            self.failure = str(exc)
            if not (isinstance(exc, RemoteError) and settings.fallback_to_cpu):
                raise
            fallback = self._fallback_engine(settings)
            self.failure = f"{exc}; served by the CPU default until it answers again"
            log.warning("remote failed: %s; serving from the CPU default for %.0f s", exc, REMOTE_RETRY_S)
            self._remote_retry_at = time.monotonic() + REMOTE_RETRY_S
            return work(fallback)
        self.failure = ""
        return result

    def _fallback_engine(self, settings: Settings) -> TextEngine:
        with self._lock:
            if self._fallback is not None:
                return self._fallback
        engine = self._load("default", "cpu", settings)
        with self._lock:
            self._fallback = engine
        return engine

    def _load(self, model: str, backend: str, settings: Settings) -> TextEngine:
        """Every failure of a load as ModelLoadError (a backend that is not built, a library that
        raises its own error on a corrupt file, an inference server that does not answer)."""
        remote = RemoteConfig(settings.endpoint, settings.remote_protocol, settings.remote_model,
                              settings.remote_timeout_ms / 1000, self.access)
        try:
            return load_engine(model, backend, threads=settings.threads or None, weights=settings.weights,
                               slots=settings.cache_slots, remote=remote if backend == "remote" else None)
        except ModelLoadError:
            raise
        except InferenceError as exc:
            raise ModelLoadError(str(exc)) from exc
        except ImportError as exc:
            raise ModelLoadError(f"the {backend} backend is not available in this build ({exc})") from exc
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            engines, self._engine, self._fallback = (self._engine, self._fallback), None, None
        for engine in engines:
            if engine is not None:
                engine.close()
