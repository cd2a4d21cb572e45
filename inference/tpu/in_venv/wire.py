"""The pipe format between the project (Python 3.11, numpy 2) and tpu-mlir's venv (3.10, numpy 1).

A message is a JSON header plus named arrays. Arrays travel as ``.npz`` bytes, not pickles: a
numpy 2 pickle names ``numpy._core``, which numpy 1.24 cannot load, while the npz format is the
same in both. Frame: 4-byte big-endian header length, header, 8-byte payload length, payload.
"""

from __future__ import annotations

import io
import json
import struct
from typing import BinaryIO

import numpy as np


def send(stream: BinaryIO, header: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    head = json.dumps(header).encode()
    body = b""
    if arrays:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        body = buffer.getvalue()
    stream.write(struct.pack(">I", len(head)) + head + struct.pack(">Q", len(body)) + body)
    stream.flush()


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = stream.read(n - len(data))
        if not part:
            raise EOFError("the other side closed the pipe")
        data += part
    return data


def receive(stream: BinaryIO) -> tuple[dict, dict[str, np.ndarray]]:
    (head_len,) = struct.unpack(">I", _read_exact(stream, 4))
    header = json.loads(_read_exact(stream, head_len))
    (body_len,) = struct.unpack(">Q", _read_exact(stream, 8))
    arrays: dict[str, np.ndarray] = {}
    if body_len:
        with np.load(io.BytesIO(_read_exact(stream, body_len))) as npz:
            arrays = {name: npz[name] for name in npz.files}
    return header, arrays
