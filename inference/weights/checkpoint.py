"""The interface every weight loader implements: config, canonical tensors on demand, tokenizer."""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from ..model.architectures import expected_shapes
from ..model.config import ModelConfig
from ..tokenizer import Tokenizer
from .quantized import BlockQuantized


class Checkpoint(abc.ABC):
    """Weights are read one tensor at a time, so that an exporter can stream a 15B model layer
    by layer in bounded memory."""

    path: Path
    config: ModelConfig

    @abc.abstractmethod
    def _read(self, name: str) -> np.ndarray:
        """The canonical tensor ``name`` as float32, before the shape check."""

    @abc.abstractmethod
    def tokenizer(self) -> Tokenizer: ...

    def tensor(self, name: str) -> np.ndarray:
        """A canonical tensor, float32, with its shape checked against the config."""
        shapes = expected_shapes(self.config)
        if name not in shapes:
            raise KeyError(f"{name!r} is not a tensor of a {self.config.arch} model")
        array = self._read(name)
        if tuple(array.shape) != shapes[name]:
            raise ModelLoadError(
                f"{self.path}: tensor {name} has shape {tuple(array.shape)}, the config implies {shapes[name]}"
            )
        return np.ascontiguousarray(array, dtype=np.float32)

    def quantized(self, name: str) -> BlockQuantized | None:
        """The canonical matrix ``name`` as the file's own blocks, ``[out, in]`` (a linear
        layer's weight transposed; the vocabulary matrices as they are), when its storage maps
        onto ``BlockQuantized`` without rounding; None for float storage (the graph then reads
        ``tensor`` and requantizes it where asked)."""
        return None

    def tensor_names(self) -> list[str]:
        return list(expected_shapes(self.config))

    def layer_tensors(self, layer: int) -> dict[str, np.ndarray]:
        prefix = f"layers.{layer}."
        return {n: self.tensor(n) for n in self.tensor_names() if n.startswith(prefix)}

    def global_tensors(self) -> dict[str, np.ndarray]:
        return {n: self.tensor(n) for n in self.tensor_names() if not n.startswith("layers.")}

    def all_tensors(self) -> dict[str, np.ndarray]:
        return {n: self.tensor(n) for n in self.tensor_names()}

    def fingerprint(self) -> str:
        """A cheap identity for caches derived from this checkpoint (path, size, mtime)."""
        files = sorted(self.path.glob("*")) if self.path.is_dir() else [self.path]
        parts = [f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files if f.is_file()]
        return "|".join([str(self.path.resolve()), *parts])
