"""Post-processing as pure functions: from the model's raw continuation at a cursor to the text an
editor shows. Real cursors in Python, JavaScript and C; the raw texts are what a model writes
there (including the ways it overshoots: past the line, into the next function, repeating the
code after the cursor, doubling auto-closed characters)."""

from __future__ import annotations

import pytest

from wizardcoder_tpu.inference.postprocess import (MULTI, SINGLE, Processed, Surroundings, completion_kind,
                                                   postprocess, should_stop)


def complete(prefix: str, suffix: str, raw: str) -> tuple[str | None, Processed | None]:
    around = Surroundings.of(prefix, suffix)
    kind = completion_kind(around)
    return kind, (postprocess(raw, around, kind) if kind else None)


def shown(prefix: str, suffix: str, raw: str) -> str | None:
    """The document's text after accepting the completion (None when there is none)."""
    _, result = complete(prefix, suffix, raw)
    if result is None:
        return None
    return prefix + result.text + suffix[result.replace:]


# 1. Single or multi-line: the rest of the cursor's line decides ----------------------------------
@pytest.mark.parametrize("prefix, suffix, kind", [
    ("def area(r):\n    return ", "\n", MULTI),  # end of line (Python)
    ("def area(r):\n    return ", "   \n\ndef main():\n", MULTI),  # only spaces after the cursor
    ("int main() {\n    return ", "", MULTI),  # end of file (C)
    ("print(", ")\n", SINGLE),  # auto-closed bracket after the cursor
    ("    for (int i = 0; ", ") {\n", SINGLE),  # C: the loop header goes on after the cursor
    ("const ids = items.map(", ");\n", SINGLE),  # JS
    ("x ", "= 1\n", SINGLE),
    ("total = comp", "ute(x)\n", SINGLE),  # inside a word: only when asked for (lsp/trigger.py)
    ("let valu", "e = 1;", SINGLE),
])
def test_the_rest_of_the_line_decides_single_or_multi_line(prefix, suffix, kind):
    assert completion_kind(Surroundings.of(prefix, suffix)) == kind


# 2. Single-line ----------------------------------------------------------------------------------
def test_single_line_stops_at_the_newline():
    kind, result = complete("print(", ")\n", "'hello')\nprint('world')\n")
    assert kind == SINGLE
    assert result == Processed("'hello')", 1)  # and its ")" replaces the auto-closed one


def test_single_line_crlf_raw_text():
    assert complete("print(", ")\r\n", "x)\r\ny = 2")[1] == Processed("x)", 1)


@pytest.mark.parametrize("prefix, suffix, raw, expected", [
    # JS: the whole rest of the line repeated inside the completion
    ("const ids = items.map(", ");\n", "item => item.id);\n", "const ids = items.map(item => item.id);\n"),
    # C: the loop header's ") {" is already there
    ("    for (int i = 0; ", ") {\n", "i < n; i++) {\n", "    for (int i = 0; i < n; i++) {\n"),
    # C: nested parentheses of the completion are kept, the file's ") {" is not repeated
    ("    if (", ") {\n", "n > 0 && valid(n)) {", "    if (n > 0 && valid(n)) {\n"),
    # C: printf's arguments
    ("    printf(", ");\n", '"%d\\n", total);', '    printf("%d\\n", total);\n'),
    # Python: the completion ends with the beginning of the rest of the line
    ("total = add(", ") + offset\n", "a, b) +", "total = add(a, b) + offset\n"),
    # Python: an argument before an existing one
    ("plot(", ", color='red')\n", "xs, ys, color='red')", "plot(xs, ys, color='red')\n"),
])
def test_single_line_stops_where_it_repeats_the_text_after_the_cursor(prefix, suffix, raw, expected):
    assert shown(prefix, suffix, raw) == expected


def test_single_line_drops_a_closer_of_something_opened_before_the_cursor():
    # C: the model closes the condition itself; the file's ")" is the real closer
    assert complete("    if (x > ", ") {\n", "0 && y)")[1] == Processed("0 && y", 0)
    assert shown("    if (x > ", ") {\n", "0 && y)") == "    if (x > 0 && y) {\n"


