"""The two transports, stdio and TCP, each reading frames with ``FrameReader`` and handing them
to ``WizardProtocol.receive``; each returns the session's exit code (0 after shutdown and exit).

They replace pygls' ``start_io``/``start_tcp``, whose reader crashes or goes deaf on a bad frame
(``framing.py``) and whose exit code is lost (``exit`` raises SystemExit inside a handler, which
pygls swallows). stdin is read by a daemon thread, so that ``exit`` ends the process at once even
when the client keeps the pipe open.

TCP serves a team: every connection is a session of its own (``make_session`` builds its
``WizardServer``: documents, settings, request state, cache), all of them sharing one model and one
worker (``team.py``). A connection's ``exit``, its refusal (no valid token) or its end closes that
connection only; the server serves until SIGTERM or SIGINT. At most ``MAX_CONNECTIONS`` at once:
one more gets a JSON-RPC error saying so and is disconnected. Every connection has TCP keepalive
(``keep_alive``): a peer that vanishes without closing (a laptop put to sleep, a dropped VPN)
sends no FIN, and without probes its session would hold a place in its token's connection limit
until the next write failed, which an idle session never makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from typing import BinaryIO

from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer

from .framing import READ_CHUNK, FrameReader
from .loop_post import post
from .protocol import WizardProtocol

log = logging.getLogger(__name__)
MAX_CONNECTIONS = 64
FULL_MESSAGE = f"wizardcoder: this server already serves {MAX_CONNECTIONS} connections, the most it serves at once"
# An idle connection is probed after KEEPALIVE_IDLE_S, then every KEEPALIVE_INTERVAL_S; after
# KEEPALIVE_PROBES unanswered probes the kernel ends it (about 2 minutes for a vanished peer) and
# its session ends as if the client had closed it. Linux's default would wait over two hours.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 60, 10, 6


def keep_alive(sock: socket.socket | None) -> None:
    """Turn on TCP keepalive with the probing above (where the platform has the options)."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                        ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


async def _serve(protocol: WizardProtocol, reader: FrameReader) -> int:
    while protocol.exit_code is None:
        frame = await reader.next()
        if frame is None:
            log.info("the client closed the connection")
            break
        protocol.receive(frame)
    if protocol.exit_code is not None:
        return protocol.exit_code
    return 0 if protocol._shutdown else 1


def serve_stdio(server: LanguageServer, stdin: BinaryIO, stdout: BinaryIO) -> int:
    protocol = _protocol(server)
    protocol.set_writer(StdoutWriter(stdout))

    async def main() -> int:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes] = asyncio.Queue()
        read = _raw_reader(stdin)

        def pump() -> None:  # a daemon thread: a blocked read never holds up the exit
            while True:
                try:
                    chunk = read(READ_CHUNK)
                except (OSError, ValueError):
                    chunk = b""
                if not post(loop, chunks.put_nowait, chunk):
                    return
                if not chunk:
                    return

        threading.Thread(target=pump, name="wizardcoder-stdin", daemon=True).start()

        async def read_some(_: int) -> bytes:
            return await chunks.get()

        return await _serve(protocol, FrameReader(read_some))

    return asyncio.run(main())


def serve_tcp(make_session: Callable[[], LanguageServer], host: str, port: int,
              on_listening: Callable[[], None] | None = None) -> int:
    """Listen on ``host:port`` (the caller has checked that it may) until SIGTERM or SIGINT; 0 then.
    ``on_listening`` runs once the port is open (the caller starts loading the model)."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        live: set[asyncio.StreamWriter] = set()  # the open sessions' connections

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if len(live) >= MAX_CONNECTIONS:
                log.warning("refused a TCP connection: %d are open, the most this server serves", len(live))
                writer.write(_frame({"jsonrpc": "2.0", "id": None,
                                     "error": {"code": -32600, "message": FULL_MESSAGE}}))
                with contextlib.suppress(OSError):
                    await writer.drain()
                writer.close()
                return
            live.add(writer)
            keep_alive(writer.get_extra_info("socket"))
            session = make_session()
            protocol = _protocol(session)
            protocol.set_writer(writer)
            try:
                await _serve(protocol, FrameReader(reader.read))
            except Exception:
                log.exception("a TCP session failed")
            finally:
                live.discard(writer)
                end = getattr(session, "end_session", None)
                if end is not None:
                    end()
                with contextlib.suppress(OSError, RuntimeError):
                    await writer.drain()
                writer.close()

        tcp = await asyncio.start_server(on_connection, host, port)
        log.info("serving on %s", ", ".join(str(s.getsockname()) for s in tcp.sockets))
        if on_listening is not None:
            on_listening()
        await stop.wait()
        log.info("stopping: a signal came; closing %d connections", len(live))
        tcp.close()
        for writer in list(live):  # Server.wait_closed waits for every connection (Python 3.12.1 on)
            writer.close()
        await tcp.wait_closed()
        return 0

    return asyncio.run(main())


def _raw_reader(stdin: BinaryIO):
    """``os.read`` on the file descriptor: a daemon thread blocked inside a buffered reader's lock
    aborts the interpreter at exit ("could not acquire lock ... at interpreter shutdown")."""
    try:
        fd = stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return getattr(stdin, "read1", stdin.read)
    return lambda size: os.read(fd, size)


def _protocol(server: LanguageServer) -> WizardProtocol:
    protocol = server.protocol
    if not isinstance(protocol, WizardProtocol):
        raise TypeError("the transports serve a WizardProtocol")
    return protocol


def _frame(message: dict) -> bytes:
    body = json.dumps(message).encode("utf-8")
    return b"Content-Length: %d\r\n\r\n" % len(body) + body
