"""Block-quantized matrices: GGUF's blocks unpacked into one form, and repacked for onnxruntime.

A linear layer's weight is ``[N, K]`` (one row per output, like torch and GGUF) split along K
into blocks that each carry a scale, a zero point and, for GGUF's "min" types, an offset:
``weight[n, k] = (code[n, k] - zero_point[n, b]) * scale[n, b] + offset[n, b]`` with
``b = k // block``. Without the offset that is onnxruntime's ``MatMulNBits`` (and
``GatherBlockQuantized``) contract, so a GGUF block moves over without rounding anything:

=========  ====================================  =========================================
GGUF type  GGUF formula                          here (bits, block, zero point, offset)
=========  ====================================  =========================================
Q4_0       d·(q − 8)                             4, 32, default (8), none
Q4_1       d·q + m                               4, 32, 0, m
Q8_0       d·q, q signed                         8, 32, default (128; code q+128), none
Q5_0       d·(q − 16)                            8, 32, default (code q+112), none
Q6_K       d·sc·(q − 32), 16-wide sub-blocks     8, 16, default (code q+96, scale d·sc), none
Q4_K       d·sc·q − dmin·m, 32-wide sub-blocks   4, 32, 0 (scale d·sc), −dmin·m
=========  ====================================  =========================================

The offset is not a float zero point (``MatMulNBits`` accepts one, but onnxruntime 1.31 then
dequantizes the whole matrix on every call: 20× slower than the packed kernel); the graph adds
it as ``blocksum(x) @ offsetᵀ``, a ``[T, K/32] × [K/32, N]`` product (``inference/model/cpu_graph.py``).
Everything else (F32/F16 tensors, or a bit width other than the file's) is requantized from
float32 by ``quantize``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockQuantized:
    """An ``[N, K]`` matrix as unpacked integer codes, per-block scales, zero points, offsets."""

    codes: np.ndarray  # uint8 [N, K], each < 2**bits
    scales: np.ndarray  # float32 [N, K // block]
    zero_points: np.ndarray | None  # uint8 [N, K // block]; None: 2**(bits-1)
    offsets: np.ndarray | None  # float32 [N, K // block]; None: 0
    bits: int
    block: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape  # type: ignore[return-value]

    def dequantize(self) -> np.ndarray:
        """The float32 matrix these blocks stand for."""
        n, k = self.shape
        zp = np.float32(2 ** (self.bits - 1)) if self.zero_points is None else self.zero_points.astype(np.float32)[..., None]
        codes = self.codes.reshape(n, k // self.block, self.block).astype(np.float32)
        values = (codes - zp) * self.scales[..., None]
        if self.offsets is not None:
            values += self.offsets[..., None]
        return values.reshape(n, k)

    def rows(self, order: np.ndarray) -> BlockQuantized:
        """The rows in ``order`` (a head permutation)."""
        take = lambda a: None if a is None else a[order]  # noqa: E731
        return BlockQuantized(self.codes[order], self.scales[order], take(self.zero_points), take(self.offsets),
                              self.bits, self.block)

    def with_block(self, block: int) -> BlockQuantized:
        """The same values in smaller blocks (each scale repeated): exact."""
        if block == self.block:
            return self
        if self.block % block:
            raise ValueError(f"cannot split blocks of {self.block} into blocks of {block}")
        r = self.block // block
        repeat = lambda a: None if a is None else np.repeat(a, r, axis=1)  # noqa: E731
        return BlockQuantized(self.codes, repeat(self.scales), repeat(self.zero_points), repeat(self.offsets),
                              self.bits, block)

    def with_bits(self, bits: int) -> BlockQuantized:
        """The same values with wider codes (4 → 8: code and zero point shift by 120): exact."""
        if bits == self.bits:
            return self
        if bits < self.bits:
            raise ValueError(f"narrowing {self.bits}-bit codes to {bits} bits is a requantization")
        shift = np.uint8(2 ** (bits - 1) - 2 ** (self.bits - 1))
        zp = None if self.zero_points is None else self.zero_points + shift
        return BlockQuantized(self.codes + shift, self.scales, zp, self.offsets, bits, self.block)

    def with_explicit_zero_points(self) -> BlockQuantized:
        if self.zero_points is not None:
            return self
        zp = np.full(self.scales.shape, 2 ** (self.bits - 1), np.uint8)
        return BlockQuantized(self.codes, self.scales, zp, self.offsets, self.bits, self.block)

    def with_explicit_offsets(self) -> BlockQuantized:
        if self.offsets is not None:
            return self
        return BlockQuantized(self.codes, self.scales, self.zero_points, np.zeros(self.scales.shape, np.float32),
                              self.bits, self.block)


def concatenate(parts: list[BlockQuantized]) -> BlockQuantized:
    """Stack along N (q, k and v rows into one QKV matrix), in the widest bits and the smallest
    block of the parts, so that none is rounded."""
    bits, block = max(p.bits for p in parts), min(p.block for p in parts)
    parts = [p.with_bits(bits).with_block(block) for p in parts]
    if len({p.zero_points is None for p in parts}) > 1:
        parts = [p.with_explicit_zero_points() for p in parts]
    if len({p.offsets is None for p in parts}) > 1:
        parts = [p.with_explicit_offsets() for p in parts]
    join = lambda arrays: None if arrays[0] is None else np.concatenate(arrays)  # noqa: E731
    return BlockQuantized(np.concatenate([p.codes for p in parts]), np.concatenate([p.scales for p in parts]),
                          join([p.zero_points for p in parts]), join([p.offsets for p in parts]), bits, block)


def quantize(weight: np.ndarray, bits: int, block: int = 32) -> BlockQuantized:
    """Requantize a float ``[N, K]`` matrix: 8-bit symmetric (absmax/127, like Q8_0), 4-bit
    asymmetric with an integer zero point (min/max over the block, like onnxruntime's
    ``matmul_nbits_quantizer`` with ``is_symmetric=False``)."""
    n, k = weight.shape
    if k % block:
        raise ValueError(f"K = {k} is not a multiple of the block size {block}")
    x = weight.astype(np.float32).reshape(n, k // block, block)
    if bits == 8:
        scale = np.abs(x).max(axis=-1) / np.float32(127)
        inverse = np.divide(1, scale, out=np.zeros_like(scale), where=scale != 0)
        codes = np.clip(np.rint(x * inverse[..., None]) + 128, 1, 255).astype(np.uint8)
        return BlockQuantized(codes.reshape(n, k), scale.astype(np.float32), None, None, 8, block)
    if bits != 4:
        raise ValueError(f"bits must be 4 or 8, not {bits}")
    top = 15
    low, high = np.minimum(x.min(axis=-1), 0), np.maximum(x.max(axis=-1), 0)  # 0 stays exact
    scale = (high - low) / np.float32(top)
    inverse = np.divide(1, scale, out=np.zeros_like(scale), where=scale != 0)
    zero = np.clip(np.rint(-low * inverse), 0, top)
    codes = np.clip(np.rint(x * inverse[..., None]) + zero[..., None], 0, top).astype(np.uint8)
    return BlockQuantized(codes.reshape(n, k), scale.astype(np.float32), zero.astype(np.uint8), None, 4, block)


# --- GGUF blocks -> BlockQuantized ------------------------------------------------------------

def _f16(raw: np.ndarray) -> np.ndarray:
    """Little-endian float16 from the last axis's two bytes: [..., 2] → [...]."""
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)[..., 0]


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """GGUF's 32-wide nibble blocks: byte j holds element j (low) and j + 16 (high)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _with_offset(codes: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> BlockQuantized:
    """``scale·code + offset`` per 32-wide block: 4-bit codes, zero point 0."""
    return BlockQuantized(codes.astype(np.uint8), scale.astype(np.float32), np.zeros(scale.shape, np.uint8),
                          offset.astype(np.float32), 4, 32)


def from_gguf_blocks(kind: str, raw: np.ndarray, k: int) -> BlockQuantized:
    """``raw``: a GGUF tensor's bytes, uint8 ``[N, bytes per row]``; ``kind``: its type's name."""
    n = raw.shape[0]
    if kind == "Q4_0":
        b = raw.reshape(n, k // 32, 18)
        return BlockQuantized(_nibbles(b[..., 2:]).reshape(n, k), _f16(b[..., 0:2]), None, None, 4, 32)
    if kind == "Q4_1":
        b = raw.reshape(n, k // 32, 20)
        d, m = _f16(b[..., 0:2]), _f16(b[..., 2:4])
        return _with_offset(_nibbles(b[..., 4:]).reshape(n, k), d, m)
    if kind == "Q8_0":
        b = raw.reshape(n, k // 32, 34)
        codes = (b[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return BlockQuantized(codes.reshape(n, k), _f16(b[..., 0:2]), None, None, 8, 32)
    if kind == "Q5_0":
        b = raw.reshape(n, k // 32, 22)
        high = np.unpackbits(b[..., 2:6], axis=-1, bitorder="little")  # bit j of qh: element j
        q = _nibbles(b[..., 6:]) | (high << 4)
        return BlockQuantized((q + 112).astype(np.uint8).reshape(n, k), _f16(b[..., 0:2]), None, None, 8, 32)
    if kind == "Q6_K":
        b = raw.reshape(n, k // 256, 210)
        ql, qh = b[..., :128], b[..., 128:192]
        sc = b[..., 192:208].view(np.int8).astype(np.float32)  # [n, sb, 16]
        d = _f16(b[..., 208:210])  # [n, sb]
        # Two halves of 128; in each, ql's 64 bytes give elements 0–63 (low nibbles) and 64–127
        # (high), qh's 32 bytes give 2 bits for elements 32·j + i at bit pair j.
        ql = ql.reshape(n, -1, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 1, 2, 1)
        ql = (ql & 0x0F).reshape(n, -1, 2, 4, 32)
        qh = qh.reshape(n, -1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 1, 4, 1)
        q = (ql | ((qh & 0x03) << 4)).reshape(n, k)
        scale = (d[..., None] * sc).reshape(n, k // 16).astype(np.float32)
        return BlockQuantized((q + 96).astype(np.uint8), scale, None, None, 8, 16)
    if kind == "Q4_K":
        from gguf.quants import Q4_K

        b = raw.reshape(n, k // 256, 144)
        d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])
        sc, mn = Q4_K.get_scale_min(b[..., 4:16].reshape(-1, 12))
        sc, mn = sc.reshape(n, -1, 8).astype(np.float32), mn.reshape(n, -1, 8).astype(np.float32)
        qs = b[..., 16:].reshape(n, -1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 1, 2, 1)
        codes = (qs & 0x0F).reshape(n, k)
        scale = (d[..., None] * sc).reshape(n, k // 32)
        offset = -(dmin[..., None] * mn).reshape(n, k // 32)
        return _with_offset(codes, scale, offset)
    raise ValueError(f"GGUF type {kind} has no block mapping")


MAPPED_TYPES = ("Q4_0", "Q4_1", "Q8_0", "Q5_0", "Q6_K", "Q4_K")


def pack_matmul_nbits(q: BlockQuantized) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``MatMulNBits``' B ``[N, k_blocks, blob]`` (codes packed low nibble first), scales
    ``[N, k_blocks]`` and zero points (uint8, packed like B for 4 bits; None for the default).
    The offsets are the graph's business."""
    n, k = q.shape
    kb = k // q.block
    codes = q.codes.reshape(n, kb, q.block)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4) if q.bits == 4 else codes
    zp = q.zero_points
    if zp is not None and q.bits == 4:
        if kb % 2:
            zp = np.concatenate([zp, np.zeros((n, 1), np.uint8)], axis=1)
        zp = zp[:, 0::2] | (zp[:, 1::2] << 4)
    return (np.ascontiguousarray(packed, dtype=np.uint8), np.ascontiguousarray(q.scales, np.float32),
            None if zp is None else np.ascontiguousarray(zp, dtype=np.uint8))
