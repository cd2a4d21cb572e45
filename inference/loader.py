"""From a model argument (``default``, a .gguf, a checkpoint directory, a .bmodel) to an Engine."""

from __future__ import annotations

from pathlib import Path

from .default_model import default_model_path
from .engine import Engine
from .errors import ModelLoadError

BACKENDS = ("cpu", "tpu")


def resolve_model(model: str | None) -> Path:
    if model in (None, "", "default"):
        return default_model_path()
    return Path(model).expanduser()


def load_engine(model: str | None = None, backend: str = "cpu", threads: int | None = None) -> Engine:
    path = resolve_model(model)
    if backend == "cpu":
        from .backends.cpu import CPUBackend
        from .weights import open_checkpoint

        checkpoint = open_checkpoint(path)
        return Engine(CPUBackend(checkpoint, threads=threads), checkpoint.tokenizer(), model_name=path.name)
    if backend == "tpu":
        from .backends.tpu import load_tpu_engine  # the C++ bmrt engine (csrc/)

        return load_tpu_engine(path)
    raise ModelLoadError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
