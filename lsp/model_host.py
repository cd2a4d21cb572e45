"""Which engine serves, and how it got loaded: the requested model, or the CPU default instead.

Loading runs as a worker job (seconds, never on the event loop). A model that cannot be loaded
(missing or corrupt file, TPU device unavailable, TPU backend not built) leaves an error that the
server shows as status and ``window/logMessage``; with ``fallbackToCpu`` the CPU default model is
loaded in its place and serves. With ``backend: remote`` the load asks the inference server what it
serves (a server that does not answer is a failed load, and falls back the same way); the API key
and ``--allow-http`` come from ``RemoteAccess``, which only the server's command line fills.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..inference.engine import TextEngine
from ..inference.errors import InferenceError, ModelLoadError
from ..inference.loader import load_engine
from ..inference.remote import RemoteAccess, RemoteConfig
from .errors import NotReady
from .settings import Settings

log = logging.getLogger(__name__)


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
        self._lock = threading.Lock()
        self.loading = False
        self.description = ""
        self.error = ""

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
        when allowed. The previous engine is closed first: the memory is needed for the next."""
        with self._lock:
            old, self._engine = self._engine, None
            self.loading, self.error = True, ""
        if old is not None:
            old.close()
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
        return LoadReport(loaded, error, fell_back)

    def _load(self, model: str, backend: str, settings: Settings) -> TextEngine:
        """Every failure of a load as ModelLoadError (a backend that is not built, a library that
        raises its own error on a corrupt file, an inference server that does not answer)."""
        remote = RemoteConfig(settings.endpoint, settings.remote_protocol, settings.remote_model,
                              settings.remote_timeout_ms / 1000, self.access)
        try:
            return load_engine(model, backend, threads=settings.threads or None, weights=settings.weights,
                               remote=remote if backend == "remote" else None)
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
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()
