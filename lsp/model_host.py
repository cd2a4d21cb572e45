"""Which engine serves, and how it got loaded: the requested model, or the CPU default instead.

Loading runs as a worker job (seconds, never on the event loop). A model that cannot be loaded
(missing or corrupt file, TPU device unavailable, TPU backend not built) leaves an error that the
server shows as status and ``window/logMessage``; with ``fallbackToCpu`` the CPU default model is
loaded in its place and serves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..inference.engine import Engine
from ..inference.errors import InferenceError, ModelLoadError
from ..inference.loader import load_engine
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
    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self.loading = False
        self.description = ""
        self.error = ""
        self.loaded_key: tuple | None = None  # the Settings.model_key of the last load, done or failed

    @property
    def current(self) -> Engine | None:
        """The engine that serves, or None (for status reports; requests use ``engine``)."""
        with self._lock:
            return self._engine

    def serves(self, settings: Settings) -> bool:
        """Whether the last finished load was for what ``settings`` ask (nothing to reload)."""
        with self._lock:
            return not self.loading and self.loaded_key == settings.model_key

    @property
    def engine(self) -> Engine:
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
            self.loaded_key = settings.model_key
        return LoadReport(loaded, error, fell_back)

    def _load(self, model: str, backend: str, settings: Settings) -> Engine:
        """Every failure of a load as ModelLoadError (a backend that is not built, a library that
        raises its own error on a corrupt file)."""
        try:
            return load_engine(model, backend, threads=settings.threads or None, weights=settings.weights,
                               slots=settings.cache_slots)
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
