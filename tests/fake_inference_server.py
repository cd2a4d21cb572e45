"""An OpenAI-compatible inference server that misbehaves on purpose, for the remote backend's
fault tests (no tests here). It runs ``http.server`` in a thread on 127.0.0.1; ``behaviour``
says what the next completion request gets:

- ``ok``: the pieces of ``PIECES`` as server-sent events, ``finish_reason: length``, ``[DONE]``;
- ``many``: ``many_pieces`` pieces `` x`` at once, then ``finish_reason: length`` (bench/remote_overhead.py);
- ``endless``: pieces forever (every 10 ms), until the client closes the connection;
- ``stall``: one piece, then silence with the connection open;
- ``stall_headers``: the request is read, nothing is answered;
- ``slowloris``: headers, then a byte every 50 ms that never completes an event;
- ``status_500`` / ``status_401``: an error status with an OpenAI-style JSON error body;
- ``broken_sse``: an event whose data is not JSON;
- ``not_sse``: 200 with an HTML body;
- ``cut``: one piece, then the connection closes without a final event;
- ``error_event``: one piece, then ``{"error": …}`` as data (how vLLM reports a failure mid-stream);
- ``close_reused``: on a connection that served a request before, the connection closes without
  an answer (a keep-alive timeout that struck as the request was sent); on a new one, ``ok``.

Streams that end (``ok``, ``many``, ``close_reused``) keep their connection open afterwards
(chunked, HTTP/1.1 keep-alive) unless ``keep_alive`` is False, as real servers do; with
``close_idle`` the server closes it just after the answer instead (a keep-alive timeout of zero),
without saying so. ``connections`` counts the connections accepted.

``/v1/models`` answers a model list, or malformed JSON when ``models_behaviour`` is ``malformed``.
``requests`` keeps each request's path, headers and JSON body; ``closed_early`` counts streams
whose client went away while the server was still writing.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PIECES = ["    return", " a", " +", " b", "\n"]
MODEL_ID = "fake-model"


class FakeInferenceServer:
    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        """``tls``: (certificate file, key file) to serve ``https://localhost:PORT`` instead."""
        self.behaviour = "ok"
        self.models_behaviour = "ok"
        self.many_pieces = 16
        self.requests: list[dict[str, Any]] = []
        self.closed_early = 0
        self.keep_alive = True
        self.close_idle = False
        self.connections = 0
        self.stop = threading.Event()  # ends the stalls when the test is over
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # As real servers do (uvicorn, llama.cpp's cpp-httplib): without it Nagle's algorithm holds
                # each event behind the client's delayed ACK of the last, 40 ms, on a kept-alive connection.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.served = 0  # requests answered on this connection
                self.chunked = False
                with owner.lock:
                    owner.connections += 1

            def do_GET(self) -> None:
                owner.requests.append({"path": self.path, "headers": dict(self.headers)})
                self.served += 1
                if owner.models_behaviour == "malformed":
                    self._send(200, "application/json", b"{oops")
                else:
                    self._send(200, "application/json",
                               json.dumps({"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.served += 1
                getattr(self, f"_{owner.behaviour}")()

            def _send(self, status: int, content_type: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                # Decided before the client can read the answer: a test that sets close_idle once it
                # has this answer must not change what happens to this connection.
                self.close_connection = self.close_connection or owner.close_idle
                self.wfile.write(data)

            def _start_stream(self, keep_alive: bool = False) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.chunked = keep_alive and owner.keep_alive
                if self.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()

            def _write(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n" if self.chunked else data)
                self.wfile.flush()

            def _end_stream(self) -> None:
                if self.chunked:
                    self.close_connection = owner.close_idle  # before the end is sent, as in _send
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()

            def _event(self, data: Any) -> None:
                text = data if isinstance(data, str) else json.dumps(data)
                self._write(f"data: {text}\n\n".encode())

            def _piece(self, text: str, finish: str | None = None) -> None:
                self._event({"id": "c", "object": "text_completion", "model": MODEL_ID,
                             "choices": [{"index": 0, "text": text, "finish_reason": finish}]})

            def _ok(self) -> None:
                self._start_stream(keep_alive=True)
                for piece in PIECES:
                    self._piece(piece)
                self._piece("", "length")
                self._event("[DONE]")
                self._end_stream()

            def _many(self) -> None:
                self._start_stream(keep_alive=True)
                for _ in range(owner.many_pieces):
                    self._piece(" x")
                self._piece("", "length")
                self._event("[DONE]")
                self._end_stream()

            def _close_reused(self) -> None:
                if self.served > 1:
                    self.close_connection = True
                    return
                self._ok()

            def _endless(self) -> None:
                self._start_stream()
                try:
                    while not owner.stop.is_set():
                        self._piece(" x")
                        time.sleep(0.01)
                except (BrokenPipeError, ConnectionResetError):
                    owner.closed_early += 1

            def _stall(self) -> None:
                self._start_stream()
                self._piece(PIECES[0])
                owner.stop.wait(30)

            def _stall_headers(self) -> None:
                owner.stop.wait(30)
                self.close_connection = True

            def _slowloris(self) -> None:
                self._start_stream()
                with _suppress_gone():
                    for byte in b"data: " + b"x" * 10_000:
                        if owner.stop.wait(0.05):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()

            def _status_500(self) -> None:
                self._send(500, "application/json", json.dumps({"error": {"message": "the GPU caught fire"}}).encode())

            def _status_401(self) -> None:
                self._send(401, "application/json", json.dumps({"error": {"message": "invalid API key"}}).encode())

            def _broken_sse(self) -> None:
                self._start_stream()
                self._event("{not json")

            def _not_sse(self) -> None:
                self._send(200, "text/html", b"<html>a proxy's login page</html>")

            def _cut(self) -> None:
                self._start_stream()
                self._piece(PIECES[0])

            def _error_event(self) -> None:
                self._start_stream()
                self._piece(PIECES[0])
                self._event({"error": {"message": "out of KV cache"}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if tls is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.url = f"https://localhost:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class _suppress_gone:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, *rest: Any) -> bool:
        return kind is not None and issubclass(kind, (BrokenPipeError, ConnectionResetError))
