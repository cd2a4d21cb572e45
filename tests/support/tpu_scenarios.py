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
