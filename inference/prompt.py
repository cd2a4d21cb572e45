"""From the text around the cursor to prompt token ids: ``fim``, ``instruct`` or ``prefix``.

Three prompt formats, one budget:

- ``fim``: fill in the middle, in the spelling of the family the vocabulary has (``Tokenizer.fim``):
  StarCoder's ``<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>`` (WizardCoder) or
  Qwen2.5-Coder's ``<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>``; the model then
  writes the middle. With code from other files as context (``RepoContext``, gathered by
  ``context.py``) and a family that has repository tokens, Qwen2.5-Coder's repository-level layout
  (as in the Qwen2.5-Coder repository's ``examples/Qwen2.5-Coder-repolevel-fim.py``)::

      <|repo_name|>{name}\\n<|file_sep|>{path}\\n{code}…<|file_sep|>{current path}\\n<|fim_prefix|>…

  The context comes first and has a budget of its own (``context_budget``), so that it stays the
  same from keystroke to keystroke and the engine's prefix reuse keeps it in the KV cache.
- ``instruct``: the model's own chat template (WizardCoder's Alpaca-style "### Instruction /
  ### Response", or ChatML where the vocabulary has ``<|im_start|>``) asking to continue the code;
  the text after the cursor is context in the instruction and the code so far is *opened* in the
  response, so that the model's next tokens are the completion.
- ``prefix``: plain continuation of the text before the cursor (the default for a model without
  FIM tokens, such as the SmolLM2 default).

The budget (``prompt_tokens``) is shared roughly ¾ prefix, ¼ suffix (the prefix gets what the
suffix leaves), cut at line boundaries, nearest lines first; a prefix cut from the top starts on
a line number that is a multiple of ``WINDOW_STEP_LINES``, so that typing does not move the
window's first line (and so the whole prompt) on every line. Special tokens enter the ids only
where this module puts them: the user's text is encoded with special spellings as plain text, so
a file that contains ``<|im_end|>`` cannot end the prompt early.

Everything here is a pure function of text, tokenizer and numbers: testable without a server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from .context import RepoContext, Snippet
from .errors import TokenizerError
from .tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, FimTokens, Tokenizer

MODES = ("auto", "fim", "instruct", "prefix")
FILENAME = "<filename>"  # StarCoder's metadata token: "<filename>path\n" before the code
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"
UNTITLED = "untitled"  # the current file's path in the repository head when the editor gives none

ALPACA_HEADER = ("Below is an instruction that describes a task. Write a response that appropriately "
                 "completes the request.\n\n### Instruction:\n")
ALPACA_RESPONSE = "\n\n### Response:"
CHATML_SYSTEM = "You are a helpful coding assistant."

# Common language ids -> the name used in an instruction and the tag of a Markdown code fence.
_LANGUAGE_NAMES = {
    "python": "Python", "javascript": "JavaScript", "typescript": "TypeScript", "rust": "Rust",
    "go": "Go", "c": "C", "cpp": "C++", "java": "Java", "lua": "Lua", "shellscript": "shell",
    "sh": "shell", "ruby": "Ruby", "csharp": "C#", "php": "PHP", "kotlin": "Kotlin",
}


@dataclass(frozen=True)
class Piece:
    """A run of prompt text; ``special`` pieces are one vocabulary token each."""

    text: str
    special: bool = False


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    text: str  # the prompt as the model sees it, special tokens spelled out (for logs and tests)
    mode: str  # fim | instruct | prefix | explain
    stop_strings: tuple[str, ...]  # text that ends the completion (e.g. the closing code fence)
    prefix_chars: int  # how much of the text before the cursor made it into the prompt
    suffix_chars: int
    context_tokens: int = 0  # the leading ids that hold other files' code (the repository head)
    context_snippets: int = 0  # how many snippets of ``context`` made it into the prompt
    heal: str = ""  # the text before the cursor taken off the ids, for the model to spell again


# Choosing -------------------------------------------------------------------------------------
def repository_tokens(fim: FimTokens | None) -> tuple[str, str] | None:
    """The (repo_name, file_sep) spellings of Qwen2.5-Coder's repository-level layout, None for a
    vocabulary without that layout (StarCoder's first generation, WizardCoder's)."""
    if fim is None or fim.family != "qwen" or fim.repo_name is None or fim.file_sep is None:
        return None
    return fim.repo_name, fim.file_sep


def choose_mode(tokenizer: Tokenizer, requested: str = "auto") -> str:
    """``auto`` is ``fim`` when the vocabulary has either family's FIM tokens, else ``prefix``."""
    if requested not in MODES:
        raise TokenizerError(f"unknown prompt mode {requested!r}; choose one of {', '.join(MODES)}")
    has_fim = tokenizer.fim is not None
    if requested == "auto":
        return "fim" if has_fim else "prefix"
    if requested == "fim" and not has_fim:
        raise TokenizerError(f"{tokenizer.source}: the vocabulary has no {FIM_PREFIX}/{FIM_SUFFIX}/{FIM_MIDDLE} "
                             f"tokens (StarCoder's) nor <|fim_prefix|>/<|fim_suffix|>/<|fim_middle|> "
                             "(Qwen's), so mode 'fim' cannot be used; choose 'prefix' or 'instruct'")
    return requested


