"""The lazy GGUF reader against the ``gguf`` package's own reader, and the loader's errors for
what it cannot read (files written here with ``gguf.GGUFWriter``)."""

from __future__ import annotations

import numpy as np
import pytest

from wizardcoder_tpu.inference.errors import ModelLoadError
from wizardcoder_tpu.inference.weights import open_checkpoint
from wizardcoder_tpu.inference.weights.gguf_file import GGUFFile


def _assert_same_as_gguf_reader(path) -> None:
    import gguf

    reference = gguf.GGUFReader(str(path))
    ours = GGUFFile(path)
    assert ours.keys() == [k for k in reference.fields if not k.startswith("GGUF.")]
    for key, field in reference.fields.items():
        nested = field.types[:2] == [gguf.GGUFValueType.ARRAY] * 2  # GGUFReader flattens these (its FIXME)
        if not key.startswith("GGUF.") and not nested:
            assert ours.field(key) == field.contents(), key
    assert list(ours.tensors) == [t.name for t in reference.tensors]
    for tensor in reference.tensors:
        mine = ours.tensors[tensor.name]
        assert mine.tensor_type == tensor.tensor_type and mine.shape == tuple(int(d) for d in tensor.shape)
        assert np.array_equal(mine.data, np.asarray(tensor.data)), tensor.name


def _write(path, fill) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "qwen2")
    fill(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_every_value_type_and_tensor_reads_as_gguf_reads_it(tmp_path):
    import gguf
    from gguf import GGMLQuantizationType as T

    rng = np.random.default_rng(0)

    def fill(w):
        w.add_uint8("t.u8", 7), w.add_int16("t.i16", -3), w.add_uint32("t.u32", 4_000_000_000)
        w.add_int64("t.i64", -(2**40)), w.add_float32("t.f32", 0.25), w.add_float64("t.f64", 1e-300)
        w.add_bool("t.bool", True), w.add_string("t.str", "naïve 中文 🚀")
        w.add_array("t.strings", ["", "a b", "<|fim_prefix|>", "Ġhello"])
        w.add_array("t.ints", list(range(-5, 5))), w.add_array("t.floats", [0.5, -1.5])
        w.add_array("t.nested", [[1, 2], [3]])
        w.add_tensor("f32", rng.standard_normal((3, 64), dtype=np.float32))
        w.add_tensor("f16", rng.standard_normal((2, 32)).astype(np.float16))
        for kind in (T.Q8_0, T.Q5_0, T.Q4_1):
            blocks = gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), kind)
            w.add_tensor(kind.name.lower(), blocks, raw_dtype=kind)

    path = tmp_path / "types.gguf"
    _write(path, fill)
    _assert_same_as_gguf_reader(path)
    assert GGUFFile(path).field("t.nested") == [[1, 2], [3]]


@pytest.mark.slow
def test_a_real_model_reads_as_gguf_reads_it(smollm2_model):
    """SmolLM2's GGUF, as llama.cpp's converter wrote it (GGUFReader alone takes 8–20 s here)."""
    _assert_same_as_gguf_reader(smollm2_model)


def _tiny_qwen2_metadata(w) -> None:
    w.add_block_count(1), w.add_context_length(64), w.add_embedding_length(32), w.add_feed_forward_length(64)
    w.add_head_count(4), w.add_head_count_kv(2), w.add_layer_norm_rms_eps(1e-6), w.add_rope_freq_base(1e6)
    w.add_vocab_size(64)


def test_an_unreadable_tensor_type_names_the_tensor_and_the_type(tmp_path):
    from gguf import GGMLQuantizationType as T

    def fill(w):
        _tiny_qwen2_metadata(w)
        # IQ4_NL: 32 values in 18 bytes, a format this loader does not dequantize
        w.add_tensor("token_embd.weight", np.zeros((64, 18), np.uint8), raw_dtype=T.IQ4_NL)

    path = tmp_path / "iq4.gguf"
    _write(path, fill)
    checkpoint = open_checkpoint(path)
    assert checkpoint.config.arch == "qwen2" and checkpoint.config.rope_theta == 1e6
    with pytest.raises(ModelLoadError, match=r"iq4\.gguf: tensor token_embd\.weight is stored as IQ4_NL, which this "
                                             r"loader cannot read \(it reads F32, F16, BF16, Q4_0, .*Q6_K\)"):
        checkpoint.tensor("tok_embeddings")


def test_an_unsupported_architecture_is_named(tmp_path):
    import gguf

    path = tmp_path / "phi.gguf"
    writer = gguf.GGUFWriter(str(path), "phi3")
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(ModelLoadError, match=r"GGUF architecture 'phi3' is not supported \(supported: llama, qwen2\)"):
        open_checkpoint(path)
