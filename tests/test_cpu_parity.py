"""Greedy generation on the CPU backend is token-identical to transformers on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer

from reference import backend_greedy, load_transformers, torch_greedy
from wizardcoder_tpu.inference.backends.cpu import CPUBackend
from wizardcoder_tpu.inference.weights import open_checkpoint

NEW_TOKENS = 32


def _tiny_prompts(vocab: int) -> list[list[int]]:
    """8 prompts: short, medium, one token, and one longer than 512 tokens."""
    rng = np.random.RandomState(7)
    lengths = [1, 5, 17, 40, 64, 130, 300, 600]
    return [rng.randint(0, vocab, n).tolist() for n in lengths]


def test_tiny_models_match_transformers(tiny_model):
    kind, path = tiny_model
    checkpoint = open_checkpoint(path)
    backend = CPUBackend(checkpoint, weights="f32")  # the float reference graph
    reference = load_transformers(path)
    for prompt in _tiny_prompts(checkpoint.config.vocab_size):
        expected = torch_greedy(reference, prompt, NEW_TOKENS)
        assert backend_greedy(backend, prompt, NEW_TOKENS) == expected, f"{kind}, prompt of {len(prompt)} tokens"


def _source_prompts() -> list[str]:
    import inspect
    import json
    import textwrap

    long_source = inspect.getsource(json.decoder)[:2600]  # > 512 tokens of real code
    return [
        "def is_prime(n: int) -> bool:\n",
        "import os\n\ndef list_python_files(root):\n    ",
        "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
        "// Compute the factorial of n\nint factorial(int n) {\n",
        "<|im_start|>user\nWrite a haiku about compilers.<|im_end|>\n<|im_start|>assistant\n",
        "SELECT name, COUNT(*) FROM users\n",
        textwrap.dedent('''\
            fn main() {
                let numbers = vec![1, 2, 3];
            '''),
        long_source,
    ]


@pytest.mark.slow
def test_smollm2_matches_transformers(smollm2_model):
    checkpoint = open_checkpoint(smollm2_model)
    tokenizer = checkpoint.tokenizer()
    backend = CPUBackend(checkpoint, weights="f32")  # the float reference graph
    reference = load_transformers(smollm2_model)
    prompts = [tokenizer.encode(text) for text in _source_prompts()]
    assert max(len(p) for p in prompts) > 512
    for prompt in prompts:
        assert backend_greedy(backend, prompt, NEW_TOKENS) == torch_greedy(reference, prompt, NEW_TOKENS), \
            tokenizer.decode(prompt)[:60]


def _qwen_prompts() -> list[str]:
    """Completion, FIM (bare and repository-level, in Qwen2.5-Coder's documented layouts), ChatML,
    and one prompt over 1,000 tokens of real code."""
    import inspect
    import json

    return [
        "def is_prime(n: int) -> bool:\n",
        "<|fim_prefix|>def fibonacci(n):\n    a, b = 0, 1\n    <|fim_suffix|>\n    return a\n<|fim_middle|>",
        "<|repo_name|>demo\n<|file_sep|>utils.py\ndef add(a, b):\n    return a + b\n<|file_sep|>main.py\n"
        "<|fim_prefix|>from utils import add\n\nprint(<|fim_suffix|>)\n<|fim_middle|>",
        "// Compute the factorial of n\nint factorial(int n) {\n",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWrite a haiku about "
        "compilers.<|im_end|>\n<|im_start|>assistant\n",
        "<|fim_prefix|>fn main() {\n    let numbers = vec![1, 2, 3];\n    let total: i32 = <|fim_suffix|>;\n"
        "    println!(\"{}\", total);\n}\n<|fim_middle|>",
        "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
        inspect.getsource(json.decoder)[:4400],
    ]


@pytest.mark.slow
def test_qwen_default_matches_transformers(qwen_model):
    """The default, Qwen2.5-Coder-0.5B-Instruct, from its GGUF (Q5_0, Q8_0, Q4_K, Q6_K and F32
    tensors; untied output): transformers dequantizes it with the same gguf function to float32."""
    checkpoint = open_checkpoint(qwen_model)
    tokenizer = checkpoint.tokenizer()
    # The prompts spell their special tokens: encode them as the prompt builder emits them, as
    # tokens (Tokenizer.encode keeps a user's special spellings as text), with a copy of the
    # vocabulary that reads special spellings (the flag that stops it is not saved with it).
    specials = HFTokenizer.from_str(tokenizer.backend.to_str())
    prompts = [specials.encode(text, add_special_tokens=False).ids for text in _qwen_prompts()]
    assert max(len(p) for p in prompts) > 1000
    assert sum(tokenizer.require("<|fim_middle|>") in p for p in prompts) == 3
    backend = CPUBackend(checkpoint, weights="f32")  # the float reference graph
    reference = load_transformers(qwen_model)
    for prompt in prompts:
        assert backend_greedy(backend, prompt, NEW_TOKENS) == torch_greedy(reference, prompt, NEW_TOKENS), \
            tokenizer.decode(prompt, skip_special=False)[:60]


def _write_qwen2_gguf(checkpoint_dir, path) -> None:
    """The tiny random Qwen2 as llama.cpp's converter lays it out (q/k rows as they are, biases in
    F32, an untied ``output.weight``), its matrices quantized by gguf to the default's block types."""
    import gguf
    from gguf import GGMLQuantizationType as T
    from safetensors.numpy import load_file

    from conftest import TINY_VOCAB
    from wizardcoder_tpu.inference.weights.hf import HFCheckpoint

    c = HFCheckpoint(checkpoint_dir).config
    hf = load_file(str(checkpoint_dir / "model.safetensors"))
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_block_count(c.num_layers), writer.add_context_length(c.max_positions)
    writer.add_embedding_length(c.hidden_size), writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_heads), writer.add_head_count_kv(c.num_kv_heads)
    writer.add_layer_norm_rms_eps(c.norm_eps), writer.add_rope_freq_base(c.rope_theta)
    writer.add_tokenizer_model("gpt2"), writer.add_token_list([f"t{i}" for i in range(TINY_VOCAB)])

    def add(name: str, array, kind=T.F32):
        array = array.astype(np.float32)
        if kind == T.F32:
            writer.add_tensor(name, array)
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, kind), raw_dtype=kind)

    embed = hf["model.embed_tokens.weight"]
    add("token_embd.weight", embed, T.Q5_0)
    add("output.weight", embed, T.Q8_0)  # same floats, another block type: which one lm_head reads shows
    add("output_norm.weight", hf["model.norm.weight"])
    matrices = {"attn_q": ("self_attn.q_proj", T.Q5_0), "attn_k": ("self_attn.k_proj", T.Q8_0),
                "attn_v": ("self_attn.v_proj", T.Q4_1), "attn_output": ("self_attn.o_proj", T.Q5_0),
                "ffn_gate": ("mlp.gate_proj", T.Q4_0), "ffn_up": ("mlp.up_proj", T.Q5_0),
                "ffn_down": ("mlp.down_proj", T.Q8_0)}
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", hf[p + "input_layernorm.weight"])
        add(f"blk.{i}.ffn_norm.weight", hf[p + "post_attention_layernorm.weight"])
        for name, (source, kind) in matrices.items():
            add(f"blk.{i}.{name}.weight", hf[p + source + ".weight"], kind)
        for name in ("attn_q", "attn_k", "attn_v"):
            add(f"blk.{i}.{name}.bias", hf[p + matrices[name][0] + ".bias"])
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()


def test_tiny_qwen2_gguf_matches_transformers(tiny_model_factory, tmp_path):
    """Qwen2 read from a GGUF (Q4_0, Q4_1, Q5_0, Q8_0 blocks, untied output), against transformers
    reading the same file: the GGUF path of the default, at a size the quick tests afford."""
    path = tmp_path / "tiny-qwen2.gguf"
    _write_qwen2_gguf(tiny_model_factory("qwen2"), path)
    checkpoint = open_checkpoint(path)
    assert checkpoint.config.arch == "qwen2" and not checkpoint.config.tie_embeddings
    backend = CPUBackend(checkpoint, weights="f32")  # the float reference graph
    reference = load_transformers(path)
    for prompt in _tiny_prompts(checkpoint.config.vocab_size)[:6]:
        expected = torch_greedy(reference, prompt, NEW_TOKENS)
        assert backend_greedy(backend, prompt, NEW_TOKENS) == expected, f"prompt of {len(prompt)} tokens"
