"""HTTP for the remote backend: one JSON ``GET`` and one ``POST`` read as server-sent events, each
bounded in time and in size, the stream cancellable from another thread.

Standard library only (``http.client``, ``ssl``): two requests do not need a client library.

Why a watchdog thread beside the reader: a blocking ``recv`` cannot be interrupted by a flag, and
a socket timeout alone misses a server that trickles bytes (slowloris: every ``recv`` returns in
time, no event ever completes) and a ``CancelToken`` set on the event loop. So the reader blocks
on the socket as usual (its timeout, the same ``timeout_s``, is a backstop), and the watchdog
shuts the socket down when the request is cancelled or when no event has arrived for
``timeout_s``: the read returns at once and the reader says why. What counts as life is a whole
event with data; comments (keep-alive pings) and stray bytes do not.

Secrets: ``ApiKey`` never shows its value (``repr``, ``str``, error messages); it reaches only
the ``Authorization`` header of requests to the endpoint. Redirects are not followed (a redirect
would carry the header elsewhere), and a URL with a user or password in it is refused (URLs are
logged). ``http://`` is refused unless the host is loopback or the operator allowed it.

Connections (``Connections``): HTTP/1.1 keep-alive where the server allows it, so that a
keystroke's request does not pay a TCP connect (and, over TLS, a handshake: the case of a GPU
host across the network). A response read to its end leaves its connection idle for the next
request. A stream closed early (post-processing has decided, a newer keystroke cancelled it)
must close its connection: that is the only way to tell the server to stop generating; a
replacement is then opened in the background, so the next request still finds one connected.
An idle connection the server has meanwhile closed (keep-alive timeouts are seconds) is noticed
before use, and a request that fails on a reused connection before any answer is sent once more
on a fresh one (the server never started it: these requests are safe to repeat).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import select
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RemoteError

MAX_EVENT_BYTES = 1 << 20  # one server-sent event (or one line of it) at most: beyond it the stream is not one
MAX_BODY_BYTES = 1 << 20  # a JSON answer, or the start of an error body, at most
WATCH_EVERY_S = 0.02  # how often the watchdog looks at the cancel token and the clock
DRAIN_S = 0.5  # after its final event, how long a stream may take to end before its connection is dropped
DRAIN_EVENTS = 8  # and how many more events it may send (OpenAI's usage chunk, [DONE])


def is_loopback(host: str) -> bool:
    """``localhost`` or a literal loopback address (127.0.0.0/8, ::1); no name is resolved."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Endpoint:
    """An inference server's base URL, checked: ``https://host[:port][/base]`` or, on loopback (or
    when the operator allowed it), ``http://``."""

    scheme: str
    host: str
    port: int
    base_path: str  # "" or "/something", no trailing slash

    @classmethod
    def parse(cls, url: str, allow_http: bool = False) -> Endpoint:
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError(f"endpoint {url!r} is not an http(s) URL such as https://host:8000")
        if parts.username is not None or parts.password is not None:
            raise RemoteError("the endpoint must not hold a user or password (URLs are logged): give the key "
                              "with --api-key-env or --api-key-file")
        if parts.query or parts.fragment:
            raise RemoteError(f"endpoint {url!r}: give the server's base URL, without ?query or #fragment")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise RemoteError(f"endpoint {url!r}: {exc}") from None
        if parts.scheme == "http" and not is_loopback(parts.hostname) and not allow_http:
            raise RemoteError(f"endpoint {url}: plain http:// is refused for {parts.hostname}, which is not a loopback "
                              "address (the code you type would cross the network unencrypted); use https://, "
                              "or start the server with --allow-http on a network you trust")
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.origin + self.base_path


