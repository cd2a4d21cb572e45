"""GPTBigCode (StarCoder, WizardCoder): what differs from the shared decoder.

- learned absolute position embeddings, added to the token embeddings;
- LayerNorm with bias, and every linear layer with bias;
- MLP: GELU (tanh approximation) between two linears;
- multi-query attention (one key/value head) or, with ``multi_query: false``, multi-head.
"""

from __future__ import annotations

import math

from typing import TYPE_CHECKING

import numpy as np

from .config import ModelConfig
from .weights_view import WeightView

if TYPE_CHECKING:  # a type only: the graph builder (and onnx) stay out of a warm start
    from .graph import GraphBuilder

QKV_BIAS = OUT_BIAS = True  # every linear layer has a bias


def weight_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    h, qkv, inter = c.hidden_size, (c.num_heads + 2 * c.num_kv_heads) * c.head_dim, c.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings": (c.vocab_size, h), "pos_embeddings": (c.max_positions, h)}
    for i in range(c.num_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attn_norm.weight": (h,), p + "attn_norm.bias": (h,),
            p + "attn.qkv.weight": (h, qkv), p + "attn.qkv.bias": (qkv,),
            p + "attn.out.weight": (h, h), p + "attn.out.bias": (h,),
            p + "mlp_norm.weight": (h,), p + "mlp_norm.bias": (h,),
            p + "mlp.up.weight": (h, inter), p + "mlp.up.bias": (inter,),
            p + "mlp.down.weight": (inter, h), p + "mlp.down.bias": (h,),
        }
    return shapes | {"final_norm.weight": (h,), "final_norm.bias": (h,), "lm_head.weight": (c.vocab_size, h)}


def embed(g: GraphBuilder, c: ModelConfig, w: WeightView, input_ids: str, position_ids: str) -> str:
    tokens = g.op("Gather", w("tok_embeddings"), input_ids, axis=0)
    positions = g.op("Gather", w("pos_embeddings"), position_ids, axis=0)
    return g.add(tokens, positions)


def position_context(g: GraphBuilder, c: ModelConfig, position_ids: str, rows: int | None = None) -> None:
    return None  # positions were added to the embeddings


def rotate(g: GraphBuilder, c: ModelConfig, x: str, ctx: None) -> str:
    return x


def norm(g: GraphBuilder, c: ModelConfig, w: WeightView, x: str, prefix: str) -> str:
    return g.op("LayerNormalization", x, w(prefix + ".weight"), w(prefix + ".bias"), axis=-1, epsilon=c.norm_eps)


def mlp(g: GraphBuilder, c: ModelConfig, w: WeightView, x: str, prefix: str) -> str:
    up = g.linear(x, w(prefix + ".up.weight"), w(prefix + ".up.bias"))
    # gelu_pytorch_tanh, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), written out for any opset.
    f32 = np.float32
    cube = g.mul(g.mul(up, up), up)
    inner = g.mul(g.add(up, g.mul(cube, g.const(0.044715, f32))), g.const(math.sqrt(2 / math.pi), f32))
    gelu = g.mul(g.mul(up, g.const(0.5, f32)), g.add(g.op("Tanh", inner), g.const(1.0, f32)))
    return g.linear(gelu, w(prefix + ".down.weight"), w(prefix + ".down.bias"))
