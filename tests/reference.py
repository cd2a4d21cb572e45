"""The independent reference: transformers (torch, CPU, float32) on the same weights."""

from __future__ import annotations

from collections.abc import Sequence


def torch_greedy(model, prompt: Sequence[int], n: int) -> list[int]:
    """``n`` greedy tokens from a transformers causal LM, with its own KV cache and no logits
    processors (``generate`` would suppress EOS under ``min_new_tokens``)."""
    import torch

    out: list[int] = []
    with torch.no_grad():
        result = model(torch.tensor([list(prompt)]), use_cache=True)
        for _ in range(n):
            token = int(result.logits[0, -1].argmax())
            out.append(token)
            result = model(torch.tensor([[token]]), past_key_values=result.past_key_values, use_cache=True)
    return out


def load_transformers(path):
    """A transformers model for a checkpoint directory or a GGUF file, float32, eval mode."""
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if path.is_dir():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval()


def backend_greedy(backend, prompt: Sequence[int], n: int) -> list[int]:
    """The same loop on one of our backends, from an empty cache."""
    backend.truncate(0)
    out = [backend.greedy_step(list(prompt))]
    while len(out) < n:
        out.append(backend.greedy_step([out[-1]]))
    return out