class ApiKey:
    """A bearer token that does not show itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str, source: str):
        value = value.strip()
        if not value or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in value):
            raise RemoteError(f"the API key from {source} is empty or holds spaces or control characters")
        self._value = value

    @classmethod
    def from_env(cls, name: str) -> ApiKey:
        value = os.environ.get(name)
        if value is None:
            raise RemoteError(f"the environment variable {name} (named by --api-key-env) is not set")
        return cls(value, f"${name}")

    @classmethod
    def from_file(cls, path: str | Path) -> ApiKey:
        try:
            value = Path(path).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RemoteError(f"cannot read the API key file {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
        return cls(value, str(path))

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._value}"}

    def __repr__(self) -> str:
        return "ApiKey(<hidden>)"

    __str__ = __repr__


class _Watchdog:
    """Shuts the socket down when ``cancel`` is set or no event came for ``timeout_s``; ``reason``
    says which. After ``stop`` it never touches the socket again (the lock orders the two)."""

    def __init__(self, sock: socket.socket, timeout_s: float, cancel: Any | None):
        self._sock, self._timeout, self._cancel = sock, timeout_s, cancel
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._stopped = False
        self.reason: str | None = None  # cancelled | timeout
        self._thread = threading.Thread(target=self._watch, name="wizardcoder-remote-watchdog", daemon=True)
        self._thread.start()

    def alive(self) -> None:
        self._last = time.monotonic()

    def limit(self, seconds: float) -> None:
        """From now on wait at most ``seconds`` for the next event (the end of a finished stream)."""
        self._timeout, self._last = min(self._timeout, seconds), time.monotonic()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_EVERY_S)
            with self._lock:
                if self._stopped:
                    return
                if self._cancel is not None and self._cancel.cancelled:
                    self.reason = "cancelled"
                elif time.monotonic() - self._last > self._timeout:
                    self.reason = "timeout"
                else:
                    continue
                with contextlib.suppress(OSError):  # the base class's: an SSL socket's own would drop its state
                    socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
                return


def _connect(endpoint: Endpoint, timeout_s: float) -> http.client.HTTPConnection:
    """A new connection to ``endpoint``, connected (TLS included); each failure a RemoteError."""
    if endpoint.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            endpoint.host, endpoint.port, timeout=timeout_s, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout_s)
    try:
        conn.connect()
    except ssl.SSLError as exc:
        conn.close()
        raise RemoteError(f"{endpoint}: TLS failed ({exc.reason or exc})") from None
    except (TimeoutError, socket.timeout):
        conn.close()
        raise RemoteError(f"{endpoint}: no connection within {timeout_s:g} s") from None
    except ConnectionRefusedError:
        conn.close()
        raise RemoteError(f"{endpoint}: connection refused (is the inference server running?)") from None
    except OSError as exc:
        conn.close()
        raise RemoteError(f"{endpoint}: cannot connect ({exc.strerror or exc})") from None
    return conn


def _stale(conn: http.client.HTTPConnection) -> bool:
    """An idle connection that cannot carry a request: closed here, or readable while idle (the
    server closed its end, or sent what no request asked for)."""
    if conn.sock is None:
        return True
    try:
        readable, _, _ = select.select([conn.sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class Connections:
    """The connections to one endpoint: at most one idle, kept for the next request (see the
    module's docstring). Thread-safe; ``opened`` counts the connections made (for tests and
    bench/remote_overhead.py)."""

    def __init__(self, endpoint: Endpoint, timeout_s: float):
        self.endpoint, self.timeout_s = endpoint, timeout_s
        self.opened = 0
        self._idle: http.client.HTTPConnection | None = None
        self._opening = False  # a replacement is being connected in the background
        self._closed = False
        self._lock = threading.Lock()

    def take(self, fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        """A connection for one request (``fresh``: a new one), and whether it was idle before (a
        reused or spare one, which the server may have closed meanwhile)."""
        conn = None
        if not fresh:
            with self._lock:
                conn, self._idle = self._idle, None
        if conn is not None:
            if not _stale(conn):
                return conn, True
            conn.close()
        conn = _connect(self.endpoint, self.timeout_s)
        with self._lock:
            self.opened += 1
        return conn, False

    def keep(self, conn: http.client.HTTPConnection) -> None:
        """``conn``'s answer was read to its end and the server keeps it open: the next request's."""
        with self._lock:
            if self._idle is None and not self._closed:
                self._idle, conn = conn, None
        if conn is not None:
            conn.close()

    def discard(self, conn: http.client.HTTPConnection, replace: bool = False) -> None:
        """Close ``conn``; with ``replace``, connect the next request's in the background."""
        conn.close()
        with self._lock:
            if not replace or self._closed or self._idle is not None or self._opening:
                return
            self._opening = True
        threading.Thread(target=self._open_spare, name="wizardcoder-remote-connect", daemon=True).start()

    def _open_spare(self) -> None:
        conn: http.client.HTTPConnection | None = None
        try:
            conn = _connect(self.endpoint, self.timeout_s)
        except RemoteError:
            pass  # the next request connects itself and says why it cannot
        with self._lock:
            self._opening = False
            if conn is not None:
                self.opened += 1
                if self._idle is None and not self._closed:
                    self._idle, conn = conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._idle = self._idle, None
        if conn is not None:
            conn.close()


