"""The prefetch (lsp/prefetch.py) with the real SmolLM2 engine, the worker and the cache: what it
computes, that accepting is then served from the cache without a model run, and that a real
request cancels it within one model call (or waits for it, when it is at the same place)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from lsprotocol import types
from pygls.workspace import Workspace

from wizardcoder_tpu.inference.context import ContextStore
from wizardcoder_tpu.inference.engine import CancelToken, GenerationParams
from wizardcoder_tpu.inference.postprocess import Processed
from wizardcoder_tpu.lsp import completion
from wizardcoder_tpu.lsp.cache import CompletionCache
from wizardcoder_tpu.lsp.documents import cursor_at, open_document
from wizardcoder_tpu.lsp.prefetch import Prefetcher, after_accepting
from wizardcoder_tpu.lsp.requests import DocumentRequests
from wizardcoder_tpu.lsp.settings import Settings
from wizardcoder_tpu.lsp.status import Stats
from wizardcoder_tpu.lsp.worker import InferenceWorker

SETTINGS = Settings(max_new_tokens=16, debounce_ms=0)
URI = "file:///tmp/area.py"
AREA = ('import math\n\n\ndef circle_area(radius):\n    """Return the area of a circle."""\n    return \n'
        '\n\ndef main():\n    print(circle_area(2.0))\n')


@pytest.fixture
def workspace() -> Workspace:
    workspace = Workspace(None)
    workspace.put_text_document(types.TextDocumentItem(uri=URI, language_id="python", version=1, text=AREA))
    return workspace


def cursor(workspace: Workspace, line: int, character: int):
    return cursor_at(open_document(workspace, URI), types.Position(line, character), workspace.position_codec)


def test_the_place_after_accepting_drops_the_replaced_characters(workspace):
    at = cursor(workspace, 5, 11)
    target = after_accepting(at, Processed("radius ** 2 * math.pi", 0))
    assert target.prefix.endswith("    return radius ** 2 * math.pi") and target.suffix == at.suffix
    replaced = after_accepting(at, Processed("x)", 1))
    assert replaced.suffix == at.suffix[1:]


def test_accepting_a_suggestion_is_served_from_the_prefetch_without_a_model_run(smollm2_host, workspace):
    worker, cache, requests, stats, prefetcher = InferenceWorker(), CompletionCache(), DocumentRequests(), Stats(), \
        Prefetcher()

    async def complete(line: int, character: int):
        return await completion.complete(workspace, URI, types.Position(line, character), settings=SETTINGS,
                                         host=smollm2_host, cache=cache, requests=requests, worker=worker,
                                         context=ContextStore(), stats=stats, warn=lambda key, message: None,
                                         request_id="r", automatic=True, prefetcher=prefetcher)

    async def session():
        first = await complete(5, 11)
        assert first is not None and first.source == "model" and "\n" not in first.result.text
        assert prefetcher.running is not None  # queued right after the answer
        while prefetcher.running is not None:
            await asyncio.sleep(0.02)
        assert [g["kind"] for g in stats.generations] == ["completion"]
        assert [g["kind"] for g in stats.prefetches] == ["prefetch"]
        # The user accepts: the editor inserts the text, then asks at the end of it.
        workspace.update_text_document(
            types.VersionedTextDocumentIdentifier(uri=URI, version=2),
            types.TextDocumentContentChangePartial(range=types.Range(types.Position(5, 11), types.Position(5, 11)),
                                                   text=first.result.text))
        requests.changed(URI)
        second = await complete(5, 11 + len(first.result.text))
        return first, second

    try:
        first, second = asyncio.run(session())
        if prefetcher.stored:  # the prefetch found something worth showing there
            assert second is not None and second.source == "prefetch" and second.tag != first.tag
        else:  # it found nothing: the request after the accept knows without running the model
            assert second is None and prefetcher.adopted == 1
        assert (stats.engine_calls, stats.prefetch_calls) == (1, 1)  # the request after the accept ran no model
    finally:
        worker.close()


def _slow_prefetch(smollm2_host, workspace, seen_cancelled: list[bool], started: threading.Event):
    """A prefetch whose model run goes on for 200 tokens unless cancelled; it records, at each new
    text, whether the token was already cancelled."""

    def run(at, kind, token: CancelToken):
        def on_text(text: str) -> bool:
            seen_cancelled.append(token.cancelled)
            started.set()
            return True

        ids = smollm2_host.engine.tokenizer.encode(at.prefix)
        generation = smollm2_host.engine.generate(ids, GenerationParams(max_new_tokens=200), token, on_text)
        return generation

    return run


def test_a_real_request_cancels_the_prefetch_within_one_model_call(smollm2_host, workspace):
    worker, cache, prefetcher = InferenceWorker(), CompletionCache(), Prefetcher()
    seen_cancelled: list[bool] = []
    started = threading.Event()
    at = cursor(workspace, 5, 11)

    async def session():
        target = prefetcher.start(at, Processed("radius", 0), settings=SETTINGS, cache=cache, worker=worker,
                                  run=_slow_prefetch(smollm2_host, workspace, seen_cancelled, started))
        assert target is not None
        future = prefetcher._running.future
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 60)
        # A real request elsewhere: it cancels the prefetch and does not wait for it.
        assert await prefetcher.claim(URI, at.prefix, at.suffix) is False
        return await asyncio.wrap_future(future)

    try:
        generation = asyncio.run(session())
    finally:
        worker.close()
    assert generation.stop_reason == "cancelled" and len(generation.token_ids) < 200
    # Once the cancel was visible, the engine accepted at most the token it was computing.
    assert seen_cancelled.count(True) <= 1, seen_cancelled
    assert prefetcher.cancelled == 1 and prefetcher.stored == 0 and not cache.holds(URI, at.prefix + "radius",
                                                                                     at.suffix)


def test_a_real_request_at_the_prefetched_place_waits_for_it(smollm2_host, workspace):
    worker, cache, prefetcher = InferenceWorker(), CompletionCache(), Prefetcher()
    at = cursor(workspace, 5, 11)
    calls = []

    def run(there, kind, token):
        calls.append(there.prefix)
        return Processed(" * 2", 0)

    async def session():
        target = prefetcher.start(at, Processed("radius", 0), settings=SETTINGS, cache=cache, worker=worker, run=run)
        return await prefetcher.claim(URI, target.prefix, target.suffix)

    try:
        adopted = asyncio.run(session())
    finally:
        worker.close()
    assert adopted == Processed(" * 2", 0) and calls == [at.prefix + "radius"] and prefetcher.adopted == 1


def test_no_prefetch_where_an_automatic_request_would_not_run_or_when_off(smollm2_host, workspace):
    worker, cache, prefetcher = InferenceWorker(), CompletionCache(), Prefetcher()
    at = cursor(workspace, 5, 11)

    async def session():
        off = prefetcher.start(at, Processed("radius", 0), settings=Settings(prefetch=False), cache=cache,
                               worker=worker, run=lambda *a: None)
        manual = prefetcher.start(at, Processed("radius", 0), settings=Settings(trigger="manual"), cache=cache,
                                  worker=worker, run=lambda *a: None)
        cache.store(URI, at.prefix + "radius", at.suffix, Processed(" * 2", 0))
        held = prefetcher.start(at, Processed("radius", 0), settings=SETTINGS, cache=cache, worker=worker,
                                run=lambda *a: None)
        return off, manual, held

    try:
        assert asyncio.run(session()) == (None, None, None)
    finally:
        worker.close()
    assert prefetcher.started == 0


def test_the_status_is_idle_while_a_prefetch_runs_even_with_no_idle_between(smollm2_host, monkeypatch):
    """The event loop submits the prefetch as soon as the answer is back, so the worker may start
    it before it reports the completion's end: the status must turn idle (with the latency), not
    stay busy until the prefetch is over (the Neovim e2e test saw that on a loaded machine)."""
    from wizardcoder_tpu.lsp.prefetch import LABEL
    from wizardcoder_tpu.lsp.server import WizardServer

    server = WizardServer(Settings(model="smollm2-135m"))
    server.host = smollm2_host
    sent: list[dict] = []
    monkeypatch.setattr(server.protocol, "notify", lambda method, params=None: sent.append(params))
    try:
        server._show_worker_state("busy", "completing sample.py")
        server.acceptance.last_latency_ms = 123.0  # what served() records for the answer
        server._show_worker_state("busy", LABEL)  # the prefetch starts: no "idle" came in between
        assert [(p["state"], p.get("lastLatencyMs")) for p in sent] == [("busy", None), ("idle", 123)], sent
    finally:
        server.team.close()
