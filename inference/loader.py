"""From a model argument (a registry name or ``default``, a .gguf, a checkpoint directory, a
.bmodel) to an Engine; with the ``remote`` backend, to a RemoteEngine whose model runs on an
inference server (the argument then names the tokenizer's source: the served model's GGUF,
checkpoint directory or ``tokenizer.json``)."""

from __future__ import annotations

from pathlib import Path

from .engine import Engine, TextEngine
from .errors import ModelLoadError
from .models import DEFAULT_MODEL, MODELS, model_path
from .remote import RemoteConfig, open_remote

BACKENDS = ("cpu", "tpu", "remote")


def resolve_model(model: str | None) -> Path:
    """A name from ``inference/models.py`` (``default`` is the default's) is its GGUF in the cache,
    fetched on first use; anything else is a path."""
    if model in (None, "", "default") or model in MODELS:
        return model_path(model or DEFAULT_MODEL)
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model not found: {model} (not a file or directory, nor a model name: "
                             f"{', '.join(MODELS)})")
    return path


CPU_SLOTS = 4  # the CPU backend's KV caches when the caller leaves it to the backend (slots=0)


def load_engine(model: str | None = None, backend: str = "cpu", threads: int | None = None,
                weights: str = "auto", slots: int = 1, remote: RemoteConfig | None = None) -> TextEngine:
    """``threads`` and ``weights`` apply to the CPU backend (a bmodel's precision is fixed when it
    is compiled); ``slots`` (KV caches kept, one prefix each; 0: the backend's own, ``CPU_SLOTS``
    on the CPU, as many as the device memory holds on the TPU) to both; ``remote`` (the
    endpoint, protocol, access) to the remote one."""
    path = resolve_model(model)
    if backend == "remote":
        if remote is None:
            raise ModelLoadError("the remote backend needs an endpoint (--endpoint URL, or the endpoint setting)")
        return open_remote(path, remote)
    if backend == "cpu":
        from .backends.cpu import CPUBackend
        from .weights import open_checkpoint

        checkpoint = open_checkpoint(path)
        backend_ = CPUBackend(checkpoint, threads=threads, weights=weights, slots=slots or CPU_SLOTS)
        return Engine(backend_, checkpoint.tokenizer(), model_name=path.name)
    if backend == "tpu":
        from .backends.tpu import load_tpu_engine  # the C++ bmrt engine (csrc/)

        return load_tpu_engine(path, slots=slots)
    raise ModelLoadError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
