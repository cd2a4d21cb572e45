"""The prompt each mode builds, pinned exactly (text and token ids) for one fixed example, and
the token budget: its split, line-boundary cuts, nearest lines first, and that it holds.

StarCoder's vocabulary (WizardCoder's) is read in place from ``../shared/vocab`` through the
``starcoder_vocab`` fixture; SmolLM2's (the default model's) from ``vocab/smollm2``. The pinned
ids were checked against transformers' own tokenizers on the same files. Qwen2.5-Coder's prompts
are pinned on a byte vocabulary with Qwen's special tokens (``byte_vocab.py``: ids 0–255 are the
bytes, 256… the special tokens), so that text and ids are both exact without its 491 MB GGUF.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from byte_vocab import byte_tokenizer

from wizardcoder_tpu.inference.context import RepoContext, Snippet
from wizardcoder_tpu.inference.errors import TokenizerError
from wizardcoder_tpu.inference.prompt import (WINDOW_STEP_LINES, build_instruction_prompt, build_prompt, choose_mode,
                                              repository_tokens)
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


@pytest.fixture(scope="module")
def qwen() -> Tokenizer:
    return byte_tokenizer()


# The byte vocabulary's special ids (byte_vocab.QWEN_SPECIALS from 256).
IM_START, IM_END, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, REPO_NAME, FILE_SEP = 257, 258, 259, 260, 261, 263, 264


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


CHATML_INSTRUCT = (  # the instruct prompt in ChatML, the same text for every ChatML vocabulary
    "<|im_start|>system\nYou are a helpful coding assistant.<|im_end|>\n<|im_start|>user\nContinue the "
    "Python code in math_utils.py at the cursor. The code after the cursor is:\n```python\n\n\n"
    "print(add(1, 2))\n\n```<|im_end|>\n<|im_start|>assistant\n```python\ndef add(a, b):\n    return ")


def test_instruct_prompt_uses_chatml_where_the_vocabulary_has_it(smollm2):
    prompt = build(smollm2, "instruct")
    assert prompt.text == CHATML_INSTRUCT
    assert prompt.ids == [
        1, 9690, 198, 2683, 359, 253, 5356, 8598, 11173, 30, 2, 198, 1, 4093, 198, 26226, 260, 5905, 2909, 281,
        4119, 79, 7638, 30, 1306, 418, 260, 16456, 30, 378, 2909, 990, 260, 16456, 314, 42, 198, 3725, 5367,
        1116, 198, 3272, 24, 2104, 24, 33, 28, 216, 34, 1292, 198, 198, 3725, 2, 198, 1, 520, 9531, 198, 3725,
        5367, 198, 1604, 803, 24, 81, 28, 278, 727, 472, 1003, 216]


def test_fim_prompt_is_qwens(qwen):
    prompt = build(qwen, "fim")
    assert prompt.mode == "fim"
    # no file name: Qwen's file-level FIM has none (and its vocabulary no <filename>)
    assert prompt.text == "<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>"
    assert prompt.ids == [FIM_PREFIX, *b"def add(a, b):\n    return ", FIM_SUFFIX, *b"\n\nprint(add(1, 2))\n",
                          FIM_MIDDLE]
    assert (prompt.context_tokens, prompt.context_snippets) == (0, 0)


GEOMETRY = Snippet("geometry.py", "def area(r):\n    return 3.14159 * r * r\n")
CONSTANTS = Snippet("lib/constants.py", "ZERO = 0\nONE = 1\n")


def test_repository_level_prompt_is_qwens(qwen):
    """Other files first, as in Qwen2.5-Coder's examples/Qwen2.5-Coder-repolevel-fim.py."""
    prompt = build(qwen, "fim", context=RepoContext("calculator", (GEOMETRY, CONSTANTS)))
    assert prompt.text == (
        "<|repo_name|>calculator\n"
        "<|file_sep|>geometry.py\ndef area(r):\n    return 3.14159 * r * r\n"
        "<|file_sep|>lib/constants.py\nZERO = 0\nONE = 1\n"
        "<|file_sep|>math_utils.py\n"
        "<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>")
    head = [REPO_NAME, *b"calculator\n",
            FILE_SEP, *b"geometry.py\ndef area(r):\n    return 3.14159 * r * r\n",
            FILE_SEP, *b"lib/constants.py\nZERO = 0\nONE = 1\n",
            FILE_SEP, *b"math_utils.py\n"]
    assert prompt.ids == [*head, FIM_PREFIX, *b"def add(a, b):\n    return ", FIM_SUFFIX, *b"\n\nprint(add(1, 2))\n",
                          FIM_MIDDLE]
    assert (prompt.context_tokens, prompt.context_snippets) == (len(head), 2)
    assert (prompt.prefix_chars, prompt.suffix_chars) == (len(PREFIX), len(SUFFIX))


