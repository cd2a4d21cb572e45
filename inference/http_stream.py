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
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
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


@contextlib.contextmanager
def _exchange(endpoint: Endpoint, timeout_s: float, cancel: Any | None) -> Iterator[tuple[http.client.HTTPConnection, _Watchdog]]:
    """A connected connection and its watchdog, both ended on exit."""
    if endpoint.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            endpoint.host, endpoint.port, timeout=timeout_s, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout_s)
    try:
        try:
            conn.connect()
        except ssl.SSLError as exc:
            raise RemoteError(f"{endpoint}: TLS failed ({exc.reason or exc})") from None
        except (TimeoutError, socket.timeout):
            raise RemoteError(f"{endpoint}: no connection within {timeout_s:g} s") from None
        except ConnectionRefusedError:
            raise RemoteError(f"{endpoint}: connection refused (is the inference server running?)") from None
        except OSError as exc:
            raise RemoteError(f"{endpoint}: cannot connect ({exc.strerror or exc})") from None
        assert conn.sock is not None
        watchdog = _Watchdog(conn.sock, timeout_s, cancel)
        try:
            yield conn, watchdog
        finally:
            watchdog.stop()
    finally:
        conn.close()


def _failure(endpoint: Endpoint, watchdog: _Watchdog, timeout_s: float, what: str, exc: BaseException | None) -> RemoteError:
    """The error for a read that failed or ended early, by what the watchdog saw."""
    if watchdog.reason == "timeout" or isinstance(exc, (TimeoutError, socket.timeout)):
        return RemoteError(f"{endpoint}: the server stalled: nothing {what} for {timeout_s:g} s (remoteTimeoutMs)")
    detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return RemoteError(f"{endpoint}: the connection broke {what}{detail}")


def _request(conn: http.client.HTTPConnection, watchdog: _Watchdog, endpoint: Endpoint, timeout_s: float, method: str,
             path: str, body: bytes | None, headers: dict[str, str], accept: str) -> http.client.HTTPResponse:
    """Send, read the status line and headers; an error status becomes RemoteError."""
    all_headers = {"Accept": accept, "User-Agent": "wizardcoder-tpu", **headers}
    if body is not None:
        all_headers["Content-Type"] = "application/json"
    try:
        conn.request(method, endpoint.base_path + path, body=body, headers=all_headers)
        response = conn.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        raise _failure(endpoint, watchdog, timeout_s, "before the answer's headers", exc) from None
    if response.status >= 300:
        raise RemoteError(f"{endpoint}{path} answered {response.status} {response.reason}: "
                          f"{_error_detail(response)}{_hint(response.status)}")
    return response


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


def get_json(endpoint: Endpoint, path: str, headers: dict[str, str], timeout_s: float) -> Any:
    """``GET`` a JSON document of at most ``MAX_BODY_BYTES``, within ``timeout_s`` overall."""
    with _exchange(endpoint, timeout_s, None) as (conn, watchdog):
        response = _request(conn, watchdog, endpoint, timeout_s, "GET", path, None, headers, "application/json")
        try:
            raw = response.read(MAX_BODY_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise _failure(endpoint, watchdog, timeout_s, "while reading the answer", exc) from None
        if watchdog.reason is not None:
            raise _failure(endpoint, watchdog, timeout_s, "while reading the answer", None)
    if len(raw) > MAX_BODY_BYTES:
        raise RemoteError(f"{endpoint}{path}: the answer is larger than {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise RemoteError(f"{endpoint}{path} answered malformed JSON ({exc}): {raw[:120]!r}") from None


def post_events(endpoint: Endpoint, path: str, body: dict[str, Any], headers: dict[str, str], timeout_s: float,
                cancel: Any | None) -> Iterator[dict[str, Any]]:
    """``POST`` ``body`` as JSON and yield the JSON object of each server-sent event's data, until
    ``[DONE]`` or the end of the stream. Close the generator to close the connection (that is how
    a caller stops the server's generation early). A set ``cancel`` ends the iteration quietly
    (the caller knows it cancelled); everything else that goes wrong raises RemoteError."""
    with _exchange(endpoint, timeout_s, cancel) as (conn, watchdog):
        payload = json.dumps(body).encode("utf-8")
        try:
            response = _request(conn, watchdog, endpoint, timeout_s, "POST", path, payload, headers, "text/event-stream")
        except RemoteError:
            if watchdog.reason == "cancelled":
                return
            raise
        content_type = response.getheader("Content-Type", "")
        if not content_type.startswith("text/event-stream"):
            raise RemoteError(f"{endpoint}{path} answered {content_type or 'no Content-Type'}, not an event stream "
                              f"(text/event-stream): {_error_detail(response)}")
        for data in _event_data(response, watchdog, endpoint, timeout_s):
            if data.strip() == "[DONE]":
                return
            try:
                event = json.loads(data)
            except ValueError as exc:
                raise RemoteError(f"{endpoint}{path}: an event's data is not JSON ({exc}): {data[:120]!r}") from None
            if not isinstance(event, dict):
                raise RemoteError(f"{endpoint}{path}: an event's data is not a JSON object: {data[:120]!r}")
            watchdog.alive()
            yield event


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
