"""The decoder block shared by every architecture, in portable ONNX ops (the TPU pieces).

One source of truth for the math: ``decoder_layer`` is the transformer block in portable ONNX
ops, which the TPU exporter wraps layer by layer in static pieces (``inference/tpu/export.py``).
The CPU graph (``cpu_graph.py``) is the same block written with onnxruntime's fused kernels and
an in-place KV cache; both take the architecture-specific steps from
``architectures.architecture(config)``, and both are checked token by token against
transformers.

KV cache layout of the TPU pieces: ``[1, seq, kv_heads, head_dim]`` (one contiguous row per
token, so a device engine appends a decode step's keys with one copy); the CPU graph keeps
onnxruntime's ``[1, kv_heads, context, head_dim]``. Keys are cached after RoPE.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

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


def lm_head(g: GraphBuilder, c: ModelConfig, w: WeightView, x_last: str, rows: int = 1) -> str:
    """Final norm and vocabulary projection for ``rows`` hidden states, [1, rows, hidden] (or
    [1, hidden] for one) → logits [rows, vocab].

    The norm runs before the flattening to 2-D: tpu-mlir 1.30 aborts (``v is none type``) on a
    LayerNorm of a 2-D input whose scale is all ones and shift all zeros, which it folds away."""
    h = architecture(c).norm(g, c, w, x_last, "final_norm")
    return g.op("Gemm", g.reshape(h, [rows, c.hidden_size]), w("lm_head.weight"), transB=1)
