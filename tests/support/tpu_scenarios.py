"""Engine scenarios on the TPU backend, run by test_bmrt_engine.py in a child interpreter (the
Sophgo libraries load once per process and can end it; ``run_scenario`` there). Each takes plain
values and returns JSON-able data for the test to compare; the assertions stay in the test.
"""

from __future__ import annotations

import threading

from support.stubs import IdsTokenizer
from wizardcoder_tpu.inference.backends.tpu import TPUBackend
from wizardcoder_tpu.inference.engine import CancelToken, Engine, GenerationParams
from wizardcoder_tpu.inference.errors import BackendError


def greedy(bmodel: str, prompts: list[list[int]], steps: int) -> list[dict]:
    """The backend over ``bmodel``, greedy from each prompt (cold, one backend), stats per prompt."""
    backend = TPUBackend(bmodel, devices=[0])
    results = []
    for ids in prompts:
        backend.truncate(0)
        before = backend.stats.block_rows
        first = backend.greedy_step(ids)
        rest, reason = backend.generate(first, steps - 1)
        results.append({"tokens": [first] + rest, "reason": reason, "block_rows": backend.stats.block_rows - before})
    backend.close()
    return results


def prefix_reuse(bmodel: str, first: list[int], second: list[int], new_tokens: int) -> dict:
    """The engine on ``first``, then on ``second`` (which extends it): what the second call fed."""
    warm = Engine(TPUBackend(bmodel, devices=[0]), IdsTokenizer())
    params = GenerationParams(max_new_tokens=new_tokens)
    warm.generate(first, params)
    stats = warm.backend.stats
    rows, fed, prefills = stats.block_rows, stats.tokens_fed, stats.prefills
    again = warm.generate(second, params)
    stats = warm.backend.stats
    return {"tokens": again.token_ids, "reused": again.reused_tokens, "rows": stats.block_rows - rows,
            "fed": stats.tokens_fed - fed, "prefills": stats.prefills - prefills, "chunks": stats.chunks}


def slots(bmodel: str, docs: list[list[int]], edits: list[list[int]], new_tokens: int) -> dict:
    """KV-cache slots on the device: how many fit when the engine may take as many as fit; then an
    engine over two slots serving two documents in turn, each then edited at its end (what the
    edited prompt fed, against the same prompt cold); and a slot switch on the backend itself
    (what it moved)."""
    fit = TPUBackend(bmodel, devices=[0], slots=0)
    out: dict = {"fit": fit.slots, "slot_bytes": fit._engine.slot_bytes}
    fit.close()
    asked = TPUBackend(bmodel, devices=[0], slots=3)
    out["asked_3"] = asked.slots
    asked.close()

    backend = TPUBackend(bmodel, devices=[0], slots=2)
    engine = Engine(backend, IdsTokenizer())
    params = GenerationParams(max_new_tokens=new_tokens)
    for ids in docs:
        engine.generate(ids, params)
    out["warm"] = []
    for ids, edit in zip(docs, edits):  # back to each document, typed on at its end
        stats = backend.stats
        fed, prefills = stats.tokens_fed, stats.prefills
        result = engine.generate(ids + edit, params)
        stats = backend.stats
        out["warm"].append({"tokens": result.token_ids, "reused": result.reused_tokens,
                            "fed": stats.tokens_fed - fed, "prefills": stats.prefills - prefills})
    lengths = []
    before = backend.stats
    for index in (0, 1, 0):
        backend.select_slot(index)
        lengths.append(backend.cached_length)
    after = backend.stats
    out["lengths"] = lengths
    out["switch"] = {name: getattr(after, name) - getattr(before, name)
                     for name in ("launches", "bytes_to_device", "bytes_from_device", "bytes_on_device")}
    engine.reset()
    out["cold"] = [engine.generate(ids + edit, params).token_ids for ids, edit in zip(docs, edits)]
    try:
        backend.select_slot(2)
    except BackendError as exc:
        out["no_such_slot"] = str(exc)
    backend.close()
    return out


