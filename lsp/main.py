"""``wizardcoder-tpu serve``: logging to a file, the settings from the command line, then the
server on stdio (the default) or TCP on a loopback address.

stdout belongs to the protocol: the protocol gets the real stdout and ``sys.stdout`` is pointed
at stderr, so that a stray print cannot corrupt a message.

TCP serves many clients at once, each its own session, all sharing the one loaded model (a team
server, ``team.py``). It listens on loopback by default; an address that is not loopback
(``--tcp 0.0.0.0:PORT``) is refused at start unless ``--token-file`` makes every client present a
token (``tokens.py``): without one, any host that could reach the port could use the model. The log rotates (``LOG_BYTES`` per file, ``LOG_BACKUPS`` old files kept) and
holds no document text at the default level (``warning``); ``--log-level debug`` may.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import NoReturn

from ..inference.errors import RemoteError
from ..inference.http_stream import ApiKey, is_loopback
from ..inference.paths import cache_dir
from ..inference.remote import RemoteAccess
from .server import create_server
from .settings import from_command_line
from .team import DEFAULT_CONNECTIONS_PER_CLIENT, Team
from .tokens import TokenFileError, TokenTable
from .transport import serve_stdio, serve_tcp
from .worker import MAX_PENDING

DEFAULT_HOST = "127.0.0.1"
LOG_BYTES = 4 * 1024 * 1024
LOG_BACKUPS = 2


def serve(args: argparse.Namespace) -> int:
    """Serve until the session ends (stdio) or a signal comes (TCP); returns only for a bad
    command line."""
    token_file = getattr(args, "token_file", None)
    try:
        tokens = TokenTable.read(token_file) if token_file else None
        if tokens is not None and not getattr(args, "tcp", None):
            raise ValueError("--token-file is for --tcp (over stdio the editor is the only client)")
        host_port = parse_tcp(args.tcp, authenticated=tokens is not None) if getattr(args, "tcp", None) else None
        for flag, least in (("connections_per_client", 1), ("requests_per_client", 1), ("cache_slots", 0)):
            if (value := getattr(args, flag, None)) is not None and value < least:
                raise ValueError(f"--{flag.replace('_', '-')} must be at least {least}, not {value}")
        access = remote_access(args)
    except (ValueError, TokenFileError, RemoteError) as exc:
        print(f"wizardcoder-tpu serve: {exc}", file=sys.stderr)
        return 2
    log_file = setup_logging(getattr(args, "log_file", None), getattr(args, "log_level", "warning"))
    settings = from_command_line(args)
    log = logging.getLogger(__name__)
    log.info("serving (log: %s) on %s", log_file, "tcp %s:%d" % host_port if host_port else "stdio")
    if host_port is not None:
        team = Team(settings, tokens, shared=True,
                    connections_per_client=getattr(args, "connections_per_client", None) or DEFAULT_CONNECTIONS_PER_CLIENT,
                    pending_per_client=getattr(args, "requests_per_client", None) or MAX_PENDING, access=access)

        def load() -> None:  # the model loads once the port is open; the first client finds it ready
            team.worker.submit(lambda cancel: team.host.load(settings, log.info), label="loading", client="server",
                               kind="load")

        end_process(serve_tcp(lambda: create_server(settings, team), *host_port, load))
    protocol_out = sys.stdout.buffer
    sys.stdout = sys.stderr
    end_process(serve_stdio(create_server(settings, access=access), sys.stdin.buffer, protocol_out))


def end_process(code: int) -> NoReturn:
    """End the server process once its session is over, without the interpreter's finalisation.

    The model may still be loading or generating on the worker thread, inside native code that
    holds no GIL (onnxruntime building a session, numpy reading the memory-mapped GGUF): tearing
    down the interpreter under it unmaps what it reads (seen: SIGSEGV when ``exit`` came during a
    load). Nothing is left that the operating system does not release, so flush what we wrote and
    leave with the session's code."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def remote_access(args: argparse.Namespace) -> RemoteAccess:
    """The remote backend's API key (``--api-key-env NAME`` or ``--api-key-file PATH``, read once
    here) and ``--allow-http``. The key is bound to ``--endpoint``: it is sent to that server only,
    whatever endpoint a client's settings name later."""
    env, file = getattr(args, "api_key_env", None), getattr(args, "api_key_file", None)
    if env and file:
        raise ValueError("give --api-key-env or --api-key-file, not both")
    key = ApiKey.from_env(env) if env else ApiKey.from_file(file) if file else None
    endpoint = getattr(args, "endpoint", None)
    if key is not None and not endpoint:
        raise ValueError("an API key needs --endpoint: the key is sent only to the endpoint named on the command line")
    return RemoteAccess(key, endpoint if key is not None else None, bool(getattr(args, "allow_http", False)))


def parse_tcp(value: str, authenticated: bool = False) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT``; the host defaults to the loopback address. A host that
    is not loopback only when clients must present a token (``authenticated``)."""
    host, _, port = value.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--tcp expects HOST:PORT, got {value!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"--tcp port {number} is out of range")
    host = host.strip("[]") or DEFAULT_HOST
    if not authenticated and not is_loopback(host):
        raise ValueError(f"--tcp {value}: refusing to listen on {host}, which is not a loopback address, without "
                         "authentication: any host that can reach the port could use the model and read what is "
                         "sent to it. Give --token-file FILE (lines 'NAME TOKEN'; every client then presents its "
                         "token in initializationOptions.token), or listen on 127.0.0.1 (the default) and reach it "
                         "through an SSH tunnel")
    return host, number


def setup_logging(path: str | None, level: str) -> Path:
    """Log to ``path`` (default ``<cache>/server.log``, rotated); request ids and timings go there."""
    log_file = Path(path).expanduser() if path else cache_dir() / "server.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS,
                                                   encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    handler.addFilter(_client_gone)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("wizardcoder_tpu").setLevel(getattr(logging, level.upper(), logging.WARNING))
    return log_file


def _client_gone(record: logging.LogRecord) -> bool:
    """Drop pygls' tracebacks for replies written after the editor closed the pipe (Neovim sends
    ``shutdown`` and exits without waiting): the session is over, nothing failed."""
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, (BrokenPipeError, ConnectionResetError))
