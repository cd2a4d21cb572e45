"""Checkpoints as numpy arrays under one canonical naming, whatever the file format.

Loaders only map names, reorder heads and dequantize; the math lives in ``inference/model``.
Canonical names (``in × out`` matrices, so that a layer is ``x @ W + b``; the two vocabulary
matrices keep one row per token):

====================================  ===============================  =====================
name                                  shape                            architectures
====================================  ===============================  =====================
tok_embeddings                        [vocab, hidden]                  all
pos_embeddings                        [max_positions, hidden]          gpt_bigcode
layers.{i}.attn_norm.weight/.bias     [hidden]                         (bias: gpt_bigcode)
layers.{i}.attn.qkv.weight            [hidden, (heads + 2·kv_heads)·head_dim]   all; q, then k, then v
layers.{i}.attn.qkv.bias              [(heads + 2·kv_heads)·head_dim]  gpt_bigcode, qwen2
layers.{i}.attn.out.weight/.bias      [hidden, hidden]                 (bias: gpt_bigcode)
layers.{i}.mlp_norm.weight/.bias      [hidden]                         (bias: gpt_bigcode)
layers.{i}.mlp.up.weight/.bias        [hidden, intermediate]           (bias: gpt_bigcode)
layers.{i}.mlp.gate.weight            [hidden, intermediate]           llama, qwen2
layers.{i}.mlp.down.weight/.bias      [intermediate, hidden]           (bias: gpt_bigcode)
final_norm.weight/.bias               [hidden]                         (bias: gpt_bigcode)
lm_head.weight                        [vocab, hidden]                  all (tied: tok_embeddings)
====================================  ===============================  =====================
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError
from .checkpoint import Checkpoint


def open_checkpoint(path: str | Path) -> Checkpoint:
    """A GGUF file or a Hugging Face checkpoint directory, recognised by what is on disk."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model not found: {path}")
    if path.is_dir():
        from .hf import HFCheckpoint

        return HFCheckpoint(path)
    if path.suffix == ".gguf":
        from .gguf import GGUFCheckpoint

        return GGUFCheckpoint(path)
    raise ModelLoadError(
        f"{path}: not a model this backend reads; give a .gguf file or a directory with config.json + "
        "*.safetensors (a .bmodel needs --backend tpu)"
    )


__all__ = ["Checkpoint", "open_checkpoint"]
