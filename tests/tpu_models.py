"""Tiny models exported and compiled once, cached by content, for every test that needs a bmodel.

``tiny_bmodel("gpt_bigcode_mq" | "llama_gqa", quantize="f16", num_device=1)`` returns the path of
a compiled ``.bmodel`` with ``manifest.json`` (and no tokenizer: the tiny checkpoints have none)
beside it. Everything lands under ``<cache>/test-bmodels/tiny-<kind>-<key>``, the key a hash of
the checkpoint's bytes, the static lengths and the tool versions, so a warm cache compiles
nothing and a change to any of them compiles afresh.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from wizardcoder_tpu.inference.paths import cache_dir

SEQ_LEN = 64
CHUNK_LEN = 16
KINDS = ("gpt_bigcode_mq", "gpt_bigcode_mha", "llama_gqa")


@functools.cache
def tiny_checkpoint(kind: str, weight_scale: float = 1.0) -> Path:
    """The same random checkpoint as conftest's ``tiny_model_factory`` (same seed and config),
    its matrices (embeddings, projections) multiplied by ``weight_scale``.

    conftest draws weights with std 0.2 so that greedy argmax is decisive; int4 tests use
    ``weight_scale=0.1`` (std 0.02, transformers' own default and a trained model's scale): at
    std 0.2 even an exact group-64 int4 rounding of the tiny Llama's block 0, done in numpy,
    keeps only 0.92 cosine similarity, so no int4 compiler could meet the 0.95 bar there."""
    from conftest import _save_random_model

    path = _save_random_model(kind, Path(tempfile.mkdtemp(prefix=f"tiny-{kind}-")))
    atexit.register(shutil.rmtree, path, True)  # the cache keys on its bytes; the folder itself is throwaway
    if weight_scale != 1.0:
        from safetensors.numpy import load_file, save_file

        weights = load_file(path / "model.safetensors")
        scaled = {k: (v * v.dtype.type(weight_scale) if v.ndim == 2 else v) for k, v in weights.items()}
        save_file(scaled, path / "model.safetensors", metadata={"format": "pt"})
    return path


def _content_key(checkpoint: Path, seq_len: int = SEQ_LEN, prefill_chunks: tuple[int, ...] = ()) -> str:
    from wizardcoder_tpu.inference.tpu.compile import COMPILE_VERSION
    from wizardcoder_tpu.inference.tpu.export import EXPORT_VERSION
    from wizardcoder_tpu.inference.tpu.toolchain import TPU_MLIR_VERSION

    extra = f"|{','.join(map(str, prefill_chunks))}" if prefill_chunks else ""  # the default keeps its key
    digest = hashlib.sha256(f"{EXPORT_VERSION}|{COMPILE_VERSION}|{TPU_MLIR_VERSION}|{seq_len}|{CHUNK_LEN}{extra}".encode())
    for f in sorted(checkpoint.iterdir()):
        if f.name in ("config.json", "model.safetensors"):
            digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()[:16]


def tiny_export(kind: str, weight_scale: float = 1.0, seq_len: int = SEQ_LEN, prefill_chunks: tuple[int, ...] = ()) -> Path:
    """The exported pieces of a tiny model (``manifest.json`` + ONNX + weights), cached."""
    from wizardcoder_tpu.inference.tpu.export import export

    checkpoint = tiny_checkpoint(kind, weight_scale)
    target = cache_dir() / "test-bmodels" / f"tiny-{kind}-{_content_key(checkpoint, seq_len, prefill_chunks)}"
    if (target / "manifest.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tiny-{kind}-", dir=target.parent))
    try:
        export(checkpoint, seq_len, work, chunk_len=CHUNK_LEN, prefill_chunks=prefill_chunks, log=lambda m: None)
        try:
            os.rename(work, target)  # another process may have won the race: keep its copy
        except OSError:
            if not (target / "manifest.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def tiny_bmodel(kind: str, quantize: str = "f16", num_device: int = 1, weight_scale: float = 1.0,
                seq_len: int = SEQ_LEN, prefill_chunks: tuple[int, ...] = ()) -> Path:
    """A tiny model compiled for the BM1684X (validated on the simulator when 1-device).
    ``seq_len`` and ``prefill_chunks`` as ``wizardcoder-tpu export`` takes them."""
    from wizardcoder_tpu.inference.tpu.compile import compile_export

    export_dir = tiny_export(kind, weight_scale, seq_len, prefill_chunks)
    with open(export_dir / f".lock-{quantize}-{num_device}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes: the second waits, then finds it current
        return compile_export(export_dir, quantize=quantize, num_device=num_device, jobs=2, log=lambda m: None)
