"""Local acceptance statistics: what the server suggested, what the editor showed, what the user
took, and how long each took to come. Nothing leaves the machine.

Each suggestion the server returns gets an id (``Suggestion.id``); a continuation of it (the user
typing into it, a partial accept, served from the cache) keeps the id, so one suggestion counts
once however often it is re-sent. The editor tells what happened to it (docs/protocol.md): the
inline item's ``command`` (``wizardcoder.accepted``) runs when the user accepts the whole rest,
and the notifications ``wizardcoder/shown``, ``wizardcoder/partiallyAccepted`` and
``wizardcoder/dismissed`` carry the rest.

One file per server session, ``<cache>/stats/session-<start>-<pid>.json``, rewritten all or
nothing (``inference/atomic.py``) at most once a second while events come, and at shutdown, so
several servers on one cache never write the same file and ``wizardcoder-tpu stats`` reads whole
files only. Only numbers are kept: ids, times, counts, the language id and the model's name.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..inference.atomic import write_text
from ..inference.paths import cache_dir

log = logging.getLogger(__name__)
ACCEPTED = "wizardcoder.accepted"  # the inline item's command
SHOWN = "wizardcoder/shown"
PARTIALLY_ACCEPTED = "wizardcoder/partiallyAccepted"
DISMISSED = "wizardcoder/dismissed"
FORMAT = 1
KEEP = 20_000  # suggestions per session file at most (the oldest are dropped)
FLUSH_AFTER_S = 1.0


def stats_dir() -> Path:
    return cache_dir() / "stats"


@dataclass
class Suggestion:
    """One suggestion and what became of it (the record in the session file)."""

    id: str
    time: float  # time.time() when it was first served
    language: str
    model: str
    source: str  # model | cache | prefetch: how the first answer for it was produced
    latency_ms: float  # from the request's arrival to the answer, for the first answer
    chars: int  # the length of the suggestion when first served
    shown: bool = False
    accepted: bool = False  # the user took all of it (what was left of it)
    accepted_chars: int = 0  # characters the user took, whole and partial accepts together
    partial_accepts: int = 0
    dismissed: bool = False


class AcceptanceLog:
    """The session's suggestions, kept in memory and written to ``path`` (None: not written).

    Call from the event loop thread. ``schedule(delay, fn)`` defers the write (the loop's
    ``call_later``); without it every event writes at once (tests)."""

    def __init__(self, path: Path | None, schedule: Callable[[float, Callable[[], None]], Any] | None = None):
        self.path = path
        self._schedule = schedule
        self._started = time.time()
        self._ids = itertools.count(1)
        self._prefix = f"{int(self._started)}-{os.getpid()}-"
        self._suggestions: OrderedDict[str, Suggestion] = OrderedDict()
        self._pending = False
        self.last_latency_ms: float | None = None

    @classmethod
    def for_session(cls, schedule: Callable[[float, Callable[[], None]], Any] | None = None) -> AcceptanceLog:
        started = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        return cls(stats_dir() / f"session-{started}-{os.getpid()}.json", schedule)

    def new_id(self) -> str:
        return self._prefix + str(next(self._ids))

    def served(self, suggestion_id: str, *, language: str, model: str, source: str, latency_ms: float,
               chars: int) -> None:
        """The server answered a request with (a rest of) suggestion ``suggestion_id``."""
        self.last_latency_ms = latency_ms
        if suggestion_id in self._suggestions:
            return
        self._suggestions[suggestion_id] = Suggestion(suggestion_id, time.time(), language, model, source,
                                                      round(latency_ms, 1), chars)
        while len(self._suggestions) > KEEP:
            self._suggestions.popitem(last=False)
        self._changed()

    def shown(self, suggestion_id: str) -> bool:
        return self._update(suggestion_id, shown=True)

    def accepted(self, suggestion_id: str, chars: int) -> bool:
        """The user took the whole rest (``chars`` characters) of the suggestion."""
        entry = self._suggestions.get(suggestion_id)
        if entry is None:
            return False
        entry.shown = entry.accepted = True
        entry.accepted_chars += max(0, chars)
        self._changed()
        return True

    def partially_accepted(self, suggestion_id: str, chars: int) -> bool:
        entry = self._suggestions.get(suggestion_id)
        if entry is None:
            return False
        entry.shown = True
        entry.partial_accepts += 1
        entry.accepted_chars += max(0, chars)
        self._changed()
        return True

    def dismissed(self, suggestion_id: str) -> bool:
        return self._update(suggestion_id, dismissed=True)

    def records(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self._suggestions.values()]

    def flush(self) -> None:
        """Write the session file now (nothing when there is nothing to write)."""
        self._pending = False
        if self.path is None or not self._suggestions:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.path, json.dumps({"format": FORMAT, "started": self._started, "pid": os.getpid(),
                                              "suggestions": self.records()}))
        except OSError as exc:  # a full disk must not stop completions
            log.warning("cannot write the acceptance statistics to %s: %s", self.path, exc)

    def _update(self, suggestion_id: str, **changes: bool) -> bool:
        entry = self._suggestions.get(suggestion_id)
        if entry is None:
            return False
        for name, value in changes.items():
            setattr(entry, name, value)
        self._changed()
        return True

    def _changed(self) -> None:
        if self._schedule is None:
            self.flush()
        elif not self._pending:
            self._pending = True
            self._schedule(FLUSH_AFTER_S, self.flush)
