"""Tokenizer parity with transformers' tokenizer on the same files, on real source code."""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

import pytest

from wizardcoder_tpu.inference.errors import TokenizerError
from wizardcoder_tpu.inference.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, Tokenizer
from wizardcoder_tpu.inference.weights import open_checkpoint

SNIPPETS = 2400

EDGE_CASES = [
    "",
    " ",
    "\n\n\n",
    "\t\t    \n  \t",
    "    " * 40 + "x",
    "def f():\n\treturn  1\n\n\n\n    # trailing   \n",
    "naïve café — “quotes” ‘single’ … ≤ ≥ ≠ → ∀x∈ℝ",
    "中文注释：计算斐波那契数列 // 日本語のコメント // 한국어 주석",
    "emoji 🚀🔥👍🏽 and ZWJ 👩‍💻 and flags 🇫🇷",
    "x = 12345678901234567890 + 0.5e-10 - 0xDEADbeef",
    "\u00a0\u2003\u3000 non-breaking and wide spaces",
    "Ελληνικά, русский, עברית, العربية",
    "\r\n\r\nwindows\r\nline endings\r\n",
    "<|endoftext|> is text here",
]


def _source_snippets(limit: int = SNIPPETS) -> list[str]:
    """Deterministic chunks of 12 lines from source files on this machine (Python stdlib, C
    headers): real code, with its comments, strings, unicode and indentation."""
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path("/usr/include")]
    files: list[Path] = []
    for root in roots:
        files += sorted(p for p in root.rglob("*") if p.suffix in (".py", ".h") and p.is_file())[:400]
    snippets: list[str] = []
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        except (UnicodeDecodeError, OSError):
            continue
        for start in range(0, len(lines), 12):
            chunk = "".join(lines[start:start + 12])
            if chunk.strip():
                snippets.append(chunk)
        if len(snippets) >= limit:
            break
    return snippets[:limit]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    snippets = _source_snippets()
    assert len(snippets) >= 2000, f"only {len(snippets)} snippets found"
    return snippets + EDGE_CASES


def _split_digits_first(reference) -> None:
    r"""llama.cpp's rule for the ``starcoder`` and ``smollm`` pre-tokenizers (one case in
    llama-vocab.cpp): the regex ``\p{N}`` isolates every digit, then GPT-2's regex applies."""
    from tokenizers import Regex, pre_tokenizers

    reference.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])


def _assert_parity(ours: Tokenizer, reference, corpus: list[str]) -> None:
    mismatches = []
    for text in corpus:
        ids = ours.encode(text)  # special spellings stay text: the reference is told the same
        expected = reference.encode(text, add_special_tokens=False, split_special_tokens=True)
        if ids != expected:
            mismatches.append(text[:80])
            continue
        if ours.decode(ids, skip_special=False) != reference.decode(expected, skip_special_tokens=False):
            mismatches.append("decode: " + text[:80])
    assert not mismatches, f"{len(mismatches)} of {len(corpus)} differ, e.g. {mismatches[:3]}"


def test_smollm2_tokenizer_matches_transformers_gguf_tokenizer(smollm2_model, corpus):
    r"""transformers builds the vocabulary, merges and special tokens from the GGUF on its own.
    Its converter has no rule for this file's ``tokenizer.ggml.pre = smollm`` and falls back to
    GPT-2's split; llama.cpp (whose rule defines the GGUF) splits every digit first — the regex
    ``\p{N}`` before GPT-2's, as SmolLM2 was trained. The reference gets that rule, written as
    llama.cpp writes it, and nothing else of ours."""
    from transformers import AutoTokenizer

    ours = open_checkpoint(smollm2_model).tokenizer()
    reference = AutoTokenizer.from_pretrained(smollm2_model.parent, gguf_file=smollm2_model.name)
    _split_digits_first(reference)
    _assert_parity(ours, reference, corpus)
    # byte-level BPE is lossless, special-token spellings included (they are text)
    assert all(ours.decode(ours.encode(t)) == t for t in corpus)


