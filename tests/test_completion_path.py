"""The completion path without a server: ``lsp.completion``'s stages called with their parts (a
pygls workspace, settings, the model host with the real default model, the cache, the worker,
the per-document request state), and the request state on its own.

The LSP round trips are test_lsp_completion.py's; this module shows that each stage runs from
its arguments alone, and that post-processing ending a completion is not a cancellation.
"""

from __future__ import annotations

import asyncio

import pytest
from lsprotocol import types
from pygls.workspace import Workspace

from wizardcoder_tpu.inference.context import ContextStore
from wizardcoder_tpu.inference.engine import CancelToken
from wizardcoder_tpu.inference.postprocess import MULTI, SINGLE
from wizardcoder_tpu.lsp import completion
from wizardcoder_tpu.lsp.cache import CompletionCache
from wizardcoder_tpu.lsp.documents import cursor_at, open_document
from wizardcoder_tpu.lsp.requests import DocumentRequests, RequestState
from wizardcoder_tpu.lsp.settings import Settings
from wizardcoder_tpu.lsp.status import Stats
from wizardcoder_tpu.lsp.worker import InferenceWorker

SETTINGS = Settings(max_new_tokens=16, debounce_ms=0)
URI = "file:///tmp/area.py"
AREA = ('import math\n\n\ndef circle_area(radius):\n    """Return the area of a circle."""\n    return \n'
        '\n\ndef main():\n    print(circle_area(2.0))\n')
CALL = 'def greet(name):\n    print("Hello, ")\n'  # text after the cursor on its line: single-line


@pytest.fixture
def workspace() -> Workspace:
    workspace = Workspace(None)
    for uri, text in ((URI, AREA), ("file:///tmp/greet.py", CALL)):
        workspace.put_text_document(types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text))
    return workspace


def cursor(workspace: Workspace, uri: str, line: int, character: int):
    return cursor_at(open_document(workspace, uri), types.Position(line, character), workspace.position_codec)


def test_complete_runs_from_its_arguments_and_serves_typed_ahead_from_the_cache(smollm2_host, workspace):
    worker, cache, requests, stats = InferenceWorker(), CompletionCache(), DocumentRequests(), Stats()
    warnings: list[str] = []

    async def complete(character: int):
        return await completion.complete(workspace, URI, types.Position(5, character), settings=SETTINGS, host=smollm2_host,
                                         cache=cache, requests=requests, worker=worker, context=ContextStore(),
                                         stats=stats, warn=lambda key, message: warnings.append(message), request_id="r")

    try:
        first = asyncio.run(complete(11))
        assert first is not None and first.source == "model" and "radius" in first.result.text
        assert stats.engine_calls == 1 and stats.generations[-1]["requestId"] == "r"
        typed = first.result.text[:2]
        workspace.update_text_document(types.VersionedTextDocumentIdentifier(uri=URI, version=2), types.TextDocumentContentChangePartial(
            range=types.Range(types.Position(5, 11), types.Position(5, 11)), text=typed))
        second = asyncio.run(complete(13))
        assert second is not None and second.source == "cache" and second.result.text == first.result.text[2:]
        assert stats.engine_calls == 1 and warnings == []
    finally:
        worker.close()


def test_post_processing_ends_a_run_as_done_and_cancelling_is_another_event(smollm2_host, workspace):
    engine = smollm2_host.engine
    cancel = CancelToken()
    single = completion.run_model(engine, cursor(workspace, "file:///tmp/greet.py", 1, 18), SINGLE, SETTINGS, cancel)
    assert single.generation.stop_reason == "done" and not cancel.cancelled  # the line break decided it
    assert single.result is not None and "\n" not in single.result.text
    assert "\n" in single.generation.text  # the engine kept the whole token; post-processing cut it

    stale = CancelToken()
    stale.cancel()
    cancelled = completion.run_model(engine, cursor(workspace, URI, 5, 11), MULTI, SETTINGS, stale)
    assert cancelled.generation.stop_reason == "cancelled" and cancelled.result is None
    assert cancelled.generation.token_ids == []  # the engine ran nothing for a stale request


def test_a_newer_request_a_change_or_a_close_cancels_the_live_one():
    requests = DocumentRequests()
    state = requests.of(URI)
    older = state.supersede()
    newer = state.supersede()
    assert older.cancelled and not newer.cancelled
    state.release(older)  # the older request ending does not release the newer one
    requests.changed(URI)
    assert newer.cancelled and state.last_change > 0
    latest = requests.of(URI).supersede()
    requests.closed(URI)
    assert latest.cancelled and requests.of(URI) is not state  # a reopened document starts afresh
    fresh = RequestState()
    token = fresh.supersede()
    fresh.release(token)
    fresh.cancel()
    assert not token.cancelled  # a request that has ended is not cancelled afterwards