def chat_template(tokenizer: Tokenizer) -> str:
    """``chatml`` when the vocabulary has ChatML's tokens (SmolLM2-Instruct, Qwen2.5-Coder-Instruct), else ``alpaca``
    (WizardCoder's own "### Instruction / ### Response")."""
    has_chatml = tokenizer.token_id(CHATML_START) is not None and tokenizer.token_id(CHATML_END) is not None
    return "chatml" if has_chatml else "alpaca"


def language_name(language_id: str) -> str:
    return _LANGUAGE_NAMES.get(language_id, language_id or "")


# Completion prompts ---------------------------------------------------------------------------
def build_prompt(prefix: str, suffix: str, tokenizer: Tokenizer, mode: str = "auto", budget: int = 1024,
                 file_name: str = "", language_id: str = "", context: RepoContext | None = None,
                 context_budget: int = 512, heal: bool = False) -> Prompt:
    """The prompt for completing at the cursor between ``prefix`` and ``suffix``, within
    ``budget`` tokens (template included); before it, in ``context_budget`` tokens of its own, the
    repository head with the newest of ``context``'s snippets that fit (see ``repository_head``).
    With ``heal``, the word the cursor ends is taken off the ids (``Prompt.heal``, see ``back_off``)."""
    mode = choose_mode(tokenizer, mode)
    template = _TEMPLATES[mode]
    suffix = suffix if mode != "prefix" else ""
    # The template's own tokens, measured in the form it takes for this text (the instruct one
    # adds a block for a non-blank suffix; the probe's "x" makes the estimate err on the safe side).
    overhead = len(_encode(tokenizer, template(tokenizer, "", "x" if suffix.strip() else "", file_name, language_id)))
    room = budget - overhead
    while True:
        if room <= 0:
            raise TokenizerError(f"a prompt budget of {budget} tokens leaves no room for code ({mode} template "
                                 f"alone takes {overhead}); raise promptTokens")
        kept_prefix, kept_suffix = fit_context(prefix, suffix, tokenizer, room)
        pieces = template(tokenizer, kept_prefix, kept_suffix, file_name, language_id)
        ids = _encode(tokenizer, pieces)
        if len(ids) <= budget:  # pieces can merge into other tokens at their joins: check, never assume
            break
        room -= len(ids) - budget
    removed = ""
    if heal:
        end = ids.index(tokenizer.require(tokenizer.fim.suffix)) if mode == "fim" and tokenizer.fim else len(ids)
        start, removed = back_off(tokenizer, ids, end, kept_prefix)
        ids = ids[:start] + ids[end:]
    head, snippets = repository_head(tokenizer, mode, context, file_name, context_budget, (kept_prefix, kept_suffix))
    head_ids = list(_encode_head(tokenizer, tuple(head)))  # before a special token: never merges with the rest
    stops = () if language_id == "markdown" else ("```",)  # chat-tuned models close a code fence
    return Prompt(head_ids + ids, "".join(p.text for p in [*head, *pieces]), mode, stops, len(kept_prefix),
                  len(kept_suffix), len(head_ids), snippets, removed)