# Auto-closed characters after the cursor are replaced, not doubled ------------------------------
@pytest.mark.parametrize("raw, expected, replace", [
    ('world!")\n', 'world!")', 2),  # closes the string and the call: both replaced
    ('world!"', 'world!"', 1),  # closes the string only: the ")" stays
    ("world!", "world!", 0),  # closes nothing: both stay
    ('world!") + name', 'world!")', 2),  # nothing after the last auto-closed character
])
def test_auto_closed_characters_are_replaced(raw, expected, replace):
    prefix, suffix = 'def greet(name):\n    print("Hello, ', '")\n'
    assert complete(prefix, suffix, raw)[1] == Processed(expected, replace)
    assert shown(prefix, suffix, raw) == prefix + 'world!")\n'


def test_auto_closed_bracket_in_python_dict_and_js_call():
    assert complete('config = {"name": ', "}\n", '"demo", "debug": True}\n')[1] == Processed(
        '"demo", "debug": True}', 1)
    assert shown("console.log(", ")", "`total: ${total}`)") == "console.log(`total: ${total}`)"


def test_a_closer_that_does_not_match_the_auto_closed_one_is_dropped():
    assert complete("values = sum(", ")\n", "x for x in xs]")[1] == Processed("x for x in xs", 0)


def test_only_the_auto_closed_characters_is_no_completion():
    assert complete("print(", ")\n", ")\n")[1] is None
    assert complete('print("', '")\n', '")')[1] is None


# 3. Multi-line -----------------------------------------------------------------------------------
def test_multi_line_stops_at_a_line_that_dedents_below_the_cursors_block_python():
    prefix = "def sign(x):\n    if x > 0:\n        return "
    raw = "1\n    elif x < 0:\n        return -1\n    return 0\n"
    assert complete(prefix, "\n", raw) == (MULTI, Processed("1", 0))
    # a body written after the block opener stays; the next function does not
    prefix = "def area(radius):\n"
    assert shown(prefix + "    ", "\n", "pi = 3.14159\n    return pi * radius ** 2\n\n\ndef main():\n    pass\n") == \
        prefix + "    pi = 3.14159\n    return pi * radius ** 2\n"


def test_multi_line_after_a_block_opener_js():
    prefix = "function total(items) {\n  let sum = 0;\n  for (const item of items) {"
    raw = "\n    sum += item.price;\n  }\n  return sum;\n}\n"
    assert complete(prefix, "\n", raw)[1] == Processed("\n    sum += item.price;", 0)  # "  }" leaves the loop


def test_multi_line_keeps_the_closer_of_its_own_block_c():
    """A "}" closing a block the completion opened is not the file's "}" one level out (a
    regression: it was taken for a repetition of the file's next line, leaving "{" unclosed)."""
    prefix, suffix = "int sum(int n) {\n    ", "\n}\n"
    raw = "int s = 0;\n    for (int i = 0; i < n; i++) {\n        s += i;\n    }\n    return s;\n}\n"
    result = complete(prefix, suffix, raw)[1]
    assert result == Processed("int s = 0;\n    for (int i = 0; i < n; i++) {\n        s += i;\n    }\n    return s;", 0)
    assert result.text.count("{") == result.text.count("}")
    js_prefix = "function f(a) {\n  "
    js = complete(js_prefix, "\n}\n", "if (a) {\n    return 1;\n  }\n  return 0;\n}\n")[1]
    assert js == Processed("if (a) {\n    return 1;\n  }\n  return 0;", 0)


def test_multi_line_stops_before_repeating_the_next_line_of_the_file():
    # C, the cursor at column 0 of a blank line in the body: the file's "}" comes next
    assert complete("int main(void) {\n", "\n}\n", "    return 0;\n}\n")[1] == Processed("    return 0;", 0)
    # Python: the model writes the function's existing last line again
    prefix, suffix = "def double(xs):\n    ", "\n    return out\n"
    raw = "out = [\n        x * 2\n        for x in xs\n    ]\n    return out\n"
    assert complete(prefix, suffix, raw)[1] == Processed("out = [\n        x * 2\n        for x in xs\n    ]", 0)


