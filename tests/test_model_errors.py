"""Broken model files give a clear error naming the file (and tensor); nothing hangs."""

from __future__ import annotations

import json
import shutil

import pytest

from wizardcoder_tpu.inference.errors import ModelLoadError
from wizardcoder_tpu.inference.loader import load_engine
from wizardcoder_tpu.inference.weights import open_checkpoint


def test_corrupt_gguf(tmp_path, smollm2_model):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="model.gguf"):
        open_checkpoint(bad)
    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(ModelLoadError, match="text.gguf"):
        open_checkpoint(not_gguf)


def test_truncated_gguf(tmp_path, smollm2_model):
    cut = tmp_path / "cut.gguf"
    with open(smollm2_model, "rb") as src:
        cut.write_bytes(src.read(40_000_000))
    with pytest.raises(ModelLoadError, match="cut.gguf"):
        load_engine(str(cut))


def test_truncated_safetensors(tmp_path, tiny_model_factory):
    directory = shutil.copytree(tiny_model_factory("gpt_bigcode_mq"), tmp_path / "cut")
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ModelLoadError, match=r"model.safetensors: not a readable safetensors file.*not fully covered"):
        open_checkpoint(directory)


def test_missing_tensor_is_named(tmp_path, tiny_model_factory):
    from safetensors.numpy import load_file, save_file

    directory = shutil.copytree(tiny_model_factory("llama_gqa"), tmp_path / "missing")
    tensors = load_file(directory / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, directory / "model.safetensors")
    with pytest.raises(ModelLoadError, match="model.layers.1.mlp.up_proj.weight"):
        load_engine(str(directory))


@pytest.mark.parametrize("edit, message", [
    ({"model_type": "t5"}, "model_type 't5' is not supported"),
    ({"n_head": 3}, "not a multiple of num_heads"),
    ({"n_embd": 256}, "attn.qkv.weight has shape"),
    ({"n_layer": None}, "num_layers must be a positive integer, got None"),
])
def test_wrong_config(tmp_path, tiny_model_factory, edit, message):
    directory = shutil.copytree(tiny_model_factory("gpt_bigcode_mq"), tmp_path / "cfg")
    config = json.loads((directory / "config.json").read_text())
    config.update(edit)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message):
        checkpoint = open_checkpoint(directory)
        checkpoint.tensor("layers.0.attn.qkv.weight")


def test_unreadable_config_and_missing_model(tmp_path):
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ModelLoadError, match="config.json"):
        open_checkpoint(tmp_path)
    with pytest.raises(ModelLoadError, match="not found"):
        open_checkpoint(tmp_path / "nope.gguf")
    with pytest.raises(ModelLoadError, match="not a model"):
        open_checkpoint(tmp_path / "config.json")
