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
KINDS = ("gpt_bigcode_mq", "gpt_bigcode_mha", "llama_gqa", "qwen2")

# A tiny model trained for a moment on Python source, one token per byte: random weights give
# logits without structure (at std 0.2 int4 rounding alone loses the argmax; at std 0.02 every
# argmax is a near-tie), a trained model has the decisive, peaked next-token distributions of a
# real one, so greedy agreement under int8/int4 measures the quantization, not coin tosses.
TRAIN_MODULES = ("argparse", "dataclasses", "functools", "textwrap", "json.decoder", "json.encoder", "string")
HELD_OUT_MODULES = ("shlex", "difflib")  # never trained on: the prompts of the quantized tests
TRAIN_RECIPE = "1|steps=400|batch=16|rows=64|lr=3e-3|seed=0"


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


def python_source(modules: tuple[str, ...]) -> bytes:
    """The source of standard-library ``modules``, concatenated (the interpreter's own files)."""
    import importlib
    import inspect

    return b"".join(inspect.getsource(importlib.import_module(m)).encode() for m in modules)


def _trained_config(kind: str):
    from transformers import GPTBigCodeConfig, Qwen2Config

    vocab = 512  # bytes 0-255 used; the rest as conftest's tiny vocabulary, never seen
    if kind == "gpt_bigcode_mq":
        return GPTBigCodeConfig(vocab_size=vocab, n_positions=1024, n_embd=128, n_layer=3, n_head=4,
                                multi_query=True, bos_token_id=0, eos_token_id=0)
    if kind == "qwen2":  # Qwen2.5's shape in small: GQA, q/k/v biases, θ = 10^6, tied embeddings
        return Qwen2Config(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                           num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                           rope_theta=1000000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    raise ValueError(f"no trained tiny {kind}")


def trained_checkpoint(kind: str) -> Path:
    """A tiny ``kind`` ("gpt_bigcode_mq" | "qwen2") trained with transformers on ``TRAIN_MODULES``'
    source, one token per byte (~1 min on 2 cores), cached by the recipe and the corpus."""
    corpus = python_source(TRAIN_MODULES)
    config = _trained_config(kind)
    key = hashlib.sha256(f"{TRAIN_RECIPE}|{config.to_json_string()}".encode() + corpus).hexdigest()[:16]
    target = cache_dir() / "test-bmodels" / f"trained-{kind}-{key}"
    if (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM

    recipe = dict(item.split("=") for item in TRAIN_RECIPE.split("|")[1:])
    steps, batch, rows, lr = int(recipe["steps"]), int(recipe["batch"]), int(recipe["rows"]), float(recipe["lr"])
    torch.manual_seed(int(recipe["seed"]))
    model = AutoModelForCausalLM.from_config(config)
    data = torch.tensor(list(corpus), dtype=torch.long)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(int(recipe["seed"]))
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - rows - 1, (batch,), generator=generator)
        ids = torch.stack([data[s:s + rows] for s in starts])
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".trained-{kind}-", dir=target.parent))
    try:
        model.save_pretrained(work)
        (work / "train.json").write_text(f'{{"recipe": "{TRAIN_RECIPE}", "final_loss": {float(loss):.4f}}}\n')
        try:
            os.rename(work, target)  # another process may have won the race: keep its copy
        except OSError:
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


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


def tiny_export(kind: str, weight_scale: float = 1.0, seq_len: int = SEQ_LEN, prefill_chunks: tuple[int, ...] = (),
                trained: bool = False) -> Path:
    """The exported pieces of a tiny model (``manifest.json`` + ONNX + weights), cached.
    ``trained``: ``trained_checkpoint(kind)`` rather than conftest's random one."""
    from wizardcoder_tpu.inference.tpu.export import export

    checkpoint = trained_checkpoint(kind) if trained else tiny_checkpoint(kind, weight_scale)
    name = "trained" if trained else "tiny"
    target = cache_dir() / "test-bmodels" / f"{name}-{kind}-{_content_key(checkpoint, seq_len, prefill_chunks)}"
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
                seq_len: int = SEQ_LEN, prefill_chunks: tuple[int, ...] = (), trained: bool = False) -> Path:
    """A tiny model compiled for the BM1684X (validated on the simulator when 1-device).
    ``seq_len`` and ``prefill_chunks`` as ``wizardcoder-tpu export`` takes them; ``trained`` as
    ``tiny_export``."""
    from wizardcoder_tpu.inference.tpu.compile import compile_export

    export_dir = tiny_export(kind, weight_scale, seq_len, prefill_chunks, trained)
    with open(export_dir / f".lock-{quantize}-{num_device}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes: the second waits, then finds it current
        return compile_export(export_dir, quantize=quantize, num_device=num_device, jobs=2, log=lambda m: None)