def test_explain_prompt_is_chatml_for_qwen(qwen):
    prompt = build_instruction_prompt("Explain this code:\n```python\nx = 1\n```", qwen)
    assert prompt.mode == "explain"
    assert prompt.text == ("<|im_start|>system\nYou are a helpful coding assistant.<|im_end|>\n"
                           "<|im_start|>user\nExplain this code:\n```python\nx = 1\n```<|im_end|>\n"
                           "<|im_start|>assistant\n")
    assert prompt.ids == [IM_START, *b"system\nYou are a helpful coding assistant.", IM_END, *b"\n",
                          IM_START, *b"user\nExplain this code:\n```python\nx = 1\n```", IM_END, *b"\n",
                          IM_START, *b"assistant\n"]


def test_instruct_prompt_is_chatml_for_qwen(qwen):
    prompt = build(qwen, "instruct")
    assert prompt.text == CHATML_INSTRUCT
    assert prompt.ids[:2] == [IM_START, *b"s"] and prompt.ids.count(IM_START) == 3 and prompt.ids.count(IM_END) == 2


def test_the_ids_spell_the_text(starcoder, smollm2, qwen):
    context = RepoContext("calculator", (GEOMETRY, CONSTANTS))
    for tokenizer, mode in ((starcoder, "fim"), (starcoder, "instruct"), (starcoder, "prefix"),
                            (smollm2, "prefix"), (smollm2, "instruct"), (qwen, "fim"), (qwen, "instruct")):
        for prompt in (build(tokenizer, mode), build(tokenizer, mode, context=context)):
            assert tokenizer.decode(prompt.ids, skip_special=False) == prompt.text, mode


# Mode, file name, language ---------------------------------------------------------------------
def test_auto_is_fim_with_fim_tokens_else_prefix(starcoder, smollm2, qwen):
    assert choose_mode(starcoder) == "fim" and build(starcoder, "auto").text == build(starcoder, "fim").text
    assert choose_mode(qwen) == "fim" and build(qwen, "auto").text == build(qwen, "fim").text
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


def test_special_spellings_in_the_users_text_stay_text(starcoder, qwen):
    prompt = build_prompt("x = '<fim_middle><|endoftext|>'\ny = ", "\n", starcoder, "fim")
    assert prompt.ids.count(starcoder.require("<fim_middle>")) == 1 and prompt.ids[-1] == 2
    assert starcoder.eos_id not in prompt.ids
    tricky = Snippet("a.py", "s = '<|file_sep|><|fim_middle|><|endoftext|>'\n")
    prompt = build_prompt("y = '<|fim_suffix|>'\nz = ", "\n", qwen, "fim", context=RepoContext("r", (tricky,)))
    assert [prompt.ids.count(i) for i in (FILE_SEP, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, qwen.eos_id)] == [2, 1, 1, 1, 0]


