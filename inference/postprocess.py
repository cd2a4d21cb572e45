"""From the model's raw continuation to the text an editor shows: cut, balanced, or nothing.

The decisions, in the order the completion path takes them:

1. ``completion_kind``: the rest of the cursor's line decides (as Tabby's ``isLineEnd`` and
   llm-ls' ``should_complete`` do): nothing after the cursor → ``multi``-line; text after it →
   ``single``-line (stop at the newline).
2. ``postprocess``: in multi-line mode stop at a line that dedents below the cursor's block, at a
   line that repeats the next line of the file (at any indentation), give nothing when the
   cursor's line completed is that next line, and before a closing bracket that the text after
   the cursor already holds; in both modes drop a head that writes again the text before the
   cursor on its line, and stop where the completion starts repeating the text after the cursor; replace (rather than double) the auto-closed characters after the cursor;
   drop empty and whitespace-only results.
3. ``should_stop``: the same scope rules on a partial completion, so that generation can end as
   soon as the result is decided.

Pure functions of text: testable without a model or a server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

Kind = Literal["single", "multi"]
SINGLE: Kind = "single"
MULTI: Kind = "multi"

OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {")": "(", "]": "[", "}": "{"}
QUOTES = "\"'`"
AUTO_CLOSED = frozenset(")]}\"'`")  # what editors insert after the cursor when an opener is typed
BLOCK_OPENERS = (":", "{", "(", "[")  # a line ending so opens a block: the body is indented deeper
MIN_OVERLAP = 2  # a partial overlap with the text around the cursor shorter than this is chance
MIN_REPEAT_CHARS = 4  # a line of code this long, written again after the cursor, repeats the file
WORD_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"


@dataclass(frozen=True)
class Surroundings:
    """The text around the cursor, as post-processing needs it (computed once per request: the
    stream check runs after every token)."""

    line_prefix: str  # the cursor's line up to the cursor
    line_suffix: str  # the cursor's line after the cursor, without its line break
    next_line: str = ""  # the first non-blank line after the cursor's line, indentation kept
    next_char: str = ""  # the first non-whitespace character after the cursor

    @classmethod
    def of(cls, prefix: str, suffix: str, look_ahead: int = 4096) -> "Surroundings":
        line_prefix = prefix[max(prefix.rfind("\n"), prefix.rfind("\r")) + 1:]
        head = suffix[:look_ahead]
        line_suffix, _, after = head.partition("\n")
        next_line = next((line.rstrip() for line in after.split("\n") if line.strip()), "")
        return cls(line_prefix, line_suffix.rstrip("\r"), next_line, head.lstrip()[:1])


@dataclass(frozen=True)
class Processed:
    text: str  # what to insert at the cursor
    replace: int  # characters after the cursor (auto-closed ones) that ``text`` replaces


# 1. Single or multi-line ------------------------------------------------------------------------
def completion_kind(around: Surroundings) -> Kind:
    """Whether an automatic request in the middle of a word runs at all is ``lsp/trigger.py``'s
    rule; a suggestion the user asks for there is a single line."""
    return SINGLE if around.line_suffix.strip() else MULTI


# 2. Post-processing -----------------------------------------------------------------------------
def postprocess(raw: str, around: Surroundings, kind: Kind) -> Processed | None:
    """The text to show for the model's ``raw`` continuation, or None when nothing is worth it."""
    text = _cut_restart(raw.replace("\r\n", "\n"), around.line_prefix)
    if kind == MULTI and _repeats_next_line(text, around):
        return None
    if kind == SINGLE:
        text = text[:_line_end(text)]
    else:
        cut = scope_end(text, around, partial_last_line=True)
        if cut is not None:
            text = text[:cut]
    rest = around.line_suffix.strip()
    replace = 0
    if rest and all(ch in AUTO_CLOSED for ch in rest):
        text, replace = _replace_auto_closed(text, around)
    elif rest:
        text = _cut_line_overlap(text, rest)
        text = _cut_unbalanced(text, around)
    text = text.rstrip()
    if not text.strip() or text == around.line_suffix[:replace]:
        return None  # nothing, or only the characters already after the cursor
    return Processed(text, replace)


