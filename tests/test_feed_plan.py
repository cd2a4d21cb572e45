"""How the C++ engine covers new tokens with net calls (``_bmrt.plan_feed``): pure, no device.

With one chunk set (every bmodel before prefill chunks) the plan is the engine's old rule; with
several sizes a long prompt goes through chunks that cover it instead of the N-row block, and a
keystroke costs a small chunk.
"""

from __future__ import annotations

import itertools

import numpy as np

from wizardcoder_tpu import _bmrt


def rows(plan: list[tuple[str, int]]) -> int:
    return sum(r for _, r in plan)


def old_rule(length: int, count: int, seq_len: int, k: int) -> list[tuple[str, int]]:
    """The engine's rule before prefill chunks: the N-row prefill from empty when the prompt is
    longer than a chunk, else chunks of K, a decode step for a last single token."""
    if length == 0 and count > 1 and count > k:
        return [("prefill", seq_len)]
    plan, rest = [], count
    while rest > 0:
        take = min(rest, k) if rest > 1 else 1
        plan.append(("chunk", k) if rest > 1 else ("decode", 1))
        rest -= take
    return plan


def test_one_chunk_set_keeps_the_old_rule():
    for length in range(64):  # every case of the tiny bmodels (N 64, K 16)
        for count in range(1, 65 - length):
            assert _bmrt.plan_feed(length, count, 64, [16]) == old_rule(length, count, 64, 16), (length, count)


def test_prompts_go_through_chunks_that_cover_them():
    sizes = [16, 64, 256]
    plans = {n: _bmrt.plan_feed(0, n, 512, sizes) for n in (1, 17, 100, 300)}
    assert plans[1] == [("decode", 1)]
    assert plans[17] == [("chunk", 64)]
    assert sorted(plans[100]) == [("chunk", 64), ("chunk", 64)]
    assert sorted(plans[300]) == [("chunk", 64), ("chunk", 256)]  # 320 rows, not the 512-row block
    assert _bmrt.plan_feed(0, 500, 512, sizes) == [("prefill", 512)]  # nearly full: one call beats two
    for typed in range(2, 17):  # a keystroke's few tokens after the cached prefix: the small chunk
        assert _bmrt.plan_feed(300, typed, 512, sizes) == [("chunk", 16)]
    assert _bmrt.plan_feed(300, 1, 512, sizes) == [("decode", 1)]


def test_every_plan_covers_its_tokens_at_the_least_cost():
    rng = np.random.default_rng(0)
    size_sets = [[16], [16, 64, 256], [8, 100], [512], [2, 3, 500]] + [
        sorted(set(rng.integers(2, 513, rng.integers(1, 5)).tolist())) for _ in range(20)]
    for sizes, length in itertools.product(size_sets, (0, 1, 100, 400, 511)):
        for count in sorted({1, 2, 15, 16, 17, 63, 64, 65, 100, 255, 256, 257, 300, 511, 512}):
            if length + count <= 512:
                check_plan(length, count, sizes)


def check_plan(length: int, count: int, sizes: list[int]) -> None:
    plan = _bmrt.plan_feed(length, count, 512, sizes)
    assert all(kind == "chunk" and r in sizes or (kind, r) in (("decode", 1), ("prefill", 512)) for kind, r in plan)
    assert ("prefill", 512) not in plan or (length == 0 and plan == [("prefill", 512)])
    # Each call but the last is full: padding only where the tokens run out.
    assert sum(min(r, count - sum(x for _, x in plan[:i])) for i, (_, r) in enumerate(plan)) == count
    # No dearer than the plans anyone would try first: a decode step per token, one chunk that
    # holds them all, the N-row prefill from empty.
    cost = rows(plan) + _bmrt.CALL_ROWS * len(plan)
    assert cost <= count * (1 + _bmrt.CALL_ROWS)
    for size in sizes:
        if size >= count:
            assert cost <= size + _bmrt.CALL_ROWS
    if length == 0 and count > 1:
        assert cost <= 512 + _bmrt.CALL_ROWS