def test_multi_line_stops_before_the_next_lines_written_again_one_level_deeper():
    """Qwen2.5-Coder-0.5B on a parameter list (bench/quality.py, tokenizers'
    sentencepiece_unigram.py): the hole's line, then the file's next lines again, indented
    deeper."""
    prefix = "    def train(\n        self,\n        special_tokens: Optional[List[Un"
    suffix = "\n        initial_alphabet: Optional[List[str]] = None,\n        unk_token: Optional[str] = None,\n    ):\n"
    raw = ("ion[str, AddedToken]]] = None,\n            initial_alphabet: Optional[List[str]] = None,\n"
           "            unk_token: Optional[str] = None,\n        ):\n")
    assert complete(prefix, suffix, raw)[1] == Processed("ion[str, AddedToken]]] = None,", 0)


def test_a_completion_that_writes_the_next_line_instead_of_this_one_is_dropped():
    # numpy's test_extint128.py: the model skipped the line being written and wrote the next one
    prefix, suffix = "INT64_VALUES = (\n    [INT64_MIN + j for j in range(20)] +\n    ", "\n    [INT64_MID + j] +\n)\n"
    assert complete(prefix, suffix, "[INT64_MID + j] +\n)\n")[1] is None
    assert complete(prefix, suffix, "[INT64_MAX - j] +\n")[1] == Processed("[INT64_MAX - j] +", 0)
    # C: the same line of code at the cursor's indentation
    assert complete("int f() {\n  g();\n  ", "\n  h(1);\n}\n", "h(1);\n}\n")[1] is None


def test_multi_line_stops_before_a_closer_the_file_already_has():
    prefix, suffix = "result = compute(\n    ", "\n)\n"
    assert complete(prefix, suffix, "alpha,\n    beta)\nprint(result)\n")[1] == Processed("alpha,\n    beta", 0)


@pytest.mark.parametrize("prefix, raw, expected", [
    # what Qwen2.5-Coder-0.5B wrote on bench/quality.py's line holes with other files' code in
    # the prompt: it started the word, or the line, over
    ("#inclu", "#include <vector>\n", "de <vector>"),
    ("    if not isinstance(value, int) or n", "not (\n", "ot ("),
    ("    x = print(", "print(1)", "1)"),
    # a one-letter overlap that is not the whole word is as likely a doubled letter: kept
    ("x = cal", "l()", "l()"),
    ("namespace wc", "ct {", "ct {"),
    # nothing to repeat, or no overlap
    ("    ", "x = 1", "x = 1"),
    ("x = ", "compute()", "compute()"),
])
def test_a_head_that_writes_the_line_before_the_cursor_again_is_dropped(prefix, raw, expected):
    assert complete(prefix, "\n\nfoo()\n", raw)[1] == Processed(expected, 0)


@pytest.mark.parametrize("prefix, suffix, raw, expected", [
    # the cursor after the indentation of an empty line (Enter in an editor that indents; a block
    # hole of bench/quality.py): Qwen2.5-Coder writes the indentation again
    ("def double(xs):\n    ", "\n\nprint(double([1]))\n", "    out = [x * 2 for x in xs]\n    return out\n",
     "def double(xs):\n    out = [x * 2 for x in xs]\n    return out\n\nprint(double([1]))\n"),
    ("int sum(int n) {\n\t", "\n}\n", "\tint s = 0;\n\treturn s;\n}\n", "int sum(int n) {\n\tint s = 0;\n\treturn s;\n}\n"),
    # the later lines' indentation is the model's own: only the repeated head goes
    ("class A:\n    def f(self):\n        ", "\n", "        if self.x:\n            return 1\n        return 0\n",
     "class A:\n    def f(self):\n        if self.x:\n            return 1\n        return 0\n"),
])
def test_indentation_written_again_on_an_indented_empty_line_is_dropped(prefix, suffix, raw, expected):
    assert shown(prefix, suffix, raw) == expected


