"""Qwen2 (Qwen2.5-Coder, the default): Llama with three differences, and nothing else.

- biases on the query, key and value projections, and only there (not on the output projection,
  not in the MLP);
- RoPE θ from the config (10^6 for Qwen2.5, against Llama's usual 10^4): the ``rope_theta`` field
  both read;
- the output embedding tied or untied as the checkpoint says (``tie_embeddings``): the Hugging
  Face release of Qwen2.5-Coder-0.5B ties it, the GGUF of the default carries its own
  ``output.weight``.

The rotary layout is Llama's rotate-half one. (llama.cpp permutes Llama's q/k rows in a GGUF
for its kernel but stores Qwen2's as they are; undoing that is the GGUF loader's business.)
"""

from __future__ import annotations

from . import llama
from .config import ModelConfig
from .llama import embed, mlp, norm, position_context, rotate  # noqa: F401  (the shared steps)

QKV_BIAS = True
OUT_BIAS = False


def weight_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Llama's tensors plus ``layers.{i}.attn.qkv.bias``."""
    qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in llama.weight_shapes(c).items():
        shapes[name] = shape
        if name.endswith(".attn.qkv.weight"):
            shapes[name.replace(".weight", ".bias")] = (qkv,)
    return shapes