class _Exchange:
    """One request on a connection from ``Connections``, with its watchdog; ``end`` keeps the
    connection when its answer was read to the end and the server keeps it open, else closes it
    (a stream left early: the server stops generating) and has a replacement connected."""

    def __init__(self, connections: Connections, cancel: Any | None, fresh: bool = False):
        self.connections = connections
        self.conn, self.reused = connections.take(fresh)
        assert self.conn.sock is not None
        self.watchdog = _Watchdog(self.conn.sock, connections.timeout_s, cancel)
        self.response: http.client.HTTPResponse | None = None

    def end(self, replace: bool = True) -> None:
        """``replace=False``: the request goes again on a fresh connection of its own, so a
        background spare would be one connection too many."""
        self.watchdog.stop()
        response = self.response
        if (response is not None and response.isclosed() and not response.will_close
                and self.watchdog.reason is None):
            self.connections.keep(self.conn)
        else:  # left before its end, failed, or the server closes it: the next request gets a new one
            self.connections.discard(self.conn, replace=replace)


class _Retry(Exception):
    """A reused connection failed before any answer: the request goes once more on a fresh one."""


def _failure(endpoint: Endpoint, watchdog: _Watchdog, timeout_s: float, what: str, exc: BaseException | None) -> RemoteError:
    """The error for a read that failed or ended early, by what the watchdog saw."""
    if watchdog.reason == "timeout" or isinstance(exc, (TimeoutError, socket.timeout)):
        return RemoteError(f"{endpoint}: the server stalled: nothing {what} for {timeout_s:g} s (remoteTimeoutMs)")
    detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return RemoteError(f"{endpoint}: the connection broke {what}{detail}")


def _request(exchange: _Exchange, method: str, path: str, body: bytes | None, headers: dict[str, str],
             accept: str) -> http.client.HTTPResponse:
    """Send, read the status line and headers; an error status becomes RemoteError."""
    endpoint, timeout_s = exchange.connections.endpoint, exchange.connections.timeout_s
    all_headers = {"Accept": accept, "User-Agent": "wizardcoder-tpu", **headers}
    if body is not None:
        all_headers["Content-Type"] = "application/json"
    try:
        exchange.conn.request(method, endpoint.base_path + path, body=body, headers=all_headers)
        response = exchange.conn.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        if exchange.reused and exchange.watchdog.reason is None and isinstance(
                exc, (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine)):
            raise _Retry() from None
        raise _failure(endpoint, exchange.watchdog, timeout_s, "before the answer's headers", exc) from None
    exchange.response = response
    if response.status >= 300:
        raise RemoteError(f"{endpoint}{path} answered {response.status} {response.reason}: "
                          f"{_error_detail(response)}{_hint(response.status)}")
    return response


