"""The static-shape pieces the TPU runs, built from the one model definition.

Every piece is a thin wrapper around ``inference/model/decoder.py`` (``decoder_layer``,
``lm_head``) and the architecture's ``embed`` / ``position_context``: what differs from the CPU
graph is only where the graph is cut and that every shape is fixed. The contract (net names,
inputs, outputs, shapes) is ``docs/tpu-pieces.md``; ``piece_specs`` is its executable form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from ..model.architectures import architecture
from ..model.config import ModelConfig
from ..model.decoder import decoder_layer, lm_head
from ..model.graph import GraphBuilder
from ..model.weights_view import WeightView

DEFAULT_CHUNK = 16

_NP = {"int32": np.int32, "float32": np.float32}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "int32" | "float32"
    shape: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class PieceSpec:
    """One net of the bmodel: its name, what it computes and its static interface."""

    name: str  # the net name in the bmodel, e.g. "block_cache_3"
    kind: str  # embed | embed_cache | block | block_cache | block_chunk | lm_head | lm_head_chunk | lm_head_logits
    layer: int | None
    group: str  # the weights file it shares with its siblings: "globals" or "layer_{i}"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        return d


def uses_position_ids_in_blocks(c: ModelConfig) -> bool:
    """Rotary architectures need positions inside each block and not in ``embed``; GPTBigCode adds
    learned position embeddings once, in ``embed``, so its blocks take no ``position_ids``. A
    piece declares only the inputs it reads: tpu-mlir drops a graph input nothing reads, and the
    bmodel's nets must have exactly the inputs the manifest lists."""
    return c.arch in ("llama", "qwen2")


def piece_specs(c: ModelConfig, seq_len: int, chunk_len: int, prefill_chunks: Sequence[int] = ()) -> list[PieceSpec]:
    """Every piece of a model, in bmodel order: embeddings, then per layer the three blocks (and a
    ``block_chunk{R}_{i}`` per size R of ``prefill_chunks``: the engine prefills through chunks that
    cover the prompt instead of the N-row block), then the heads: the top-1 of one row, of K rows
    (``lm_head_chunk``: a draft's K rows checked in one launch, K token ids back) and the logits."""
    n, k, h = seq_len, chunk_len, c.hidden_size
    kv = lambda rows: (1, rows, c.num_kv_heads, c.head_dim)  # noqa: E731
    i32, f32 = "int32", "float32"
    T = TensorSpec
    rope = uses_position_ids_in_blocks(c)

    def embed_inputs(t: int) -> tuple[TensorSpec, ...]:  # learned positions are added here; RoPE's are not
        ids = T("input_ids", i32, (1, t))
        return (ids,) if rope else (ids, T("position_ids", i32, (1, t)))

    specs = [
        PieceSpec("embed", "embed", None, "globals", embed_inputs(n), (T("hidden", f32, (1, n, h)),)),
        PieceSpec("embed_cache", "embed_cache", None, "globals", embed_inputs(1), (T("hidden", f32, (1, 1, h)),)),
    ]
    for i in range(c.num_layers):
        blocks = [("block", f"block_{i}", n, 0), ("block_cache", f"block_cache_{i}", 1, n),
                  ("block_chunk", f"block_chunk_{i}", k, n)]
        blocks += [("block_chunk", f"block_chunk{r}_{i}", r, n) for r in prefill_chunks]
        for kind, name, t, past in blocks:
            inputs = [T("hidden", f32, (1, t, h))]
            if rope:
                inputs.append(T("position_ids", i32, (1, t)))
            inputs.append(T("attention_mask", f32, (1, 1, t, past + t)))
            if past:
                inputs += [T("past_k", f32, kv(past)), T("past_v", f32, kv(past))]
            outputs = (T("hidden_out", f32, (1, t, h)), T("present_k", f32, kv(t)), T("present_v", f32, kv(t)))
            specs.append(PieceSpec(name, kind, i, f"layer_{i}", tuple(inputs), outputs))
    specs += [
        PieceSpec("lm_head", "lm_head", None, "globals", (T("hidden", f32, (1, 1, h)),), (T("token", i32, (1, 1)),)),
        PieceSpec("lm_head_chunk", "lm_head_chunk", None, "globals", (T("hidden", f32, (1, k, h)),),
                  (T("tokens", i32, (1, k)),)),
        PieceSpec("lm_head_logits", "lm_head_logits", None, "globals", (T("hidden", f32, (1, 1, h)),),
                  (T("logits", f32, (1, c.vocab_size)),)),
    ]
    return specs


def build_piece(spec: PieceSpec, c: ModelConfig, fetch: Callable[[str], np.ndarray], seq_len: int,
                chunk_len: int) -> onnx.ModelProto:
    """The ONNX graph of one piece; weights are initializers named canonically (``fetch``)."""
    arch = architecture(c)
    g = GraphBuilder(spec.name)
    w = WeightView(g, fetch)
    ins = {t.name: g.input(t.name, _NP[t.dtype], t.shape) for t in spec.inputs}
    out = {t.name: t for t in spec.outputs}

    def emit(value: str, name: str) -> None:
        t = out[name]
        g.output(value, name, _NP[t.dtype], t.shape)

    if spec.kind in ("embed", "embed_cache"):
        emit(arch.embed(g, c, w, ins["input_ids"], ins.get("position_ids")), "hidden")
    elif spec.kind.startswith("block"):
        # Positions of the static pieces never pass seq_len + chunk_len: a rotary table that long
        # (not the model's whole context) keeps every block small.
        rows = min(c.max_positions, seq_len + chunk_len)
        pos_ctx = arch.position_context(g, c, ins["position_ids"], rows) if "position_ids" in ins else None
        layer = decoder_layer(g, c, w, spec.layer, ins["hidden"], pos_ctx, ins["attention_mask"],
                              ins.get("past_k"), ins.get("past_v"))
        emit(layer.x, "hidden_out")
        emit(layer.k_new, "present_k")
        emit(layer.v_new, "present_v")
    elif spec.kind in ("lm_head", "lm_head_logits"):
        logits = lm_head(g, c, w, ins["hidden"])  # [1, vocab]
        if spec.kind == "lm_head_logits":
            emit(logits, "logits")
        else:
            emit(g.op("Cast", g.op("ArgMax", logits, axis=-1, keepdims=1), to=onnx.TensorProto.INT32), "token")
    elif spec.kind == "lm_head_chunk":
        rows = spec.inputs[0].shape[1]
        logits = lm_head(g, c, w, ins["hidden"], rows)  # [rows, vocab]
        top = g.op("ArgMax", logits, axis=-1, keepdims=0)  # [rows]
        emit(g.reshape(g.op("Cast", top, to=onnx.TensorProto.INT32), [1, rows]), "tokens")
    else:
        raise ValueError(f"unknown piece kind {spec.kind!r}")
    return g.build(doc=f"{c.arch} piece {spec.name} (seq_len {seq_len}, chunk {chunk_len})")
