"""GGUF files (the Qwen2.5-Coder and SmolLM2 models): the container read lazily by
``gguf_file.GGUFFile``, one tensor at a time, dequantized to float32 by ``dequantize`` (the
``gguf`` package's own numpy code, the function transformers calls, so both read identical floats).

Architectures ``llama`` and ``qwen2`` (their metadata keys carry the architecture's name as a
prefix: ``qwen2.block_count``). Two things a reader must undo: llama.cpp stores the rows of a
Llama's ``attn_q`` / ``attn_k`` permuted for its RoPE kernel (transformers'
``_reverse_permute_weights`` undoes the same), but a Qwen2's as they are; and a model with tied
embeddings has no ``output`` tensor.
"""

from __future__ import annotations

import hashlib
import logging
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError, TokenizerError
from ..paths import cache_dir
from ..model.config import ModelConfig
from ..tokenizer import Tokenizer
from .checkpoint import Checkpoint
from .gguf_file import GGUFFile
from .quantized import MAPPED_TYPES, BlockQuantized, concatenate, from_gguf_blocks

ARCHITECTURES = ("llama", "qwen2")
TOKENIZER_VERSION = "1"  # bump when Tokenizer.from_gguf_fields builds a different tokenizer
log = logging.getLogger(__name__)


def tokenizer_cache_path(checkpoint: Checkpoint) -> Path:
    """Where the tokenizer built from ``checkpoint``'s GGUF vocabulary is kept (by its
    fingerprint: path, size, modification time)."""
    key = hashlib.sha256(f"{TOKENIZER_VERSION}|{checkpoint.fingerprint()}".encode()).hexdigest()[:16]
    return cache_dir() / "tokenizers" / f"{key}.json"
_PERMUTED_ROPE = {"llama"}  # llama.cpp's converter reorders q/k rows for these architectures only

_LAYER_TENSORS = {  # canonical suffix -> GGUF tensor names (concatenated along the output axis)
    "attn_norm.weight": ("attn_norm.weight",),
    "attn.qkv.weight": ("attn_q.weight", "attn_k.weight", "attn_v.weight"),
    "attn.qkv.bias": ("attn_q.bias", "attn_k.bias", "attn_v.bias"),  # qwen2
    "attn.out.weight": ("attn_output.weight",),
    "mlp_norm.weight": ("ffn_norm.weight",),
    "mlp.gate.weight": ("ffn_gate.weight",),
    "mlp.up.weight": ("ffn_up.weight",),
    "mlp.down.weight": ("ffn_down.weight",),
}


def _readable_types() -> dict:
    """The tensor types ``dequantize`` reads: the floats, and the block formats of gguf's numpy
    dequantizer that llama.cpp's common files use (Q4_0 … Q8_0, the K-quants)."""
    from gguf import GGMLQuantizationType as T

    return {t: t.name for t in (T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
                                T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)}


