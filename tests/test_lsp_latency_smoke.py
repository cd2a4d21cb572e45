"""bench/lsp_latency.py: its typing session, its summary, and a smoke run of the real server.

The typing session and the summary are pure functions checked here on a real file; the smoke run
types 30 keys into the real server (SmolLM2, speculation on), as CI does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import lsp_latency as bench  # noqa: E402


def test_typing_session_types_the_cut_region_back_at_a_human_pace():
    path = ROOT / bench.DEFAULT_FILE
    typing = bench.typing_session(path, bench.DEFAULT_START, 200, seed=1)
    typed = "".join(ch for _, ch in typing.keys)
    assert typing.before + typed + typing.after == path.read_text(encoding="utf-8")
    assert typed.startswith(bench.DEFAULT_START) and len(typed) >= 200 and typing.after.startswith("\n")
    times = [at for at, _ in typing.keys]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.06 and 0.15 < sorted(gaps)[len(gaps) // 2] < 0.3  # about 5 keys a second
    after_break = [gap for gap, (_, ch) in zip(gaps, typing.keys) if ch == "\n"]
    assert after_break and min(after_break) > 1.5  # a pause at each line's end
    assert bench.typing_session(path, bench.DEFAULT_START, 200, seed=1).keys == typing.keys


def test_summary_counts_outcomes_and_the_server_runs():
    session = bench.Session("m", 8)
    session.requests = [bench.Request(0, 1, 0.0, 0.100, "item"), bench.Request(1, 2, 0.2, 0.5, "cancelled"),
                        bench.Request(2, 3, 1.0, 1.4, "item"), bench.Request(3, 4, 2.0, 2.2, "empty")]
    session.generations = {3: {"tokens": 9, "stopReason": "done", "promptTokens": 300, "reusedTokens": 290,
                               "decodeMs": 400.0, "draftedTokens": 10, "acceptedDraftTokens": 6},
                           2: {"tokens": 2, "stopReason": "cancelled", "promptTokens": 290, "reusedTokens": 200,
                               "decodeMs": 100.0, "draftedTokens": 0, "acceptedDraftTokens": 0}}
    session.stats = {"cacheHits": 1, "skippedJobs": 2}
    s = bench.summarize(session)
    assert (s.keys, s.items, s.cancelled, s.empty, s.errors) == (4, 2, 1, 1, 0)
    assert s.p50_ms == pytest.approx(100.0) and s.p95_ms == pytest.approx(400.0)
    assert s.model_p50_ms == pytest.approx(400.0)  # request 3 came from a model run, request 1 from the cache
    assert (s.runs, s.stopped_runs, s.skipped_jobs, s.cache_hits) == (2, 1, 2, 1)
    assert s.prefill_per_run == pytest.approx(50.0) and (s.tokens, s.drafted, s.accepted) == (11, 10, 6)
    assert s.decode_tps == pytest.approx(9 / 0.5)


@pytest.mark.slow
def test_smoke_run_types_into_the_real_server(tmp_path):
    """``--smoke``: 30 keys into the real server on SmolLM2; about half a minute."""
    report = tmp_path / "lsp.md"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "lsp_latency.py"), "--smoke", "--out", str(report),
                          "--log-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    row = next(line for line in report.read_text().splitlines() if line.startswith("| smollm2-135m | 8 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    keys, items, cancelled, empty = map(int, cells[2:6])
    assert keys >= 30 and items + cancelled + empty <= keys and items > 0
    assert "Errors" not in report.read_text()
