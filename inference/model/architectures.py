"""The closed set of architectures: name → module of the functions where they differ."""

from __future__ import annotations

from types import ModuleType

from . import gptbigcode, llama, qwen2
from .config import ModelConfig

ARCHITECTURES: dict[str, ModuleType] = {"gpt_bigcode": gptbigcode, "llama": llama, "qwen2": qwen2}


def architecture(c: ModelConfig) -> ModuleType:
    try:
        return ARCHITECTURES[c.arch]
    except KeyError:
        raise ValueError(f"unknown architecture {c.arch!r}; supported: {', '.join(ARCHITECTURES)}") from None


def expected_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    return architecture(c).weight_shapes(c)
