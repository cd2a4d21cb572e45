"""The completion path, readable in one place (after llm-ls' ``get_completions``):

    find the document → should_complete → the cache → supersede older requests → debounce
      → [worker thread: build_prompt → engine.generate (stream-checked) → postprocess] → cache

Both ``textDocument/inlineCompletion`` and the ``textDocument/completion`` fallback call
``complete``; ``server.py`` only maps its result to LSP items. Model work happens in the worker
thread; this coroutine only waits for it, so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lsprotocol import types

from ..inference.engine import CancelToken, Engine, GenerationParams
from ..inference.postprocess import Kind, Processed, Surroundings, completion_kind, postprocess, should_stop
from ..inference.prompt import build_prompt
from .documents import Cursor, cursor_at, open_document, unusable_reason
from .settings import Settings

if TYPE_CHECKING:
    from .server import WizardServer

log = logging.getLogger(__name__)
CONTEXT_MARGIN = 8  # tokens kept free in the model's context besides the completion's


@dataclass(frozen=True)
class Completion:
    cursor: Cursor
    result: Processed
    source: str  # model | cache


async def complete(ls: WizardServer, uri: str, position: types.Position, request_id: object) -> Completion | None:
    """The completion at ``position`` of ``uri``, or None when there is none to show (not a place
    to complete, nothing useful generated, or superseded by a newer request)."""
    document = open_document(ls.workspace, uri)
    reason = unusable_reason(document.source)
    if reason is not None:
        ls.warn_once(uri, f"{uri}: {reason}")
        return None
    cursor = cursor_at(document, position, ls.workspace.position_codec)
    ls.context.visited(uri, document.source, position.line)
    kind = should_complete(ls, cursor)
    if kind is None:
        return None

    cached = ls.cache.lookup(uri, cursor.prefix, cursor.suffix)
    if cached is not None:
        log.info("request %s: cache hit at %s:%s", request_id, position.line, position.character)
        return Completion(cursor, cached, "cache")

    cancel = ls.supersede(uri)  # a newer request for this document cancels this one
    try:
        await debounce(ls, uri)
        if cancel.cancelled:
            return None
        settings = ls.settings
        result = await ls.run_job(lambda token: run_model(ls, cursor, kind, settings, token, request_id),
                                  cancel, f"completing {cursor.file_name or uri}")
    finally:
        cancel.cancel()  # reaches the engine when this coroutine is cancelled ($/cancelRequest)
        ls.release(uri, cancel)
    if result is None:
        return None
    ls.cache.store(uri, cursor.prefix, cursor.suffix, result)
    return Completion(cursor, result, "model")


def should_complete(ls: WizardServer, cursor: Cursor) -> Kind | None:
    """Single-line, multi-line, or no completion here (and why not, in the log)."""
    if not ls.settings.allows(cursor.language_id):
        log.info("no completion: language %r is not enabled", cursor.language_id)
        return None
    return completion_kind(Surroundings.of(cursor.prefix, cursor.suffix))


async def debounce(ls: WizardServer, uri: str) -> None:
    """Wait until ``debounceMs`` have passed since the document's last change."""
    wait = ls.settings.debounce_ms / 1000 - (time.monotonic() - ls.last_change.get(uri, 0.0))
    if wait > 0:
        await asyncio.sleep(wait)


def run_model(ls: WizardServer, cursor: Cursor, kind: Kind, settings: Settings, cancel: CancelToken,
              request_id: object) -> Processed | None:
    """In the worker thread: prompt, generate, post-process. None when cancelled from outside."""
    engine: Engine = ls.host.engine
    started = time.perf_counter()
    room = engine.max_context - settings.max_new_tokens - CONTEXT_MARGIN
    budget = min(settings.prompt_tokens, room)
    context_budget = min(settings.context_tokens, max(0, room - budget))  # the code first, then other files
    prompt = build_prompt(cursor.prefix, cursor.suffix, engine.tokenizer, settings.mode, budget,
                          ls.context.path(cursor.uri), cursor.language_id,
                          ls.context.context(cursor.prefix, cursor.suffix) if context_budget else None, context_budget)
    prompt_ms = (time.perf_counter() - started) * 1e3
    around = Surroundings.of(cursor.prefix, cursor.suffix)
    decided = False

    def on_text(text: str) -> None:
        nonlocal decided
        if should_stop(text, around, kind):  # the rest would be cut anyway: stop the model now
            decided = True
            cancel.cancel()

    params = GenerationParams(max_new_tokens=settings.max_new_tokens, stop_at_newline=kind == "single",
                              stop_strings=prompt.stop_strings)
    if not prompt.ids:
        return None
    generation = engine.generate(prompt.ids, params, cancel, on_text)
    stop = "decided" if decided else generation.stop_reason
    ls.stats.record(request_id, "completion", generation, stop, prompt.mode)
    log.info("request %s: %s %s, prompt %d tokens (%d of other files' in %d snippets, %d reused, build %.0f ms), "
             "%d new tokens, stop %s, prefill %.0f ms, decode %.0f ms", request_id, prompt.mode, kind,
             generation.prompt_tokens, prompt.context_tokens, prompt.context_snippets, generation.reused_tokens,
             prompt_ms, len(generation.token_ids), stop, generation.prefill_ms, generation.decode_ms)
    if stop == "cancelled":
        return None
    return postprocess(generation.text, around, kind)
