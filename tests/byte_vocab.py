"""A real byte-level BPE tokenizer without merges, for pinning prompts of a model family whose
vocabulary is not in the repository (Qwen2.5-Coder's has 151,665 tokens and lives in a 491 MB
GGUF): every byte is one token whose id is the byte's value, and the family's special tokens
follow from 256 in the order given. A prompt's ids then read as its UTF-8 bytes with the special
tokens exactly where the prompt builder put them.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from wizardcoder_tpu.inference.tokenizer import Tokenizer

# Qwen2.5-Coder's special tokens in the order of their ids (151643, 151644, 151645, 151659–151664).
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>",
                 "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte, in byte order (what ByteLevel pre-tokenizes to)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_ins = {}
    extra = 0
    for byte in range(256):
        if byte in printable:
            stand_ins[byte] = chr(byte)
        else:
            stand_ins[byte] = chr(256 + extra)
            extra += 1
    return [stand_ins[byte] for byte in range(256)]


def byte_tokenizer(specials: tuple[str, ...] = QWEN_SPECIALS) -> Tokenizer:
    vocab = {char: byte for byte, char in enumerate(byte_alphabet())}
    vocab.update({name: 256 + index for index, name in enumerate(specials)})
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in specials])
    return Tokenizer(backend, source="byte vocabulary with Qwen's special tokens")
