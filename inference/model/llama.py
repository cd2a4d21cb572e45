"""Llama (SmolLM2, the embedded default): what differs from the shared decoder.

- rotary position embeddings (rotate-half layout) on queries and keys, no position table;
- RMSNorm without bias, linear layers without bias;
- MLP: SwiGLU, ``down(silu(gate(x)) · up(x))``;
- grouped-query attention (``num_kv_heads`` divides ``num_heads``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .config import ModelConfig
from .weights_view import WeightView

if TYPE_CHECKING:  # a type only: the graph builder (and onnx) stay out of a warm start
    from .graph import GraphBuilder

QKV_BIAS = OUT_BIAS = False


def weight_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    h, qkv, inter = c.hidden_size, (c.num_heads + 2 * c.num_kv_heads) * c.head_dim, c.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings": (c.vocab_size, h)}
    for i in range(c.num_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attn_norm.weight": (h,), p + "attn.qkv.weight": (h, qkv), p + "attn.out.weight": (h, h),
            p + "mlp_norm.weight": (h,), p + "mlp.gate.weight": (h, inter), p + "mlp.up.weight": (h, inter),
            p + "mlp.down.weight": (inter, h),
        }
    return shapes | {"final_norm.weight": (h,), "lm_head.weight": (c.vocab_size, h)}


def embed(g: GraphBuilder, c: ModelConfig, w: WeightView, input_ids: str, position_ids: str) -> str:
    return g.op("Gather", w("tok_embeddings"), input_ids, axis=0)


def inverse_frequencies(c: ModelConfig) -> np.ndarray:
    """As transformers computes them, in float32: 1 / θ^(2i/d)."""
    exponents = np.arange(0, c.head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(c.head_dim)
    return (np.float32(1.0) / np.power(np.float32(c.rope_theta), exponents)).astype(np.float32)


def rotary_table(c: ModelConfig, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin for positions 0 … rows-1, [rows, head_dim] float32, as transformers computes
    them (float32 angles, rotate-half layout)."""
    positions = np.arange(rows, dtype=np.float32)[:, None]
    angles = positions * inverse_frequencies(c)[None, :]  # [rows, d/2]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def position_context(g: GraphBuilder, c: ModelConfig, position_ids: str, rows: int | None = None) -> tuple[str, str]:
    """cos and sin of shape [1, T, 1, head_dim], shared by every layer, gathered by position from
    a table of ``rows`` positions (default: the model's context).

    A table rather than Cos/Sin of in-graph angles: on the TPU the pieces run in float16, where an
    angle like 1000.3 rad keeps only ~0.5 rad of precision; the table is exact in float32 and
    rounds only the final cos/sin values."""
    cos, sin = rotary_table(c, rows or c.max_positions)
    ids = g.op("Unsqueeze", position_ids, g.const([-1]))  # [1, T, 1]
    return (g.op("Gather", g.weight(g.fresh("rope_cos"), cos), ids, axis=0),  # [1, T, 1, d]
            g.op("Gather", g.weight(g.fresh("rope_sin"), sin), ids, axis=0))


def rotate(g: GraphBuilder, c: ModelConfig, x: str, ctx: tuple[str, str]) -> str:
    """x·cos + rotate_half(x)·sin for x of shape [1, T, heads, head_dim]."""
    cos, sin = ctx
    half = c.head_dim // 2
    first, second = g.op("Split", x, g.const([half, half]), axis=-1, n_out=2)
    rotated = g.op("Concat", g.op("Neg", second), first, axis=-1)
    return g.add(g.mul(x, cos), g.mul(rotated, sin))


def norm(g: GraphBuilder, c: ModelConfig, w: WeightView, x: str, prefix: str) -> str:
    variance = g.op("ReduceMean", g.mul(x, x), axes=[-1], keepdims=1)
    scale = g.op("Reciprocal", g.op("Sqrt", g.add(variance, g.const(c.norm_eps, np.float32))))
    return g.mul(w(prefix + ".weight"), g.mul(x, scale))


def mlp(g: GraphBuilder, c: ModelConfig, w: WeightView, x: str, prefix: str) -> str:
    gate = g.matmul(x, w(prefix + ".gate.weight"))
    up = g.matmul(x, w(prefix + ".up.weight"))
    silu = g.mul(gate, g.op("Sigmoid", gate))
    return g.matmul(g.mul(silu, up), w(prefix + ".down.weight"))
