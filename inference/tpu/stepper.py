"""Greedy generation piece by piece, the way the device engine drives a bmodel.

This is the reference for the C++ engine's loop (masks, positions, where the KV rows go) and the
test that the pieces compose into the same model as the CPU graph: the same loop runs over
onnxruntime sessions of the exported ONNX (``OrtPieces``) and over the compiled bmodel on the
cmodel simulator (``cmodel.CmodelPieces``).

- prefill: ``embed`` + ``block_i`` on the prompt padded to N; the KV cache keeps all N rows
  (rows past the prompt are never visible: the masks hide them);
- chunk: ``embed`` is N-wide, so the chunk's embeddings come from ``embed_cache`` one token at a
  time, then ``block_chunk_i`` attends K new tokens to the cached N rows;
- decode: ``embed_cache`` + ``block_cache_i``; the one new row is written at its position.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from .manifest import Manifest


class Pieces(Protocol):
    def run(self, net: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OrtPieces:
    """The exported ONNX pieces on onnxruntime (the reference for the cmodel)."""

    def __init__(self, export_dir: str | Path, threads: int = 1):
        import onnxruntime as ort

        self.dir = Path(export_dir)
        self.manifest = Manifest.load(self.dir)
        self._ort = ort
        self._threads = threads
        self._sessions: dict = {}

    def session(self, net: str):
        if net not in self._sessions:
            options = self._ort.SessionOptions()
            options.intra_op_num_threads = self._threads
            self._sessions[net] = self._ort.InferenceSession(
                str(self.dir / self.manifest.piece(net)["onnx"]), options, providers=["CPUExecutionProvider"])
        return self._sessions[net]

    def run(self, net: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.session(net)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    def release(self, net: str) -> None:
        """Forget a session (a WizardCoder-15B block holds 1.5 GB of f32 weights)."""
        self._sessions.pop(net, None)


def _filter(manifest: Manifest, net: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Only the inputs the piece declares (GPTBigCode blocks and Llama embeddings take no position_ids)."""
    return {t["name"]: feeds[t["name"]] for t in manifest.piece(net)["inputs"]}


def attention_mask(rows: int, start: int, n: int, mask_value: np.float32, cached: bool = True) -> np.ndarray:
    """The additive mask a block piece takes, as the C++ engine builds it: without the cache (the
    prefill ``block``) [1, 1, rows, rows], causal; against the cache (``block_chunk``,
    ``block_cache``) [1, 1, rows, n + rows]: the cached prefix (columns before ``start``) visible,
    the cache's rows past it hidden, the new rows (columns ``n`` on) causal among themselves."""
    causal = np.triu(np.full((rows, rows), mask_value, np.float32), 1)
    if not cached:
        return causal[None, None]
    mask = np.full((1, 1, rows, n + rows), mask_value, np.float32)
    mask[..., :start] = 0
    mask[0, 0, :, n:] = causal
    return mask


