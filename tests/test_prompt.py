"""The prompt each mode builds, pinned exactly (text and token ids) for one fixed example, and
the token budget: its split, line-boundary cuts, nearest lines first, and that it holds.

StarCoder's vocabulary (WizardCoder's) is read in place from ``../shared/vocab`` through the
``starcoder_vocab`` fixture; SmolLM2's (the default model's) from ``vocab/smollm2``. The pinned
ids were checked against transformers' own tokenizers on the same files.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from wizardcoder_tpu.inference.errors import TokenizerError
from wizardcoder_tpu.inference.prompt import build_prompt, choose_mode
from wizardcoder_tpu.inference.tokenizer import Tokenizer
from wizardcoder_tpu.lsp.settings import Settings

SMOLLM2_TOKENIZER = Path(__file__).resolve().parents[1] / "vocab" / "smollm2" / "tokenizer.json"

# The fixed example: the cursor after "return ", a call of the function after it.
PREFIX = "def add(a, b):\n    return "
SUFFIX = "\n\nprint(add(1, 2))\n"
FILE, LANGUAGE = "math_utils.py", "python"


@pytest.fixture(scope="module")
def starcoder(starcoder_vocab) -> Tokenizer:
    return Tokenizer.from_vocab_merges(starcoder_vocab / "vocab.json", starcoder_vocab / "merges.txt")


@pytest.fixture(scope="module")
def smollm2() -> Tokenizer:
    return Tokenizer.from_file(SMOLLM2_TOKENIZER)


def build(tokenizer: Tokenizer, mode: str, **kwargs):
    return build_prompt(PREFIX, SUFFIX, tokenizer, mode, file_name=FILE, language_id=LANGUAGE, **kwargs)


# The exact prompts ------------------------------------------------------------------------------
def test_fim_prompt_is_starcoders(starcoder):
    prompt = build(starcoder, "fim")
    assert prompt.mode == "fim"
    assert prompt.text == ("<fim_prefix><filename>math_utils.py\ndef add(a, b):\n    return "
                           "<fim_suffix>\n\nprint(add(1, 2))\n<fim_middle>")
    # <fim_prefix>=1 <filename>=5 ... <fim_suffix>=3 ... <fim_middle>=2
    assert prompt.ids == [1, 5, 3812, 81, 2304, 32, 978, 203, 589, 1015, 26, 83, 30, 323, 711, 284, 442, 225,
                          3, 203, 203, 1216, 26, 669, 26, 35, 30, 225, 36, 490, 203, 2]
    assert (prompt.prefix_chars, prompt.suffix_chars) == (len(PREFIX), len(SUFFIX))


def test_instruct_prompt_is_wizardcoders_alpaca_template(starcoder):
    prompt = build(starcoder, "instruct")
    assert prompt.mode == "instruct"
    assert prompt.text == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nContinue the Python code in math_utils.py at the cursor. The code after "
        "the cursor is:\n```python\n\n\nprint(add(1, 2))\n\n```\n\n### Response:\n"
        "```python\ndef add(a, b):\n    return ")  # the code so far opened in the response
    assert prompt.ids == [
        27400, 438, 600, 12404, 688, 18872, 312, 2899, 32, 5950, 312, 1789, 688, 36808, 30772, 322, 1326, 32,
        203, 203, 1482, 21081, 44, 203, 17743, 322, 4865, 1340, 328, 7744, 81, 2304, 32, 978, 821, 322, 6213,
        32, 886, 1340, 2685, 322, 6213, 438, 44, 203, 914, 2958, 478, 203, 1216, 26, 669, 26, 35, 30, 225, 36,
        490, 203, 203, 914, 203, 203, 1482, 5170, 44, 203, 914, 2958, 203, 589, 1015, 26, 83, 30, 323, 711, 284,
        442, 225]
    assert "```" in prompt.stop_strings  # the model closing the code fence ends the completion


def test_prefix_prompt_is_plain_continuation_for_smollm2(smollm2):
    prompt = build(smollm2, "prefix")
    assert prompt.mode == "prefix"
    assert prompt.text == "<filename>math_utils.py\ndef add(a, b):\n    return "  # no suffix: it cannot use one
    assert prompt.ids == [6, 8898, 79, 7638, 30, 1306, 198, 1604, 803, 24, 81, 28, 278, 727, 472, 1003, 216]
    assert (prompt.prefix_chars, prompt.suffix_chars) == (len(PREFIX), 0)


def test_instruct_prompt_uses_chatml_where_the_vocabulary_has_it(smollm2):
    prompt = build(smollm2, "instruct")
    assert prompt.text == (
        "<|im_start|>system\nYou are a helpful coding assistant.<|im_end|>\n<|im_start|>user\nContinue the "
        "Python code in math_utils.py at the cursor. The code after the cursor is:\n```python\n\n\n"
        "print(add(1, 2))\n\n```<|im_end|>\n<|im_start|>assistant\n```python\ndef add(a, b):\n    return ")
    assert prompt.ids == [
        1, 9690, 198, 2683, 359, 253, 5356, 8598, 11173, 30, 2, 198, 1, 4093, 198, 26226, 260, 5905, 2909, 281,
        4119, 79, 7638, 30, 1306, 418, 260, 16456, 30, 378, 2909, 990, 260, 16456, 314, 42, 198, 3725, 5367,
        1116, 198, 3272, 24, 2104, 24, 33, 28, 216, 34, 1292, 198, 198, 3725, 2, 198, 1, 520, 9531, 198, 3725,
        5367, 198, 1604, 803, 24, 81, 28, 278, 727, 472, 1003, 216]


def test_the_ids_spell_the_text(starcoder, smollm2):
    for tokenizer, mode in ((starcoder, "fim"), (starcoder, "instruct"), (starcoder, "prefix"),
                            (smollm2, "prefix"), (smollm2, "instruct")):
        prompt = build(tokenizer, mode)
        assert tokenizer.decode(prompt.ids, skip_special=False) == prompt.text, mode


# Mode, file name, language ---------------------------------------------------------------------
def test_auto_is_fim_with_fim_tokens_else_prefix(starcoder, smollm2):
    assert choose_mode(starcoder) == "fim" and build(starcoder, "auto").text == build(starcoder, "fim").text
    assert choose_mode(smollm2) == "prefix" and build(smollm2, "auto").text == build(smollm2, "prefix").text
    with pytest.raises(TokenizerError, match="no <fim_prefix>.*choose 'prefix' or 'instruct'"):
        build(smollm2, "fim")
    with pytest.raises(TokenizerError, match="unknown prompt mode 'chat'"):
        build(starcoder, "chat")


def test_file_name_and_language_only_where_the_model_can_use_them(starcoder):
    anonymous = build_prompt(PREFIX, SUFFIX, starcoder, "fim")
    assert anonymous.text == f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>"
    assert 5 not in anonymous.ids  # no <filename> token without a file name
    c_prompt = build_prompt("int add(int a, int b) {\n    return ", "\n}\n", starcoder, "instruct",
                            file_name="add.c", language_id="c")
    assert "Continue the C code in add.c at the cursor." in c_prompt.text
    assert "```c\n" in c_prompt.text
    # a blank suffix adds no "code after the cursor" block
    bare = build_prompt(PREFIX, "\n\n", starcoder, "instruct", language_id="python")
    assert "Continue the Python code at the cursor.\n\n### Response:\n```python\n" + PREFIX == bare.text.split(
        "### Instruction:\n", 1)[1]


def test_special_spellings_in_the_users_text_stay_text(starcoder):
    prompt = build_prompt("x = '<fim_middle><|endoftext|>'\ny = ", "\n", starcoder, "fim")
    assert prompt.ids.count(starcoder.require("<fim_middle>")) == 1 and prompt.ids[-1] == 2
    assert starcoder.eos_id not in prompt.ids


# The budget -------------------------------------------------------------------------------------
def numbered(start: int, stop: int) -> str:
    return "".join(f"    total = total + weights[{n}] * values[{n}]  # line {n}\n" for n in range(start, stop))


LONG_PREFIX = "def dot(weights, values):\n    total = 0\n" + numbered(0, 400) + "    total = "
LONG_SUFFIX = "\n" + numbered(400, 800) + "    return total\n"


def test_default_budget_is_1024(starcoder):
    assert inspect.signature(build_prompt).parameters["budget"].default == 1024
    assert Settings().prompt_tokens == 1024
    prompt = build_prompt(LONG_PREFIX, LONG_SUFFIX, starcoder, "fim")
    assert 1024 - 64 <= len(prompt.ids) <= 1024  # used, but not exceeded


@pytest.mark.parametrize("budget", [1024, 400])
def test_budget_three_quarters_prefix_one_quarter_suffix_at_line_boundaries(starcoder, budget):
    prompt = build_prompt(LONG_PREFIX, LONG_SUFFIX, starcoder, "fim", budget)
    kept_prefix = LONG_PREFIX[len(LONG_PREFIX) - prompt.prefix_chars:]
    kept_suffix = LONG_SUFFIX[:prompt.suffix_chars]
    # nearest lines first: the end of the prefix and the start of the suffix, cut between lines
    assert LONG_PREFIX[len(LONG_PREFIX) - prompt.prefix_chars - 1] == "\n" and kept_prefix.endswith("    total = ")
    assert kept_suffix.endswith("\n") and kept_suffix.startswith("\n    total = total + weights[400]")
    assert prompt.text == f"<fim_prefix>{kept_prefix}<fim_suffix>{kept_suffix}<fim_middle>"
    line = len(starcoder.encode(numbered(0, 1)))  # every numbered line costs about this
    suffix_tokens = len(starcoder.encode(kept_suffix))
    prefix_tokens = len(starcoder.encode(kept_prefix))
    assert budget // 4 - 2 * line <= suffix_tokens <= budget // 4
    assert prefix_tokens >= budget * 3 // 4 - 2 * line  # the prefix gets the rest
    assert len(prompt.ids) <= budget


def test_short_suffix_leaves_its_share_to_the_prefix(starcoder):
    prompt = build_prompt(LONG_PREFIX, "\n    return total\n", starcoder, "fim", 400)
    assert prompt.suffix_chars == len("\n    return total\n")
    assert len(starcoder.encode(LONG_PREFIX[len(LONG_PREFIX) - prompt.prefix_chars:])) > 400 * 3 // 4
    assert len(prompt.ids) <= 400


def test_a_cursor_line_longer_than_the_budget_is_cut_from_the_left(starcoder):
    line = "x = [" + ", ".join(str(n) for n in range(2000)) + ", "
    prompt = build_prompt("import os\n" + line, "]\n", starcoder, "prefix", 128)
    assert len(prompt.ids) <= 128
    assert prompt.text.endswith("1998, 1999, ") and "import os" not in prompt.text


@pytest.mark.parametrize("budget", [64, 128, 300, 1024])
@pytest.mark.parametrize("mode", ["fim", "instruct", "prefix"])
def test_the_budget_holds_in_every_mode(starcoder, mode, budget):
    """Lines of one or two tokens fill the budget to the token: the template's tokens (the
    instruct one's "code after the cursor" block included) must be counted."""
    prefix = "".join(f"a{n % 10}\n" for n in range(3000)) + "b = "
    suffix = "\n" + "".join(f"c{n % 10}\n" for n in range(3000))
    prompt = build_prompt(prefix, suffix, starcoder, mode, budget, FILE, LANGUAGE)
    assert budget - 24 <= len(prompt.ids) <= budget


def test_a_budget_the_template_fills_is_an_error(starcoder):
    with pytest.raises(TokenizerError, match="raise promptTokens"):
        build_prompt(PREFIX, SUFFIX, starcoder, "instruct", 30)


def test_auto_is_fim_in_qwens_own_tokens_for_the_default(qwen_model):
    """The default's vocabulary has Qwen's FIM tokens, not StarCoder's: ``auto`` picks FIM and
    spells it Qwen's way (no ``<filename>``: Qwen has none)."""
    from wizardcoder_tpu.inference.weights import open_checkpoint

    qwen = open_checkpoint(qwen_model).tokenizer()
    prompt = build(qwen, "auto")
    assert prompt.mode == "fim"
    assert prompt.text == "<|fim_prefix|>" + PREFIX + "<|fim_suffix|>" + SUFFIX + "<|fim_middle|>"
    assert prompt.ids[0] == qwen.require("<|fim_prefix|>") and prompt.ids[-1] == qwen.require("<|fim_middle|>")