def _sent(exchange: _Exchange, method: str, path: str, body: bytes | None, headers: dict[str, str],
          accept: str) -> http.client.HTTPResponse:
    """``_request``, the exchange ended when it fails."""
    try:
        return _request(exchange, method, path, body, headers, accept)
    except _Retry:
        exchange.end(replace=False)
        raise
    except BaseException:
        exchange.end()
        raise


@contextlib.contextmanager
def _answer(connections: Connections, cancel: Any | None, method: str, path: str, body: bytes | None,
            headers: dict[str, str], accept: str) -> Iterator[tuple[_Exchange, http.client.HTTPResponse]]:
    """The exchange and its answer's headers (sent once more on a fresh connection when a reused
    one turned out closed); on exit the connection is kept or closed (``_Exchange.end``)."""
    exchange = _Exchange(connections, cancel)
    try:
        response = _sent(exchange, method, path, body, headers, accept)
    except _Retry:
        exchange = _Exchange(connections, cancel, fresh=True)
        response = _sent(exchange, method, path, body, headers, accept)
    try:
        yield exchange, response
    finally:
        exchange.end()


def _error_detail(response: http.client.HTTPResponse) -> str:
    """The server's own message from an error body (OpenAI's ``error.message``, FastAPI's
    ``detail``, llama.cpp's ``error.message``), or the body's start."""
    with contextlib.suppress(OSError, http.client.HTTPException):
        raw = response.read(64 * 1024)
        text = raw.decode("utf-8", "replace").strip()
        with contextlib.suppress(ValueError):
            data = json.loads(text)
            if isinstance(data, dict):
                error = data.get("error", data.get("detail", data.get("message")))
                if isinstance(error, dict):
                    error = error.get("message", error)
                if error is not None:
                    text = error if isinstance(error, str) else json.dumps(error)
        return text[:300] or "(no body)"
    return "(the body could not be read)"


def _hint(status: int) -> str:
    if status in (401, 403):
        return " (check the API key: --api-key-env or --api-key-file on the server's command line)"
    if status == 404:
        return " (check the endpoint's base URL and remoteProtocol)"
    if 300 <= status < 400:
        return " (redirects are not followed: give the final URL as the endpoint)"
    return ""


