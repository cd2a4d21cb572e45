"""The completion path, readable in one place (after llm-ls' ``get_completions``):

    find the document → the trigger rules → the cache → supersede older requests → debounce
      → [worker thread: build_prompt → engine.generate (ended by the stream check) → postprocess]
      → cache

Both ``textDocument/inlineCompletion`` and the ``textDocument/completion`` fallback call
``complete``; ``server.py`` only maps its result to LSP items. Each stage is a function of what it
needs (documents, settings, engine, cache, the document's request state), testable without a
server. Model work happens in the worker thread; ``complete`` only waits for it, so the event
loop stays free.

Two early ends, kept apart: post-processing deciding that the completion is complete
(``should_stop``: the engine's ``on_text`` returns False, stop reason ``done``, the result is
shown) and the request going stale (a newer request, a change, ``$/cancelRequest``: the cancel
token, stop reason ``cancelled``, nothing is shown).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from lsprotocol import types
from pygls.workspace import Workspace

from ..inference.context import ContextStore
from ..inference.engine import CancelToken, Generation, GenerationParams, TextEngine
from ..inference.postprocess import Kind, Processed, completion_kind, postprocess, should_stop
from ..inference.prompt import Prompt, build_prompt
from .cache import CompletionCache
from .documents import Cursor, cursor_at, open_document, unusable_reason
from .model_host import ModelHost
from .prefetch import Prefetcher
from .requests import DocumentRequests
from . import trigger
from .settings import Settings
from .trigger import excluded
from .status import Stats
from .worker import InferenceWorker

log = logging.getLogger(__name__)
CONTEXT_MARGIN = 8  # tokens kept free in the model's context besides the completion's


@dataclass(frozen=True)
class Completion:
    cursor: Cursor
    result: Processed
    source: str  # model | cache | prefetch (a cache hit that the prefetch computed)
    tag: str = ""  # the suggestion's id (cache.py), for the acceptance statistics


@dataclass(frozen=True)
class ModelRun:
    """What one model run produced: the text to show (None: nothing), and how it went."""

    result: Processed | None
    prompt: Prompt
    generation: Generation | None  # None when the prompt came out empty
    prompt_ms: float


async def complete(workspace: Workspace, uri: str, position: types.Position, *, settings: Settings,
                   host: ModelHost, cache: CompletionCache, requests: DocumentRequests, worker: InferenceWorker,
                   context: ContextStore, stats: Stats, warn: Callable[[str, str], None],
                   request_id: object, automatic: bool = False,
                   prefetcher: Prefetcher | None = None) -> Completion | None:
    """The completion at ``position`` of ``uri``, or None when there is none to show (not a place
    to complete, nothing useful generated, or superseded by a newer request). ``warn(key,
    message)`` tells the user once per key; the engine is taken from ``host`` in the worker,
    after any reload queued before this request. ``context`` holds the other files' code and
    learns where the user is. ``automatic``: the editor asked as the user typed (the trigger
    rules of ``trigger.py`` apply), not the user. ``prefetcher``: what is shown starts the
    prefetch of what follows it (``prefetch.py``), and a request that needs the model cancels it."""
    document = open_document(workspace, uri)
    reason = unusable_reason(document.source)
    if reason is not None:
        warn(uri, f"{uri}: {reason}")
        return None
    cursor = cursor_at(document, position, workspace.position_codec)
    if (why := excluded(settings, uri, cursor.language_id)) is not None:
        log.info("request %s: no completion: %s", request_id, why)
        return None
    context.visited(uri, document.source, position.line)
    state = requests.of(uri)
    asked = trigger.Request(automatic, cursor.prefix, cursor.suffix, state.after_deletion)
    if not trigger.shows_cached(settings, asked):
        log.info("request %s: no automatic completion: the last edit deleted text", request_id)
        return None
    kind = completion_kind(cursor.around)

    def model_job(at: Cursor, at_kind: Kind, label: str) -> Callable[[CancelToken], Processed | None]:
        def job(token: CancelToken) -> Processed | None:  # worker thread
            run = host.run(settings, lambda engine: run_model(engine, at, at_kind, settings, token, context))
            if run.generation is not None:
                record(stats, request_id, label, run)
            return run.result
        return job

    def shown(found: Completion) -> Completion:
        if prefetcher is not None:
            prefetcher.start(cursor, found.result, settings=settings, cache=cache, worker=worker,
                             run=lambda at, at_kind, token: model_job(at, at_kind, "prefetch")(token))
        return found

    cached = cache.lookup(uri, cursor.prefix, cursor.suffix)
    if cached is not None:
        source = "prefetch" if cached.prefetched and not cached.typed else "cache"
        log.info("request %s: %s hit at %s:%s", request_id, source, position.line, position.character)
        return shown(Completion(cursor, cached.result, source, cached.tag))
    if (why := trigger.model_refusal(settings, asked)) is not None:
        log.info("request %s: no automatic completion: %s", request_id, why)
        return None
    if prefetcher is not None:
        adopted = await prefetcher.claim(uri, cursor.prefix, cursor.suffix)
        if adopted is not False:  # the prefetch was computing this very place: its result is the answer
            log.info("request %s: waited for the prefetch at %s:%s", request_id, position.line, position.character)
            hit = cache.lookup(uri, cursor.prefix, cursor.suffix) if adopted is not None else None
            return shown(Completion(cursor, hit.result, "prefetch", hit.tag)) if hit is not None else None

    cancel = state.supersede()  # a newer request for this document cancels this one
    try:
        await debounce(settings.debounce_ms, state.last_change)
        if cancel.cancelled:
            return None
        result = await worker.run(model_job(cursor, kind, kind), cancel, f"completing {cursor.file_name or uri}")
    finally:
        cancel.cancel()  # reaches the engine when this coroutine is cancelled ($/cancelRequest)
        state.release(cancel)
    if result is None:
        return None
    tag = cache.store(uri, cursor.prefix, cursor.suffix, result)
    return shown(Completion(cursor, result, "model", tag))


async def debounce(debounce_ms: int, last_change: float) -> None:
    """Wait until ``debounce_ms`` have passed since ``last_change`` (``time.monotonic()``)."""
    wait = debounce_ms / 1000 - (time.monotonic() - last_change)
    if wait > 0:
        await asyncio.sleep(wait)


def run_model(engine: TextEngine, cursor: Cursor, kind: Kind, settings: Settings, cancel: CancelToken,
              context: ContextStore | None = None) -> ModelRun:
    """In the worker thread: prompt (the other files' snippets from ``context`` first, within
    ``contextTokens``), generate until post-processing has decided, post-process. The result is
    None when cancelled from outside or when nothing is worth showing."""
    started = time.perf_counter()
    room = engine.max_context - settings.max_new_tokens - CONTEXT_MARGIN
    budget = min(settings.prompt_tokens, room)
    context_budget = min(settings.context_tokens, max(0, room - budget)) if context else 0  # the code first
    snippets = context.context(cursor.prefix, cursor.suffix) if context and context_budget else None
    file_name = context.path(cursor.uri) if context else cursor.file_name
    heal = settings.token_healing and engine.heals  # a remote server cannot constrain its first tokens
    prompt = build_prompt(cursor.prefix, cursor.suffix, engine.tokenizer, settings.mode, budget,
                          file_name, cursor.language_id, snippets, context_budget, heal)
    prompt_ms = (time.perf_counter() - started) * 1e3
    if not prompt.ids:
        return ModelRun(None, prompt, None, prompt_ms)
    around = cursor.around
    params = GenerationParams(max_new_tokens=settings.max_new_tokens, stop_strings=prompt.stop_strings,
                              speculate=settings.speculate, heal=prompt.heal)
    time_limit = time.perf_counter() + settings.max_time_ms / 1000 if settings.max_time_ms else None
    out_of_time = False

    def go_on(text: str) -> bool:  # with postprocess off (bench/quality.py's bare row) the model runs on
        nonlocal out_of_time
        if time_limit is not None and "\n" in text.lstrip("\n") and time.perf_counter() > time_limit:
            out_of_time = True  # llama.cpp's t_max_predict_ms: past the time, stop once a line is complete
            return False
        return not settings.postprocess or not should_stop(text, around, kind)

    generation = engine.generate(prompt.ids, params, cancel, go_on)
    text = within_time(generation.text) if out_of_time else generation.text
    if generation.stop_reason == "cancelled":
        result = None
    elif not settings.postprocess:  # what the model wrote, as it wrote it
        result = Processed(text, 0) if text else None
    else:
        result = postprocess(text, around, kind)
    return ModelRun(result, prompt, generation, prompt_ms)


def within_time(text: str) -> str:
    """The text of a generation stopped by ``maxTimeMs``: its complete lines (the one being
    written when the time ran out is dropped)."""
    head = len(text) - len(text.lstrip("\n"))
    return text[: text.rindex("\n", head)] if "\n" in text[head:] else text


def record(stats: Stats, request_id: object, kind: str, run: ModelRun) -> None:
    """The run in ``wizardcoder/stats`` (a prefetch's as kind ``prefetch``) and the log."""
    generation = run.generation
    assert generation is not None
    stats.record(request_id, "prefetch" if kind == "prefetch" else "completion", generation,
                 generation.stop_reason, run.prompt.mode)
    log.info("request %s: %s %s, prompt %d tokens (%d of other files' in %d snippets, %d reused, build %.0f ms), "
             "%d new tokens, stop %s, prefill %.0f ms, decode %.0f ms", request_id, run.prompt.mode, kind,
             generation.prompt_tokens, run.prompt.context_tokens, run.prompt.context_snippets,
             generation.reused_tokens, run.prompt_ms, len(generation.token_ids), generation.stop_reason,
             generation.prefill_ms, generation.decode_ms)
