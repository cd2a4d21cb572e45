"""The two transports, stdio and TCP, each reading frames with ``FrameReader`` and handing them
to ``WizardProtocol.receive``; each returns the session's exit code (0 after shutdown and exit).

They replace pygls' ``start_io``/``start_tcp``, whose reader crashes or goes deaf on a bad frame
(``framing.py``) and whose exit code is lost (``exit`` raises SystemExit inside a handler, which
pygls swallows). stdin is read by a daemon thread, so that ``exit`` ends the process at once even
when the client keeps the pipe open.

TCP serves one client per server: a client that connects while another is being served gets a
JSON-RPC error saying so and is disconnected (pygls handed every connection the same protocol
object, so a second client could ask for the first one's documents and received its replies).
When the client leaves, the server ends, as it did with pygls. Serving several clients at once,
each with its own session, is a job for the team-serving work (issue 13).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from typing import BinaryIO

from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer

from .framing import READ_CHUNK, FrameReader
from .protocol import WizardProtocol

log = logging.getLogger(__name__)
BUSY_MESSAGE = ("wizardcoder: this server already serves another client and serves one client only; "
                "start a server of your own")


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
                loop.call_soon_threadsafe(chunks.put_nowait, chunk)
                if not chunk:
                    return

        threading.Thread(target=pump, name="wizardcoder-stdin", daemon=True).start()

        async def read_some(_: int) -> bytes:
            return await chunks.get()

        return await _serve(protocol, FrameReader(read_some))

    return asyncio.run(main())


def serve_tcp(server: LanguageServer, host: str, port: int) -> int:
    """Listen on ``host:port`` (the caller checks that it is a loopback address) for one client."""
    protocol = _protocol(server)

    async def main() -> int:
        finished: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        busy = False

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal busy
            if busy:
                log.warning("refused a second TCP client while one is being served")
                writer.write(_frame({"jsonrpc": "2.0", "id": None,
                                     "error": {"code": -32600, "message": BUSY_MESSAGE}}))
                try:
                    await writer.drain()
                finally:
                    writer.close()
                return
            busy = True
            protocol.set_writer(writer)
            try:
                code = await _serve(protocol, FrameReader(reader.read))
            except Exception:
                log.exception("the TCP session failed")
                code = 1
            finally:
                writer.close()
            if not finished.done():
                finished.set_result(code)

        tcp = await asyncio.start_server(on_connection, host, port)
        log.info("serving on %s", ", ".join(str(s.getsockname()) for s in tcp.sockets))
        async with tcp:
            return await finished

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
