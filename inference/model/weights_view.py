"""How a graph builder reaches weights: by canonical name, registered on first use."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # a type only (see llama.py)
    from .graph import GraphBuilder


class WeightView:
    """Turns ``w("layers.3.attn.qkv.weight")`` into an initializer of the graph being built.

    ``fetch`` is usually ``Checkpoint.tensor``; tensors are read only when a graph needs them, so an
    exporter that builds one layer at a time holds one layer in memory.
    """

    def __init__(self, g: GraphBuilder, fetch: Callable[[str], np.ndarray], dtype: type = np.float32):
        self._g, self._fetch, self._dtype = g, fetch, dtype
        self._added: set[str] = set()

    def __call__(self, name: str) -> str:
        if name not in self._added:
            self._g.weight(name, self._fetch(name).astype(self._dtype, copy=False))
            self._added.add(name)
        return name