HEAL_TOKENS = 6  # the most tokens of a word taken off for healing


def back_off(tokenizer: Tokenizer, ids: Sequence[int], end: int, prefix: str) -> tuple[int, str]:
    """Where token healing cuts ``ids`` (the prefix's tokens end at ``end``) and the text it
    takes off: the last token, and while what is taken spells word characters only, the one
    before it too, up to the token where the word begins, its leading space included
    (``#inclu`` is ``#``, ``incl``, ``u``: taking off the ``u`` alone leaves an ``incl`` that the
    model never saw before ``ude``), at most ``HEAL_TOKENS``. Nothing when the cursor's line
    holds only indentation (the model then writes what follows it; measured in
    bench/results/quality.md), nor a token that holds a line break, a special token or part of a
    character."""
    line = prefix[prefix.rfind("\n") + 1:]
    if not line.strip():
        return end, ""
    start, removed = end, ""
    while start > 0 and end - start < HEAL_TOKENS:
        piece = tokenizer.pieces[ids[start - 1]]
        if ids[start - 1] in tokenizer.special_ids or not piece or "\n" in piece or "\ufffd" in piece:
            break
        start, removed = start - 1, piece + removed
        if not _word(removed):  # the token where the word begins (its space too), or one not of a word
            break
    if not prefix.endswith(removed):  # the ids there are not the prefix's (cannot happen; never guess)
        return end, ""
    return start, removed


def _word(text: str) -> bool:
    return all(ch.isalnum() or ch == "_" for ch in text)


def repository_head(tokenizer: Tokenizer, mode: str, context: RepoContext | None, file_name: str,
                    budget: int, code: Sequence[str] = ()) -> tuple[list[Piece], int]:
    """Qwen2.5-Coder's repository-level layout before the FIM part, and how many snippets it holds:
    ``<|repo_name|>{name}\\n``, then ``<|file_sep|>{path}\\n{code}`` per snippet, then
    ``<|file_sep|>{current path}\\n``. The newest snippets that fit ``budget`` (the headers
    included) are kept, laid out oldest first: a new snippet goes at the end, so the ids before it
    stay those the engine has cached. A snippet found whole in ``code`` (the prefix and suffix the
    prompt holds, or the two joined: a chunk across the cursor's line) is left out: the model would
    read it twice. So is a snippet of the current file whose lines the window mostly holds: a
    snapshot of the place being completed, taken before the latest edits, shows the model a stale
    or unfinished copy of it (llama.vim, likewise, picks its chunks outside the local window).
    ``bench/quality.py``, 12 line holes: 3 exact with such chunks in, 6 with no context. Nothing for other modes, for a family
    without repository tokens (StarCoder's first generation was not trained on such a layout), or
    when nothing fits."""
    tokens = repository_tokens(tokenizer.fim) if mode == "fim" else None
    if context is None or not context.snippets or tokens is None:
        return [], 0
    repo_name, file_sep = tokens
    name = [Piece(repo_name, True), Piece(f"{context.name}\n")]
    current = [Piece(file_sep, True), Piece(f"{file_name or UNTITLED}\n")]
    room = budget - len(_encode(tokenizer, name)) - len(_encode(tokenizer, current))
    kept: list[Snippet] = []
    window = "".join(code)  # the current file's lines the prompt shows, the cursor's line whole
    current_path = file_name or UNTITLED
    for snippet in reversed(context.snippets):
        if any(snippet.text in text for text in (*code, window)):
            continue
        if snippet.path == current_path and _mostly_within(snippet.text, window):
            continue
        cost = _snippet_cost(tokenizer, snippet)
        if cost <= room:
            kept.append(snippet)
            room -= cost
    if not kept:
        return [], 0
    body = [piece for snippet in reversed(kept) for piece in (Piece(file_sep, True), Piece(_snippet_text(snippet)))]
    return [*name, *body, *current], len(kept)