@pytest.mark.slow
def test_qwen_tokenizer_matches_transformers_gguf_tokenizer(qwen_model, corpus):
    """The default's vocabulary (``tokenizer.ggml.pre = qwen2``): transformers builds its own
    tokenizer from the GGUF with Qwen2's split regex (digits one by one), nothing of ours. The
    corpus adds Qwen's control tokens in text, a user-defined token, digits and decomposed unicode."""
    from transformers import AutoTokenizer

    ours = open_checkpoint(qwen_model).tokenizer()
    reference = AutoTokenizer.from_pretrained(qwen_model.parent, gguf_file=qwen_model.name)
    extra = ["<|fim_prefix|>def f(<|fim_suffix|>)\n<|fim_middle|>", "a <tool_call> b </tool_call>",
             "x = 1234567890; y = 3.14159e-10", "cafe\u0301 ŉ ﬁ Å", "\t\t\n\n\n    \r\n  x"]
    _assert_parity(ours, reference, corpus + extra)
    assert ours.encode("12345") == [ours.encode(d)[0] for d in "12345"]  # digits one by one


def test_a_gguf_vocabulary_is_built_once_and_read_back_as_the_same_tokenizer(qwen_model, corpus, tmp_path,
                                                                           monkeypatch):
    """The first open builds the tokenizer from the GGUF's fields and saves it in the cache; the
    next reads it back without building (the warm start's tokenizer), encodes and decodes the
    same, and keeps the same special and stop tokens. A damaged saved copy is built again."""
    from wizardcoder_tpu.inference.weights.gguf import tokenizer_cache_path

    monkeypatch.setenv("WIZARDCODER_TPU_CACHE", str(tmp_path))
    built = open_checkpoint(qwen_model).tokenizer()
    saved_file = tokenizer_cache_path(open_checkpoint(qwen_model))
    assert saved_file.is_file() and saved_file.is_relative_to(tmp_path)
    real_build = Tokenizer.from_gguf_fields

    def refuse(*args, **kwargs):
        raise AssertionError("built from the GGUF again")

    monkeypatch.setattr(Tokenizer, "from_gguf_fields", refuse)
    saved = open_checkpoint(qwen_model).tokenizer()
    texts = corpus + ["<|fim_prefix|>def f(<|fim_suffix|>)\n<|fim_middle|>", "a <tool_call> b", "<|endoftext|>"]
    for text in texts:
        assert saved.encode(text) == built.encode(text), text
    ids = [i for text in texts[:50] for i in built.encode(text)]
    assert saved.decode(ids) == built.decode(ids)
    assert (saved.eos_id, saved.stop_ids, saved.fim, saved.vocab_size) == (built.eos_id, built.stop_ids, built.fim,
                                                                          built.vocab_size)
    saved_file.write_text("{not json", encoding="utf-8")
    monkeypatch.setattr(Tokenizer, "from_gguf_fields", real_build)
    rebuilt = open_checkpoint(qwen_model).tokenizer()
    assert rebuilt.encode(texts[0]) == built.encode(texts[0])
    assert json.loads(saved_file.read_text(encoding="utf-8"))["model"]["type"] == "BPE"  # replaced whole


def test_qwen_special_tokens_are_looked_up_by_name(qwen_model):
    tokenizer = open_checkpoint(qwen_model).tokenizer()
    fim = tokenizer.fim
    assert (fim.family, fim.prefix, fim.suffix, fim.middle) == ("qwen", "<|fim_prefix|>", "<|fim_suffix|>",
                                                               "<|fim_middle|>")
    assert (fim.pad, fim.repo_name, fim.file_sep, fim.file_name) == ("<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
                                                                     None)
    assert tokenizer.eos_token == "<|im_end|>"  # the GGUF's eos; FIM ends with <|endoftext|>: both stop
    stops = {tokenizer.decode([i], skip_special=False) for i in tokenizer.stop_ids}
    assert stops == {"<|endoftext|>", "<|im_end|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"}
    assert tokenizer.encode("<tool_call>") == [tokenizer.require("<tool_call>")]  # user-defined: whole,
    assert tokenizer.decode(tokenizer.encode("<tool_call>")) == "<tool_call>"  # and text, not special