def get_json(connections: Connections, path: str, headers: dict[str, str]) -> Any:
    """``GET`` a JSON document of at most ``MAX_BODY_BYTES``, within the timeout overall."""
    endpoint, timeout_s = connections.endpoint, connections.timeout_s
    with _answer(connections, None, "GET", path, None, headers, "application/json") as (exchange, response):
        try:
            raw = response.read(MAX_BODY_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise _failure(endpoint, exchange.watchdog, timeout_s, "while reading the answer", exc) from None
        if exchange.watchdog.reason is not None:
            raise _failure(endpoint, exchange.watchdog, timeout_s, "while reading the answer", None)
    if len(raw) > MAX_BODY_BYTES:
        raise RemoteError(f"{endpoint}{path}: the answer is larger than {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise RemoteError(f"{endpoint}{path} answered malformed JSON ({exc}): {raw[:120]!r}") from None


class EventStream:
    """The JSON object of each server-sent event of one ``POST``, as they come (iterate it), until
    ``[DONE]`` or the end of the stream. ``close`` before the end closes the connection: that is
    how a caller stops the server's generation early. ``finish``, once the caller has its final
    event, reads what the server still sends (OpenAI's ``[DONE]``, the end of a chunked body) for
    at most ``DRAIN_S``, so that the connection can carry the next request. A set ``cancel`` ends
    the iteration quietly (the caller knows it cancelled); everything else that goes wrong raises
    RemoteError."""

    def __init__(self, connections: Connections, path: str, body: dict[str, Any], headers: dict[str, str],
                 cancel: Any | None):
        self._exchange: _Exchange | None = None
        self._events = self._read(connections, path, json.dumps(body).encode("utf-8"), headers, cancel)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._events

    def finish(self) -> None:
        if self._exchange is not None:
            self._exchange.watchdog.limit(DRAIN_S)
        with contextlib.suppress(RemoteError):
            for _ in zip(range(DRAIN_EVENTS), self._events):
                pass
        self.close()

    def close(self) -> None:
        self._events.close()

    def _read(self, connections: Connections, path: str, payload: bytes, headers: dict[str, str],
              cancel: Any | None) -> Iterator[dict[str, Any]]:
        endpoint, timeout_s = connections.endpoint, connections.timeout_s
        try:
            with _answer(connections, cancel, "POST", path, payload, headers, "text/event-stream") as (exchange, response):
                self._exchange = exchange
                content_type = response.getheader("Content-Type", "")
                if not content_type.startswith("text/event-stream"):
                    raise RemoteError(f"{endpoint}{path} answered {content_type or 'no Content-Type'}, not an event "
                                      f"stream (text/event-stream): {_error_detail(response)}")
                for data in _event_data(response, exchange.watchdog, endpoint, timeout_s):
                    if data.strip() == "[DONE]":
                        _read_to_end(response)
                        return
                    try:
                        event = json.loads(data)
                    except ValueError as exc:
                        raise RemoteError(f"{endpoint}{path}: an event's data is not JSON ({exc}): "
                                          f"{data[:120]!r}") from None
                    if not isinstance(event, dict):
                        raise RemoteError(f"{endpoint}{path}: an event's data is not a JSON object: {data[:120]!r}")
                    exchange.watchdog.alive()
                    yield event
        except RemoteError:
            if cancel is not None and cancel.cancelled:
                return
            raise


def post_events(connections: Connections, path: str, body: dict[str, Any], headers: dict[str, str],
                cancel: Any | None) -> EventStream:
    """``POST`` ``body`` as JSON, read as server-sent events (``EventStream``); nothing is sent
    before the first event is asked for."""
    return EventStream(connections, path, body, headers, cancel)


def _read_to_end(response: http.client.HTTPResponse) -> None:
    """What follows ``[DONE]`` (nothing, or the end of a chunked body), so that the connection
    can carry the next request; a server that sends more loses the connection instead."""
    with contextlib.suppress(OSError, http.client.HTTPException):
        response.read(MAX_EVENT_BYTES)


def _event_data(response: http.client.HTTPResponse, watchdog: _Watchdog, endpoint: Endpoint,
                timeout_s: float) -> Iterator[str]:
    """The ``data`` of each event of a ``text/event-stream`` body (lines ``data: …`` up to a blank
    line; comments, ``event``, ``id`` and ``retry`` lines ignored). A cancelled read ends quietly."""
    buffer = b""
    data: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = response.read1(64 * 1024)
        except (OSError, http.client.HTTPException) as exc:
            if watchdog.reason == "cancelled":
                return
            raise _failure(endpoint, watchdog, timeout_s, "in the middle of the stream", exc) from None
        if not chunk:
            if watchdog.reason == "cancelled":
                return
            if watchdog.reason is not None:
                raise _failure(endpoint, watchdog, timeout_s, "in the middle of the stream", None)
            return  # the stream's end; an unfinished last event is dropped, as the SSE standard says
        buffer += chunk
        while (newline := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[:newline].rstrip(b"\r"), buffer[newline + 1:]
            if not line:
                if data:
                    try:
                        yield b"\n".join(data).decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise RemoteError(f"{endpoint}: an event is not UTF-8 ({exc})") from None
                    data, size = [], 0
                continue
            name, _, value = line.partition(b":")
            if name == b"data":
                data.append(value[1:] if value.startswith(b" ") else value)
                size += len(value)
                if size > MAX_EVENT_BYTES:
                    raise RemoteError(f"{endpoint}: an event is larger than {MAX_EVENT_BYTES} bytes: not a token stream")
        if len(buffer) > MAX_EVENT_BYTES:
            raise RemoteError(f"{endpoint}: a line of the stream is longer than {MAX_EVENT_BYTES} bytes: not an event stream")