def _mostly_within(snippet: str, window: str, share: float = 0.5) -> bool:
    """At least ``share`` of the snippet's non-blank lines are lines of ``window`` too (compared
    without line breaks, so that the cursor's unfinished line counts as held)."""
    lines = [line for line in snippet.splitlines() if line.strip()]
    held = set(window.splitlines())
    return sum(line in held for line in lines) >= share * len(lines)


@lru_cache(maxsize=8)
def _encode_head(tokenizer: Tokenizer, head: tuple[Piece, ...]) -> tuple[int, ...]:
    """The head's ids, encoded once while it stays the same (keystroke after keystroke)."""
    return tuple(_encode(tokenizer, head))


def _snippet_text(snippet: Snippet) -> str:
    """``{path}\\n{code}``, the code ending its last line (the next separator starts a line)."""
    code = snippet.text if snippet.text.endswith("\n") else snippet.text + "\n"
    return f"{snippet.path}\n{code}"


@lru_cache(maxsize=1024)
def _snippet_cost(tokenizer: Tokenizer, snippet: Snippet) -> int:
    """A snippet's tokens in the head, its separator token included. The same snippets come back
    on every keystroke, so each is counted once (per tokenizer)."""
    return 1 + len(tokenizer.encode(_snippet_text(snippet)))


def _fim(tokenizer: Tokenizer, prefix: str, suffix: str, file_name: str, language_id: str) -> list[Piece]:
    fim = tokenizer.fim  # the vocabulary's own spellings: StarCoder's <fim_prefix> or Qwen's <|fim_prefix|>
    assert fim is not None, "choose_mode lets 'fim' through only with FIM tokens"
    head = _file_header(tokenizer, file_name)
    return [Piece(fim.prefix, True), *head, Piece(prefix), Piece(fim.suffix, True), Piece(suffix),
            Piece(fim.middle, True)]


def _prefix(tokenizer: Tokenizer, prefix: str, suffix: str, file_name: str, language_id: str) -> list[Piece]:
    return [*_file_header(tokenizer, file_name), Piece(prefix)]


def _instruct(tokenizer: Tokenizer, prefix: str, suffix: str, file_name: str, language_id: str) -> list[Piece]:
    language = language_name(language_id)
    where = f" in {file_name}" if file_name else ""
    instruction = f"Continue the {language + ' ' if language else ''}code{where} at the cursor."
    if suffix.strip():
        instruction += f" The code after the cursor is:\n```{language_id}\n{suffix}\n```"
    return _chat(tokenizer, instruction, f"```{language_id}\n{prefix}")


_TEMPLATES = {"fim": _fim, "prefix": _prefix, "instruct": _instruct}


def _file_header(tokenizer: Tokenizer, file_name: str) -> list[Piece]:
    """StarCoder's ``<filename>name\\n`` where the vocabulary has the token."""
    if file_name and tokenizer.token_id(FILENAME) is not None:
        return [Piece(FILENAME, True), Piece(file_name + "\n")]
    return []


# Instruction prompts (explain selection) ------------------------------------------------------
def build_instruction_prompt(instruction: str, tokenizer: Tokenizer, budget: int = 2048,
                             response_start: str = "") -> Prompt:
    """An instruction in the model's own template; the response opened with ``response_start``.
    Instructions longer than ``budget`` tokens are cut at the end (the question is kept at the top)."""
    overhead = len(_encode(tokenizer, _chat(tokenizer, "", response_start)))
    room = budget - overhead
    if room <= 0:
        raise TokenizerError(f"a budget of {budget} tokens leaves no room for the instruction")
    ids = tokenizer.encode(instruction)
    if len(ids) > room:
        instruction = tokenizer.decode(ids[:room]).rstrip("\ufffd")
    pieces = _chat(tokenizer, instruction, response_start)
    stops = ("### Instruction",) if chat_template(tokenizer) == "alpaca" else ()
    return Prompt(_encode(tokenizer, pieces), "".join(p.text for p in pieces), "explain", stops, 0, 0)


