"""``wizardcoder-tpu status --tcp HOST:PORT``: what a team server is doing, for the person who
runs it: connected clients by name, queue depth, KV-cache slot use, requests served, p50/p95
completion latency, memory.

A short LSP session of its own: ``initialize`` (with the token from ``$WIZARDCODER_TOKEN`` when
the server asks for one: a token on the command line would show in ``ps``), one
``wizardcoder/serverStatus`` request, ``shutdown``, ``exit``. It never sends ``initialized``, so
it loads nothing and opens no document.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

from .status import SERVER_STATUS

TIMEOUT_S = 10.0


class _Connection:
    def __init__(self, host: str, port: int):
        self._sock = socket.create_connection((host, port), timeout=TIMEOUT_S)
        self._buffer = b""
        self._next_id = 0

    def call(self, method: str, params: Any) -> dict[str, Any]:
        self._next_id += 1
        self.send({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params})
        while True:
            message = self._read()
            if "method" not in message and message.get("id") in (self._next_id, None):
                return message

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode("utf-8")
        self._sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def _read(self) -> dict[str, Any]:
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(rest) < length:
            self._buffer = head + b"\r\n\r\n" + rest
            self._fill()
            head, _, rest = self._buffer.partition(b"\r\n\r\n")
        self._buffer = rest[length:]
        return json.loads(rest[:length])

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self._buffer += chunk

    def close(self) -> None:
        self._sock.close()


def fetch_status(host: str, port: int, token: str | None) -> dict[str, Any]:
    """The server's ``wizardcoder/serverStatus``; ConnectionError or RuntimeError (refused)."""
    connection = _Connection(host, port)
    try:
        options = {"token": token} if token else {}
        answer = connection.call("initialize", {"processId": os.getpid(), "rootUri": None, "capabilities": {},
                                                "initializationOptions": options})
        if "error" in answer:
            raise RuntimeError(answer["error"].get("message", "initialize refused"))
        status = connection.call(SERVER_STATUS, {})
        if "error" in status:
            raise RuntimeError(status["error"].get("message", "serverStatus failed"))
        connection.call("shutdown", None)
        connection.send({"jsonrpc": "2.0", "method": "exit"})
        return status["result"]
    finally:
        connection.close()


def render(status: dict[str, Any]) -> str:
    """The status as lines for a terminal."""
    def ms(value: Any) -> str:
        return "-" if value is None else f"{value:.0f} ms"

    memory = status.get("memory", {})
    queue = status.get("queue", {})
    slots = status.get("slots", [])
    lines = [f"model: {status.get('model') or '(none)'}" + (f"  error: {status['modelError']}" if status.get("modelError") else ""),
             f"uptime: {status.get('uptimeS', 0):.0f} s  pid {status.get('pid')}  memory: "
             f"{memory.get('rssKib', 0) / 1024:.0f} MiB (peak {memory.get('peakRssKib', 0) / 1024:.0f} MiB)",
             f"connections: {status.get('connections', 0)}  queue: " + ", ".join(f"{k} {v}" for k, v in queue.items())
             + f"  running: {status.get('running') or '-'}",
             f"slots: {sum(1 for s in slots if s['tokens'])}/{len(slots)} in use ("
             + ", ".join(str(s["tokens"]) for s in slots) + " tokens)",
             f"requests served: {status.get('requestsServed', 0)}  completion p50 {ms(status.get('completionP50Ms'))}, "
             f"p95 {ms(status.get('completionP95Ms'))}",
             "clients:"]
    for client in status.get("clients", []):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(client["requests"].items())) or "no requests"
        lines.append(f"  {client['name']}: {client['connections']} connected; {counts}; p50 "
                     f"{ms(client['completionP50Ms'])}, p95 {ms(client['completionP95Ms'])}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from .main import DEFAULT_HOST

    host, _, port = args.tcp.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        print(f"wizardcoder-tpu status: --tcp expects HOST:PORT, got {args.tcp!r}", file=sys.stderr)
        return 2
    try:
        status = fetch_status(host.strip("[]") or DEFAULT_HOST, number, os.environ.get("WIZARDCODER_TOKEN"))
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"wizardcoder-tpu status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0
