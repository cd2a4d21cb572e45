"""From a model argument (``default``, a .gguf, a checkpoint directory, a .bmodel) to an Engine."""

from __future__ import annotations

from pathlib import Path

from .default_model import default_model_path
from .engine import Engine
from .errors import ModelLoadError

BACKENDS = ("cpu", "tpu")
WEIGHTS = ("auto", "int8", "int4", "f32")  # how the CPU graph stores weights (inference/model/cpu_graph.py)


def resolve_model(model: str | None) -> Path:
    if model in (None, "", "default"):
        return default_model_path()
    return Path(model).expanduser()


def load_engine(model: str | None = None, backend: str = "cpu", threads: int | None = None,
                weights: str = "auto") -> Engine:
    """``threads`` and ``weights`` apply to the CPU backend (a bmodel's precision is fixed when it
    is compiled)."""
    path = resolve_model(model)
    if backend == "cpu":
        from .backends.cpu import CPUBackend
        from .weights import open_checkpoint

        checkpoint = open_checkpoint(path)
        backend_ = CPUBackend(checkpoint, threads=threads, weights=weights)
        return Engine(backend_, checkpoint.tokenizer(), model_name=path.name)
    if backend == "tpu":
        from .backends.tpu import load_tpu_engine  # the C++ bmrt engine (csrc/)

        return load_tpu_engine(path)
    raise ModelLoadError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