def _repeats_next_line(text: str, around: Surroundings) -> bool:
    """The cursor's line, completed by the first line of ``text``, is the file's next line of code
    again (the model skipped the line being written and wrote the one after it): nothing of it
    is worth showing."""
    first = text.split("\n", 1)[0]
    code = around.next_line.strip()
    return bool(first.strip()) and (around.line_prefix + first).strip() == code and _substantial(code)


def _line_end(text: str) -> int | None:
    """Where a single-line completion ends: its first line break (None: not yet). The one place
    of that rule; the engine has no newline rule of its own."""
    at = text.find("\n")
    return None if at < 0 else at


def scope_end(text: str, around: Surroundings, partial_last_line: bool = False) -> int | None:
    """Where a multi-line completion leaves the cursor's scope: the start of the first line that
    dedents below the cursor's block or repeats the next line of the file, or the position of a
    closing bracket that the text after the cursor already holds. None when it has not left it.
    The last line counts only when ``partial_last_line`` (it may be unfinished)."""
    closer = _first_unmatched_closer(text, _string_state(around.line_prefix))
    if closer is not None and text[closer] != around.next_char:
        closer = None
    block = _block_indent(around.line_prefix)
    next_line = around.next_line
    lines = text.split("\n")
    start = len(lines[0]) + 1
    for number, line in enumerate(lines[1:], start=1):
        if closer is not None and closer < start:
            break  # the closer comes first: "beta)" before a dedented "print(result)"
        last = number == len(lines) - 1
        stripped = line.strip()
        if stripped:
            if _indent(line) < block:
                return _line_start(text, start)
            # the same line, indentation included: a "}" closing the completion's own block is
            # not the file's "}" one level out; a line of code is the same at any indentation
            # (Qwen2.5-Coder writes the file's next lines again one level deeper)
            if _repeats(line, next_line) and (not last or partial_last_line):
                return _line_start(text, start)
        start += len(line) + 1
    return closer


def _repeats(line: str, next_line: str) -> bool:
    """``line`` of the completion is the file's next line again: the same text, and, for a line
    that only closes (``}``, ``) {``, ``]``), the same indentation too."""
    if line.rstrip() == next_line:
        return True
    code = next_line.strip()
    return line.strip() == code and _substantial(code)


def _substantial(code: str) -> bool:
    """A line of code worth calling a repetition at any indentation: a few characters with a
    letter or digit, not a closer and what follows it."""
    return len(code) >= MIN_REPEAT_CHARS and code[0] not in CLOSERS and any(ch.isalnum() for ch in code)


def _line_start(text: str, start: int) -> int:
    """Cut before the line break that precedes the line at ``start``."""
    return max(start - 1, 0)


def _block_indent(line_prefix: str) -> int:
    """The least indentation a line of the completion may have and stay in the cursor's block."""
    if not line_prefix.strip():
        return _width(line_prefix)  # the cursor stands at the block's indentation
    base = _indent(line_prefix)
    return base + 1 if line_prefix.rstrip().endswith(BLOCK_OPENERS) else base


def _indent(line: str) -> int:
    return _width(line[: len(line) - len(line.lstrip(" \t"))])


def _width(whitespace: str) -> int:
    return len(whitespace.expandtabs(4))


def _cut_restart(text: str, line_prefix: str) -> str:
    """Drop the head of the completion that writes again what the cursor's line already holds
    before the cursor: the model starting over from a token or a word before the cursor
    (``#inclu`` → ``#include <vector>``, ``or n`` → ``not (``), as Qwen2.5-Coder does mid-word,
    most of all with other files' code in the prompt (bench/quality.py, issue 11 item 7). The
    longest such overlap counts when it is at least ``MIN_OVERLAP`` characters or the whole word
    the cursor ends (a shorter one is as likely a doubled letter: ``cal`` → ``l()``).

    On a line of only indentation (the cursor where an editor leaves it after Enter, and where
    ``bench/quality.py`` puts it for a block hole) the model writes that indentation again, and
    the suggestion would show it doubled: a head equal to the whole indentation is dropped."""
    if line_prefix and not line_prefix.strip(" \t"):
        return text[len(line_prefix):] if text.startswith(line_prefix) else text
    code = line_prefix.lstrip(" \t")
    word = len(code) - len(code.rstrip(WORD_CHARS))
    for size in range(len(code), 0, -1):
        if (size >= MIN_OVERLAP or size == word) and text.startswith(code[-size:]):
            return text[size:]
    return text