# Fill-in-the-middle families and the repository head ---------------------------------------------
def test_each_vocabulary_has_its_fim_family(starcoder, smollm2, qwen):
    assert (qwen.fim.family, qwen.fim.prefix, qwen.fim.suffix, qwen.fim.middle) == (
        "qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
    assert repository_tokens(qwen.fim) == ("<|repo_name|>", "<|file_sep|>")
    assert starcoder.fim.family == "starcoder" and repository_tokens(starcoder.fim) is None
    assert smollm2.fim is None and repository_tokens(smollm2.fim) is None
    # Qwen's FIM tokens without its repository ones: FIM, but no head
    bare = byte_tokenizer(("<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"))
    assert bare.fim.family == "qwen" and repository_tokens(bare.fim) is None
    with_context = build_prompt(PREFIX, SUFFIX, bare, "fim", context=RepoContext("r", (GEOMETRY,)))
    assert with_context.text == f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"


def test_context_only_where_the_format_has_a_place_for_it(starcoder, qwen):
    """StarCoder's first generation has no repository layout, instruct and prefix no FIM part."""
    context = RepoContext("calculator", (GEOMETRY,))
    for tokenizer, mode in ((starcoder, "fim"), (starcoder, "instruct"), (qwen, "instruct"), (qwen, "prefix")):
        assert build(tokenizer, mode, context=context) == build(tokenizer, mode), (tokenizer.source, mode)
    assert build(qwen, "fim", context=RepoContext("calculator", ())) == build(qwen, "fim")


def test_a_snapshot_of_the_place_being_completed_is_left_out(qwen):
    """A chunk of the current file that the prompt's window mostly holds repeats it, and may hold
    the place as it was (unfinished, or before the latest edits): bench/quality.py measured such
    chunks costing half the exact line holes (3 of 12 against 6 of 12 without context)."""
    def snippets(*extra: Snippet) -> list[str]:  # the paths of the snippets kept, oldest first
        prompt = build(qwen, "fim", context=RepoContext("calculator", (GEOMETRY, *extra)))
        head = prompt.text.split("<|fim_prefix|>")[0].removesuffix(f"<|file_sep|>{FILE}\n")  # the current file's header
        assert prompt.context_snippets == head.count("<|file_sep|>")
        return [part.split("\n", 1)[0] for part in head.split("<|file_sep|>")[1:]]

    across = Snippet(FILE, PREFIX + SUFFIX)  # the window itself, the cursor's line inside it
    unfinished = Snippet(FILE, "def add(a, b):\n    ret\n\n\nprint(add(1, 2))\n")  # picked while typing
    assert snippets(across) == ["geometry.py"]
    assert snippets(unfinished) == ["geometry.py"]
    # the current file's code the window does not hold, and another file's code, stay
    elsewhere = Snippet(FILE, "import math\n\nHALF = 0.5\nTWO = 2\n")
    assert snippets(elsewhere) == ["geometry.py", FILE]
    assert "<|file_sep|>other.py\n" in build(qwen, "fim", context=RepoContext("c", (Snippet("other.py", unfinished.text),))).text


def test_the_context_budget_keeps_the_newest_snippets_that_fit_oldest_first(qwen):
    snippets = tuple(Snippet(f"f{n}.py", f"value_{n} = {n}\n" * 4) for n in range(6))  # 58 tokens each, with header
    cost = 1 + len(f"f0.py\n{snippets[0].text}".encode())
    fixed = 1 + len(b"calculator\n") + 1 + len(b"math_utils.py\n")  # the name and the current file's header
    for fitting in range(4):
        prompt = build(qwen, "fim", context=RepoContext("calculator", snippets), context_budget=fixed + fitting * cost)
        kept = [s.path for s in snippets[len(snippets) - fitting:]] if fitting else []
        assert [p for p in (s.path for s in snippets) if f"<|file_sep|>{p}\n" in prompt.text] == kept
        assert prompt.context_snippets == fitting
        assert prompt.context_tokens == (fixed + fitting * cost if fitting else 0)
    # a snippet too big for what is left is passed over; an older one that fits still gets in
    big = Snippet("big.py", "x = 1\n" * 100)
    prompt = build(qwen, "fim", context=RepoContext("calculator", (GEOMETRY, big)), context_budget=200)
    assert "big.py" not in prompt.text and "<|file_sep|>geometry.py\n" in prompt.text
    assert prompt.context_tokens <= 200
    # a snippet the prompt's own code already holds is left out
    here = Snippet("math_utils.py", "def add(a, b):\n")
    prompt = build(qwen, "fim", context=RepoContext("calculator", (GEOMETRY, here)))
    assert prompt.context_snippets == 1 and "<|file_sep|>geometry.py\n" in prompt.text
    assert build(qwen, "fim", context=RepoContext("calculator", (here,))) == build(qwen, "fim")
    # the code's budget is its own: the head does not shrink it
    long_prefix = "".join(f"line_{n} = {n}\n" for n in range(400))
    alone = build_prompt(long_prefix, "", qwen, "fim", 256)
    both = build_prompt(long_prefix, "", qwen, "fim", 256, context=RepoContext("r", (GEOMETRY,)))
    assert both.prefix_chars == alone.prefix_chars and len(both.ids) - both.context_tokens == len(alone.ids) <= 256


# The budget -------------------------------------------------------------------------------------
def numbered(start: int, stop: int) -> str:
    return "".join(f"    total = total + weights[{n}] * values[{n}]  # line {n}\n" for n in range(start, stop))


LONG_PREFIX = "def dot(weights, values):\n    total = 0\n" + numbered(0, 400) + "    total = "
LONG_SUFFIX = "\n" + numbered(400, 800) + "    return total\n"


def test_default_budget_is_1024(starcoder):
    assert inspect.signature(build_prompt).parameters["budget"].default == 1024
    assert Settings().prompt_tokens == 1024
    prompt = build_prompt(LONG_PREFIX, LONG_SUFFIX, starcoder, "fim")
    line = len(starcoder.encode(numbered(0, 1)))
    steady = (WINDOW_STEP_LINES - 1) * line  # the most a steady window start leaves unused
    assert 1024 - 64 - steady <= len(prompt.ids) <= 1024  # used, but not exceeded


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
    # the prefix gets the rest, less at most the lines a steady window start leaves out
    assert prefix_tokens >= budget * 3 // 4 - (WINDOW_STEP_LINES + 1) * line
    assert len(prompt.ids) <= budget


def test_typing_at_the_end_of_a_long_prefix_moves_the_window_once_per_step_of_lines(starcoder):
    """Once the prefix is over its budget, the kept window must not start one line lower with
    every line typed (a new first token: the engine would prefill the whole window again). Typed
    character by character, 16 new lines move the window's first line at most 16 / step + 1
    times, always to a document line that is a multiple of the step."""
    typed = numbered(400, 416)
    starts, moves = [], 0
    for end in range(0, len(typed) + 1, 3):
        prefix = LONG_PREFIX + typed[:end]
        prompt = build_prompt(prefix, LONG_SUFFIX, starcoder, "fim", 1024)
        first_line = prefix[: len(prefix) - prompt.prefix_chars].count("\n")
        assert first_line % WINDOW_STEP_LINES == 0, first_line
        moves += bool(starts) and first_line != starts[-1]
        starts.append(first_line)
        assert len(prompt.ids) <= 1024
    assert starts[-1] > starts[0]  # the window did move down with the text
    assert moves <= 16 // WINDOW_STEP_LINES + 1, sorted(set(starts))


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