def test_starcoder_tokenizer_matches_transformers(starcoder_vocab, corpus):
    from transformers import GPT2Tokenizer

    ours = Tokenizer.from_vocab_merges(starcoder_vocab / "vocab.json", starcoder_vocab / "merges.txt")
    # vocab.json + merges.txt name no special tokens; StarCoder's tokenizer_config declares its
    # leading <…> tokens special, so the reference is told the same.
    specials = [FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, "<fim_pad>", "<filename>"]
    reference = GPT2Tokenizer.from_pretrained(starcoder_vocab, additional_special_tokens=specials)
    _split_digits_first(reference)  # StarCoder's tokenizer.json: Digits(individual) + ByteLevel
    _assert_parity(ours, reference, corpus)


def test_special_tokens_are_looked_up_by_name(starcoder_vocab, smollm2_model):
    starcoder = Tokenizer.from_vocab_merges(starcoder_vocab / "vocab.json", starcoder_vocab / "merges.txt")
    assert starcoder.has_fim
    assert (starcoder.fim.family, starcoder.fim.prefix, starcoder.fim.file_name) == ("starcoder", FIM_PREFIX, "<filename>")
    assert starcoder.eos_token == "<|endoftext|>"
    spelled = f"{FIM_PREFIX}x{FIM_SUFFIX}<|endoftext|>"  # in the user's text, special spellings stay text
    ids = starcoder.encode(spelled)
    assert not {starcoder.require(FIM_PREFIX), starcoder.require(FIM_SUFFIX), starcoder.eos_id} & set(ids)
    assert starcoder.decode(ids) == spelled and starcoder.encode_batch([spelled, "x"]) == [ids, starcoder.encode("x")]
    assert starcoder.require("<fim_pad>") in starcoder.stop_ids and starcoder.eos_id in starcoder.stop_ids
    smol = open_checkpoint(smollm2_model).tokenizer()
    assert not smol.has_fim and smol.fim is None
    assert smol.eos_token == "<|im_end|>"
    assert smol.token_id("<|im_start|>") is not None
    with pytest.raises(TokenizerError, match="fim_prefix"):
        smol.require(FIM_PREFIX)


def test_newline_ids_are_exactly_the_tokens_that_hold_a_line_break(smollm2_model):
    tokenizer = open_checkpoint(smollm2_model).tokenizer()
    newline_ids = tokenizer.newline_ids
    assert tokenizer.encode("\n")[0] in newline_ids
    assert tokenizer.encode("x")[0] not in newline_ids
    assert all("\n" in tokenizer.decode([i], skip_special=False) for i in newline_ids)


def test_saved_vocab_files_match_the_gguf(smollm2_model):
    """vocab/smollm2/tokenizer.json is what scripts/export_vocab.py writes from the GGUF."""
    saved = Path(__file__).resolve().parents[1] / "vocab" / "smollm2" / "tokenizer.json"
    ours = open_checkpoint(smollm2_model).tokenizer()
    from_file = Tokenizer.from_file(saved, eos_token="<|im_end|>")
    for text in EDGE_CASES + ["def f(x):\n    return x * 2\n"]:
        assert from_file.encode(text) == ours.encode(text)


def test_unreadable_tokenizer_files_give_clear_errors(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        Tokenizer.from_file(bad)
    with pytest.raises(TokenizerError, match="vocab.json"):
        Tokenizer.from_vocab_merges(tmp_path / "vocab.json", tmp_path / "merges.txt")


if __name__ == "__main__":
    print(len(_source_snippets()), file=sys.stderr)
