"""The project's side of ``in_venv/tool_server.py``: tpu-mlir's Python tools, imported once.

``run`` is thread-safe: the compile's worker threads each submit a tool run and block until its
reply, so at most ``jobs`` tools run at once however many pieces there are.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import threading
import time
from pathlib import Path

from .toolchain import Toolchain, ToolchainError, tail

SERVER = Path(__file__).resolve().parent / "in_venv" / "tool_server.py"
START_TIMEOUT = 1800.0  # imports of ~12 s; a cold disk, or a niced compile on a loaded machine, took over 300


class ToolServer:
    """One server process in tpu-mlir's venv; ``with ToolServer(tc) as tools: tools.run(...)``."""

    def __init__(self, toolchain: Toolchain, log: Path):
        self.tc, self.log = toolchain, log
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[threading.Event, list]] = {}
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self.preload_s = 0.0

    def __enter__(self) -> "ToolServer":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._stderr = open(self.log, "ab")
        self._proc = subprocess.Popen([str(self.tc.python), str(SERVER)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._stderr, env=self.tc.env())
        ready: list = []
        reader = threading.Thread(target=lambda: ready.append(self._proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        if not ready or not ready[0]:
            self.__exit__(None, None, None)
            raise ToolchainError(f"tpu-mlir's tools did not start within {START_TIMEOUT:.0f} s; last lines of "
                                 f"{self.log}:\n{tail(self.log)}")
        self.preload_s = json.loads(ready[0]).get("preload_s", 0.0)
        self._reader = threading.Thread(target=self._read_replies, daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is None:
            return
        try:
            self._proc.stdin.close()  # EOF: the server stops its running tools and exits
        except OSError:
            pass
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._stderr.close()
        self._proc = None

    def _read_replies(self) -> None:
        for line in self._proc.stdout:
            reply = json.loads(line)
            with self._lock:
                event, box = self._waiting.pop(reply["id"])
            box.append(reply)
            event.set()
        with self._lock:  # the server died: wake everyone
            for event, _ in self._waiting.values():
                event.set()
            self._waiting.clear()

    def run(self, tool: str, args: list[str], cwd: Path, log: Path, timeout: float) -> float:
        """Run ``tool`` (``model_transform.py`` | ``model_deploy.py``) with ``args`` in ``cwd``;
        its output goes to ``log``. Returns the seconds it took; raises with the log's tail."""
        request_id = next(self._ids)
        event, box = threading.Event(), []
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                raise ToolchainError(f"tpu-mlir's tool server is not running (see {self.log})")
            self._waiting[request_id] = (event, box)
            request = {"id": request_id, "tool": tool, "args": args, "cwd": str(cwd), "log": str(log),
                       "timeout": timeout}
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            self._proc.stdin.flush()
        started = time.monotonic()
        if not event.wait(timeout + 60) or not box:
            raise ToolchainError(f"{tool} got no answer from the tool server after "
                                 f"{time.monotonic() - started:.0f} s (server log: {self.log}; tool log: {log})")
        reply = box[0]
        if reply["timed_out"]:
            raise ToolchainError(f"{tool} timed out after {timeout:.0f} s (log: {log})")
        if reply["rc"] != 0:
            raise ToolchainError(f"{tool} failed (exit {reply['rc']}); last lines of {log}:\n{tail(log)}")
        return float(reply["seconds"])
