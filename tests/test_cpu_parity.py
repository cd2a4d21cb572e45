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
def test_default_model_matches_transformers(default_model):
    checkpoint = open_checkpoint(default_model)
    tokenizer = checkpoint.tokenizer()
    backend = CPUBackend(checkpoint, weights="f32")  # the float reference graph
    reference = load_transformers(default_model)
    prompts = [tokenizer.encode(text) for text in _source_prompts()]
    assert max(len(p) for p in prompts) > 512
    for prompt in prompts:
        assert backend_greedy(backend, prompt, NEW_TOKENS) == torch_greedy(reference, prompt, NEW_TOKENS), \
            tokenizer.decode(prompt)[:60]
