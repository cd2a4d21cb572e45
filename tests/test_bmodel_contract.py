"""The piece contract (csrc/contract.cpp) checked on a bmodel file alone: no libraries, no device.

``_bmrt.check_bmodel`` reads the nets' inputs and outputs from the file's model description and
runs the same check the engine runs on what the runtime reports. Here it meets the real tiny
bmodels, then copies of them with one field of the description changed in place, each the kind
of mistake an exporter or compiler change would make.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_bmrt_engine import _corrupt_variants
from test_tpu_engine import argmax_bmodel
from tpu_models import CHUNK_LEN, SEQ_LEN, tiny_bmodel, tiny_checkpoint

from wizardcoder_tpu import _bmrt

# Each test needs a compiled tiny bmodel: seconds from the cache, minutes on a cold one.
pytestmark = pytest.mark.slow

BM_FLOAT32, BM_INT8 = 0, 2  # bm_data_type_t; f32 is the default, so f32 tensors (all the floats) store none


class Description:
    """A bmodel's bytes with its model description walkable: flatbuffers' wire format over the
    tables of libsophon's model.fbs that the engine reads (Model.net:4, Net.name:0,
    Net.parameter:3, NetParameter.input_tensor:0 / output_tensor:1, Tensor.name:0,
    Tensor.data_type:1, Tensor.shape:5, Shape.dim:0). Positions are absolute in ``data``."""

    def __init__(self, path: Path):
        self.data = bytearray(path.read_bytes())
        self.base = int.from_bytes(self.data[4:8], "little")  # header_size: the description follows

    def _int(self, at: int, size: int, signed: bool = False) -> int:
        return int.from_bytes(self.data[at:at + size], "little", signed=signed)

    def field(self, table: int, id: int) -> int:
        vtable = table - self._int(table, 4, signed=True)
        if 4 + 2 * id + 2 > self._int(vtable, 2):
            return 0
        offset = self._int(vtable + 4 + 2 * id, 2)
        return table + offset if offset else 0

    def vector(self, table: int, id: int, elem: int = 4) -> list[int]:
        at = self.field(table, id)
        start = at + self._int(at, 4)
        return [start + 4 + elem * i for i in range(self._int(start, 4))]

    def table(self, slot: int) -> int:
        return slot + self._int(slot, 4)

    def string(self, table: int, id: int) -> tuple[int, str]:
        at = self.field(table, id)
        start = at + self._int(at, 4)
        return start + 4, self.data[start + 4:start + 4 + self._int(start, 4)].decode()

    def net(self, name: str) -> int:
        root = self.base + self._int(self.base, 4)
        for slot in self.vector(root, 4):
            if self.string(self.table(slot), 0)[1] == name:
                return self.table(slot)
        raise KeyError(name)

    def _tensors(self, net: str, outputs: bool) -> list[int]:
        stage0 = self.table(self.vector(self.net(net), 3)[0])
        return [self.table(slot) for slot in self.vector(stage0, 1 if outputs else 0)]

    def tensor(self, net: str, name: str) -> int:
        """An input, by its contract name (the compiler keeps input names)."""
        for table in self._tensors(net, outputs=False):
            if self.string(table, 0)[1] == name:
                return table
        raise KeyError(f"{net}.{name}")

    def output(self, net: str, index: int) -> int:
        """An output, by position: the compiler renames outputs (docs/tpu-pieces.md)."""
        return self._tensors(net, outputs=True)[index]

    def set_dtype(self, tensor: int, dtype: int) -> None:
        at = self.field(tensor, 1)
        assert at, "the compiler left data_type at its default: not patchable in place"
        self.data[at:at + 4] = dtype.to_bytes(4, "little")

    def set_last_dim(self, tensor: int, value: int) -> None:
        dims = self.vector(self.table(self.vector(tensor, 5)[0]), 0, elem=8)
        self.data[dims[-1]:dims[-1] + 8] = value.to_bytes(8, "little")

    def rename_net(self, name: str, new: str) -> None:
        assert len(new) == len(name)
        at, _ = self.string(self.net(name), 0)
        self.data[at:at + len(name)] = new.encode()

    def save(self, path: Path) -> str:
        path.write_bytes(self.data)
        return str(path)


def _config(kind: str) -> dict:
    return json.loads((tiny_checkpoint(kind) / "config.json").read_text())


@pytest.mark.parametrize("kind", ["gpt_bigcode_mq", "llama_gqa"])
def test_a_compiled_tiny_bmodel_meets_the_contract(kind):
    config = _config(kind)
    checked = _bmrt.check_bmodel(str(tiny_bmodel(kind)))
    assert checked["seq_len"] == SEQ_LEN and checked["chunk_len"] == CHUNK_LEN
    assert checked["chunk_rows"] == [CHUNK_LEN]  # block_chunk_{i} only
    assert checked["num_layers"] == config.get("n_layer", config.get("num_hidden_layers"))
    assert checked["hidden_size"] == config.get("n_embd", config.get("hidden_size"))
    assert checked["vocab_size"] == config["vocab_size"]
    # One position of one layer's K: MQA keeps one head, GQA num_key_value_heads; f32 at the
    # bmodel's boundary (docs/tpu-pieces.md), whatever the compiled precision inside.
    heads = config.get("num_key_value_heads", 1)
    head_dim = checked["hidden_size"] // config.get("n_head", config.get("num_attention_heads"))
    assert checked["kv_row_bytes"] == heads * head_dim * 4


def test_contract_violations_name_the_net_and_what_is_wrong(tmp_path):
    good = tiny_bmodel("gpt_bigcode_mq")

    def damaged(name: str, change) -> str:
        description = Description(good)
        change(description)
        return description.save(tmp_path / f"{name}.bmodel")

    cases = {
        "no lm_head": (lambda d: d.rename_net("lm_head", "lm_heaX"), "the bmodel has no net 'lm_head' (it has: "),
        "a layer missing": (lambda d: d.rename_net("block_cache_2", "block_cache_X"), "no net 'block_cache_2'"),
        "a chunk layer missing": (lambda d: d.rename_net("block_chunk_2", "block_chunk92"), "no net 'block_chunk_2'"),
        "ids as floats": (lambda d: d.set_dtype(d.tensor("embed", "input_ids"), BM_FLOAT32),
                          "net 'embed': input_ids is f32, expected i32"),
        "ids as bytes": (lambda d: d.set_dtype(d.tensor("embed_cache", "input_ids"), BM_INT8),
                         "net 'embed_cache': input_ids is i8, expected i32"),
        "mask shape": (lambda d: d.set_last_dim(d.tensor("block_1", "attention_mask"), SEQ_LEN - 1),
                       f"net 'block_1': attention_mask has shape [1,1,{SEQ_LEN},{SEQ_LEN - 1}], "
                       f"expected {SEQ_LEN * SEQ_LEN} elements"),
        "past rows": (lambda d: d.set_last_dim(d.tensor("block_cache_2", "past_k"), 1),
                      "net 'block_cache_2': past_k is "),
        "chunk rows": (lambda d: d.set_last_dim(d.output("block_chunk_1", 2), 1),  # present_v
                       "net 'block_chunk_1': present_v is "),
        "chunk head rows": (lambda d: d.set_last_dim(d.tensor("lm_head_chunk", "hidden"), 3),  # [1,K,3]
                            f"net 'lm_head_chunk': hidden has shape [1,{CHUNK_LEN},3], expected "),
    }
    for name, (change, expected) in cases.items():
        path = damaged(name.replace(" ", "-"), change)
        with pytest.raises(_bmrt.ModelError) as caught:
            _bmrt.check_bmodel(path)
        assert str(caught.value).startswith(f"{path}: "), (name, str(caught.value))
        assert expected in str(caught.value), (name, str(caught.value))
        assert "(docs/tpu-pieces.md)" in str(caught.value) or "see docs/tpu-pieces.md" in str(caught.value)


def test_files_that_are_not_bmodels_are_model_errors_before_any_contract(tmp_path):
    """The byte-level damages of the engine's own tests, and a bmodel that is not a model. The one
    that makes bmrt segfault is in the coefficients' table, which the check does not read: the
    file is still refused, by the contract (it is the one-net argmax bmodel)."""
    expected = {"text": "not a bmodel", "truncated": "truncated bmodel", "magic": "wrong magic number",
                "description": "corrupt bmodel", "segfault": "no net 'embed'"}
    for name, path in _corrupt_variants(argmax_bmodel(), tmp_path).items():
        with pytest.raises(_bmrt.ModelError, match=expected[name]):
            _bmrt.check_bmodel(str(path))
    with pytest.raises(_bmrt.ModelError, match="the bmodel has no net 'embed' \\(it has: lm_head\\)"):
        _bmrt.check_bmodel(str(argmax_bmodel()))
