"""stdout for Python alone: what native libraries print goes to stderr.

Sophgo's runtime (libsophon on a chip, tpu-mlir's cmodel simulator) prints to the process's
stdout from C: a firmware banner and a ``[0] do_allreduce: 0.`` line per network call. Here stdout
is the answer (``complete --completion-only``), the protocol (``serve --stdio``) or the probe
child's report to its parent, so those bytes must land elsewhere.

The move is made once, for the life of the process, at the file-descriptor level, before anything
has written: the real stdout is duplicated to a new descriptor and ``sys.stdout`` is rebuilt over
it, then descriptor 1 is pointed at stderr. Native code (``printf``, ``std::cout``, ``write(1)``,
on any thread) keeps writing to descriptor 1 and reaches stderr; Python's ``print`` and the
server's protocol writer, which take ``sys.stdout`` when they start, reach the real stdout.
Swapping descriptor 1 around each library call instead would race with the server's writer
thread, which sends notifications while a generation runs on a worker, and would miss output
that the simulator's own threads write between calls.

Child processes inherit descriptor 1, that is stderr: a child whose stdout matters is given an
explicit ``stdout=`` (the TPU probe is run with ``capture_output``). The duplicate of the real
stdout is not inheritable, so no child holds the protocol pipe open.
"""

from __future__ import annotations

import io
import os
import sys
import threading

_lock = threading.Lock()
_native_stdout: io.TextIOBase | None = None  # the stream sys.stdout was; kept so that it is never collected


def protect_stdout() -> bool:
    """Route descriptor 1 to stderr and keep ``sys.stdout`` on the real stdout. Idempotent.

    Does nothing (returns False) when ``sys.stdout`` is not the interpreter's own stream on
    descriptor 1: a caller (pytest's capture, an embedding application) has replaced it and owns
    the descriptors. Returns True once stdout is protected."""
    global _native_stdout
    with _lock:
        if _native_stdout is not None:
            return True
        old = sys.stdout
        if old is None or old is not sys.__stdout__:
            return False
        try:
            if old.fileno() != 1:
                return False
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
            return False
        old.flush()
        real = os.dup(1)  # non-inheritable (PEP 446)
        try:
            os.dup2(2, 1)
        except OSError:  # no stderr to speak of: native output is dropped
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
        sys.stdout = sys.__stdout__ = _reopen_like(old, real)
        _native_stdout = old
        return True


def _reopen_like(old: io.TextIOBase, fd: int) -> io.TextIOWrapper:
    """A text stream on ``fd`` that buffers and encodes as ``old`` did (``python -u`` included)."""
    raw = io.FileIO(fd, "w", closefd=True)
    unbuffered = isinstance(getattr(old, "buffer", None), io.RawIOBase)
    binary = raw if unbuffered else io.BufferedWriter(raw)
    return io.TextIOWrapper(binary, encoding=old.encoding, errors=old.errors, newline="\n",
                            line_buffering=old.line_buffering, write_through=getattr(old, "write_through", False))
