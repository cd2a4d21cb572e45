"""The GGUF container, read lazily: metadata on demand, tensors as views of one memory map.

Why not ``gguf.GGUFReader``: it builds a numpy view for every element of every array while it
opens the file. A Qwen2 vocabulary is three arrays of ~152k elements (tokens, token types,
merges), so opening the 0.5B default took 2.7 s on a quiet machine and 20–27 s on this shared
2-core one, on every server start, before a single tensor is read. Here an array is only
stepped over (its length fields, no objects) until someone asks for it; numeric arrays then come
back in one ``np.frombuffer``. The byte layout is GGUF v2/v3's (llama.cpp's ``docs/gguf.md``);
the type enums and block sizes are the ``gguf`` package's own, and so is the dequantization
(``inference/weights/gguf.py``). ``tests/test_gguf_file.py`` checks every field and tensor
against ``GGUFReader``.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

_SCALARS = {  # GGUFValueType -> struct format (little-endian)
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


class GGUFTensor(NamedTuple):
    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order: the fastest-varying dimension first
    data: np.ndarray  # numpy order; F32 / F16: the values; any other type: uint8 blocks, [..., bytes per row]


class _Lazy(NamedTuple):
    """An array value not decoded yet: where its elements start, their type and count."""

    offset: int
    item_type: int
    count: int


class GGUFFile:
    def __init__(self, path: str | Path):
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        self.path = Path(path)
        with open(self.path, "rb") as handle:
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        m = self._map
        if m[:4] != b"GGUF":
            raise ValueError("no GGUF magic number")
        version, tensor_count, kv_count = struct.unpack_from("<IQQ", m, 4)
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (big-endian, or not 2/3) is not supported")
        pos = 24
        self._fields: dict[str, Any] = {}
        for _ in range(kv_count):
            key, pos = self._string(pos)
            (value_type,) = struct.unpack_from("<I", m, pos)
            self._fields[key], pos = self._value(value_type, pos + 4)
        infos = []
        for _ in range(tensor_count):
            name, pos = self._string(pos)
            (n_dims,) = struct.unpack_from("<I", m, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", m, pos + 4)
            raw_type, offset = struct.unpack_from("<IQ", m, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            infos.append((name, dims, raw_type, offset))
        alignment = int(self.field("general.alignment", 32))
        data_start = -(-pos // alignment) * alignment
        self.tensors: dict[str, GGUFTensor] = {}
        for name, dims, raw_type, offset in infos:
            kind = GGMLQuantizationType(raw_type)
            block, block_bytes = GGML_QUANT_SIZES[kind]
            elements = int(np.prod(dims, dtype=np.int64))
            start = data_start + offset
            rows = tuple(int(d) for d in reversed(dims[1:]))  # numpy order, the slowest dimension first
            if kind == GGMLQuantizationType.F32 or kind == GGMLQuantizationType.F16:
                dtype = np.float32 if kind == GGMLQuantizationType.F32 else np.float16
                data = np.frombuffer(m, dtype, count=elements, offset=start).reshape(*rows, int(dims[0]))
            else:
                data = np.frombuffer(m, np.uint8, count=elements // block * block_bytes, offset=start)
                data = data.reshape(*rows, int(dims[0]) // block * block_bytes)
            self.tensors[name] = GGUFTensor(name, kind, tuple(int(d) for d in dims), data)

    _MISSING = object()

    def field(self, key: str, default: Any = _MISSING) -> Any:
        """A metadata value as Python (str, int, float, bool, list); arrays decoded on first use."""
        if key not in self._fields:
            if default is GGUFFile._MISSING:
                raise KeyError(key)
            return default
        value = self._fields[key]
        if isinstance(value, _Lazy):
            value = self._fields[key] = self._array(value)
        return value

    def array_length(self, key: str) -> int | None:
        """The element count of an array field without decoding it."""
        value = self._fields.get(key)
        if isinstance(value, _Lazy):
            return value.count
        return len(value) if isinstance(value, list) else None

    def keys(self) -> list[str]:
        return list(self._fields)

    # The byte layout ---------------------------------------------------------------------------
    def _string(self, pos: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", self._map, pos)
        end = pos + 8 + length
        return self._map[pos + 8:end].decode("utf-8"), end

    def _value(self, value_type: int, pos: int) -> tuple[Any, int]:
        if value_type == _STRING:
            return self._string(pos)
        if value_type == _ARRAY:
            item_type, count = struct.unpack_from("<IQ", self._map, pos)
            start = pos + 12
            return _Lazy(start, item_type, count), self._skip(item_type, count, start)
        fmt = _SCALARS.get(value_type)
        if fmt is None:
            raise ValueError(f"unknown GGUF value type {value_type}")
        return struct.unpack_from(fmt, self._map, pos)[0], pos + struct.calcsize(fmt)

    def _skip(self, item_type: int, count: int, pos: int) -> int:
        """The position after ``count`` items of ``item_type`` from ``pos``."""
        if item_type in _NUMPY:
            return pos + count * np.dtype(_NUMPY[item_type]).itemsize
        if item_type == _STRING:
            for _ in range(count):
                pos += 8 + struct.unpack_from("<Q", self._map, pos)[0]
            return pos
        for _ in range(count):  # arrays of arrays: rare, walked one by one
            _, pos = self._value(item_type, pos)
        return pos

    def _array(self, lazy: _Lazy) -> list:
        if lazy.item_type in _NUMPY:
            return np.frombuffer(self._map, _NUMPY[lazy.item_type], count=lazy.count, offset=lazy.offset).tolist()
        items, pos = [], lazy.offset
        for _ in range(lazy.count):
            item, pos = self._value(lazy.item_type, pos)
            items.append(self._array(item) if isinstance(item, _Lazy) else item)
        return items
