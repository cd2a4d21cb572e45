"""The fuzz suite (``fuzz_lsp.py``) against the real server with the default model, over stdio and
TCP: a short run in the default test command, 10,000 messages per transport in the slow one.
Each prints its table (``pytest -s`` shows it); ``bench/results/fuzz.md`` holds a 10,000-message
run's.
"""

from __future__ import annotations

import pytest

from fuzz_lsp import run


def check(tally, table: str) -> None:
    print("\n" + table)
    assert tally.crashes == 0
    assert tally.internal_errors == 0, "\n\n".join(tally.tracebacks)
    owed, once, more, _ = tally.summary
    assert owed > 0 and once == owed and more == 0
    assert tally.documents_checked > 0 and tally.documents_equal == tally.documents_checked


@pytest.mark.parametrize("transport", ["stdio", "tcp"])
def test_fuzz_short_run_every_request_answered_documents_in_sync(tmp_path, transport):
    tally, table = run(transport, 300, tmp_path)
    check(tally, table)
    assert tally.messages >= 300


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["stdio", "tcp"])
def test_fuzz_10000_messages_every_request_answered_documents_in_sync(tmp_path, transport):
    tally, table = run(transport, 10_000, tmp_path)
    check(tally, table)
    assert tally.messages >= 10_000