class Stepper:
    """Drives the pieces; holds the KV cache on the host as [1, N, kv, d] per layer."""

    def __init__(self, pieces: Pieces, manifest: Manifest):
        self.pieces, self.m = pieces, manifest
        c = manifest.model_config
        self.c, self.n, self.k = c, manifest.seq_len, manifest.chunk_len
        self.mask_value = np.float32(manifest.mask_value)
        shape = (1, self.n, c.num_kv_heads, c.head_dim)
        self.cache_k = [np.zeros(shape, np.float32) for _ in range(c.num_layers)]
        self.cache_v = [np.zeros(shape, np.float32) for _ in range(c.num_layers)]
        self.length = 0

    def _run(self, net: str, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        return self.pieces.run(net, _filter(self.m, net, feeds))

    def _head(self, hidden_row: np.ndarray) -> int:
        return int(self._run("lm_head", hidden=hidden_row.reshape(1, 1, -1).astype(np.float32))["token"].reshape(-1)[0])

    def prefill(self, ids: Sequence[int]) -> int:
        """The prompt (at most N tokens) from an empty cache; returns the next token."""
        n, length = self.n, len(ids)
        if not 1 <= length <= n:
            raise ValueError(f"prefill takes 1 … {n} tokens, not {length}")
        input_ids = np.zeros((1, n), np.int32)
        input_ids[0, :length] = ids
        positions = np.arange(n, dtype=np.int32)[None]
        mask = attention_mask(n, 0, n, self.mask_value, cached=False)
        hidden = self._run("embed", input_ids=input_ids, position_ids=positions)["hidden"]
        for i in range(self.c.num_layers):
            out = self._run(f"block_{i}", hidden=hidden, position_ids=positions, attention_mask=mask)
            hidden = out["hidden_out"]
            self.cache_k[i][:] = out["present_k"]
            self.cache_v[i][:] = out["present_v"]
        self.length = length
        return self._head(hidden[0, length - 1])

    def chunk(self, ids: Sequence[int]) -> int:
        """Up to K more tokens against the cache; returns the token after the last."""
        count, p0 = len(ids), self.length
        if not 1 <= count <= self.k or p0 + count > self.n:
            raise ValueError(f"chunk takes 1 … {self.k} tokens within the context of {self.n}")
        hidden = np.zeros((1, self.k, self.c.hidden_size), np.float32)
        for j, token in enumerate(ids):
            hidden[:, j] = self._embed_one(token, p0 + j)[:, 0]
        positions = (p0 + np.arange(self.k, dtype=np.int32))[None]
        mask = attention_mask(self.k, p0, self.n, self.mask_value)
        for i in range(self.c.num_layers):
            out = self._run(f"block_chunk_{i}", hidden=hidden, position_ids=positions, attention_mask=mask,
                            past_k=self.cache_k[i], past_v=self.cache_v[i])
            hidden = out["hidden_out"]
            self.cache_k[i][:, p0:p0 + count] = out["present_k"][:, :count]
            self.cache_v[i][:, p0:p0 + count] = out["present_v"][:, :count]
        self.length += count
        return self._head(hidden[0, count - 1])

    def _embed_one(self, token: int, position: int) -> np.ndarray:
        return self._run("embed_cache", input_ids=np.array([[token]], np.int32),
                         position_ids=np.array([[position]], np.int32))["hidden"]

    def decode(self, token: int) -> int:
        """One token at position ``length``; returns the next."""
        p = self.length
        if p >= self.n:
            raise ValueError(f"the context of {self.n} positions is full")
        hidden = self._embed_one(token, p)
        positions = np.array([[p]], np.int32)
        mask = attention_mask(1, p, self.n, self.mask_value)  # the cache before p, and the token itself
        for i in range(self.c.num_layers):
            out = self._run(f"block_cache_{i}", hidden=hidden, position_ids=positions, attention_mask=mask,
                            past_k=self.cache_k[i], past_v=self.cache_v[i])
            hidden = out["hidden_out"]
            self.cache_k[i][:, p] = out["present_k"][:, 0]
            self.cache_v[i][:, p] = out["present_v"][:, 0]
        self.length += 1
        return self._head(hidden[0, 0])


def generate(pieces: Pieces, manifest: Manifest, prompt: Sequence[int], max_new_tokens: int,
             prefill_len: int | None = None) -> list[int]:
    """Greedy tokens after ``prompt``. With ``prefill_len``, only that many prompt tokens go
    through the prefill blocks and the rest through the chunk blocks (prefix reuse)."""
    stepper = Stepper(pieces, manifest)
    first = prompt[:prefill_len] if prefill_len else prompt
    token = stepper.prefill(first)
    rest = list(prompt[len(first):])
    while rest:
        part, rest = rest[:manifest.chunk_len], rest[manifest.chunk_len:]
        token = stepper.chunk(part)
    tokens = [token]
    while len(tokens) < max_new_tokens and stepper.length < manifest.seq_len:
        tokens.append(stepper.decode(tokens[-1]))
    return tokens
