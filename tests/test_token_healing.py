"""Token healing: the prompt builder takes the word the cursor ends off the prompt's ids, and the
engine's first tokens spell it again, each the model's best among the tokens that fit (issue 11:
31 of 40 quality holes end inside a word, where the prompt's last token is one the model rarely
saw there; bench/results/quality.md). Checked on the real SmolLM2 vocabulary and model."""

from __future__ import annotations

import numpy as np
import pytest

from wizardcoder_tpu.inference.engine import Engine, GenerationParams
from wizardcoder_tpu.inference.loader import load_engine
from wizardcoder_tpu.inference.prompt import HEAL_TOKENS, back_off, build_prompt


@pytest.fixture(scope="module")
def engine(smollm2_model) -> Engine:
    engine = load_engine(str(smollm2_model))
    yield engine
    engine.close()


def test_spelling_ids_are_the_tokens_that_start_the_text_or_are_a_start_of_it(engine):
    tokenizer = engine.tokenizer
    ids = engine.tokenizer.spelling_ids("tok")
    pieces = {tokenizer.pieces[i] for i in ids}
    assert {"t", "to", "token"} <= pieces and " tok" not in pieces
    expected = {i for i, p in enumerate(tokenizer.pieces) if p and "\ufffd" not in p and p not in tokenizer.special_tokens
                and (p.startswith("tok") or "tok".startswith(p))}
    assert set(ids.tolist()) == expected
    assert not set(ids.tolist()) & {tokenizer.require(t) for t in tokenizer.special_tokens}


def test_the_word_at_the_cursor_comes_off_the_ids_and_nothing_else(engine):
    tokenizer = engine.tokenizer
    prefix = "import tokenizers\n\nsplitter = tokenizers.pre_tokeni"
    plain = build_prompt(prefix, "", tokenizer, "prefix", 256)
    healed = build_prompt(prefix, "", tokenizer, "prefix", 256, heal=True)
    assert prefix.endswith(healed.heal) and "pre_tokeni" in healed.heal  # the word, from the token it begins in
    assert tokenizer.decode(healed.ids) + healed.heal == tokenizer.decode(plain.ids)
    assert plain.ids[:len(healed.ids)] == healed.ids  # a cut at a token boundary, not a re-encoding
    assert len(plain.ids) - len(healed.ids) <= HEAL_TOKENS


def test_qwen_heals_the_whole_word_with_its_space(qwen_model):
    """On the default's vocabulary (bench/results/quality.md measured healing there)."""
    from wizardcoder_tpu.inference.weights import open_checkpoint

    tokenizer = open_checkpoint(qwen_model).tokenizer()
    plain = build_prompt("BertPreTokenizer = pre_tokeni", "\nByteLevel = 1\n", tokenizer, "fim", 256)
    healed = build_prompt("BertPreTokenizer = pre_tokeni", "\nByteLevel = 1\n", tokenizer, "fim", 256, heal=True)
    assert healed.heal == " pre_tokeni"
    assert tokenizer.decode(healed.ids, skip_special=False) == plain.text.replace(" pre_tokeni<|fim_suffix|>", "<|fim_suffix|>")
    indent = {tokenizer.pieces[i] for i in tokenizer.spelling_ids("    ")}
    assert {"   ", " ", "    ", "        "} <= indent  # a start of the indentation, or more of it
    empty = build_prompt("", "x = 1\n", tokenizer, "fim", 256, heal=True)
    assert empty.heal == "" and empty.ids == build_prompt("", "x = 1\n", tokenizer, "fim", 256).ids


@pytest.mark.parametrize("prefix", ["def f(x):\n    ", "def f(x):\n", "", "x = f(1, "])
def test_no_healing_after_indentation_a_line_break_or_a_non_word_token(engine, prefix):
    tokenizer = engine.tokenizer
    ids = tokenizer.encode(prefix)
    start, removed = back_off(tokenizer, ids, len(ids), prefix)
    if prefix.endswith(", "):  # a non-word token is taken alone, never the word before it
        assert removed == tokenizer.pieces[ids[-1]] and start == len(ids) - 1
    else:
        assert (start, removed) == (len(ids), "")


def test_the_first_tokens_spell_the_healed_text_then_decoding_is_plain_greedy(engine):
    tokenizer, backend = engine.tokenizer, engine.backend
    prefix = "import tokenizers\n\nsplitter = tokenizers.pre_tokeni"
    prompt = build_prompt(prefix, "", tokenizer, "prefix", 256, heal=True)
    result = engine.generate(prompt.ids, GenerationParams(max_new_tokens=12, heal=prompt.heal))
    spelled = tokenizer.decode(result.token_ids)
    assert spelled.startswith(prompt.heal) and result.text == spelled[len(prompt.heal):]
    # By hand, on a cold cache: each healing step is the argmax among the tokens that fit, and
    # the rest is the unconstrained argmax.
    backend.truncate(0)
    logits, remaining, expected = backend.forward(prompt.ids), prompt.heal, []
    while len(expected) < 12:
        if remaining:
            choices = tokenizer.spelling_ids(remaining)
            token = int(choices[np.argmax(logits[choices])])
            piece = tokenizer.pieces[token]
            remaining = "" if piece.startswith(remaining) else remaining[len(piece):]
        else:
            token = int(np.argmax(logits))
        if token in tokenizer.stop_ids:
            break
        expected.append(token)
        logits = backend.forward([token])
    engine.reset()
    assert result.token_ids == expected


def test_stop_strings_and_on_text_see_only_the_text_after_the_healed_part(engine):
    tokenizer = engine.tokenizer
    prompt = build_prompt("values = [1, 2, 3]\ntotal = su", "", tokenizer, "prefix", 256, heal=True)
    assert prompt.heal == " su"  # the last token, its space included
    seen: list[str] = []
    result = engine.generate(prompt.ids, GenerationParams(max_new_tokens=8, heal=prompt.heal, stop_strings=(" su",)),
                             on_text=lambda text: seen.append(text) or True)
    # " sum" once healed: the text (and what on_text and the stop strings see) starts after " su".
    assert result.text.startswith("m") and result.stop_reason != "stop_string", result
    assert seen and all(text.startswith("m") for text in seen)


@pytest.mark.parametrize("healing", [True, False])
def test_the_server_heals_as_the_setting_says(engine, healing):
    """The completion path (lsp/completion.py's run_model): the prompt loses the word at the
    cursor and the suggestion is the text after it, never a repeat of what was typed."""
    from lsprotocol import types
    from pygls.workspace import PositionCodec

    from wizardcoder_tpu.inference.engine import CancelToken
    from wizardcoder_tpu.inference.postprocess import SINGLE
    from wizardcoder_tpu.lsp.completion import run_model
    from wizardcoder_tpu.lsp.documents import Cursor
    from wizardcoder_tpu.lsp.settings import Settings

    prefix = "values = [1, 2, 3]\ntotal = su"
    cursor = Cursor("file:///t.py", "python", "t.py", prefix, "\n", types.Position(1, 10), "total = su", 10,
                    PositionCodec())
    run = run_model(engine, cursor, SINGLE, Settings(token_healing=healing, max_new_tokens=8), CancelToken())
    assert run.prompt.heal == (" su" if healing else "")
    assert run.generation is not None and run.result is not None
    if healing:
        assert engine.tokenizer.decode(run.generation.token_ids).startswith(" su")
    assert not run.result.text.startswith("su")