def cancel_mid_loop(bmodel: str) -> dict:
    """``cancel()`` from another thread while the C++ loop runs a step; the engine's cancel token
    set from ``on_text``; then misuse of the backend, and a call after ``close()``."""
    backend = TPUBackend(bmodel, devices=[0])
    reached, cancelled = threading.Event(), threading.Event()
    seen = []

    def on_token(token: int) -> bool:
        seen.append(token)
        if len(seen) == 3:
            reached.set()
            cancelled.wait(30)  # the other thread cancels while this step is still in flight
        return True

    def canceller() -> None:
        reached.wait(30)
        backend.cancel()
        cancelled.set()

    first = backend.greedy_step([5, 6, 7])
    threading.Thread(target=canceller).start()  # after the prefill: its 30 s are for the loop's steps
    decodes = backend.stats.decodes
    tokens, reason = backend.generate(first, 40, on_token=on_token)
    out: dict = {"tokens": len(tokens), "reason": reason, "decodes": backend.stats.decodes - decodes}

    engine = Engine(backend, IdsTokenizer())
    token = CancelToken()

    def on_text(text: str) -> bool:
        if len(text.split()) == 2:
            token.cancel()
        return True

    result = engine.generate([5, 6, 7], GenerationParams(max_new_tokens=40), cancel=token, on_text=on_text)
    out["engine"] = [len(result.token_ids), result.stop_reason]

    for name, ids in (("empty", []), ("past_vocab", [1, 99999])):
        try:
            backend.greedy_step(ids)
        except BackendError as exc:
            out[name] = str(exc)
    backend.close()
    try:
        backend.greedy_step([1])
    except BackendError as exc:
        out["closed"] = str(exc)
    return out


def device_closed_under_a_request(model_dir: str) -> dict:
    """The language server on the TPU backend, in this process (so that the device can be taken
    away from under it): an inline completion during whose prompt the C++ engine's device handle
    is closed from another thread (as a device that goes away), then the next request. Returns
    both answers and the statuses the client saw."""
    import os
    import time

    from raw_lsp import RawClient
    from wizardcoder_tpu.lsp.server import create_server
    from wizardcoder_tpu.lsp.settings import Settings
    from wizardcoder_tpu.lsp.transport import serve_stdio

    server = create_server(Settings())
    to_server, from_client = os.pipe()
    to_client, from_server = os.pipe()
    server_in, server_out = os.fdopen(to_server, "rb", 0), os.fdopen(from_server, "wb", 0)
    threading.Thread(target=serve_stdio, args=(server, server_in, server_out), daemon=True).start()
    client_out, client_in = os.fdopen(from_client, "wb", 0), os.fdopen(to_client, "rb", 0)
    client = RawClient(client_out.write, client_in.read, client_out.close)
    uri = "file:///tmp/add.py"
    params = {"textDocument": {"uri": uri}, "position": {"line": 3, "character": 11}, "context": {"triggerKind": 2}}
    out: dict = {}
    try:
        # No prefetch: nothing may run on the device after the answers (the process ends with them).
        client.initialize({"backend": "tpu", "model": model_dir, "fallbackToCpu": False, "maxNewTokens": 8,
                           "debounceMs": 0, "prefetch": False})
        out["loaded"] = client.wait_for_status(("idle", "error"))["params"]
        backend = server.host.engine.backend
        closed = threading.Event()

        def close_under_the_prompt() -> None:
            launches = backend.stats.launches
            while backend.stats.launches == launches:  # the first net of the prompt has run
                time.sleep(0.002)
            backend._engine.close()  # the device handle, not the backend: it did not ask for this
            closed.set()

        threading.Thread(target=close_under_the_prompt, daemon=True).start()
        client.open(uri, "import os\n\ndef add(a, b):\n    return ")
        mark = len(client.messages)
        out["failed"] = client.call("textDocument/inlineCompletion", params, timeout=300)
        out["closed"] = closed.wait(30)
        out["status_after_failure"] = client.wait_for_status(("error",), timeout=120, start=mark)["params"]
        mark = len(client.messages)
        out["next"] = client.call("textDocument/inlineCompletion", params, timeout=300)
        out["status_after_next"] = client.wait_for_status(("idle", "error"), timeout=120, start=mark)["params"]
        out["reopened"] = not backend._engine.closed
        out["exit"] = client.shutdown_and_exit()
    finally:
        client.close()
        client_in.close()
        server.host.close()  # before the interpreter's exit tears the simulator down
    return out


