"""GGUF blocks in the engine's block form stand for exactly the values gguf itself decodes, and
the repacked form is what onnxruntime's MatMulNBits multiplies by."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize as gguf_quantize

from wizardcoder_tpu.inference.weights.quantized import (
    MAPPED_TYPES, concatenate, from_gguf_blocks, pack_matmul_nbits, quantize)

ROWS, K = 24, 512


def _weights() -> np.ndarray:
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((ROWS, K)) * 0.05).astype(np.float32)
    w[2, :32] = 0.25  # a block of equal values (Q4_1's d = 0)
    w[3, 32:64] = 0.0  # an empty block
    return w


def _k_quant_blocks(kind: str) -> np.ndarray:
    """Random bytes are valid K-quant blocks once their float16 scale fields are sane (gguf has
    no quantizer for these types)."""
    rng = np.random.default_rng(5)
    size = {"Q4_K": 144, "Q6_K": 210}[kind]
    raw = rng.integers(0, 256, (ROWS, K // 256, size), dtype=np.uint8)
    scale = lambda: rng.uniform(1e-4, 2e-3, (ROWS, K // 256)).astype(np.float16).view(np.uint8).reshape(ROWS, -1, 2)  # noqa: E731
    if kind == "Q4_K":
        raw[..., 0:2], raw[..., 2:4] = scale(), scale()  # d, dmin
    else:
        raw[..., 208:210] = scale()  # d
    return raw.reshape(ROWS, -1)


@pytest.mark.parametrize("kind", MAPPED_TYPES)
def test_blocks_decode_to_ggufs_own_values(kind):
    if kind in ("Q4_K", "Q6_K"):
        raw = _k_quant_blocks(kind)
    else:
        raw = gguf_quantize(_weights(), GGMLQuantizationType[kind])
    expected = dequantize(raw, GGMLQuantizationType[kind]).reshape(ROWS, K)
    blocks = from_gguf_blocks(kind, raw, K)
    assert blocks.bits == (4 if kind in ("Q4_0", "Q4_1", "Q4_K") else 8)
    assert blocks.codes.max() < 2 ** blocks.bits
    np.testing.assert_array_equal(blocks.dequantize(), expected)


def test_widening_splitting_and_stacking_are_exact():
    q4 = from_gguf_blocks("Q4_0", gguf_quantize(_weights(), GGMLQuantizationType.Q4_0), K)
    q41 = from_gguf_blocks("Q4_1", gguf_quantize(_weights(), GGMLQuantizationType.Q4_1), K)
    q6 = from_gguf_blocks("Q6_K", _k_quant_blocks("Q6_K"), K)
    np.testing.assert_array_equal(q4.with_bits(8).dequantize(), q4.dequantize())
    np.testing.assert_array_equal(q41.with_bits(8).dequantize(), q41.dequantize())
    np.testing.assert_array_equal(q4.with_block(16).dequantize(), q4.dequantize())
    stacked = concatenate([q4, q41, q6])  # 8 bits, blocks of 16, zero points and offsets for all
    assert (stacked.bits, stacked.block) == (8, 16)
    np.testing.assert_array_equal(stacked.dequantize(),
                                  np.concatenate([q4.dequantize(), q41.dequantize(), q6.dequantize()]))


@pytest.mark.parametrize("bits", [4, 8])
def test_requantization_error_is_within_half_a_step(bits):
    w = _weights()
    q = quantize(w, bits)
    step = np.repeat(q.scales, q.block, axis=1)
    assert np.all(np.abs(q.dequantize() - w) <= step / 2 + 1e-7)
    assert np.all(q.dequantize()[3, 32:64] == 0)  # zero stays zero


@pytest.mark.parametrize("bits, zero_points", [(4, True), (4, False), (8, False)])
def test_matmul_nbits_multiplies_by_the_dequantized_matrix(bits, zero_points):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    q = quantize(_weights(), bits)
    if not zero_points:
        q = from_gguf_blocks("Q4_0" if bits == 4 else "Q8_0",
                             gguf_quantize(_weights(), GGMLQuantizationType["Q4_0" if bits == 4 else "Q8_0"]), K)
    b, scales, zp = pack_matmul_nbits(q)
    assert (zp is not None) == zero_points
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales, "scales")]
    inputs = ["x", "B", "scales"]
    if zp is not None:
        inits.append(numpy_helper.from_array(zp, "zp"))
        inputs.append("zp")
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=K, N=ROWS, bits=bits,
                            block_size=q.block, accuracy_level=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, ROWS])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, K)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ q.dequantize().T, rtol=1e-4, atol=1e-5)
