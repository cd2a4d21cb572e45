"""A thin builder over ``onnx.helper``: named initializers, one call per node, fresh names.

Both the CPU decoder (dynamic sequence, KV cache in and out) and the TPU pieces (static shapes)
are emitted through it, from the same layer functions in ``inference/model/decoder.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # LayerNormalization is opset 17; tpu-mlir 1.30 imports it.
CONTRIB = "com.microsoft"  # onnxruntime's contrib ops (the CPU graph only)

_ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
         np.dtype(np.uint8): TensorProto.UINT8,
         np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.int32): TensorProto.INT32,
         np.dtype(np.bool_): TensorProto.BOOL}

Dim = int | str | None


class GraphBuilder:
    def __init__(self, name: str):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def input(self, name: str, dtype: type, shape: Sequence[Dim]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, _ELEM[np.dtype(dtype)], list(shape)))
        return name

    def output(self, value: str, name: str, dtype: type, shape: Sequence[Dim]) -> str:
        """Expose ``value`` under the stable graph-output ``name``."""
        if value != name:
            self.nodes.append(helper.make_node("Identity", [value], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, _ELEM[np.dtype(dtype)], list(shape)))
        return name

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, value, dtype: type = np.int64) -> str:
        """A small constant, deduplicated by value."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self.weight(self.fresh("const"), array)
        return self._consts[key]

    def op(self, op_type: str, *inputs: str, n_out: int = 1, domain: str = "", unused: Sequence[int] = (),
           **attrs) -> str | list[str]:
        """One node; an input ``""`` skips an optional input, the outputs at ``unused`` get no
        name (returned as ``""``); ``domain="com.microsoft"`` for onnxruntime's contrib ops."""
        outs = ["" if i in unused else self.fresh(op_type.lower()) for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, domain=domain or None, **attrs))
        return outs[0] if n_out == 1 else outs

    # Shorthands for the ops the decoder uses over and over.
    def matmul(self, a: str, b: str) -> str:
        return self.op("MatMul", a, b)

    def add(self, a: str, b: str) -> str:
        return self.op("Add", a, b)

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", a, b)

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        """``0`` copies the input's dimension, ``-1`` is inferred (ONNX Reshape semantics)."""
        return self.op("Reshape", x, self.const(list(shape)))

    def transpose(self, x: str, perm: Sequence[int]) -> str:
        return self.op("Transpose", x, perm=list(perm))

    def linear(self, x: str, weight: str, bias: str | None = None) -> str:
        y = self.matmul(x, weight)
        return self.add(y, bias) if bias is not None else y

    def build(self, doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid("", OPSET)]
        if any(n.domain == CONTRIB for n in self.nodes):
            opsets.append(helper.make_opsetid(CONTRIB, 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name="wizardcoder-tpu", doc_string=doc)
        model.ir_version = 8  # readable by onnxruntime and by tpu-mlir's onnx
        return model
