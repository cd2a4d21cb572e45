"""Context from other places: llama.vim's similarity and its two thresholds, which places become
chunks, the ring's order and size, that only the editor's text is used, and that the snippets stay
the same from keystroke to keystroke, so that the prompt's head is reused from the KV cache."""

from __future__ import annotations

import builtins
import os
import pathlib

import pytest
from byte_vocab import byte_tokenizer

from wizardcoder_tpu.inference.context import (CHUNK_LINES, ContextStore, RepoContext, cursor_window, display_path,
                                               line_range, repository_name, similarity, words)
from wizardcoder_tpu.inference.prompt import build_prompt

ROOT = "file:///home/dev/shop"
UTILS, MODELS, MAIN = f"{ROOT}/shop/utils.py", f"{ROOT}/shop/models.py", f"{ROOT}/main.py"


def numbered(name: str, count: int) -> str:
    """``count`` lines of code that share no word with each other or with another ``name``'s."""
    return "".join(f"{name}_{n} = {name}_{n}_value\n" for n in range(count))


UTILS_TEXT = ("import math\n\n\ndef area(radius):\n    return math.pi * radius ** 2\n\n\n"
              "def perimeter(radius):\n    return 2 * math.pi * radius\n\n\n" + numbered("helper", 60))
MODELS_TEXT = ("from dataclasses import dataclass\n\n\n@dataclass\nclass Order:\n    item: str\n    quantity: int\n"
               "    price: float\n\n    def total(self):\n        return self.quantity * self.price\n\n\n"
               + numbered("model", 40))
MAIN_TEXT = ("from shop.models import Order\nfrom shop.utils import area\n\n\ndef main():\n"
             "    order = Order('rug', 2, 30.0)\n    print(order.total())\n\n\n" + numbered("step", 60))


# llama.vim's similarity -----------------------------------------------------------------------
def test_similarity_is_llama_vims_chunk_sim():
    assert words("self.items.append(item)  # add") == ["self", "items", "append", "item", "add"]
    assert similarity(["a", "b", "c"], ["a", "b", "c"]) == 1.0
    assert similarity(["a", "b"], ["x", "y"]) == 0.0
    assert similarity([], []) == 1.0 and similarity(["a"], []) == 0.0
    # the new text's words found among the held one's, repeats counted: 2 * 2 / (3 + 3)
    assert similarity(["a", "b", "c"], ["a", "a", "d"]) == pytest.approx(2 / 3)
    # not symmetric, as in llama.vim: the held chunk gives the vocabulary
    assert similarity(["a", "a", "d"], ["a", "b", "c"]) == pytest.approx(1 / 3)


def test_lines_windows_and_paths():
    assert line_range("a\r\nb\rc\nd", 1, 3) == ["b\n", "c\n"]  # LSP's three line breaks
    assert line_range("a\nb\nlast", 1, 10) == ["b\n", "last\n"]  # the last line has no break
    assert line_range("a\nb\n", 2, 10) == [] and line_range("", 0, 5) == []
    assert cursor_window("x\ny\nz\n    return ", "a + b\nq\nr\n", 2) == "z\n    return a + b\nq"
    assert cursor_window("return ", "", 3) == "return "
    assert display_path(f"{ROOT}/src/a%20b.py", ROOT) == "src/a b.py"
    assert display_path("file:///elsewhere/x.py", ROOT) == "x.py" and display_path(UTILS, None) == "utils.py"
    assert repository_name(ROOT) == "shop" and repository_name(None) == "project"


# Which places become chunks -------------------------------------------------------------------
def lines_of(text: str, first: int, count: int = CHUNK_LINES) -> str:
    return "".join(text.splitlines(keepends=True)[first:first + count])


def test_an_opened_document_gives_its_head():
    store = ContextStore(ROOT)
    store.opened(UTILS, UTILS_TEXT)
    store.opened("file:///home/dev/shop/tiny.py", "x = 1\n\n")  # fewer than 3 lines of code: nothing
    store.opened("file:///home/dev/shop/blob.bin", "\x00\x01\x02\n" * 20)  # binary: nothing
    [chunk] = store.chunks
    assert (chunk.uri, chunk.first_line, chunk.snippet.path) == (UTILS, 0, "shop/utils.py")
    assert chunk.snippet.text == lines_of(UTILS_TEXT, 0)


