"""The worker's fair queue (issue 13, and issue 14's explain that yields to a keystroke): kinds in
order, round-robin by client, newest first within a client, sliced jobs that let a keystroke in
after one slice, and a cap on what one client may have waiting. The real worker thread runs real
job functions; a gate holds it busy while a test queues what it needs."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import wait

from wizardcoder_tpu.inference.engine import CancelToken
from wizardcoder_tpu.lsp.loop_post import post
from wizardcoder_tpu.lsp.worker import Continue, InferenceWorker


class Gate:
    """A first job that holds the worker until ``open``."""

    def __init__(self, worker: InferenceWorker):
        self._event = threading.Event()
        self._started = threading.Event()
        self.future = worker.submit(self._hold, label="gate", client="gate")
        assert self._started.wait(10)

    def _hold(self, cancel: CancelToken) -> str:
        self._started.set()
        self._event.wait(10)
        return "gate"

    def open(self) -> None:
        self._event.set()


def record(order: list[str], name: str):
    def job(cancel: CancelToken) -> str:
        order.append(name)
        return name
    return job


def test_round_robin_by_client_newest_first_and_kinds_in_order():
    worker = InferenceWorker()
    order: list[str] = []
    try:
        gate = Gate(worker)
        futures = [worker.submit(record(order, name), client=client, kind=kind, label=name) for name, client, kind in [
            ("a-explain", "a", "explain"), ("a1", "a", "completion"), ("a2", "a", "completion"),
            ("a3", "a", "completion"), ("b1", "b", "completion"), ("c1", "c", "completion"),
            ("load", "server", "load")]]
        gate.open()
        wait(futures, 10)
        # the load first; then a, b, c in turn (a has three, newest first), the explanation last
        assert order == ["load", "a3", "b1", "c1", "a2", "a1", "a-explain"]
    finally:
        worker.close()


def test_a_keystroke_waits_at_most_one_slice_of_an_explanation():
    worker = InferenceWorker()
    order: list[str] = []
    slice_started = threading.Event()
    keystroke_queued = threading.Event()

    def sliced(index: int):
        def step(cancel: CancelToken):
            order.append(f"slice{index}")
            if index == 0:
                slice_started.set()
                assert keystroke_queued.wait(10)  # the keystroke arrives while the first slice runs
            return Continue(sliced(index + 1)) if index < 4 else "explained"
        return step

    try:
        explanation = worker.submit(sliced(0), client="a", kind="explain", label="explain")
        assert slice_started.wait(10)
        keystroke = worker.submit(record(order, "keystroke"), client="a", kind="completion", label="keystroke")
        keystroke_queued.set()
        assert keystroke.result(10) == "keystroke" and explanation.result(10) == "explained"
        assert order == ["slice0", "keystroke", "slice1", "slice2", "slice3", "slice4"]
    finally:
        worker.close()


def test_a_cancelled_explanation_stops_between_slices():
    worker = InferenceWorker()
    cancel = CancelToken()
    slices: list[int] = []

    def step(cancel_: CancelToken):
        slices.append(1)
        if len(slices) == 2:
            cancel.cancel()
        return Continue(step)

    try:
        future = worker.submit(step, cancel, client="a", kind="explain")
        assert future.result(10) is None and len(slices) == 2
    finally:
        worker.close()


def test_cancelled_jobs_are_skipped_and_one_client_cannot_queue_without_bound():
    worker = InferenceWorker(max_pending=3)
    order: list[str] = []
    try:
        gate = Gate(worker)
        stale = CancelToken()
        skipped = worker.submit(record(order, "stale"), stale, client="a")
        stale.cancel()
        flood = [worker.submit(record(order, f"a{i}"), client="a") for i in range(5)]
        other = worker.submit(record(order, "b"), client="b")
        assert worker.depth()["completion"] == 7
        gate.open()
        wait(flood + [other, skipped], 10)
        assert skipped.cancelled() and "stale" not in order
        assert order == ["a4", "b", "a3", "a2"]  # a's oldest beyond three waiting were skipped
        assert worker.skipped == 3
    finally:
        worker.close()


def test_a_call_posted_after_the_loop_closed_is_dropped_not_raised():
    """A model call that ends after the server's loop is gone (the client left mid-request) must
    not raise inside the worker's callback: CI logged "Event loop is closed" tracebacks from it."""
    ran: list[int] = []
    loop = asyncio.new_event_loop()
    assert post(loop, ran.append, 1)
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    assert not post(loop, ran.append, 2)
    assert ran == [1]
