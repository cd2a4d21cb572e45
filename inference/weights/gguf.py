"""GGUF files (the SmolLM2 default): read with the ``gguf`` package, dequantized to float32.

Two things a GGUF reader must undo: llama.cpp stores the rows of ``attn_q`` / ``attn_k``
permuted for its RoPE kernel (transformers' ``_reverse_permute_weights`` undoes the same), and a
model with tied embeddings has no ``output`` tensor.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from ..model.config import ModelConfig
from ..tokenizer import Tokenizer
from .checkpoint import Checkpoint
from .quantized import MAPPED_TYPES, BlockQuantized, concatenate, from_gguf_blocks

_LAYER_TENSORS = {  # canonical suffix -> GGUF tensor names (concatenated along the output axis)
    "attn_norm.weight": ("attn_norm",),
    "attn.qkv.weight": ("attn_q", "attn_k", "attn_v"),
    "attn.out.weight": ("attn_output",),
    "mlp_norm.weight": ("ffn_norm",),
    "mlp.gate.weight": ("ffn_gate",),
    "mlp.up.weight": ("ffn_up",),
    "mlp.down.weight": ("ffn_down",),
}


class GGUFCheckpoint(Checkpoint):
    def __init__(self, path: Path):
        import gguf

        self.path = path
        try:
            self._reader = gguf.GGUFReader(str(path))
        except Exception as exc:  # the reader raises ValueError, struct.error, IndexError, …
            raise ModelLoadError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from exc
        self._tensors = {t.name: t for t in self._reader.tensors}
        arch = self._field("general.architecture")
        if arch != "llama":
            raise ModelLoadError(f"{path}: GGUF architecture {arch!r} is not supported (supported: llama)")
        tokens = self._reader.fields.get("tokenizer.ggml.tokens")
        heads = int(self._field("llama.attention.head_count"))
        self.config = ModelConfig(
            arch="llama",
            vocab_size=len(tokens.data) if tokens else int(self._field("llama.vocab_size")),
            hidden_size=int(self._field("llama.embedding_length")),
            num_layers=int(self._field("llama.block_count")),
            num_heads=heads,
            num_kv_heads=int(self._field("llama.attention.head_count_kv", heads)),
            intermediate_size=int(self._field("llama.feed_forward_length")),
            max_positions=int(self._field("llama.context_length")),
            norm_eps=float(self._field("llama.attention.layer_norm_rms_epsilon")),
            rope_theta=float(self._field("llama.rope.freq_base", 10000.0)),
            tie_embeddings="output.weight" not in self._tensors,
        )
        try:
            self.config.validate()
        except ValueError as exc:
            raise ModelLoadError(f"{path}: {exc}") from exc

    _MISSING = object()

    def _field(self, key: str, default=_MISSING):
        field = self._reader.fields.get(key)
        if field is None:
            if default is GGUFCheckpoint._MISSING:
                raise ModelLoadError(f"{self.path}: GGUF metadata has no {key}")
            return default
        return field.contents()

    def _gguf_tensor(self, name: str) -> np.ndarray:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        tensor = self._tensors.get(name)
        if tensor is None:
            raise ModelLoadError(f"{self.path}: tensor {name} is missing")
        try:
            data = np.asarray(tensor.data)
            if tensor.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                array = data.astype(np.float32)
            else:
                array = dequantize(data, tensor.tensor_type)
        except Exception as exc:
            raise ModelLoadError(f"{self.path}: tensor {name} cannot be read ({exc})") from exc
        rows = [int(d) for d in reversed(tensor.shape)]  # GGUF lists dimensions fastest first
        return array.reshape(rows).astype(np.float32, copy=False)

    def _unpermute(self, rows: np.ndarray, heads: int) -> np.ndarray:
        """Undo llama.cpp's RoPE row order: per head, (d/2, 2) → (2, d/2)."""
        out_dim = rows.shape[0]
        return rows.reshape(heads, out_dim // heads // 2, 2, -1).swapaxes(1, 2).reshape(rows.shape)

    def _read(self, name: str) -> np.ndarray:
        c = self.config
        if name == "tok_embeddings":
            return self._gguf_tensor("token_embd.weight")
        if name == "lm_head.weight":
            return self._gguf_tensor("token_embd.weight" if c.tie_embeddings else "output.weight")
        if name == "final_norm.weight":
            return self._gguf_tensor("output_norm.weight")
        _, index, suffix = name.split(".", 2)
        parts = []
        for part in _LAYER_TENSORS[suffix]:
            array = self._gguf_tensor(f"blk.{index}.{part}.weight")  # [out, in] like torch
            if part == "attn_q":
                array = self._unpermute(array, c.num_heads)
            elif part == "attn_k":
                array = self._unpermute(array, c.num_kv_heads)
            parts.append(array)
        array = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        return array if array.ndim == 1 else array.T

    # --- the file's own blocks, for a graph that keeps them (inference/weights/quantized.py) ---

    def raw_blocks(self, name: str) -> tuple[str, np.ndarray, int]:
        """A GGUF tensor's storage undecoded: (type name, uint8 ``[rows, bytes per row]``,
        elements per row)."""
        tensor = self._tensors.get(name)
        if tensor is None:
            raise ModelLoadError(f"{self.path}: tensor {name} is missing")
        data = np.asarray(tensor.data)
        return tensor.tensor_type.name, data.reshape(data.shape[0], -1).view(np.uint8), int(tensor.shape[0])

    def _blocks(self, name: str) -> BlockQuantized | None:
        kind, raw, k = self.raw_blocks(name)
        if kind not in MAPPED_TYPES:
            return None
        try:
            return from_gguf_blocks(kind, raw, k)
        except ValueError as exc:
            raise ModelLoadError(f"{self.path}: tensor {name} cannot be read ({exc})") from exc

    def quantized(self, name: str) -> BlockQuantized | None:
        c = self.config
        if name in ("tok_embeddings", "lm_head.weight"):
            tied = name == "tok_embeddings" or c.tie_embeddings
            return self._blocks("token_embd.weight" if tied else "output.weight")
        _, index, suffix = name.split(".", 2)
        if suffix not in _LAYER_TENSORS or suffix.endswith("norm.weight"):
            return None
        parts = []
        for part in _LAYER_TENSORS[suffix]:
            blocks = self._blocks(f"blk.{index}.{part}.weight")
            if blocks is None:
                return None
            heads = {"attn_q": c.num_heads, "attn_k": c.num_kv_heads}.get(part)
            if heads is not None:  # the rows _unpermute reorders, in the same order
                order = self._unpermute(np.arange(blocks.shape[0])[:, None], heads)[:, 0]
                blocks = blocks.rows(order)
            parts.append(blocks)
        return concatenate(parts) if len(parts) > 1 else parts[0]

    @cached_property
    def _tokenizer(self) -> Tokenizer:
        model = self._field("tokenizer.ggml.model", None)
        if model != "gpt2":
            raise ModelLoadError(f"{self.path}: GGUF tokenizer model {model!r} is not supported (supported: gpt2)")
        tokens = self._reader.fields["tokenizer.ggml.tokens"].contents()
        types = self._reader.fields["tokenizer.ggml.token_type"].contents()
        merges = self._reader.fields["tokenizer.ggml.merges"].contents()
        return Tokenizer.from_gguf_fields(tokens, types, merges, self._field("tokenizer.ggml.pre", "gpt2"),
                                          int(self._field("tokenizer.ggml.eos_token_id")), str(self.path))

    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def chat_template(self) -> str | None:
        return self._field("tokenizer.chat_template", None)