@pytest.mark.parametrize("raw", ["", "\n", "   \n\t\n  ", "\n\n\n"])
def test_empty_and_whitespace_only_results_are_dropped(raw):
    assert complete("def f():\n    return ", "\n", raw)[1] is None
    assert complete("print(", ")\n", raw)[1] is None


def test_trailing_whitespace_is_trimmed():
    assert complete("x = ", "\n", "compute()   \n\n")[1] == Processed("compute()", 0)


# should_stop: the same rules on a partial completion ---------------------------------------------
def test_should_stop_single_line_at_the_first_newline():
    around = Surroundings.of("print(", ")\n")
    assert not should_stop("'hel", around, SINGLE)
    assert not should_stop("'hello')", around, SINGLE)
    assert should_stop("'hello')\n", around, SINGLE)


def test_should_stop_multi_line():
    around = Surroundings.of("def sign(x):\n    if x > 0:\n        return ", "\n    return 0\n")
    assert not should_stop("1", around, MULTI)
    assert not should_stop("1\n        ", around, MULTI)  # indentation still being written
    assert not should_stop("1\n        print(x)", around, MULTI)  # inside the block
    assert should_stop("1\n    el", around, MULTI)  # a partial line already dedents: decided
    # a partial last line equal to the file's next line may still grow ("return 0.5"): not yet
    around = Surroundings.of("def double(xs):\n    ", "\n    return out\n")
    assert not should_stop("out = xs * 2\n    return out", around, MULTI)
    assert should_stop("out = xs * 2\n    return out\n", around, MULTI)
    around = Surroundings.of("result = compute(\n    ", "\n)\n")
    assert not should_stop("alpha,\n    beta", around, MULTI)
    assert should_stop("alpha,\n    beta)", around, MULTI)


CASES = [  # (prefix, suffix, raw) from the tests above, for the consistency check below
    ("print(", ")\n", "'hello')\nprint('world')\n"),
    ("def sign(x):\n    if x > 0:\n        return ", "\n", "1\n    elif x < 0:\n        return -1\n    return 0\n"),
    ("def area(radius):\n    ", "\n", "pi = 3.14159\n    return pi * radius ** 2\n\n\ndef main():\n    pass\n"),
    ("int sum(int n) {\n    ", "\n}\n", "int s = 0;\n    for (int i = 0; i < n; i++) {\n        s += i;\n    }\n    return s;\n}\n"),
    ("int main(void) {\n", "\n}\n", "    return 0;\n}\n"),
    ("def double(xs):\n    ", "\n    return out\n", "out = [\n        x * 2\n        for x in xs\n    ]\n    return out\n"),
    ("result = compute(\n    ", "\n)\n", "alpha,\n    beta)\nprint(result)\n"),
    ("function total(items) {\n  let sum = 0;\n  for (const item of items) {", "\n",
     "\n    sum += item.price;\n  }\n  return sum;\n}\n"),
    ("#inclu", "\n#include <string>\n", "#include <vector>\n#include <string>\n"),
    ("def double(xs):\n    ", "\n    return out\n", "    out = xs * 2\n    return out\n"),
    ("    f(\n        a: int = 0,\n        b: List[Un", "\n        c: str = '',\n    ):\n",
     "ion[int, str]] = None,\n            c: str = '',\n        ):\n"),
]


@pytest.mark.parametrize("prefix, suffix, raw", CASES)
def test_stopping_early_gives_the_same_result_as_running_on(prefix, suffix, raw):
    """The server stops the model as soon as ``should_stop`` says so: what it shows then must be
    what the whole raw text would have given."""
    around = Surroundings.of(prefix, suffix)
    kind = completion_kind(around)
    stops = [end for end in range(1, len(raw) + 1) if should_stop(raw[:end], around, kind)]
    assert stops, "the model would run to its token budget"
    assert postprocess(raw[:stops[0]], around, kind) == postprocess(raw, around, kind)