def speculation(bmodel: str, prompts: list[list[int]], new_tokens: int, speculate: int) -> dict:
    """Each prompt through the engine plain, then with prompt-lookup speculation (``verify`` on the
    device) from the cached prompt, and the cache's length after each; then ``verify`` itself on
    the first prompt: a draft that is the plain continuation (all accepted), one of other tokens
    (all rejected, the cache cut back to the accepted length) and the next step after it against
    a cold run; last, a cancel set while a verify call runs (on the first prompt that drafted)."""
    backend = TPUBackend(bmodel, devices=[0])
    engine = Engine(backend, IdsTokenizer())
    out: dict = {"runs": []}
    for ids in prompts:
        run = {"prompt": ids}
        engine.reset()
        for k in (0, speculate):  # the second run reuses the cached prompt: only the drafting differs
            before = backend.stats
            result = engine.generate(ids, GenerationParams(max_new_tokens=new_tokens, speculate=k))
            after = backend.stats
            run[str(k)] = {"tokens": result.token_ids, "drafted": result.drafted_tokens,
                           "accepted": result.accepted_draft_tokens, "verifies": after.verifies - before.verifies,
                           "decodes": after.decodes - before.decodes, "launches": after.launches - before.launches,
                           "cached_length": backend.cached_length}
        out["runs"].append(run)

    ids, plain = prompts[0], out["runs"][0]["0"]["tokens"]
    out["plain_of_first"] = plain
    backend.truncate(0)
    backend.greedy_step(ids)
    before = backend.stats
    out["accepted_draft"] = backend.verify(plain[:3])  # [i]: the token after ids + plain[:i + 1]
    after = backend.stats
    out["verify_call"] = {"chunks": after.chunks - before.chunks, "decodes": after.decodes - before.decodes,
                          "block_rows": after.block_rows - before.block_rows,
                          "launches": after.launches - before.launches, "layers": backend._engine.num_layers,
                          "bytes_from_device": after.bytes_from_device - before.bytes_from_device}
    backend.truncate(len(ids))
    wrong = [(t + 1) % backend.vocab_size for t in plain[1:3]]
    out["rejected_draft"] = backend.verify([plain[0], *wrong])
    backend.truncate(len(ids) + 1)  # keep plain[0] and nothing of the wrong draft
    out["after_rejection"] = backend.greedy_step([plain[1]])
    out["cached_length"] = backend.cached_length
    backend.truncate(0)
    out["cold"] = backend.greedy_step([*ids, plain[0], plain[1]])
    drafting = next(run["prompt"] for run in out["runs"] if run[str(speculate)]["verifies"])  # one that verifies
    out["cancelled"] = _cancel_during_verify(engine, drafting, new_tokens, speculate)
    backend.close()
    return out


def _cancel_during_verify(engine: Engine, ids: list[int], new_tokens: int, speculate: int) -> dict:
    """The engine's cancel token set from inside the first verify call (as ``$/cancelRequest``
    would from the server's thread while the device runs it); every model call after it counted."""
    backend, cancel = engine.backend, CancelToken()
    calls = {"verifies_before": 0, "calls_after_cancel": 0}
    real_verify, real_step = backend.verify, backend.greedy_step

    def verify(token_ids):
        if cancel.cancelled:
            calls["calls_after_cancel"] += 1
        calls["verifies_before"] += not cancel.cancelled
        cancel.cancel()
        return real_verify(token_ids)

    def greedy_step(token_ids):
        calls["calls_after_cancel"] += cancel.cancelled
        return real_step(token_ids)

    backend.verify, backend.greedy_step = verify, greedy_step
    engine.reset()
    result = engine.generate(ids, GenerationParams(max_new_tokens=new_tokens, speculate=speculate), cancel=cancel)
    del backend.verify, backend.greedy_step
    return {**calls, "reason": result.stop_reason, "tokens": result.token_ids}
