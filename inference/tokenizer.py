"""Text ⇄ token ids through the ``tokenizers`` library, plus the special tokens prompts need.

Three sources, one class: a checkpoint's ``tokenizer.json``; a ``vocab.json`` + ``merges.txt``
pair (StarCoder's files); the vocabulary inside a GGUF (Qwen2.5-Coder, SmolLM2). Special tokens
are looked up by name, never by a hard-coded id: ``Tokenizer.fim`` names the fill-in-the-middle
tokens of the vocabulary's family (Qwen's ``<|fim_prefix|>`` … or StarCoder's ``<fim_prefix>`` …),
``Tokenizer.stop_ids`` the tokens that end a generation.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from .atomic import write_text
from .errors import TokenizerError

# Names that end a generation, in the order a model family uses them.
EOS_NAMES = ("<|endoftext|>", "<|im_end|>", "</s>", "<|end_of_text|>")
# Every special token that ends a generation wherever a vocabulary has it (llama.cpp's
# end-of-generation set, llama-vocab.cpp: chat turn ends and end-of-text markers).
END_OF_GENERATION_NAMES = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>",
                           "<|end_of_text|>", "<EOT>", "</s>")
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<fim_prefix>", "<fim_middle>", "<fim_suffix>"  # StarCoder's spellings


@dataclass(frozen=True)
class FimTokens:
    """The fill-in-the-middle tokens of one vocabulary, by spelling (``Tokenizer.require`` gives
    the ids). The optional ones are None where the vocabulary lacks them."""

    family: str  # "qwen" | "starcoder"
    prefix: str
    suffix: str
    middle: str
    pad: str | None = None
    repo_name: str | None = None  # repository-level prompts: the repository's name follows it
    file_sep: str | None = None  # repository-level prompts: a file's path and code follow it
    file_name: str | None = None  # StarCoder's "<filename>path\n" before the code

    @property
    def stops(self) -> tuple[str, ...]:
        """The FIM tokens that end a middle (llama.cpp's EOG set adds pad, repo and file separator:
        a model that wrote the middle goes on to the next file or pads)."""
        return tuple(t for t in (self.pad, self.repo_name, self.file_sep) if t)


FIM_FAMILIES = (
    FimTokens("qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", pad="<|fim_pad|>",
              repo_name="<|repo_name|>", file_sep="<|file_sep|>"),
    FimTokens("starcoder", FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, pad="<fim_pad>", repo_name="<reponame>",
              file_sep="<file_sep>", file_name="<filename>"),
)

# Qwen2's split, as its tokenizer.json writes it (llama.cpp's `qwen2` pre-tokenizer is a rewrite of
# the same without the inline flag): contractions, letters with one leading non-letter, each digit
# alone, punctuation runs with their line breaks, then whitespace.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# The pre-tokenizer for a GGUF's `tokenizer.ggml.pre`, as llama.cpp defines it for that name.
# `smollm` and `starcoder`: digits one by one, then GPT-2's split (SmolLM2's own tokenizer.json does
# the same with Digits + ByteLevel). `qwen2`: its own split, then bytes without GPT-2's regex.
# (Qwen2's tokenizer.json also NFC-normalises; llama.cpp and transformers' GGUF reader do not, and
# this follows them: the GGUF is llama.cpp's format.)
_PRE_TOKENIZERS = {
    "smollm": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ]),
    "starcoder": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ]),
    "qwen2": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]),
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
}


class Tokenizer:
    def __init__(self, backend: HFTokenizer, eos_token: str | None = None, source: str = ""):
        """``backend`` is this tokenizer's own from here on: it encodes special spellings as plain
        text (``encode``). A copy with that flag used to cost a second parse of the vocabulary
        (about 0.5 s for Qwen's 151,646 tokens, on every start); the flag is not saved with it."""
        backend.encode_special_tokens = True
        self.backend = backend
        self.source = source
        vocab = backend.get_vocab(with_added_tokens=True)
        if eos_token is None:
            eos_token = next((name for name in EOS_NAMES if name in vocab), None)
        if eos_token is None or eos_token not in vocab:
            raise TokenizerError(f"{source}: no end-of-text token (looked for {', '.join(EOS_NAMES)})")
        self.eos_token = eos_token
        self.eos_id = vocab[eos_token]

    # Construction -------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path, eos_token: str | None = None) -> "Tokenizer":
        try:
            return cls(HFTokenizer.from_file(str(path)), eos_token, str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            if isinstance(exc, TokenizerError):
                raise
            raise TokenizerError(f"{path}: not a readable tokenizer.json ({exc})") from exc

    @classmethod
    def from_vocab_merges(cls, vocab_path: str | Path, merges_path: str | Path, pre: str = "starcoder",
                          eos_token: str | None = None) -> "Tokenizer":
        """Byte-level BPE from a GPT-2 style pair; tokens spelled like ``<...>`` or ``<|...|>`` at the
        start of the vocabulary become special tokens (StarCoder's ids 0–4)."""
        try:
            vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
            merges = _read_merges(Path(merges_path).read_text(encoding="utf-8").splitlines())
        except (OSError, ValueError) as exc:
            raise TokenizerError(f"cannot read {vocab_path} / {merges_path}: {exc}") from exc
        specials = _leading_specials(vocab)
        backend = _byte_level_bpe(vocab, merges, pre, specials)
        return cls(backend, eos_token, f"{vocab_path}")

    @classmethod
    def from_gguf_fields(cls, tokens: Sequence[str], token_types: Sequence[int], merges: Sequence[str],
                         pre: str, eos_id: int, source: str) -> "Tokenizer":
        """From a GGUF's ``tokenizer.ggml.*`` fields (model ``gpt2``): control tokens (type 3) are
        special, user-defined ones (type 4, Qwen's ``<tool_call>``) are matched whole but are
        text, the rest is byte-level BPE with the pre-tokenizer the file names (as llama.cpp and
        transformers' GGUF reader do)."""
        vocab = {tok: i for i, tok in enumerate(tokens)}
        specials = [tok for tok, kind in zip(tokens, token_types) if kind == 3]
        user_defined = [tok for tok, kind in zip(tokens, token_types) if kind == 4]
        backend = _byte_level_bpe(vocab, _read_merges(merges), pre, specials)
        if user_defined:
            backend.add_tokens([AddedToken(tok, special=False, normalized=False) for tok in user_defined])
        return cls(backend, tokens[eos_id], source)

    @classmethod
    def from_saved(cls, path: str | Path, eos_id: int, source: str) -> "Tokenizer":
        """What ``save`` wrote; ``source`` names where it first came from (errors name it)."""
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise TokenizerError(f"{path}: not a readable tokenizer.json ({exc})") from exc
        eos_token = backend.id_to_token(eos_id)
        if eos_token is None:
            raise TokenizerError(f"{path}: no token {eos_id} (the end-of-text id of {source})")
        return cls(backend, eos_token, source)

    def save(self, path: str | Path) -> None:
        """This tokenizer as a ``tokenizer.json``, written whole or not at all."""
        write_text(Path(path), self.backend.to_str())

    # Use ----------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` as plain text: a special-token spelling inside it (a file that contains
        ``<|endoftext|>``) stays text, so the user's text can never end or steer a prompt. Special
        tokens enter ids only by name, where the prompt builder puts them (``require``)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """``encode`` of each text, in one call."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def token_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def require(self, token: str) -> int:
        token_id = self.token_id(token)
        if token_id is None:
            raise TokenizerError(f"{self.source}: the vocabulary has no {token!r}")
        return token_id

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @cached_property
    def fim(self) -> FimTokens | None:
        """The FIM tokens of this vocabulary's family (Qwen or StarCoder), None without them."""
        for family in FIM_FAMILIES:
            if all(self.token_id(t) is not None for t in (family.prefix, family.suffix, family.middle)):
                present = lambda t: t if t is not None and self.token_id(t) is not None else None  # noqa: E731
                return dataclasses.replace(family, pad=present(family.pad), repo_name=present(family.repo_name),
                                           file_sep=present(family.file_sep), file_name=present(family.file_name))
        return None

    @property
    def has_fim(self) -> bool:
        return self.fim is not None

    @cached_property
    def special_tokens(self) -> frozenset[str]:
        """Spellings of the vocabulary's special tokens (control tokens; never the user's text)."""
        return frozenset(t.content for t in self.backend.get_added_tokens_decoder().values() if t.special)

    @cached_property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self.require(t) for t in self.special_tokens)

    @cached_property
    def stop_ids(self) -> frozenset[int]:
        """Every token that ends a generation: the end-of-text token, the family's end-of-turn and
        end-of-text tokens, and the FIM tokens a model writes after the middle (pad, repository
        and file separators). Only special tokens count: ``</s>`` as plain text is text."""
        names = [name for name in (*END_OF_GENERATION_NAMES, *(self.fim.stops if self.fim else ()))
                 if name in self.special_tokens]
        return frozenset({self.eos_id, *(self.require(name) for name in names)})

    @cached_property
    def pieces(self) -> tuple[str, ...]:
        """Each id's text alone (special tokens spelled out); decoded once, about a second for
        Qwen's 151,646 tokens."""
        return tuple(self.decode([i], skip_special=False) for i in range(self.vocab_size))

    @cached_property
    def newline_ids(self) -> frozenset[int]:
        """Every token whose text holds a line break: the stop set of single-line completion."""
        return frozenset(i for i, piece in enumerate(self.pieces) if "\n" in piece)

    def spelling_ids(self, text: str) -> np.ndarray:
        """Ids of the plain-text tokens that can begin ``text`` (token healing's choices): those
        whose text starts with ``text`` and those whose text is a start of it. Never a special
        token, nor a token that is part of a character (its text is not text)."""
        if not text:
            raise ValueError("nothing to spell")
        texts, ids, by_text = self._spelling_index
        lo = bisect.bisect_left(texts, text)
        hi = bisect.bisect_left(texts, text + "\U0010ffff")
        starts = [by_text.get(text[:k], ()) for k in range(1, len(text))]
        return np.fromiter(itertools.chain(ids[lo:hi], *starts), dtype=np.int64)

    @cached_property
    def _spelling_index(self) -> tuple[list[str], list[int], dict[str, tuple[int, ...]]]:
        """The plain-text tokens sorted by text (a start's tokens are one range), and by text."""
        usable = sorted((piece, i) for i, piece in enumerate(self.pieces)
                        if piece and i not in self.special_ids and "\ufffd" not in piece)
        by_text: dict[str, tuple[int, ...]] = {}
        for piece, i in usable:
            by_text[piece] = (*by_text.get(piece, ()), i)
        return [piece for piece, _ in usable], [i for _, i in usable], by_text

    def save(self, path: str | Path) -> None:
        self.backend.save(str(path), pretty=False)


