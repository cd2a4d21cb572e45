"""An inference server started by a test: a process on a free loopback port, ready once a GET of
its health path answers with JSON, stopped (and killed if it must be) when the test is done."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from raw_lsp import free_port


@contextmanager
def serving(command: Callable[[int], Sequence[str]], health: str, log: Path, name: str,
            startup_s: float = 120) -> Iterator[str]:
    """Run ``command(port)``, its output to ``log``; yields its base URL once ``health`` answers."""
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(list(command(port)), stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + startup_s
        try:
            while True:
                assert process.poll() is None, f"{name} exited with {process.returncode} (log: {log})"
                try:
                    with urllib.request.urlopen(url + health, timeout=2) as answer:
                        json.load(answer)
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"{name} did not answer within {startup_s} s (log: {log})"
                    time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
