"""Shared fixtures: the real named models and tiny random checkpoints written by transformers.

The tiny models are real transformers checkpoints (config.json + safetensors) with random
weights, scaled up (initializer_range 0.2) so that greedy argmax is decisive rather than a coin
toss between near-equal logits.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
STARCODER_VOCAB = SHARED / "vocab"

TINY_VOCAB = 512


def _save_random_model(kind: str, path: Path) -> Path:
    import torch
    from transformers import (GPTBigCodeConfig, GPTBigCodeForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    torch.manual_seed({"gpt_bigcode_mq": 0, "gpt_bigcode_mha": 1, "llama_gqa": 2, "qwen2": 3}[kind])
    if kind.startswith("gpt_bigcode"):
        config = GPTBigCodeConfig(vocab_size=TINY_VOCAB, n_positions=1024, n_embd=128, n_layer=3, n_head=4,
                                  multi_query=kind.endswith("_mq"), initializer_range=0.2,
                                  bos_token_id=0, eos_token_id=0)
        model = GPTBigCodeForCausalLM(config)
    elif kind == "qwen2":
        # Qwen2.5's shape in small: grouped-query attention, θ = 10^6, tied embeddings; transformers
        # initialises the q/k/v biases to zero, so they are drawn here, or the test could not see them.
        config = Qwen2Config(vocab_size=TINY_VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                             num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                             initializer_range=0.2, rope_theta=1000000.0, tie_word_embeddings=True,
                             bos_token_id=1, eos_token_id=2)
        model = Qwen2ForCausalLM(config)
        with torch.no_grad():
            for layer in model.model.layers:
                for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    projection.bias.normal_(0.0, 0.5)
    else:
        config = LlamaConfig(vocab_size=TINY_VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                             num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                             initializer_range=0.2, rope_theta=10000.0, bos_token_id=1, eos_token_id=2)
        model = LlamaForCausalLM(config)
    model.eval()
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session", params=["gpt_bigcode_mq", "gpt_bigcode_mha", "llama_gqa", "qwen2"])
def tiny_model(request, tmp_path_factory) -> tuple[str, Path]:
    """(kind, checkpoint directory) of each tiny random architecture."""
    kind = request.param
    return kind, _save_random_model(kind, tmp_path_factory.mktemp(kind))


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """Call with a kind ('gpt_bigcode_mq', 'gpt_bigcode_mha', 'llama_gqa', 'qwen2') for its directory."""
    made: dict[str, Path] = {}

    def make(kind: str) -> Path:
        if kind not in made:
            made[kind] = _save_random_model(kind, tmp_path_factory.mktemp(kind))
        return made[kind]

    return make


@pytest.fixture(scope="session")
def qwen_model() -> Path:
    """The real Qwen2.5-Coder-0.5B-Instruct GGUF (the default model), fetched into the cache on first use."""
    from wizardcoder_tpu.inference.models import model_path

    return model_path("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    """The real SmolLM2-135M-Instruct GGUF (the tiny named model), fetched into the cache on first use."""
    from wizardcoder_tpu.inference.models import model_path

    return model_path("smollm2-135m")


@pytest.fixture(scope="module")
def smollm2_host(smollm2_model):
    """A ``ModelHost`` with SmolLM2 loaded, as the server holds it (one per test module)."""
    from wizardcoder_tpu.lsp.model_host import ModelHost
    from wizardcoder_tpu.lsp.settings import Settings

    host = ModelHost()
    report = host.load(Settings(model="smollm2-135m"), lambda message: None)
    assert not report.error, report.error
    yield host
    host.close()


@pytest.fixture(scope="session")
def starcoder_vocab() -> Path:
    if not (STARCODER_VOCAB / "vocab.json").exists():
        pytest.skip(f"StarCoder vocabulary not found in {STARCODER_VOCAB}")
    return STARCODER_VOCAB


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