def dequantize(tensor, source: Path) -> np.ndarray:
    """One GGUF tensor as float32, rows in torch's order ([out, in] for a matrix).

    The one place where stored blocks become floats: a backend that keeps quantized weights
    reads the blocks beside this function instead."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    readable = _readable_types()
    if tensor.tensor_type not in readable:
        kind = getattr(tensor.tensor_type, "name", str(tensor.tensor_type))
        raise ModelLoadError(f"{source}: tensor {tensor.name} is stored as {kind}, which this loader cannot read "
                             f"(it reads {', '.join(readable.values())}); convert the file with llama.cpp's "
                             "llama-quantize to one of those")
    try:
        data = np.asarray(tensor.data)
        if tensor.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            array = data.astype(np.float32)
        else:
            array = gguf_dequantize(data, tensor.tensor_type)
        rows = [int(d) for d in reversed(tensor.shape)]  # GGUF lists dimensions fastest first
        return array.reshape(rows).astype(np.float32, copy=False)
    except Exception as exc:
        raise ModelLoadError(f"{source}: tensor {tensor.name} cannot be read ({type(exc).__name__}: {exc})") from exc


class GGUFCheckpoint(Checkpoint):
    def __init__(self, path: Path):
        self.path = path
        try:
            self._file = GGUFFile(path)
        except Exception as exc:  # a cut or foreign file: ValueError, struct.error, KeyError, …
            raise ModelLoadError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from exc
        self._tensors = self._file.tensors
        arch = self._field("general.architecture")
        if arch not in ARCHITECTURES:
            raise ModelLoadError(
                f"{path}: GGUF architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
        tokens = self._file.array_length("tokenizer.ggml.tokens")
        key = lambda name: f"{arch}.{name}"  # noqa: E731
        heads = int(self._field(key("attention.head_count")))
        self.config = ModelConfig(
            arch=arch,
            vocab_size=tokens or int(self._field(key("vocab_size"))),
            hidden_size=int(self._field(key("embedding_length"))),
            num_layers=int(self._field(key("block_count"))),
            num_heads=heads,
            num_kv_heads=int(self._field(key("attention.head_count_kv"), heads)),
            intermediate_size=int(self._field(key("feed_forward_length"))),
            max_positions=int(self._field(key("context_length"))),
            norm_eps=float(self._field(key("attention.layer_norm_rms_epsilon"))),
            rope_theta=float(self._field(key("rope.freq_base"), 10000.0)),
            tie_embeddings="output.weight" not in self._tensors,
        )
        try:
            self.config.validate()
        except ValueError as exc:
            raise ModelLoadError(f"{path}: {exc}") from exc

    _MISSING = object()

    def _field(self, key: str, default=_MISSING):
        value = self._file.field(key, None)
        if value is None:
            if default is GGUFCheckpoint._MISSING:
                raise ModelLoadError(f"{self.path}: GGUF metadata has no {key}")
            return default
        return value

    def _gguf_tensor(self, name: str) -> np.ndarray:
        tensor = self._tensors.get(name)
        if tensor is None:
            raise ModelLoadError(f"{self.path}: tensor {name} is missing")
        return dequantize(tensor, self.path)

    def _unpermute(self, rows: np.ndarray, heads: int) -> np.ndarray:
        """Undo llama.cpp's RoPE row order: per head, (d/2, 2) → (2, d/2). Works on a weight
        [out, in] and on a bias [out] alike."""
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
            array = self._gguf_tensor(f"blk.{index}.{part}")  # [out, in] like torch
            if c.arch in _PERMUTED_ROPE and part.startswith(("attn_q.", "attn_k.")):
                array = self._unpermute(array, c.num_heads if part.startswith("attn_q.") else c.num_kv_heads)
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
        if suffix not in _LAYER_TENSORS or not suffix.endswith(".weight") or suffix.endswith("norm.weight"):
            return None  # norms and biases stay float
        parts = []
        for part in _LAYER_TENSORS[suffix]:
            blocks = self._blocks(f"blk.{index}.{part}")
            if blocks is None:
                return None
            heads = {"attn_q.weight": c.num_heads, "attn_k.weight": c.num_kv_heads}.get(part)
            if heads is not None and c.arch in _PERMUTED_ROPE:  # the rows _unpermute reorders, in the same order
                order = self._unpermute(np.arange(blocks.shape[0])[:, None], heads)[:, 0]
                blocks = blocks.rows(order)
            parts.append(blocks)
        return concatenate(parts) if len(parts) > 1 else parts[0]

    @cached_property
    def _tokenizer(self) -> Tokenizer:
        """Built from the GGUF's vocabulary once, then read back from the cache's
        ``tokenizer.json``: parsing 151,646 tokens and 151,387 merges out of the metadata and
        building the BPE was part of every start of the default model (loading it: 1.7-2.0 s
        with the build, 1.4-1.7 s with the saved copy, on a quiet machine; more under load)."""
        model = self._field("tokenizer.ggml.model", None)
        if model != "gpt2":
            raise ModelLoadError(f"{self.path}: GGUF tokenizer model {model!r} is not supported (supported: gpt2)")
        eos_id = int(self._field("tokenizer.ggml.eos_token_id"))
        saved = tokenizer_cache_path(self)
        if saved.exists():
            try:
                return Tokenizer.from_saved(saved, eos_id, str(self.path))
            except TokenizerError as exc:  # a damaged cache entry: built again below, and replaced
                log.warning("rebuilding the tokenizer of %s: %s", self.path, exc)
        tokens, types, merges = (self._field(f"tokenizer.ggml.{k}") for k in ("tokens", "token_type", "merges"))
        tokenizer = Tokenizer.from_gguf_fields(tokens, types, merges, self._field("tokenizer.ggml.pre", "gpt2"),
                                               eos_id, str(self.path))
        try:
            saved.parent.mkdir(parents=True, exist_ok=True)
            tokenizer.save(saved)
        except OSError as exc:  # a read-only cache still serves, building it each time
            log.debug("cannot save the tokenizer of %s: %s", self.path, exc)
        return tokenizer

    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def chat_template(self) -> str | None:
        return self._field("tokenizer.chat_template", None)