def test_a_place_left_becomes_a_chunk_a_place_kept_does_not():
    store = ContextStore(ROOT)
    for line in (30, 31, 35, 40):  # typing and small moves: no chunk
        store.changed(UTILS, UTILS_TEXT, line)
        store.visited(UTILS, UTILS_TEXT, line)
    store.changed(UTILS, UTILS_TEXT, None)  # a whole-text change says nothing about the place
    assert store.chunks == ()
    store.changed(UTILS, UTILS_TEXT, 60)  # a jump of more than CHUNK_LINES: the place left, centred
    [left] = store.chunks
    assert left.first_line == 40 - CHUNK_LINES // 2 and left.snippet.text == lines_of(UTILS_TEXT, 32)
    store.visited(MAIN, MAIN_TEXT, 30)  # to another document: the place left there
    assert [c.first_line for c in store.chunks] == [32, 60 - CHUNK_LINES // 2]
    assert store.chunks[-1].snippet.text == lines_of(UTILS_TEXT, 52)


def test_save_and_close_pick_the_last_place_and_closed_chunks_stay():
    store = ContextStore(ROOT)
    store.changed(MODELS, MODELS_TEXT, 30)
    store.saved(MODELS, MODELS_TEXT)
    assert [(c.uri, c.first_line) for c in store.chunks] == [(MODELS, 22)]
    edited = MODELS_TEXT.replace("model_10 = model_10_value", "model_10 = None")  # line 23
    store.changed(MODELS, edited, 25)
    store.closed(MODELS)  # didClose carries no text: the last one the editor sent is used
    assert store.chunks[-1].snippet.text == lines_of(edited, 17)
    store.visited(MAIN, MAIN_TEXT, 40)  # the closed document's place is forgotten: no new chunk
    assert [c.uri for c in store.chunks] == [MODELS, MODELS] and store.chunks[-1].first_line == 17


def test_a_near_duplicate_replaces_the_chunk_it_repeats_an_exact_one_is_ignored():
    store = ContextStore(ROOT)
    store.opened(UTILS, UTILS_TEXT)
    store.opened(MODELS, MODELS_TEXT)
    store.opened(UTILS, UTILS_TEXT)  # the same text again: nothing moves
    assert [c.uri for c in store.chunks] == [UTILS, MODELS] and store.evicted == 0
    edited = UTILS_TEXT.replace("return 2 * math.pi * radius", "return 2 * math.pi * r")
    assert similarity(store.chunks[0].words, words(lines_of(edited, 0))) > 0.9
    store.changed(UTILS, edited, 8)
    store.saved(UTILS, edited)  # the lines around line 8: the head again, one word changed
    assert [c.uri for c in store.chunks] == [MODELS, UTILS] and store.evicted == 1
    assert store.chunks[-1].snippet.text == lines_of(edited, 0)


def test_the_ring_keeps_the_newest_chunks():
    store = ContextStore(ROOT, max_chunks=3)
    uris = [f"{ROOT}/m{n}.py" for n in range(5)]
    for n, uri in enumerate(uris):
        store.opened(uri, numbered(f"module{n}", 20))
    assert [c.uri for c in store.chunks] == uris[2:]
    assert ContextStore(ROOT, max_chunks=0).chunks == ()


def test_chunks_like_the_text_around_the_cursor_are_evicted_for_good():
    store = ContextStore(ROOT)
    store.opened(UTILS, UTILS_TEXT)
    copy = f"{ROOT}/copy.py"
    store.opened(copy, MAIN_TEXT[MAIN_TEXT.index("step_20"):])  # the lines the user is about to edit, copied
    cursor = MAIN_TEXT.index("step_28")
    context = store.context(MAIN_TEXT[:cursor], MAIN_TEXT[cursor:])
    assert [s.path for s in context.snippets] == ["shop/utils.py"] and store.evicted == 1
    assert context.name == "shop"
    elsewhere = store.context("import os\n", "\n")
    assert [s.path for s in elsewhere.snippets] == ["shop/utils.py"]  # it does not come back


def test_only_the_editors_text_is_used_never_the_disk(tmp_path, monkeypatch):
    on_disk = tmp_path / "secret.py"
    on_disk.write_text("ON_DISK = 1\n" * 20)
    uri = on_disk.as_uri()

    def no_disk(*args, **kwargs):
        raise AssertionError(f"the context store read from disk: {args!r}")

    for target, name in ((builtins, "open"), (os, "open"), (pathlib.Path, "read_text"), (pathlib.Path, "read_bytes")):
        monkeypatch.setattr(target, name, no_disk)
    store = ContextStore(tmp_path.as_uri())
    store.closed(uri)  # never opened: nothing to pick, and nothing read
    store.saved(uri, "")
    assert store.chunks == ()
    store.opened(uri, "IN_EDITOR = 2\n" * 20)
    store.changed(uri, "IN_EDITOR = 3\n" * 20, 2)
    store.closed(uri)  # the last text the editor sent
    assert [c.snippet.text for c in store.chunks] == ["IN_EDITOR = 2\n" * 16, "IN_EDITOR = 3\n" * 16]
    assert store.context("import os\n", "") == RepoContext(tmp_path.name, tuple(c.snippet for c in store.chunks))


# Stable across keystrokes ---------------------------------------------------------------------
def session() -> tuple[ContextStore, str]:
    """Three files opened, an edit in utils.py, then the user in main.py at line 40."""
    store = ContextStore(ROOT)
    for uri, text in ((UTILS, UTILS_TEXT), (MODELS, MODELS_TEXT), (MAIN, MAIN_TEXT)):
        store.opened(uri, text)
    store.changed(UTILS, UTILS_TEXT, 40)
    store.visited(MAIN, MAIN_TEXT, 40)
    return store, MAIN_TEXT


def typing(text: str, line: int, typed: str):
    """(document text, prefix, suffix) after each character of ``typed`` at the start of ``line``."""
    start = sum(len(x) for x in text.splitlines(keepends=True)[:line])
    for count in range(1, len(typed) + 1):
        new = text[:start] + typed[:count] + text[start:]
        yield new, new[:start + count], new[start + count:]


def test_snippets_and_the_prompts_head_stay_the_same_while_typing():
    store, text = session()
    tokenizer = byte_tokenizer()
    heads, contexts = set(), set()
    for document, prefix, suffix in typing(text, 40, "    total = order.total() + area(2.0)\n"):
        line = prefix.count("\n")
        store.changed(MAIN, document, line)
        store.visited(MAIN, document, line)
        context = store.context(prefix, suffix)
        prompt = build_prompt(prefix, suffix, tokenizer, "fim", 256, store.path(MAIN), "python", context, 512)
        contexts.add(context)
        heads.add(tuple(prompt.ids[:prompt.context_tokens]))
    assert len(contexts) == 1 and len(heads) == 1 and store.evicted == 0
    [context] = contexts
    assert [s.path for s in context.snippets] == ["shop/utils.py", "shop/models.py", "main.py", "shop/utils.py"]
    [head] = heads
    assert 0 < len(head) <= 512


def test_a_new_chunk_goes_at_the_end_so_the_head_before_it_is_kept():
    store, text = session()
    tokenizer = byte_tokenizer()
    cursor = text.index("step_31")
    before = build_prompt(text[:cursor], text[cursor:], tokenizer, "fim", 256, "main.py", "python",
                          store.context(text[:cursor], text[cursor:]), 4096)
    store.visited(MAIN, text, 62)  # a jump: the place left at line 40 becomes a chunk
    cursor = text.index("step_53")
    after = build_prompt(text[:cursor], text[cursor:], tokenizer, "fim", 256, "main.py", "python",
                         store.context(text[:cursor], text[cursor:]), 4096)
    assert before.context_snippets == 4 and store.evicted == 0
    assert after.context_snippets == before.context_snippets + 1
    current_header = 1 + len(b"main.py\n")  # <|file_sep|>main.py\n closes the head
    kept = before.context_tokens - current_header
    assert after.ids[:kept] == before.ids[:kept]


def test_the_engine_reuses_the_head_from_its_kv_cache(tiny_model_factory):
    """On the real CPU backend (a tiny random Llama; the byte vocabulary's 265 ids fit its 512):
    each keystroke's prompt feeds only what follows the unchanged head and prefix."""
    from wizardcoder_tpu.inference.backends.cpu import CPUBackend
    from wizardcoder_tpu.inference.engine import Engine, GenerationParams
    from wizardcoder_tpu.inference.weights import open_checkpoint

    engine = Engine(CPUBackend(open_checkpoint(tiny_model_factory("llama_gqa"))), byte_tokenizer())
    store, text = session()
    params = GenerationParams(max_new_tokens=2)
    reused = []
    head = 0
    for document, prefix, suffix in list(typing(text, 40, "    total = ord"))[-3:]:
        store.changed(MAIN, document, prefix.count("\n"))
        prompt = build_prompt(prefix, suffix, engine.tokenizer, "fim", 256, "main.py", "python",
                              store.context(prefix, suffix), 600)
        assert len(prompt.ids) + params.max_new_tokens <= engine.max_context
        generation = engine.generate(prompt.ids, params)
        reused.append(generation.reused_tokens)
        head = prompt.context_tokens
    assert head > 100 and all(count > head for count in reused[1:])
