"""A raw LSP client for the reliability and fuzz tests (no tests here): it writes any bytes,
well-formed or not, and reads the server's frames strictly, so that a malformed frame from the
server fails the test instead of being tolerated.

pytest-lsp's client cannot send a broken frame or a request without params; this one can. It
speaks to ``wizardcoder-tpu serve`` over stdio (a subprocess) or TCP, answers the server's own
requests (``window/workDoneProgress/create``…) unless told not to, and keeps every message the
server sent, so that a test can count answers per request id.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT_S = 30.0
LOAD_TIMEOUT_S = 180.0


def frame(message: Any) -> bytes:
    body = json.dumps(message).encode("utf-8")
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def server_command(log_file: Path, *extra: str, level: str = "info") -> list[str]:
    """The real server on the tiny named model (these tests are about the protocol, not the
    suggestions); ``extra`` comes last, so a ``--model`` there wins."""
    return [sys.executable, "-m", "wizardcoder_tpu", "serve", "--log-file", str(log_file), "--log-level", level,
            "--model", "smollm2-135m", *extra]


class MalformedOutput(AssertionError):
    """The server wrote bytes that are not a well-formed LSP frame."""


class RawClient:
    def __init__(self, write, read, close, process: subprocess.Popen | None = None):
        self._write, self._read, self._close = write, read, close
        self.process = process
        self.messages: list[dict[str, Any]] = []  # everything the server sent, in order
        self.answer_server_requests = True
        self.malformed: list[str] = []
        self.answers: dict[tuple[str, Any], list[dict[str, Any]]] = {}  # (type, id) -> responses
        self._lock = threading.Condition()
        self._next_id = 0
        self._closed = False
        self.over_tcp = False  # a TCP session: the server outlives it and closes only the connection
        self.local_port: int | None = None  # a TCP client's own port (RawClient.tcp)
        self._reader = threading.Thread(target=self._read_loop, name="raw-lsp-reader", daemon=True)
        self._reader.start()

    # Starting ----------------------------------------------------------------------------------
    @classmethod
    def stdio(cls, log_file: Path, *extra: str, level: str = "info") -> RawClient:
        process = subprocess.Popen(server_command(log_file, "--stdio", *extra, level=level), stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=_stderr(), env=_env())
        assert process.stdin is not None and process.stdout is not None
        stdin, stdout = process.stdin, process.stdout

        def write(data: bytes) -> None:
            stdin.write(data)
            stdin.flush()

        def close() -> None:
            try:
                stdin.close()
            except OSError:
                pass

        return cls(write, stdout.read1, close, process)

    @classmethod
    def tcp(cls, port: int, process: subprocess.Popen | None = None) -> RawClient:
        sock = connect(port)

        def close() -> None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

        client = cls(sock.sendall, sock.recv, close, process)
        client.over_tcp = True
        client.local_port = sock.getsockname()[1]  # the client's end, to find the connection in /proc/net/tcp
        return client

    # Sending -----------------------------------------------------------------------------------
    def send_bytes(self, data: bytes) -> None:
        self._write(data)

    def send(self, message: Any) -> None:
        self._write(frame(message))

    def new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def request(self, method: str, params: Any = None, *, msg_id: Any = None, omit_params: bool = False) -> Any:
        """Send a request; its id (``request_id``) to wait on."""
        msg_id = self.new_id() if msg_id is None else msg_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if not omit_params:
            message["params"] = params if params is not None else {}
        self.send(message)
        return msg_id

    def call(self, method: str, params: Any = None, timeout: float = 30.0, **kwargs: Any) -> dict[str, Any]:
        """Send a request and wait for its response (the whole response message)."""
        return self.response(self.request(method, params, **kwargs), timeout)

    def notify(self, method: str, params: Any = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)

    # Waiting -----------------------------------------------------------------------------------
    def responses(self, msg_id: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.messages if "method" not in m and m.get("id") == msg_id]

    def response(self, msg_id: Any, timeout: float = 30.0) -> dict[str, Any]:
        found = self.wait_for(lambda m: "method" not in m and m.get("id") == msg_id, timeout,
                              f"a response to request {msg_id!r}")
        return found

    def wait_for(self, predicate, timeout: float, what: str, start: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for message in self.messages[start:]:
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    raise AssertionError(f"no {what} within {timeout} s (server {'gone' if self._closed else 'alive'}; "
                                         f"last messages: {self.messages[-3:]})")
                self._lock.wait(min(remaining, 0.5))

    def notifications(self, method: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.messages if m.get("method") == method and "id" not in m]

    def initialize(self, options: dict[str, Any] | None = None, *, encodings: list[str] | None = None,
                   progress: bool = True, wait_for_model: bool = True) -> dict[str, Any]:
        """initialize + initialized, then (by default) wait until the model has loaded or failed."""
        result = self.call_initialize(options, encodings=encodings, progress=progress)
        assert "result" in result, result
        self.notify("initialized", {})
        if wait_for_model:
            self.wait_for_status(("idle", "error"))
        return result["result"]

    def call_initialize(self, options: dict[str, Any] | None = None, *, encodings: list[str] | None = None,
                        progress: bool = True) -> dict[str, Any]:
        """The initialize request alone; its whole response (a result or an error)."""
        return self.call("initialize", {
            "processId": None, "rootUri": None, "initializationOptions": options or {},
            "capabilities": {"general": {"positionEncodings": encodings or ["utf-16"]},
                             "window": {"workDoneProgress": progress},
                             "textDocument": {"inlineCompletion": {}, "synchronization": {}}}},
            timeout=STARTUP_TIMEOUT_S)

    def wait_for_status(self, states: tuple[str, ...], timeout: float = LOAD_TIMEOUT_S, start: int = 0) -> dict:
        return self.wait_for(lambda m: m.get("method") == "wizardcoder/status" and m["params"]["state"] in states,
                             timeout, f"status in {states}", start)

    def open(self, uri: str, text: str, language: str = "python", version: int = 1) -> None:
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language,
                                                              "version": version, "text": text}})

    def digests(self) -> dict[str, dict[str, Any]]:
        response = self.call("wizardcoder/documentDigests", {})
        assert "result" in response, response
        return response["result"]["documents"]

    def shutdown_and_exit(self, timeout: float = 30.0) -> int | None:
        """shutdown, exit; the process's exit code (None over TCP without a process)."""
        response = self.call("shutdown", None, omit_params=True, timeout=timeout)
        assert "result" in response, response
        self.notify("exit")
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float = 30.0) -> int | None:
        """The server's exit code over stdio; over TCP, None once the server has closed the
        connection (a TCP server serves on)."""
        if self.over_tcp:
            self.wait_closed(timeout)
            return None
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        finally:
            self.close()

    def wait_closed(self, timeout: float = 30.0) -> None:
        """Until the server has closed the connection (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"the server did not close the connection within {timeout} s")
                self._lock.wait(min(remaining, 0.5))

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def close(self) -> None:
        self._close()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    # Reading -----------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = self._read(65536)
                if not chunk:
                    break
                buffer += chunk
                while True:
                    parsed = _take_frame(buffer)
                    if parsed is None:
                        break
                    body, buffer = parsed
                    self._receive(body)
        except (OSError, ValueError):
            pass
        except MalformedOutput as exc:
            self.malformed.append(str(exc))
        finally:
            with self._lock:
                self._closed = True
                self._lock.notify_all()

    def _receive(self, body: bytes) -> None:
        try:
            message = json.loads(body.decode("utf-8"))
        except ValueError as exc:
            raise MalformedOutput(f"the server sent a body that is not UTF-8 JSON: {exc}") from None
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise MalformedOutput(f"the server sent a message that is not JSON-RPC 2.0: {body[:200]!r}")
        with self._lock:
            self.messages.append(message)
            if "method" not in message:
                self.answers.setdefault(answer_key(message.get("id")), []).append(message)
            self._lock.notify_all()
        if "method" in message and "id" in message and self.answer_server_requests:
            self.send({"jsonrpc": "2.0", "id": message["id"], "result": None})


def answer_key(msg_id: Any) -> tuple[str, Any]:
    """Request ids 1 and "1" are different requests."""
    return type(msg_id).__name__, msg_id


def _take_frame(buffer: bytes) -> tuple[bytes, bytes] | None:
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > 4096:
            raise MalformedOutput(f"no header block end in {buffer[:100]!r}")
        return None
    length = None
    for line in buffer[:end].split(b"\r\n"):
        name, _, value = line.partition(b": ")
        if name == b"Content-Length":
            length = int(value)
        elif name != b"Content-Type":
            raise MalformedOutput(f"unexpected header line {line[:100]!r}")
    if length is None:
        raise MalformedOutput(f"a header block without Content-Length: {buffer[:end]!r}")
    start = end + 4
    if len(buffer) < start + length:
        return None
    return buffer[start:start + length], buffer[start + length:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connect(port: int, timeout: float = STARTUP_TIMEOUT_S) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.settimeout(None)
            return sock
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def start_tcp_server(log_file: Path, port: int, *extra: str, level: str = "info") -> subprocess.Popen:
    return subprocess.Popen(server_command(log_file, "--tcp", f"127.0.0.1:{port}", *extra, level=level),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _stderr():
    """The server's stderr: inherited when RAW_LSP_STDERR is set (debugging), else dropped."""
    return None if os.environ.get("RAW_LSP_STDERR") else subprocess.DEVNULL
