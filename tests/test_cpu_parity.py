"""Greedy generation on the CPU backend is token-identical to transformers on the same weights."""

from __future__ import annotations

import numpy as np
import pytest

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
    backend = CPUBackend(checkpoint)
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
    backend = CPUBackend(checkpoint)
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
    prompts = [tokenizer.encode(text) for text in _qwen_prompts()]
    assert max(len(p) for p in prompts) > 1000
    assert sum(tokenizer.require("<|fim_middle|>") in p for p in prompts) == 3
    backend = CPUBackend(checkpoint)
    reference = load_transformers(qwen_model)
    for prompt in prompts:
        assert backend_greedy(backend, prompt, NEW_TOKENS) == torch_greedy(reference, prompt, NEW_TOKENS), \
            tokenizer.decode(prompt, skip_special=False)[:60]
