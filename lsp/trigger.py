"""When a suggestion is asked for, and when the model may run for it: the trigger rules.

Two kinds of request reach the server. An *invoked* one (LSP ``InlineCompletionTriggerKind.Invoked``:
the user pressed the suggest key or ran the command) always runs. An *automatic* one (the editor
asks as the user types) runs the model only when nothing says no:

- ``trigger`` is ``manual``: automatic requests are served from the cache only (typing on into a
  suggestion the user asked for keeps it), never by the model;
- the last edit of the document deleted text (a backspace: the user is correcting, not writing);
- the cursor is in the middle of a word (a word character on both sides);
- more than ``maxLineSuffix`` characters follow the cursor on its line (llama.vim's rule).

Apart from both: a file whose language is in ``disabledLanguages`` or whose name matches
``disabledFiles`` (secrets and key files by default) is never completed, and its text is never
used as context for other files. These rules need the document, so they live in the server and
hold for every client; the editor only says which kind a request is.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlparse

from .settings import Settings


@dataclass(frozen=True)
class Request:
    """What the rules look at of one request."""

    automatic: bool
    prefix: str  # the document before the cursor
    suffix: str  # and after it
    after_deletion: bool  # the document's last edit removed text and inserted none


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def model_refusal(settings: Settings, request: Request) -> str | None:
    """Why the model must not run for ``request`` (None: it may). Invoked requests always may."""
    if not request.automatic:
        return None
    if settings.trigger == "manual":
        return "trigger is manual (ask with the suggest key or command)"
    if request.after_deletion:
        return "the last edit deleted text"
    if request.prefix and request.suffix and _is_word(request.prefix[-1]) and _is_word(request.suffix[0]):
        return "the cursor is in the middle of a word"
    line_suffix = request.suffix.split("\n", 1)[0].rstrip("\r")
    if len(line_suffix) > settings.max_line_suffix:
        return f"{len(line_suffix)} characters follow the cursor on its line (more than maxLineSuffix)"
    return None


def shows_cached(settings: Settings, request: Request) -> bool:
    """Whether a cached suggestion may be shown for ``request``: always, except right after a
    deletion in an automatic request (the user is taking text back, not asking for more)."""
    return not (request.automatic and request.after_deletion)


def excluded(settings: Settings, uri: str, language_id: str) -> str | None:
    """Why the document at ``uri`` is never completed nor used as context (None: it is not): the
    one rule of which files and languages are completed, ``disabledLanguages`` and
    ``disabledFiles`` (every other document is)."""
    if language_id and language_id in settings.disabled_languages:
        return f"language {language_id!r} is in disabledLanguages"
    path = unquote(urlparse(uri).path) if "://" in uri else uri
    name = PurePosixPath(path).name
    for pattern in settings.disabled_files:
        target = path if "/" in pattern else name
        if fnmatch.fnmatchcase(target, pattern) or ("/" in pattern and fnmatch.fnmatchcase(target, "*/" + pattern)):
            return f"the file matches {pattern!r} in disabledFiles"
    return None


def is_deletion(text: str, range_is_empty: bool | None) -> bool:
    """Whether one content change of ``didChange`` only removed text (``range_is_empty`` None: a
    whole-document change, which says nothing about deleting)."""
    return range_is_empty is False and text == ""
