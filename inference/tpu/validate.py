"""Checks that a compiled piece computes what its ONNX computes: same inputs, cosine similarity.

The inputs are deterministic and shaped like the engine's own calls (``stepper.py``): causal
masks, a half-full cache, token ids that include the vocabulary's top end (a float16 cast of ids
would lose exactness above 2048, and this would show it). Every float output is compared by
cosine similarity against onnxruntime on the same ONNX (a block's ``hidden_out`` as its update
to the residual stream); the greedy ``token`` output is accepted
when the reference logit of the chosen token is within ``1 - threshold`` of the gap between the
best and the mean logit (random hidden states make near-ties, where exact equality would be luck);
``tokens`` (``lm_head_chunk``, a top-1 per row) scores the mean of its rows so: the same measure as
the one-row head's, over more samples (the worst of 16 random rows is a near-tie by chance: a
trained tiny Qwen2's int4 head scored 0.93 there while every row but one scored 1).
"""

from __future__ import annotations

import numpy as np

from .stepper import attention_mask

# Minimum cosine similarity per quantization (f16 and int4 from the issue; int8 in between).
THRESHOLDS = {"f16": 0.99, "int8": 0.98, "int4": 0.95}


def piece_inputs(spec: dict, manifest, seed: int = 0) -> dict[str, np.ndarray]:
    """Validation inputs for one piece (``spec`` as in ``manifest.pieces``)."""
    rng = np.random.default_rng(seed)
    c = manifest.model_config
    n, k, mask_value = manifest.seq_len, manifest.chunk_len, np.float32(manifest.mask_value)
    kind = spec["kind"]
    length = max(1, n // 2)  # tokens already in the cache for block_cache / block_chunk
    if kind == "block_chunk":  # block_chunk_{i} has K rows, block_chunk{R}_{i} R
        k = next(t["shape"][1] for t in spec["inputs"] if t["name"] == "hidden")
    start = {"embed": 0, "block": 0, "embed_cache": length, "block_cache": length,
             "block_chunk": max(0, min(length, n - k))}.get(kind, 0)
    feeds: dict[str, np.ndarray] = {}
    for t in spec["inputs"]:
        name, shape = t["name"], tuple(t["shape"])
        if name == "input_ids":
            ids = rng.integers(0, c.vocab_size, size=shape, dtype=np.int64)
            ids.reshape(-1)[0] = c.vocab_size - 1
            feeds[name] = ids.astype(np.int32)
        elif name == "position_ids":
            feeds[name] = (start + np.arange(shape[-1], dtype=np.int32))[None]
        elif name == "attention_mask":
            feeds[name] = attention_mask(shape[-2], start, n, mask_value, cached=kind != "block")
        elif name in ("past_k", "past_v"):
            past = rng.standard_normal(shape).astype(np.float32)
            past[:, start:] = 0  # rows past the cached length: never visible, as in the engine
            feeds[name] = past
        else:  # hidden states
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def head_logits(kind: str, feeds: dict[str, np.ndarray], run) -> np.ndarray | None:
    """The reference logits a head's greedy output is judged by (``compare``): for ``lm_head``
    the logits of its one row, for ``lm_head_chunk`` each row's [rows, vocab], from
    ``run(net, feeds)`` (onnxruntime on the pieces' ONNX); None for the other pieces."""
    if kind == "lm_head":
        return run("lm_head_logits", feeds)["logits"]
    if kind == "lm_head_chunk":
        hidden = feeds["hidden"]
        return np.concatenate([run("lm_head_logits", {"hidden": hidden[:, r:r + 1]})["logits"]
                               for r in range(hidden.shape[1])])
    return None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).reshape(-1)
    b = b.astype(np.float64).reshape(-1)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def token_agreement(token: int, ref_logits: np.ndarray) -> float:
    """1.0 when ``token`` is the reference's top-1; otherwise how close its reference logit comes
    to the best, as a fraction of the best-to-mean gap (1 = as good as the best, 0 = average)."""
    logits = ref_logits.astype(np.float64).reshape(-1)
    best, mean = logits.max(), logits.mean()
    if logits[token] >= best or best == mean:
        return 1.0
    return float(1.0 - (best - logits[token]) / (best - mean))


def compare(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray],
            ref_logits: np.ndarray | None = None, inputs: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Per output name: a similarity in [-1, 1] (cosine, or token agreement for ``token``).

    A block's ``hidden_out`` is compared as the update it adds to its input ``hidden``: the
    residual stream passes through unchanged and would otherwise hide most of the block's error
    (a block whose update is only 0.92 similar still scores 1.0000 on the sum)."""
    scores = {}
    for name, ref in reference.items():
        got = outputs[name]
        if name == "hidden_out" and inputs is not None and "hidden" in inputs:
            got, ref = got - inputs["hidden"], ref - inputs["hidden"]
        if name == "token":
            scores[name] = token_agreement(int(got.reshape(-1)[0]), ref_logits) if ref_logits is not None \
                else float(int(got.reshape(-1)[0]) == int(ref.reshape(-1)[0]))
        elif name == "tokens":  # ref_logits: [rows, vocab]
            rows = got.reshape(-1)
            scores[name] = float(np.mean([token_agreement(int(t), ref_logits[r]) for r, t in enumerate(rows)])) \
                if ref_logits is not None else float(np.mean(rows == ref.reshape(-1)))
        else:
            scores[name] = cosine(got, ref)
    return scores
