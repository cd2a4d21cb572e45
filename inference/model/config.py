"""The architecture-neutral description of a decoder-only transformer.

The three supported architectures (GPTBigCode for WizardCoder/StarCoder, Llama for SmolLM2,
Qwen2 for the Qwen2.5-Coder default) fit one dataclass; the handful of places where they differ
are the fields below ``arch`` and are read by ``inference/model/{gptbigcode,llama,qwen2}.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Arch = Literal["gpt_bigcode", "llama", "qwen2"]
SUPPORTED_ARCHS: tuple[str, ...] = ("gpt_bigcode", "llama", "qwen2")


@dataclass(frozen=True)
class ModelConfig:
    arch: Arch
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int  # 1: multi-query (StarCoder); == num_heads: multi-head; between: grouped
    intermediate_size: int
    max_positions: int  # learned positions (GPTBigCode) or trained context (Llama, Qwen2)
    norm_eps: float
    rope_theta: float = 10000.0  # rotary architectures only (Llama 10^4, Qwen2.5 10^6)
    tie_embeddings: bool = False  # lm_head shares the token embedding matrix

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    def validate(self) -> None:
        if self.arch not in SUPPORTED_ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "intermediate_size", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return cls(**data)