def _chat(tokenizer: Tokenizer, instruction: str, response_start: str) -> list[Piece]:
    if chat_template(tokenizer) == "chatml":
        return [Piece(CHATML_START, True), Piece(f"system\n{CHATML_SYSTEM}"), Piece(CHATML_END, True), Piece("\n"),
                Piece(CHATML_START, True), Piece(f"user\n{instruction}"), Piece(CHATML_END, True), Piece("\n"),
                Piece(CHATML_START, True), Piece(f"assistant\n{response_start}")]
    return [Piece(f"{ALPACA_HEADER}{instruction}{ALPACA_RESPONSE}\n{response_start}")]


# The budget -----------------------------------------------------------------------------------
def fit_context(prefix: str, suffix: str, tokenizer: Tokenizer, budget: int) -> tuple[str, str]:
    """The tail of ``prefix`` and head of ``suffix`` that fit ``budget`` tokens: whole lines,
    nearest the cursor first; the suffix gets at most a quarter, the prefix the rest. The cursor's
    own line part is always kept (cut by tokens only if it alone exceeds the prefix budget)."""
    suffix_lines = suffix.splitlines(keepends=True)
    kept_suffix, used = _take_lines(suffix_lines, tokenizer, budget // 4 if prefix else budget)
    prefix_lines = prefix.splitlines(keepends=True)
    if prefix_lines and prefix_lines[-1].splitlines()[0] != prefix_lines[-1]:
        prefix_lines.append("")  # the cursor is at the start of an empty line part
    if not prefix_lines:
        return "", "".join(kept_suffix)
    room = budget - used
    cursor_line = prefix_lines[-1]
    cursor_ids = tokenizer.encode(cursor_line)
    if len(cursor_ids) >= room:
        return tokenizer.decode(cursor_ids[len(cursor_ids) - room:]).lstrip("\ufffd"), "".join(kept_suffix)
    before, _ = _take_lines(prefix_lines[-2::-1], tokenizer, room - len(cursor_ids))
    before = before[:_steady_count(len(prefix_lines) - 1, len(before))]
    return "".join(reversed(before)) + cursor_line, "".join(kept_suffix)


WINDOW_STEP_LINES = 8  # a prefix cut from the top starts on a line number that is a multiple of this


def _steady_count(lines_before: int, fitting: int) -> int:
    """How many of the ``fitting`` lines nearest the cursor to keep, of the ``lines_before`` it.

    When the prefix is over its budget, the window's first line would move down with almost every
    line typed, and a new first token is a new prompt: the engine's prefix reuse would prefill
    the whole window again. So the cut starts on a document line that is a multiple of
    ``WINDOW_STEP_LINES`` (the first such line at or after the one the budget allows): the window
    moves once per that many lines, not once per line, for at most ``WINDOW_STEP_LINES - 1`` of
    its farthest lines (llama.vim keeps its window still in the same spirit, for llama.cpp's
    cache). A budget that holds fewer than twice the step in lines is cut by the budget alone."""
    first = lines_before - fitting
    if first == 0 or fitting < 2 * WINDOW_STEP_LINES:
        return fitting
    steady_first = -(-first // WINDOW_STEP_LINES) * WINDOW_STEP_LINES
    return lines_before - steady_first


def _take_lines(lines: Sequence[str], tokenizer: Tokenizer, budget: int) -> tuple[list[str], int]:
    """The leading ``lines`` whose token counts sum to at most ``budget``; and that sum. Every
    line costs at least one token, so no more than ``budget`` lines are ever encoded."""
    candidates = list(lines[: max(budget, 0)])
    if not candidates:
        return [], 0
    counts = [len(ids) for ids in tokenizer.encode_batch(candidates)]
    taken, used = [], 0
    for line, count in zip(candidates, counts):
        if used + count > budget:
            break
        taken.append(line)
        used += count
    return taken, used


# Encoding -------------------------------------------------------------------------------------
def _encode(tokenizer: Tokenizer, pieces: Sequence[Piece]) -> list[int]:
    """Special pieces by id, runs of text as plain text (adjacent text pieces are joined first,
    so that the ids equal the encoding of the text as one string)."""
    ids: list[int] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            ids.extend(tokenizer.encode("".join(run)))
            run.clear()

    for piece in pieces:
        if piece.special:
            flush()
            ids.append(tokenizer.require(piece.text))
        elif piece.text:
            run.append(piece.text)
    flush()
    return ids