def _read_merges(lines: Iterable[str]) -> list[tuple[str, str]]:
    merges = []
    for line in lines:
        if not line or line.startswith("#version"):
            continue
        left, sep, right = line.partition(" ")
        if not sep:
            raise ValueError(f"malformed merge line {line!r}")
        merges.append((left, right))
    return merges


_SPECIAL_SPELLING = re.compile(r"^<\|?[a-z_]+\|?>$")


def _leading_specials(vocab: dict[str, int]) -> list[str]:
    """The run of ``<name>`` / ``<|name|>`` tokens at ids 0, 1, 2, …: how GPT-2 style vocabularies
    (StarCoder's ``<|endoftext|>``, ``<fim_prefix>``, …) list their special tokens. Later tokens that
    happen to look alike (``<div>``) are ordinary text."""
    by_id = sorted(vocab.items(), key=lambda item: item[1])
    specials = []
    for expected, (token, token_id) in enumerate(by_id):
        if token_id != expected or not _SPECIAL_SPELLING.match(token):
            break
        specials.append(token)
    return specials


def _byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], pre: str,
                    specials: Sequence[str]) -> HFTokenizer:
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=False))
    backend.pre_tokenizer = _PRE_TOKENIZERS.get(pre, _PRE_TOKENIZERS["gpt2"])()
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in specials])
    return backend


__all__ = ["Tokenizer", "FimTokens", "FIM_FAMILIES", "FIM_PREFIX", "FIM_MIDDLE", "FIM_SUFFIX"]
