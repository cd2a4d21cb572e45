"""Hugging Face checkpoint directories: ``config.json`` + ``*.safetensors`` (single or sharded).

``model_type`` ``gpt_bigcode`` (WizardCoder, StarCoder; multi-query or multi-head), ``llama`` or
``qwen2`` (Llama's names plus ``q_proj`` / ``k_proj`` / ``v_proj`` biases).
Tensors are read lazily from memory-mapped safetensors, one at a time.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from ..model.config import SUPPORTED_ARCHS, ModelConfig
from ..tokenizer import Tokenizer
from .checkpoint import Checkpoint


def config_from_hf(data: dict, source: Path) -> ModelConfig:
    """The canonical config from a transformers ``config.json`` dict."""
    model_type = data.get("model_type")
    try:
        if model_type == "gpt_bigcode":
            heads = data["n_head"]
            config = ModelConfig(
                arch="gpt_bigcode", vocab_size=data["vocab_size"], hidden_size=data["n_embd"],
                num_layers=data["n_layer"], num_heads=heads, num_kv_heads=1 if data.get("multi_query", True) else heads,
                intermediate_size=data.get("n_inner") or 4 * data["n_embd"], max_positions=data["n_positions"],
                norm_eps=data.get("layer_norm_epsilon", 1e-5), tie_embeddings=data.get("tie_word_embeddings", True))
            if data.get("activation_function", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_new"):
                raise ModelLoadError(f"{source}: activation {data['activation_function']!r} is not supported")
        elif model_type in ("llama", "qwen2"):
            heads = data["num_attention_heads"]
            if data.get("rope_scaling") or (data.get("rope_parameters") or {}).get("rope_type", "default") != "default":
                raise ModelLoadError(f"{source}: RoPE scaling is not supported")
            theta = data.get("rope_theta") or (data.get("rope_parameters") or {}).get("rope_theta", 10000.0)
            config = ModelConfig(
                arch=model_type, vocab_size=data["vocab_size"], hidden_size=data["hidden_size"],
                num_layers=data["num_hidden_layers"], num_heads=heads,
                num_kv_heads=data.get("num_key_value_heads") or heads, intermediate_size=data["intermediate_size"],
                max_positions=data.get("max_position_embeddings", 2048), norm_eps=data.get("rms_norm_eps", 1e-6),
                rope_theta=float(theta), tie_embeddings=data.get("tie_word_embeddings", False))
            if model_type == "llama" and (data.get("attention_bias") or data.get("mlp_bias")):
                raise ModelLoadError(f"{source}: Llama with attention or MLP biases is not supported")
            if model_type == "qwen2" and data.get("use_sliding_window"):
                raise ModelLoadError(f"{source}: Qwen2 with sliding-window attention is not supported")
        else:
            raise ModelLoadError(
                f"{source}: model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_ARCHS)})")
    except KeyError as exc:
        raise ModelLoadError(f"{source}: config.json lacks {exc.args[0]!r}") from exc
    except TypeError as exc:
        raise ModelLoadError(f"{source}: config.json has a value of the wrong type ({exc})") from exc
    try:
        config.validate()
    except ValueError as exc:
        raise ModelLoadError(f"{source}: {exc}") from exc
    return config


class HFCheckpoint(Checkpoint):
    def __init__(self, path: Path):
        self.path = path
        config_path = path / "config.json"
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: no config.json (a checkpoint directory needs config.json + *.safetensors)") from None
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{config_path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ModelLoadError(f"{config_path}: expected a JSON object")
        self.config = config_from_hf(data, config_path)
        self._index = self._tensor_index()

    def _tensor_index(self) -> dict[str, Path]:
        """Checkpoint tensor name → the safetensors file holding it."""
        from safetensors import safe_open

        index_file = self.path / "model.safetensors.index.json"
        if index_file.exists():
            try:
                weight_map = json.loads(index_file.read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise ModelLoadError(f"{index_file}: not a safetensors index ({exc})") from exc
            files = {self.path / f for f in set(weight_map.values())}
        else:
            files = set(self.path.glob("*.safetensors"))
        if not files:
            hint = " (convert *.bin with transformers' save_pretrained(safe_serialization=True))" \
                if list(self.path.glob("*.bin")) else ""
            raise ModelLoadError(f"{self.path}: no *.safetensors files{hint}")
        index: dict[str, Path] = {}
        for file in sorted(files):
            try:
                # safe_open checks that the header's offsets cover the file exactly, so a
                # truncated download fails here rather than when a tensor is first touched.
                with safe_open(str(file), framework="numpy") as handle:
                    for key in handle.keys():
                        index[key] = file
            except Exception as exc:
                raise ModelLoadError(f"{file}: not a readable safetensors file ({exc})") from exc
        return index

    def _hf(self, key: str, required: bool = True) -> np.ndarray | None:
        from safetensors import safe_open

        file = self._index.get(key)
        if file is None:
            if required:
                raise ModelLoadError(f"{self.path}: tensor {key} is missing")
            return None
        try:
            with safe_open(str(file), framework="numpy") as handle:
                return handle.get_tensor(key).astype(np.float32)
        except Exception as exc:
            raise ModelLoadError(f"{file}: tensor {key} cannot be read ({exc})") from exc

    def _read(self, name: str) -> np.ndarray:
        return _READERS[self.config.arch](self, name)

    @cached_property
    def _tokenizer(self) -> Tokenizer:
        if (self.path / "tokenizer.json").exists():
            return Tokenizer.from_file(self.path / "tokenizer.json")
        if (self.path / "vocab.json").exists() and (self.path / "merges.txt").exists():
            return Tokenizer.from_vocab_merges(self.path / "vocab.json", self.path / "merges.txt")
        raise ModelLoadError(f"{self.path}: no tokenizer.json, nor vocab.json + merges.txt")

    def tokenizer(self) -> Tokenizer:
        return self._tokenizer


def _read_gpt_bigcode(ck: HFCheckpoint, name: str) -> np.ndarray:
    c = ck.config
    prefix = "transformer." if "transformer.wte.weight" in ck._index else ""
    if name == "tok_embeddings":
        return ck._hf(prefix + "wte.weight")
    if name == "pos_embeddings":
        return ck._hf(prefix + "wpe.weight")
    if name == "lm_head.weight":
        head = ck._hf("lm_head.weight", required=False)
        return head if head is not None else ck._hf(prefix + "wte.weight")
    if name.startswith("final_norm."):
        return ck._hf(prefix + "ln_f." + name.split(".")[-1])
    _, i, rest = name.split(".", 2)
    source = {"attn_norm": "ln_1", "mlp_norm": "ln_2", "attn.qkv": "attn.c_attn", "attn.out": "attn.c_proj",
              "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj"}[rest.rsplit(".", 1)[0]]
    array = ck._hf(f"{prefix}h.{i}.{source}.{rest.rsplit('.', 1)[1]}")
    if rest.startswith("attn.qkv") and c.num_kv_heads == c.num_heads:
        # multi-head c_attn interleaves per head [q_h, k_h, v_h]; canonical order is all q, all k, all v.
        hd = c.head_dim
        array = array.reshape(c.num_heads, 3, hd, *array.shape[1:]).swapaxes(0, 1).reshape(array.shape)
    return array.T if array.ndim == 2 else array


def _read_llama(ck: HFCheckpoint, name: str) -> np.ndarray:
    """Llama's names; Qwen2 uses the same ones, plus the q/k/v biases."""
    if name == "tok_embeddings":
        return ck._hf("model.embed_tokens.weight")
    if name == "lm_head.weight":
        head = ck._hf("lm_head.weight", required=not ck.config.tie_embeddings)
        return head if head is not None else ck._hf("model.embed_tokens.weight")
    if name == "final_norm.weight":
        return ck._hf("model.norm.weight")
    _, i, rest = name.split(".", 2)
    p = f"model.layers.{i}."
    if rest in ("attn.qkv.weight", "attn.qkv.bias"):
        kind = rest.rsplit(".", 1)[1]
        array = np.concatenate([ck._hf(p + f"self_attn.{x}_proj.{kind}") for x in "qkv"], axis=0)
    else:
        source = {"attn_norm.weight": "input_layernorm.weight", "mlp_norm.weight": "post_attention_layernorm.weight",
                  "attn.out.weight": "self_attn.o_proj.weight", "mlp.gate.weight": "mlp.gate_proj.weight",
                  "mlp.up.weight": "mlp.up_proj.weight", "mlp.down.weight": "mlp.down_proj.weight"}[rest]
        array = ck._hf(p + source)
    return array.T if array.ndim == 2 else array


_READERS = {"gpt_bigcode": _read_gpt_bigcode, "llama": _read_llama, "qwen2": _read_llama}
