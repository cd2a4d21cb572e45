"""The decoder shared by every architecture, and the CPU graph built from it.

One source of truth: ``decoder_layer`` is the transformer block; the CPU backend wraps all layers
in one dynamic-shape graph (``build_cpu_decoder``), the TPU exporter wraps each layer in static
pieces (``inference/tpu/export.py``). The architecture-specific steps come from
``architectures.architecture(config)``.

KV cache layout, everywhere: ``[1, seq, kv_heads, head_dim]`` (one contiguous row per token,
so a device engine appends a decode step's keys with one copy). Keys are cached after RoPE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import onnx

from .architectures import architecture
from .config import ModelConfig
from .graph import GraphBuilder
from .weights_view import WeightView

MASK_VALUE = -10000.0  # additive mask; finite so that float16 on the TPU stays finite too


class LayerOut(NamedTuple):
    x: str  # [1, T, hidden]
    k_new: str  # [1, T, kv_heads, head_dim]: this call's rows, for a device cache to append
    v_new: str
    keys: str  # [1, S, kv_heads, head_dim]: past and new, for a cache passed in and out whole
    values: str


def decoder_layer(g: GraphBuilder, c: ModelConfig, w: WeightView, i: int, x: str, pos_ctx,
                  mask: str, past_k: str | None, past_v: str | None) -> LayerOut:
    """One block. x: [1, T, hidden]; mask: additive, broadcastable to [1, heads, T, S] where
    S = past + T."""
    arch = architecture(c)
    p = f"layers.{i}"
    nh, nkv, hd = c.num_heads, c.num_kv_heads, c.head_dim

    h = arch.norm(g, c, w, x, p + ".attn_norm")
    qkv = g.linear(h, w(p + ".attn.qkv.weight"), w(p + ".attn.qkv.bias") if arch.QKV_BIAS else None)
    q, k, v = g.op("Split", qkv, g.const([nh * hd, nkv * hd, nkv * hd]), axis=-1, n_out=3)
    q = arch.rotate(g, c, g.reshape(q, [0, 0, nh, hd]), pos_ctx)  # [1, T, nh, hd]
    k_new = arch.rotate(g, c, g.reshape(k, [0, 0, nkv, hd]), pos_ctx)  # [1, T, nkv, hd]
    v_new = g.reshape(v, [0, 0, nkv, hd])
    keys = g.op("Concat", past_k, k_new, axis=1) if past_k else k_new  # [1, S, nkv, hd]
    values = g.op("Concat", past_v, v_new, axis=1) if past_v else v_new

    # Query heads are ordered kv-major, so the `group` queries sharing one kv head are adjacent:
    # fold them into the sequence axis and attend with plain 4-D MatMuls (no repeated K/V).
    q = g.reshape(g.transpose(q, [0, 2, 1, 3]), [1, nkv, -1, hd])  # [1, nkv, group·T, hd]
    scores = g.matmul(q, g.transpose(keys, [0, 2, 3, 1]))  # [1, nkv, group·T, S]
    scores = g.mul(scores, g.const(1.0 / np.sqrt(hd), np.float32))
    scores = g.add(g.reshape(scores, [1, nh, -1, 0]), mask)  # [1, nh, T, S]
    probs = g.reshape(g.op("Softmax", scores, axis=-1), [1, nkv, -1, 0])
    out = g.matmul(probs, g.transpose(values, [0, 2, 1, 3]))  # [1, nkv, group·T, hd]
    out = g.reshape(g.transpose(g.reshape(out, [1, nh, -1, hd]), [0, 2, 1, 3]), [0, 0, nh * hd])
    out = g.linear(out, w(p + ".attn.out.weight"), w(p + ".attn.out.bias") if arch.OUT_BIAS else None)
    x = g.add(x, out)

    h = arch.norm(g, c, w, x, p + ".mlp_norm")
    x = g.add(x, arch.mlp(g, c, w, h, p + ".mlp"))
    return LayerOut(x, k_new, v_new, keys, values)


def lm_head(g: GraphBuilder, c: ModelConfig, w: WeightView, x_last: str) -> str:
    """Final norm and vocabulary projection for one hidden state, [1, hidden] or [1, 1, hidden]
    → logits [1, vocab].

    The norm runs before the flattening to 2-D: tpu-mlir 1.30 aborts (``v is none type``) on a
    LayerNorm of a 2-D input whose scale is all ones and shift all zeros, which it folds away."""
    h = architecture(c).norm(g, c, w, x_last, "final_norm")
    return g.op("Gemm", g.reshape(h, [1, c.hidden_size]), w("lm_head.weight"), transB=1)


def causal_mask(g: GraphBuilder, past_len: str, new_len: str) -> str:
    """Additive [T, S] mask from scalar int64 lengths: query t sees keys 0 … past + t."""
    total = g.add(past_len, new_len)
    rows = g.add(g.op("Unsqueeze", g.op("Range", g.const(0), new_len, g.const(1)), g.const([1])), past_len)
    cols = g.op("Unsqueeze", g.op("Range", g.const(0), total, g.const(1)), g.const([0]))
    future = g.op("Greater", cols, rows)
    return g.op("Where", future, g.const(MASK_VALUE, np.float32), g.const(0.0, np.float32))


def kv_names(i: int) -> tuple[str, str, str, str]:
    return f"past_key_{i}", f"past_value_{i}", f"present_key_{i}", f"present_value_{i}"


def build_cpu_decoder(c: ModelConfig, fetch: Callable[[str], np.ndarray]) -> onnx.ModelProto:
    """All layers in one graph with dynamic sequence lengths.

    Inputs: ``input_ids`` [1, T] int64, ``position_ids`` [1, T] int64, ``past_key_i`` /
    ``past_value_i`` [1, P, kv_heads, head_dim]. Outputs: ``logits`` [1, vocab] of the last
    position, ``present_key_i`` / ``present_value_i`` [1, P + T, kv_heads, head_dim].
    """
    c.validate()
    arch = architecture(c)
    g = GraphBuilder(f"{c.arch}_decoder")
    w = WeightView(g, fetch)
    ids = g.input("input_ids", np.int64, [1, "T"])
    pos = g.input("position_ids", np.int64, [1, "T"])
    kv_shape = lambda n: [1, n, c.num_kv_heads, c.head_dim]  # noqa: E731
    past = []
    for i in range(c.num_layers):
        pk, pv, _, _ = kv_names(i)
        past.append((g.input(pk, np.float32, kv_shape("P")), g.input(pv, np.float32, kv_shape("P"))))

    past_len = g.op("Squeeze", g.op("Slice", g.op("Shape", past[0][0]), g.const([1]), g.const([2])), g.const([0]))
    new_len = g.op("Squeeze", g.op("Slice", g.op("Shape", ids), g.const([1]), g.const([2])), g.const([0]))
    mask = causal_mask(g, past_len, new_len)

    x = arch.embed(g, c, w, ids, pos)
    pos_ctx = arch.position_context(g, c, pos)
    for i in range(c.num_layers):
        layer = decoder_layer(g, c, w, i, x, pos_ctx, mask, *past[i])
        x = layer.x
        _, _, present_k, present_v = kv_names(i)
        g.output(layer.keys, present_k, np.float32, kv_shape("S"))
        g.output(layer.values, present_v, np.float32, kv_shape("S"))

    last = g.reshape(g.op("Slice", x, g.const([-1]), g.const([np.iinfo(np.int64).max]), g.const([1])), [1, c.hidden_size])
    g.output(lm_head(g, c, w, last), "logits", np.float32, [1, c.vocab_size])
    return g.build(doc=f"{c.arch} decoder, {c.num_layers} layers")
