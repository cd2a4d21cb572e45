"""What a backend needs to know of the CPU decoder graph without building one: the weight
settings and the names of the KV-cache inputs and outputs.

Apart from ``cpu_graph.py`` because that module needs ``onnx`` (about a second to import, more
on a busy machine), and a server that loads a graph already built needs only onnxruntime: a
warm start should not pay for the graph builder.
"""

from __future__ import annotations

from dataclasses import dataclass

WEIGHTS = ("auto", "int8", "int4", "f32")


@dataclass(frozen=True)
class GraphOptions:
    """How weights are stored in the graph (measured on SmolLM2 in ``bench/results/engine.md``).

    - ``auto``: the file's precision as closely as a fast kernel allows: every GGUF block as it
      is, 4-bit ones (Q4_0, Q4_1/Q4_K with their offsets) with float activations (exact),
      wider ones (Q5_0, Q6_K, Q8_0: exact as 8-bit blocks) with int8 activations, since
      onnxruntime has no fast float-activation kernel for 8-bit blocks (float32 for them made
      the default Qwen2.5-Coder-0.5B file decode at 0.4x llama.cpp; now 0.73-0.87x, with
      98.7 % greedy agreement with ``f32``, bench/results/engine.md); float tensors as float32.
    - ``int4``: every linear layer as plain 4-bit ``MatMulNBits`` blocks (the file's where they
      map, requantized otherwise with an integer zero point), float activations; the output
      layer as the file's 4-bit blocks or float32 (see ``vocabulary_storage``).
    - ``int8``: every matrix as 8-bit blocks, activations quantized to int8.
    - ``f32``: everything dequantized: the reference.
    """

    weights: str = "auto"

    def __post_init__(self) -> None:
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, not {self.weights!r}")


def kv_names(i: int) -> tuple[str, str, str, str]:
    return f"past_key_{i}", f"past_value_{i}", f"present_key_{i}", f"present_value_{i}"
