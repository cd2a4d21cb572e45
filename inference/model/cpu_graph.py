"""The CPU decoder graph: onnxruntime's fused kernels, block-quantized weights, a KV cache that
is written in place.

The same block as ``decoder.py`` (which the TPU pieces use), written with onnxruntime's
contrib ops where they exist:

- ``GroupQueryAttention`` over a shared past/present buffer ``[1, kv_heads, context, head_dim]``
  per layer: the backend binds one buffer as both input and output, the kernel appends this
  call's keys and values in place (no concatenation, no copy out), applies the rotary embedding
  (``do_rotary``) and the causal mask from ``seqlens_k`` (total length − 1). Rolling the cache
  back is changing that length;
- ``SkipSimplifiedLayerNormalization`` / ``SkipLayerNormalization``: the residual add and the
  next norm in one kernel; ``SimplifiedLayerNormalization`` for the first;
- ``MatMulNBits`` for block-quantized linear layers (``inference/weights/quantized.py``): 4-bit
  blocks with float activations (``accuracy_level`` 0: exact), 8-bit blocks with activations
  quantized to int8 per block (``accuracy_level`` 4, the only way onnxruntime 1.31 runs 8-bit
  blocks fast, and what llama.cpp does for every type; lossy, and a row's result depends on how
  many rows the call has, so prefix reuse or a draft's verification can change a token);
- ``GatherBlockQuantized`` for a quantized token embedding, sharing the output layer's blocks
  when the two are tied.

The MLP is the architecture's own function (``llama.mlp`` …); its matrix products go through
``_Graph.matmul``, which emits ``MatMulNBits`` for a weight that is stored quantized.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import onnx

from ..weights.quantized import BlockQuantized, pack_matmul_nbits, quantize
from . import llama
from .architectures import architecture, expected_shapes
from .config import ModelConfig
from .graph_options import GraphOptions, kv_names
from .graph import CONTRIB, GraphBuilder
from .weights_view import WeightView

ROTARY_RMS_ARCHS = ("llama", "qwen2")  # RMSNorm and rotary positions; the others LayerNorm and a position table


class Weights(Protocol):
    """What the graph reads from a checkpoint (``inference.weights.Checkpoint``)."""

    config: ModelConfig

    def tensor(self, name: str) -> np.ndarray: ...

    def quantized(self, name: str) -> BlockQuantized | None: ...


def linear_storage(w: Weights, name: str, options: GraphOptions) -> BlockQuantized | None:
    """How the linear layer ``name`` is stored: blocks ``[out, in]``, or None for float32."""
    if options.weights == "f32":
        return None
    blocks = w.quantized(name)
    if options.weights == "auto":
        return blocks
    bits = 8 if options.weights == "int8" else 4
    return _at_width(w, name, blocks, bits, transpose=True, offsets=False)


def vocabulary_storage(w: Weights, name: str, options: GraphOptions) -> BlockQuantized | None:
    """The token embedding and the output layer, whatever the linear layers' width: the
    embedding as the file's blocks (``GatherBlockQuantized`` has no accuracy question; blocks
    with offsets, which it cannot take, and float under ``int4``/``int8`` are requantized to 8
    bits). The output layer, the largest matrix of a small model: under ``auto`` the file's
    blocks when they have no offsets (Q4_0, Q5_0, Q6_K, Q8_0), float32 otherwise; under ``int4``
    the file's 4-bit blocks without offsets or float32 (a requantized 4-bit output layer costs
    quality); 8-bit blocks under ``int8``."""
    blocks = w.quantized(name)
    if options.weights == "f32" or (options.weights == "auto" and blocks is None):
        return None
    if name == "lm_head.weight" and options.weights == "auto":
        return blocks if blocks is not None and blocks.offsets is None else None
    if name == "lm_head.weight" and options.weights == "int4":
        return blocks if blocks is not None and blocks.bits == 4 and blocks.offsets is None else None
    bits = 8 if blocks is None or options.weights == "int8" else blocks.bits
    return _at_width(w, name, blocks, bits, transpose=False, offsets=False)


def _at_width(w: Weights, name: str, blocks: BlockQuantized | None, bits: int, transpose: bool,
              offsets: bool = True) -> BlockQuantized:
    if blocks is not None and (offsets or blocks.offsets is None):
        if blocks.bits == bits:
            return blocks
        if blocks.bits < bits and blocks.offsets is None:
            return blocks.with_bits(bits)
    weight = w.tensor(name)
    return quantize(weight.T if transpose else weight, bits)


def accuracy_level(bits: int) -> int:
    """``MatMulNBits``' compute type for blocks of ``bits``: float activations for 4-bit blocks
    (exact, and fast), int8 activations for 8-bit ones (the only fast kernel for them)."""
    return 4 if bits == 8 else 0


class _Graph(GraphBuilder):
    """A builder whose ``matmul`` with a weight stored as blocks emits ``MatMulNBits``."""

    def __init__(self, name: str):
        super().__init__(name)
        self.blocks: dict[str, BlockQuantized] = {}  # weight name -> its blocks
        self._packed: dict[str, tuple[str, str, str]] = {}
        self._block_sums: dict[tuple[str, int, int], str] = {}

    def packed_codes(self, name: str) -> str:
        """The initializer of ``name``'s packed codes, ``[N, k_blocks, blob]``, added once (the
        tied embedding's gather and the output layer share it)."""
        key = name + ".B"
        if key not in self._packed:
            self._packed[key] = self.weight(key, pack_matmul_nbits(self.blocks[name])[0])
        return self._packed[key]

    def packed(self, name: str) -> tuple[str, str, str]:
        """(B, scales, zero points or "") initializers of ``name``'s blocks for ``MatMulNBits``."""
        key = name + ".scales"
        if key not in self._packed:
            _, scales, zp = pack_matmul_nbits(self.blocks[name])
            self._packed[key] = self.weight(key, scales)
            self._packed[name + ".zero_points"] = "" if zp is None else self.weight(name + ".zero_points", zp)
        return self.packed_codes(name), self._packed[key], self._packed[name + ".zero_points"]

    def matmul(self, a: str, b: str) -> str:
        if b not in self.blocks:
            return super().matmul(a, b)
        return self.matmul_blocks(a, b)

    def matmul_blocks(self, x: str, name: str, bias: str = "") -> str:
        q = self.blocks[name]
        n, k = q.shape
        weight, scales, zp = self.packed(name)
        y = self.op("MatMulNBits", x, weight, scales, zp, "", bias, domain=CONTRIB, K=k, N=n, bits=q.bits,
                    block_size=q.block, accuracy_level=accuracy_level(q.bits))
        if q.offsets is None:
            return y
        # Σ_k x_k·offset_b(k) = Σ_b offset_b·(Σ_{k in b} x_k): block sums of x times offsetsᵀ.
        key = (x, k, q.block)
        if key not in self._block_sums:
            blocks = self.reshape(x, [0, 0, k // q.block, q.block])
            self._block_sums[key] = self.op("ReduceSum", blocks, self.const([-1]), keepdims=0)
        return self.add(y, super().matmul(self._block_sums[key], self.weight(name + ".offsets", q.offsets.T.copy())))


class _Weights(WeightView):
    """Float weights become initializers as the base class does; a weight stored as blocks is
    never read as float."""

    def __init__(self, g: _Graph, w: Weights, options: GraphOptions):
        super().__init__(g, w.tensor)
        self._g, self._w, self._options = g, w, options
        self._shapes = expected_shapes(w.config)

    def has(self, name: str) -> bool:
        return name in self._shapes

    def __call__(self, name: str) -> str:
        if name in self._g.blocks or name in self._added:
            return name
        if name.endswith(".weight") and len(self._shapes[name]) == 2 and name.startswith("layers."):
            blocks = linear_storage(self._w, name, self._options)
            if blocks is not None:
                self._g.blocks[name] = blocks
                return name
        return super().__call__(name)


def build_cpu_graph(w: Weights, options: GraphOptions = GraphOptions()) -> onnx.ModelProto:
    """All layers in one graph.

    Inputs: ``input_ids`` [1, T] int64; ``position_ids`` [1, T] int64 (learned-position models
    only); ``seqlens_k`` [1] int32 = past + T − 1; ``total_sequence_length`` [] int32 = past + T;
    ``past_key_i`` / ``past_value_i`` [1, kv_heads, C, head_dim], bound to the same buffers as
    the outputs ``present_key_i`` / ``present_value_i``; ``logit_rows`` [1] int64, R: how many
    of the last positions get logits (1 for a prompt or a decode step, T to verify a draft).
    Output ``logits`` [R, vocab] of the last R positions: the final norm and the output layer
    run on those rows only, so R = 1 costs what a fixed last-row slice did.
    """
    c = w.config
    c.validate()
    rotary = c.arch in ROTARY_RMS_ARCHS
    g = _Graph(f"{c.arch}_cpu_decoder")
    wv = _Weights(g, w, options)
    ids = g.input("input_ids", np.int64, [1, "T"])
    pos = None if rotary else g.input("position_ids", np.int64, [1, "T"])
    seqlens = g.input("seqlens_k", np.int32, [1])
    total = g.input("total_sequence_length", np.int32, [])
    rows = g.input("logit_rows", np.int64, [1])
    kv_shape = [1, c.num_kv_heads, "C", c.head_dim]

    x = _embed(g, c, w, wv, options, ids, pos)
    cos = sin = ""
    if rotary:
        table_cos, table_sin = getattr(architecture(c), "rotary_table", llama.rotary_table)(c, c.max_positions)
        half = c.head_dim // 2
        cos, sin = g.weight("rope_cos", table_cos[:, :half].copy()), g.weight("rope_sin", table_sin[:, :half].copy())

    h = _first_norm(g, c, wv, x, "layers.0.attn_norm")
    for i in range(c.num_layers):
        p = f"layers.{i}"
        past_k, past_v, present_k, present_v = kv_names(i)
        g.input(past_k, np.float32, kv_shape)
        g.input(past_v, np.float32, kv_shape)
        qkv = _linear(g, wv, h, p + ".attn.qkv.weight", p + ".attn.qkv.bias")
        attn = g.fresh("attn")
        g.nodes.append(onnx.helper.make_node(
            "GroupQueryAttention", [qkv, "", "", past_k, past_v, seqlens, total, cos, sin],
            [attn, present_k, present_v], domain=CONTRIB, num_heads=c.num_heads, kv_num_heads=c.num_kv_heads,
            do_rotary=int(rotary), scale=float(1.0 / np.sqrt(c.head_dim))))
        g.output(present_k, present_k, np.float32, kv_shape)
        g.output(present_v, present_v, np.float32, kv_shape)
        out = _linear(g, wv, attn, p + ".attn.out.weight", p + ".attn.out.bias")
        h, x = _skip_norm(g, c, wv, x, out, p + ".mlp_norm")
        m = architecture(c).mlp(g, c, wv, h, p + ".mlp")
        if i == c.num_layers - 1:  # only the last ``logit_rows`` positions go on
            from_row = g.op("Neg", rows)
            x, m = (g.op("Slice", v, from_row, g.const([np.iinfo(np.int64).max]), g.const([1])) for v in (x, m))
        h, x = _skip_norm(g, c, wv, x, m, f"layers.{i + 1}.attn_norm" if i + 1 < c.num_layers else "final_norm")

    g.output(_head(g, c, w, wv, options, g.reshape(h, [-1, c.hidden_size])), "logits", np.float32, ["R", c.vocab_size])
    return g.build(doc=f"{c.arch} CPU decoder, {c.num_layers} layers, weights {options.weights}")


def _linear(g: _Graph, wv: _Weights, x: str, weight: str, bias: str) -> str:
    """``x @ W + b``; the bias only where the architecture has one (Qwen2: q/k/v only)."""
    b = wv(bias) if wv.has(bias) else ""
    name = wv(weight)
    if name in g.blocks:
        return g.matmul_blocks(x, name, b)
    y = g.matmul(x, name)
    return g.add(y, b) if b else y


def _first_norm(g: _Graph, c: ModelConfig, wv: _Weights, x: str, prefix: str) -> str:
    if c.arch in ROTARY_RMS_ARCHS:
        return g.op("SimplifiedLayerNormalization", x, wv(prefix + ".weight"), axis=-1, epsilon=c.norm_eps)
    return g.op("LayerNormalization", x, wv(prefix + ".weight"), wv(prefix + ".bias"), axis=-1, epsilon=c.norm_eps)


def _skip_norm(g: _Graph, c: ModelConfig, wv: _Weights, x: str, delta: str, prefix: str) -> tuple[str, str]:
    """(norm(x + delta), x + delta) in one kernel."""
    if c.arch in ROTARY_RMS_ARCHS:
        out, _, _, total = g.op("SkipSimplifiedLayerNormalization", x, delta, wv(prefix + ".weight"), n_out=4,
                                unused=(1, 2), domain=CONTRIB, epsilon=c.norm_eps)
    else:
        out, _, _, total = g.op("SkipLayerNormalization", x, delta, wv(prefix + ".weight"), wv(prefix + ".bias"),
                                n_out=4, unused=(1, 2), domain=CONTRIB, epsilon=c.norm_eps)
    return out, total


def _tied_blocks(c: ModelConfig, g: _Graph, name: str, blocks: BlockQuantized) -> str:
    """Register the vocabulary blocks once: the tied embedding and output layer share them."""
    key = "lm_head.weight" if c.tie_embeddings else name
    if key not in g.blocks:
        g.blocks[key] = blocks
    return key


def _embed(g: _Graph, c: ModelConfig, w: Weights, wv: _Weights, options: GraphOptions, ids: str,
           pos: str | None) -> str:
    blocks = vocabulary_storage(w, "tok_embeddings", options)
    if blocks is None:
        x = g.op("Gather", wv("tok_embeddings"), ids, axis=0)
    else:
        key = _tied_blocks(c, g, "tok_embeddings", blocks)
        blocks = g.blocks[key]
        data = g.packed_codes(key)  # [vocab, k_blocks, blob]: the same bytes as MatMulNBits' B
        n, k = blocks.shape
        scales = g.weight(key + ".gather_scales", blocks.scales[..., None].copy())  # [vocab, k_blocks, 1]
        inputs = [data, ids, scales]
        if blocks.zero_points is not None:
            inputs.append(g.weight(key + ".gather_zero_points", _gather_zero_points(blocks)))
        rows = g.op("GatherBlockQuantized", *inputs, domain=CONTRIB, bits=blocks.bits, block_size=blocks.block,
                    gather_axis=0, quantize_axis=2)  # [1, T, k_blocks, block]
        x = g.reshape(rows, [0, 0, k])
    if pos is not None:
        x = g.add(x, g.op("Gather", wv("pos_embeddings"), pos, axis=0))
    return x


def _gather_zero_points(blocks: BlockQuantized) -> np.ndarray:
    """``GatherBlockQuantized``' zero points: the data's shape with one per block, packed like
    the data for 4 bits ([vocab, k_blocks, 1] holds one nibble: the low one)."""
    return np.ascontiguousarray(blocks.zero_points[..., None], dtype=np.uint8)


def _head(g: _Graph, c: ModelConfig, w: Weights, wv: _Weights, options: GraphOptions, h: str) -> str:
    blocks = vocabulary_storage(w, "lm_head.weight", options)
    if blocks is None:
        table = wv("tok_embeddings" if c.tie_embeddings else "lm_head.weight")  # one copy when tied
        return g.op("Gemm", h, table, transB=1)
    return g.matmul_blocks(h, _tied_blocks(c, g, "lm_head.weight", blocks))