def _cut_line_overlap(text: str, rest: str) -> str:
    """Stop where the completion starts repeating the rest of the line: the whole rest inside the
    completion, or the completion's tail equal to the rest's head."""
    at = text.find(rest)
    if at >= 0:
        return text[:at]
    for size in range(min(len(text), len(rest)), MIN_OVERLAP - 1, -1):
        if text.endswith(rest[:size]):
            return text[: len(text) - size]
    return text


def _cut_unbalanced(text: str, around: Surroundings) -> str:
    """Drop everything from a closing bracket that closes something opened before the cursor
    while the line still has text after the cursor: that text holds the real closer."""
    closer = _first_unmatched_closer(text, _string_state(around.line_prefix))
    return text if closer is None else text[:closer]


def _replace_auto_closed(text: str, around: Surroundings) -> tuple[str, int]:
    """When the rest of the line is only auto-closed characters (``)``, ``"]``, …): the
    completion's own closers for brackets and strings opened before the cursor replace them, in
    order; the completion ends once it has closed them all; a closer that does not match the
    next one is dropped with what follows. Returns (text, characters replaced)."""
    expected = around.line_suffix.rstrip()
    lead = len(expected) - len(expected.lstrip())
    expected = expected.strip()
    matched = 0
    for at, ch, kind in _scan(text, _string_state(around.line_prefix)):
        if kind != "unmatched":
            continue
        if matched < len(expected) and ch == expected[matched]:
            matched += 1
            if matched == len(expected):
                return text[: at + 1], lead + len(expected)
            continue
        return text[:at], 0 if matched == 0 else lead + matched
    if matched:
        return text, lead + matched
    return text, 0


def _characters(text: str, quote: str | None = None) -> Iterator[tuple[int, str, str]]:
    """Each character of ``text`` with its role: ``code``, ``opens`` (a quote that starts a
    string), ``string`` (inside one) or ``closes`` (the quote that ends it); ``quote`` is a string
    already open where ``text`` starts. The one quote tracker of this module (a heuristic: escapes
    are honoured, comments and triple quotes are not parsed)."""
    escaped = False
    for at, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
                yield at, ch, "closes"
                continue
            yield at, ch, "string"
        elif ch in QUOTES:
            quote = ch
            yield at, ch, "opens"
        else:
            yield at, ch, "code"


def _string_state(line_prefix: str) -> str | None:
    """The quote of a string left open on the line before the cursor."""
    quote = None
    for _, ch, role in _characters(line_prefix):
        if role == "opens":
            quote = ch
        elif role == "closes":
            quote = None
    return quote


def _scan(text: str, open_quote: str | None) -> Iterator[tuple[int, str, str]]:
    """Yield (index, char, kind) for the brackets and closing quotes of ``text``: kind
    ``unmatched`` for a closer of something opened before the cursor (including the quote of a
    string open at the cursor), ``inner`` for the rest."""
    stack: list[str] = []
    inherited = open_quote is not None  # the string open at the cursor began before it
    for at, ch, role in _characters(text, open_quote):
        if role == "closes":
            yield at, ch, "unmatched" if inherited else "inner"
            inherited = False
        elif role != "code":
            continue
        elif ch in OPENERS:
            stack.append(ch)
        elif ch in CLOSERS:
            if stack and stack[-1] == CLOSERS[ch]:
                stack.pop()
                yield at, ch, "inner"
            else:
                yield at, ch, "unmatched"


def _first_unmatched_closer(text: str, open_quote: str | None) -> int | None:
    for at, ch, kind in _scan(text, open_quote):
        if kind == "unmatched" and ch in CLOSERS:
            return at
    return None


# 3. Stopping early ------------------------------------------------------------------------------
def should_stop(text: str, around: Surroundings, kind: Kind) -> bool:
    """True when the partial completion ``text`` is already decided, so the model can stop."""
    if kind == SINGLE:
        return _line_end(text) is not None
    return scope_end(text, around, partial_last_line=False) is not None
