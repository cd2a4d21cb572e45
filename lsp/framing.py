"""The JSON-RPC base protocol's frames (``Content-Length: N\\r\\n\\r\\n`` then N bytes), read so
that no byte sequence can crash the server or make it deaf.

pygls 2.1.1's reader calls ``int()`` on any digits (``Content-Length: 18446744073709551616`` ends
the process with OverflowError, ``100000000000`` with MemoryError) and, after any header it cannot
parse, ignores everything until a bare CRLF happens to arrive. This reader:

- caps a frame at ``MAX_FRAME_BYTES`` and a header block at ``MAX_HEADER_BYTES``;
- on any bad frame (a wrong, negative, missing, oversized or non-ASCII length, NUL or other bytes
  that are not a header) drops bytes up to the next ``Content-Length: <digits>`` header and reads
  on from there.

Resynchronising there is safe even inside a real message: a JSON text cannot contain that header
(outside a string the letters are not a JSON token; inside a string a raw line break is not
allowed), so the pattern marks the start of a frame wherever it appears. The same fact lets the
reader cut a body short when the next header shows up inside it (a client that declared more
bytes than it sent), instead of waiting for bytes that never come.

Each result of ``FrameReader.next`` is a ``Frame``: the body, or what was wrong with the bytes
dropped (the protocol answers a broken frame with a JSON-RPC error whose id is null).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

MAX_FRAME_BYTES = 64 * 1024 * 1024  # a 4 M-character document, escaped, fits; more is refused
MAX_HEADER_BYTES = 8 * 1024
READ_CHUNK = 64 * 1024
# The start of a frame: a Content-Length header with digits and its line break.
FRAME_START = re.compile(rb"content-length[ \t]*:[ \t]*[0-9]+[ \t]*\r?\n", re.IGNORECASE)
_LENGTH = re.compile(rb"[ \t]*([0-9]+)[ \t]*")
_HEADER_PREFIX = re.compile(rb"content-length[ \t]*(:[ \t]*([0-9]+[ \t]*\r?)?)?")  # a frame start, cut short
_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_KEEP_FOR_PATTERN = 256  # bytes kept while searching, so that a header split across reads is found


@dataclass(frozen=True)
class Frame:
    body: bytes | None  # the message's bytes, or None for a broken frame
    problem: str = ""  # why the frame was dropped (never quotes its bytes: they may be a document)
    dropped: int = 0  # bytes thrown away with it


class FrameReader:
    """Frames from a byte stream; ``read_some(n)`` returns up to ``n`` bytes, b"" at the end."""

    def __init__(self, read_some: Callable[[int], Awaitable[bytes]]):
        self._read_some = read_some
        self._buffer = bytearray()
        self._eof = False
        self._skipping = False  # dropping bytes until the next frame start (the problem was reported)
        self._scanned = 0  # bytes of the current body already searched for a frame start
        self._scanned = 0  # bytes of the current body already searched for a frame start

    async def next(self) -> Frame | None:
        """The next frame, or None when the stream has ended."""
        while True:
            frame = self._parse()
            if frame is not None:
                return frame
            if self._eof:
                return None
            chunk = await self._read_some(READ_CHUNK)
            if not chunk:
                self._eof = True
            self._buffer += chunk

    # Each of these returns a Frame when one is complete (or broken), None when it needs more bytes.
    def _parse(self) -> Frame | None:
        buffer = self._buffer
        if self._skipping:
            found = FRAME_START.search(buffer)
            if found is None:
                del buffer[:len(buffer) if self._eof else max(0, len(buffer) - _KEEP_FOR_PATTERN)]
                return None
            del buffer[:found.start()]
            self._skipping = False
        while buffer.startswith(b"\r\n") or buffer.startswith(b"\n"):  # blank lines between frames
            del buffer[:2 if buffer.startswith(b"\r") else 1]
        if not buffer:
            return None
        length: int | None = None
        position = 0
        while True:
            end = buffer.find(b"\n", position)
            if end < 0:
                if len(buffer) > MAX_HEADER_BYTES:
                    return self._resync(position + 1, f"a header block longer than {MAX_HEADER_BYTES} bytes")
                return self._resync(position + 1, "the stream ended inside a header") if self._eof else None
            if end > MAX_HEADER_BYTES:
                return self._resync(position + 1, f"a header block longer than {MAX_HEADER_BYTES} bytes")
            line = bytes(buffer[position:end]).removesuffix(b"\r")
            if not line:  # the blank line that ends the header block
                if length is None:
                    return self._resync(end + 1, "a header block without Content-Length")
                return self._body(end + 1, length)
            problem, value = header_length(line)
            if problem:
                # the line may hold the next frame's start after some garbage: search from inside it
                return self._resync(position + 1, problem)
            if value is not None:
                if length is not None and length != value:  # this line may be the next frame's start
                    return self._resync(position, "two different Content-Length headers")
                length = value
            position = end + 1

    def _body(self, start: int, length: int) -> Frame | None:
        buffer = self._buffer
        # the next frame's header starting inside the body: the declared length was wrong
        # (each byte searched once, not again from the body's start on each read of a large body)
        found = FRAME_START.search(buffer, start + max(0, self._scanned - _KEEP_FOR_PATTERN),
                                   start + length + _KEEP_FOR_PATTERN)
        if found is not None and found.start() < start + length:
            dropped = found.start()
            del buffer[:dropped]
            self._scanned = 0
            return Frame(None, f"the next frame began inside a body declared as {length} bytes", dropped)
        self._scanned = max(0, len(buffer) - start)
        if len(buffer) < start + length:
            if self._eof:
                self._scanned = 0
                return self._resync(len(buffer), "the stream ended inside a body")
            return None
        if not self._eof and _may_begin_a_header(buffer, start, start + length):
            return None  # the body ends like a header's start: the bytes after it decide
        body = bytes(buffer[start:start + length])
        del buffer[:start + length]
        self._scanned = 0
        return Frame(body)

    def _resync(self, skip_to: int, problem: str) -> Frame:
        """Drop bytes up to the next frame start at or after ``skip_to`` (reading on when there is
        none yet); the problem is reported once, now."""
        found = FRAME_START.search(self._buffer, skip_to)
        if found is not None:
            dropped = found.start()
        else:
            dropped = len(self._buffer) if self._eof else max(min(skip_to, len(self._buffer)),
                                                              len(self._buffer) - _KEEP_FOR_PATTERN)
            self._skipping = True
        del self._buffer[:dropped]
        return Frame(None, problem, dropped)


def _may_begin_a_header(buffer: bytearray, start: int, end: int) -> bool:
    """Whether a frame start may begin in the body's last bytes and run on past its end (a frame
    that declared a few bytes too many swallows the next one's "Content-Le"). A JSON body ends with
    ``}``, so this holds only for a broken frame, and waiting for more bytes costs no client an
    answer."""
    window = bytes(buffer[max(start, end - _KEEP_FOR_PATTERN):]).lower()
    body_end = len(window) - (len(buffer) - end)
    for at in range(body_end):
        if window[at] == ord("c"):
            candidate = window[at:]
            if b"content-length".startswith(candidate) or _HEADER_PREFIX.fullmatch(candidate):
                return True
    return False


def header_length(line: bytes) -> tuple[str, int | None]:
    """(problem, length) for one header line: the Content-Length value, None for another header,
    or what is wrong with the line."""
    if any(b < 0x20 and b != 0x09 or b > 0x7E for b in line):
        return "a header line with bytes that are not printable ASCII (NUL, control or non-ASCII)", None
    if FRAME_START.search(line + b"\n", 1):
        return "garbage before a Content-Length header", None
    name, colon, value = line.partition(b":")
    if not colon or not _HEADER_NAME.fullmatch(name):
        return "a line that is not a header", None
    if name.lower() != b"content-length":
        return "", None  # Content-Type and anything else: nothing to check
    digits = _LENGTH.fullmatch(value)
    if digits is None:
        return "a Content-Length that is not a decimal number", None
    text = digits.group(1).lstrip(b"0") or b"0"
    if len(text) > len(str(MAX_FRAME_BYTES)) or int(text) > MAX_FRAME_BYTES:  # no int() of 8,000 digits
        shown = text.decode() if len(text) <= 24 else f"{len(text)}-digit"
        return f"a Content-Length of {shown} bytes (more than the {MAX_FRAME_BYTES}-byte limit)", None
    length = int(text)
    return "", length
