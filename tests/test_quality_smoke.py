"""bench/quality.py: its holes, its scores, its llama.vim rules, and a smoke run of the real server.

The hole cutter and the scores are pure functions, checked on real files of this checkout and of
pygls and on small golden cases; the smoke run asks the real server (default model) over LSP for
four holes, as CI does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import quality_holes as qh  # noqa: E402
from quality_llamavim import indent_stop, local_context, render  # noqa: E402
from quality_score import Outcome, repeats_suffix, score, summarize  # noqa: E402
from quality_replay import replay  # noqa: E402


def _sources() -> list[qh.Source]:
    return qh.python_sources(("pygls",)) + qh.c_sources()


def _hole(text: str, line: int, column: int, truth: str, kind: str = "line", language: str = "python") -> qh.Hole:
    """A hole in ``text`` whose cursor is at ``line``:``column`` (the truth already removed)."""
    lines = text.split("\n")
    prefix = "".join(l + "\n" for l in lines[:line]) + lines[line][:column]
    suffix = lines[line][column:] + "".join("\n" + l for l in lines[line + 1:])
    return qh.Hole(language, kind, "golden", Path("golden.py"), "golden.py", line, column, prefix, suffix, truth)


# Holes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("language", ["python", "cpp", "c"])
@pytest.mark.parametrize("kind", qh.KINDS)
def test_holes_are_reproducible_and_cut_from_the_real_file(language, kind):
    sources = _sources()
    holes = qh.sample(sources, language, kind, 6, seed=3)
    assert len(holes) == 6
    assert [h.name for h in qh.sample(sources, language, kind, 6, seed=3)] == [h.name for h in holes]
    assert [h.name for h in qh.sample(sources, language, kind, 6, seed=4)] != [h.name for h in holes]
    for hole in holes:
        original = hole.path.read_text(encoding="utf-8")
        assert original.startswith(hole.prefix + hole.truth) and original.endswith(hole.suffix)
        assert not original[len(hole.prefix) + len(hole.truth):len(original) - len(hole.suffix)].strip()
        assert any(ch.isalnum() for ch in hole.truth)
        assert hole.text.split("\n")[hole.line][:hole.column] == hole.line_prefix
        if kind == "line":
            assert "\n" not in hole.truth and not hole.suffix.split("\n", 1)[0]
        else:
            assert qh.MIN_BLOCK_LINES <= hole.truth.count("\n") + 1 <= qh.MAX_BLOCK_LINES
            assert not hole.line_prefix.strip()


def test_trivial_holes_are_skipped(tmp_path):
    source = tmp_path / "golden.py"
    source.write_text('def f(x):\n    """Docstring line one.\n\n    More prose.\n    """\n    # a comment\n'
                      '    y = call(\n        x,\n    )\n    return y\n\n\nclass Empty:\n    pass\n    ...\n')
    found = qh.candidates(source, "python", seed=0, name="pkg/golden.py")
    lines = {c.start for c in found if c.kind == "line"}
    assert lines == {0, 6, 7, 9, 12, 13}  # not the docstring (1-4), the comment (5), the lone ")" (8), "..." (14)
    blocks = {(c.start, c.end) for c in found if c.kind == "block"}
    assert (6, 9) in blocks  # f's body after its docstring and comment
    assert (6, 8) in blocks  # the call spread over three lines
    assert not any(start >= 13 for start, _ in blocks)  # a body of only pass / ... is not a hole
    elsewhere = tmp_path / "another checkout" / "golden.py"
    elsewhere.parent.mkdir()
    elsewhere.write_text(source.read_text())
    assert qh.candidates(elsewhere, "python", seed=0, name="pkg/golden.py") == found  # the same columns anywhere


def test_c_holes_skip_comments_and_strings(tmp_path):
    source = tmp_path / "golden.c"
    source.write_text('/* a block\n   comment { */\nint f(int x) {\n  const char* s = "{ not a brace";\n'
                      '  // only a comment\n  return x + 1;\n}\n')
    found = qh.candidates(source, "c", seed=0, name="golden.c")
    assert {c.start for c in found if c.kind == "line"} == {2, 3, 5}
    assert [(c.start, c.end) for c in found if c.kind == "block"] == [(3, 5)]


# Scores -----------------------------------------------------------------------------------------
def test_scores_of_a_line_hole():
    hole = _hole("def f(x):\n    y = \n    return y\n", 1, 8, "x + 1")
    assert score(Outcome(hole, "x + 1", 5.0)).exact
    wrong = score(Outcome(hole, "x - 1\n    return y", 5.0))
    assert not wrong.exact and wrong.repeats_suffix and 0 < wrong.es_all < wrong.es_line < 1
    assert score(Outcome(hole, "  \n", 5.0)).empty
    summary = summarize([Outcome(hole, "x + 1", 10.0), Outcome(hole, "", 30.0), Outcome(hole, "", 0.0, "timeout")])
    assert (summary.holes, summary.errors, summary.p50_ms, summary.p95_ms) == (3, 1, 10.0, 30.0)
    assert summary.exact == pytest.approx(1 / 3) and summary.repeats == 0.0


def test_repeating_a_line_the_author_also_wrote_is_no_repeat():
    hole = _hole("a = 1\nfoo(a)\nfoo(a)\n", 1, 0, "foo(a)")
    assert not repeats_suffix(hole, "foo(a)\nfoo(a)")
    closer = _hole("f(\n    x,\n)\n", 1, 4, "x,")
    assert not repeats_suffix(closer, "x,\n)")  # a lone closer is not substantial


# Runs in parts ----------------------------------------------------------------------------------
def test_merged_parts_pair_the_rows_hole_by_hole(tmp_path):
    """Rows run in separate invocations: each row's table on its own holes, and the pairs against
    the base row name the holes where exactly one of the two was exact (a rerun's answer wins)."""
    from quality import detail
    from quality_merge import load, pairs, tables

    a, b = _hole("x = \n", 0, 4, "compute()"), _hole("y = \n", 0, 4, "other()")
    b = qh.Hole(b.language, b.kind, b.package, b.path, "other.py", b.line, b.column, b.prefix, b.suffix, b.truth)
    first, second = tmp_path / "bare.jsonl", tmp_path / "default.jsonl"
    first.write_text(detail("bare", Outcome(a, "compute()", 1.0)) + detail("bare", Outcome(b, "wrong()", 1.0)))
    second.write_text(detail("default", Outcome(a, "wrong()", 1.0)) + detail("default", Outcome(b, "other()", 1.0))
                      + detail("default", Outcome(a, "compute()\n", 2.0)))  # the rerun of hole a
    rows = load([first, second])
    table = "\n".join(tables(rows, ["default", "bare"]))
    assert "| default | 2 | 100.0 % |" in table and "| bare | 2 | 50.0 % |" in table
    paired = "\n".join(pairs(rows, ["default", "bare"], "default"))
    assert "| line | bare | 2 | 2 | 1 | 1 | 0 |" in paired
    assert "only default: other.py:1:4; only bare: –" in paired


# The real server --------------------------------------------------------------------------------
@pytest.mark.slow
def test_smoke_run_asks_the_real_server(tmp_path):
    """``--smoke`` (four holes, short answers) through the default row and the bare one, both
    without other files' code (``contextTokens: 0``) and token healing (tested in
    test_token_healing.py); about a minute on an idle machine. The bare
    row (``postprocess: false``) then gets the same greedy prompt, so each default answer is the
    bare answer post-processed (what bench/quality_replay.py relies on to tune post-processing
    offline)."""
    report, details = tmp_path / "quality.md", tmp_path / "details.jsonl"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--smoke", "--systems", "default,bare",
                          "--option", "contextTokens=0", "--option", "tokenHealing=false",
                          "--output", str(report), "--details", str(details)],
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    text = report.read_text()
    for table in ("python, line", "python, block", "cpp, line", "cpp, block"):
        section = text.split(f"## {table} holes (1)", 1)[1].split("##", 1)[0]
        assert "| default | " in section and "| bare | " in section
    answers = [json.loads(line) for line in details.read_text().splitlines()]
    assert len(answers) == 8 and all(a["error"] is None and a["latency_ms"] > 0 for a in answers)
    default = {a["hole"]: a["answer"] for a in answers if a["row"] == "default"}
    bare = {a["hole"]: a for a in answers if a["row"] == "bare"}
    assert default.keys() == bare.keys() and any(text.strip() for text in default.values())
    for hole, text in default.items():
        raw = bare[hole]
        assert text.rstrip() in raw["answer"], (hole, text, raw["answer"])  # a head written again is dropped
        assert replay(raw["answer"], raw["line_prefix"], raw["suffix_head"]) == text, (hole, text, raw["answer"])
