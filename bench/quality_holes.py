"""Holes cut from real code on this machine, reproducibly: the test set of ``bench/quality.py``.

After RepoEval (line- and block-level holes in real repositories) and llm-ls' testbed (holes cut
at random positions of real files). Two kinds:

- ``line``: the rest of a line deleted from a random column; the cursor stays at that column
  with nothing after it on its line (the next lines stay).
- ``block``: a whole body or statement of 2 to ``max_block_lines`` lines deleted (Python: the
  body of a ``def``/``class``/``for``/``if``/``with``/``try``…, without its docstring, or one
  statement spanning several lines; C/C++: the lines between a ``{`` that ends a line and its
  ``}`` that starts one); the cursor stands after the first deleted line's indentation, on an
  otherwise empty line, as after pressing Enter in an editor that indents.

Sources: Python from the installed packages named in ``PYTHON_PACKAGES`` (never the standard
library: that stays an unseen set for later), C from the headers numpy installs, C++ from this
repository's ``csrc/``.

The trivial-hole rule (a hole is skipped, and never counted, when):

1. its line is blank, a comment, or inside a multi-line string (Python docstrings) or block
   comment (C);
2. the deleted text has no letter or digit (a lone closer such as ``)``, ``});``, ``]``);
3. the deleted text starts a comment (``# …``, ``// …``, ``/* …``);
4. its line is longer than ``MAX_LINE_CHARS`` (generated data, not code);
5. (blocks) it has fewer than two lines of code, or it is only ``pass`` / ``...``;
6. its file is larger than ``MAX_FILE_BYTES``, not UTF-8, or (Python) does not parse.

Sampling is seeded: for each language and kind, a package is drawn in turn, then a file of it,
then a candidate hole of that file, without replacement; the column of a line hole is drawn from
a generator seeded by the seed, the file's path within its package and the line. The same seed
on the same installed versions gives the same holes, from any checkout (the path was once the
absolute one, and a checkout elsewhere cut other columns).
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import io
import random
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON_PACKAGES = ("pygls", "lsprotocol", "tokenizers", "numpy", "onnx")
LANGUAGES = ("python", "c", "cpp")
KINDS = ("line", "block")
MAX_FILE_BYTES = 512 * 1024
MAX_LINE_CHARS = 300
MIN_BLOCK_LINES = 2
MAX_BLOCK_LINES = 10

CLOSERS_AND_PUNCTUATION = set(")]}>;:,.'\"` \t\\")


@dataclass(frozen=True)
class Hole:
    """One place to complete: the document is ``prefix + suffix``, the cursor between them, and
    ``truth`` the text the author wrote there (what was deleted)."""

    language: str  # python | c | cpp (the LSP language id)
    kind: str  # line | block
    package: str  # where the file comes from: a Python package, "numpy-headers" or "csrc"
    path: Path  # the real file
    relative_path: str  # the path as the report names it (from the package's parent folder)
    line: int  # the cursor, 0-based
    column: int  # in characters of the line
    prefix: str
    suffix: str
    truth: str

    @property
    def name(self) -> str:
        return f"{self.relative_path}:{self.line + 1}:{self.column}"

    @property
    def text(self) -> str:
        return self.prefix + self.suffix

    @property
    def line_prefix(self) -> str:
        return self.prefix[self.prefix.rfind("\n") + 1:]

    @property
    def utf16_column(self) -> int:
        return len(self.line_prefix.encode("utf-16-le")) // 2


@dataclass(frozen=True)
class Source:
    """A set of files of one language: a package and its version (for the report)."""

    language: str
    package: str
    version: str
    root: Path
    files: tuple[Path, ...] = field(repr=False)


# Sources ----------------------------------------------------------------------------------------
def python_sources(packages: tuple[str, ...] = PYTHON_PACKAGES) -> list[Source]:
    sources = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"bench/quality.py: package {name!r} is not installed in {Path(importlib.__file__).parent}")
        root = Path(next(iter(spec.submodule_search_locations)))
        files = tuple(sorted(p for p in root.rglob("*.py") if _small(p)))
        sources.append(Source("python", name, importlib.metadata.version(name), root, files))
    return sources


def c_sources() -> list[Source]:
    numpy_root = Path(next(iter(importlib.util.find_spec("numpy").submodule_search_locations)))
    headers = tuple(sorted(p for p in numpy_root.rglob("*.h") if _small(p)))
    cpp = tuple(sorted(p for p in (ROOT / "csrc").iterdir() if p.suffix in (".cpp", ".h", ".hpp") and _small(p)))
    return [Source("c", "numpy-headers", importlib.metadata.version("numpy"), numpy_root, headers),
            Source("cpp", "csrc", "this checkout", ROOT / "csrc", cpp)]


def all_sources() -> list[Source]:
    return python_sources() + c_sources()


def _small(path: Path) -> bool:
    return path.is_file() and path.stat().st_size <= MAX_FILE_BYTES


# Candidates per file ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    kind: str
    start: int  # first line (0-based) of the hole
    end: int  # last line of the hole (== start for a line hole)
    column: int  # where the cursor stands on ``start``


def candidates(path: Path, language: str, seed: int, name: str) -> list[Candidate]:
    """Every non-trivial hole of one file (line holes with their column drawn from ``seed``,
    ``name``, the file's path within its package, and the line; block holes)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return []
    lines = text.split("\n")
    if language == "python":
        excluded = _python_excluded_lines(text, len(lines))
        if excluded is None:
            return []
        blocks = sorted(set(_python_blocks(text, lines)))
    else:
        excluded, masked = _c_mask(lines)
        blocks = sorted(set(_c_blocks(masked)))
    found = []
    for number, line in enumerate(lines):
        if number in excluded or not line.strip() or len(line) > MAX_LINE_CHARS:
            continue
        if language == "python" and line.strip().startswith("#"):
            continue  # C comment lines are in ``excluded`` already
        columns = [c for c in range(_indent_chars(line), len(line.rstrip())) if _useful_rest(line[c:], language)]
        if columns:
            rng = random.Random(f"{seed}:{name}:{number}")
            found.append(Candidate("line", number, number, rng.choice(columns)))
    for start, end in blocks:
        if start in excluded:
            continue  # a docstring, or a body that starts with one
        body = lines[start:end + 1]
        if any(len(line) > MAX_LINE_CHARS for line in body) or not _useful_block(body, language):
            continue
        found.append(Candidate("block", start, end, _indent_chars(lines[start])))
    return found


def hole_at(source: Source, path: Path, candidate: Candidate) -> Hole:
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    before = "".join(line + "\n" for line in lines[:candidate.start])
    after = lines[candidate.end + 1:]
    suffix = "\n" + "\n".join(after) if after else ""
    if candidate.kind == "line":
        line = lines[candidate.start]
        prefix = before + line[:candidate.column]
        truth = line[candidate.column:].rstrip()
    else:
        indent = lines[candidate.start][:candidate.column]
        prefix = before + indent
        truth = "\n".join(lines[candidate.start:candidate.end + 1])[candidate.column:].rstrip()
    relative = str(path.relative_to(source.root.parent))
    return Hole(source.language, candidate.kind, source.package, path, relative, candidate.start, candidate.column,
                prefix, suffix, truth)


def _indent_chars(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _useful_rest(rest: str, language: str) -> bool:
    """Rules 2 and 3: the deleted rest of a line holds code."""
    stripped = rest.strip()
    if not stripped or stripped.startswith(("#",) if language == "python" else ("//", "/*")):
        return False
    return any(ch.isalnum() for ch in stripped)


def _useful_block(body: list[str], language: str) -> bool:
    """Rule 5: at least two lines of code, not only ``pass`` or ``...``."""
    comment = ("#",) if language == "python" else ("//", "/*", "*")
    code = [line.strip() for line in body if line.strip() and not line.strip().startswith(comment)]
    if len(code) < MIN_BLOCK_LINES:
        return False
    return not all(line in ("pass", "...") for line in code)


# Python -----------------------------------------------------------------------------------------
def _python_excluded_lines(text: str, count: int) -> set[int] | None:
    """Lines inside multi-line strings (docstrings); None when the file does not tokenize."""
    excluded: set[int] = set()
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.STRING and token.end[0] > token.start[0]:
                excluded.update(range(token.start[0] - 1, token.end[0]))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    return excluded


def _python_blocks(text: str, lines: list[str]) -> Iterator[tuple[int, int]]:
    """(first, last) 0-based lines of bodies and multi-line statements."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, ast.stmt) and isinstance(body, list) and body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _is_docstring(body[0]):
                body = body[1:]
            if body and body[0].lineno > node.lineno and _starts_line(body[0], lines):
                yield _span(body[0], body[-1], lines)
        if (isinstance(node, ast.stmt) and not isinstance(getattr(node, "body", None), list)
                and node.end_lineno > node.lineno and _starts_line(node, lines)):
            yield _span(node, node, lines)


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _starts_line(node: ast.stmt, lines: list[str]) -> bool:
    line = lines[node.lineno - 1]
    return node.col_offset == len(line.encode("utf-8")) - len(line.lstrip(" \t").encode("utf-8"))


def _span(first: ast.stmt, last: ast.stmt, lines: list[str]) -> tuple[int, int]:
    return first.lineno - 1, last.end_lineno - 1


# C and C++ --------------------------------------------------------------------------------------
def _c_mask(lines: list[str]) -> tuple[set[int], list[str]]:
    """Each line with comments, strings and character literals blanked; and the lines that hold
    no code at all (blank or only comment)."""
    masked = []
    excluded = set()
    in_block = False
    for number, line in enumerate(lines):
        out = []
        i = 0
        had_code = False
        while i < len(line):
            ch = line[i]
            if in_block:
                if line.startswith("*/", i):
                    in_block = False
                    out.append("  ")
                    i += 2
                else:
                    out.append(" ")
                    i += 1
                continue
            if line.startswith("/*", i):
                in_block = True
                out.append("  ")
                i += 2
            elif line.startswith("//", i):
                out.append(" " * (len(line) - i))
                break
            elif ch in "\"'":
                end = i + 1
                while end < len(line) and line[end] != ch:
                    end += 2 if line[end] == "\\" else 1
                out.append(ch + " " * (min(end, len(line)) - i - 1) + (ch if end < len(line) else ""))
                had_code = True
                i = end + 1
            else:
                out.append(ch)
                had_code = had_code or not ch.isspace()
                i += 1
        masked.append("".join(out)[: len(line)])
        if not had_code:
            excluded.add(number)
    return excluded, masked


def _c_blocks(masked: list[str]) -> Iterator[tuple[int, int]]:
    """Bodies: the lines strictly between a ``{`` that ends a line and its matching ``}`` that
    starts a line."""
    stack: list[tuple[int, bool]] = []  # (line of the opener, opener ends its line)
    for number, line in enumerate(masked):
        for at, ch in enumerate(line):
            if ch == "{":
                stack.append((number, not line[at + 1:].strip()))
            elif ch == "}" and stack:
                opened, ends_line = stack.pop()
                starts_line = not line[:at].strip()
                if ends_line and starts_line and number - opened - 1 >= 1:
                    yield opened + 1, number - 1


# Sampling ---------------------------------------------------------------------------------------
def sample(sources: list[Source], language: str, kind: str, count: int, seed: int,
           max_block_lines: int = MAX_BLOCK_LINES) -> list[Hole]:
    """``count`` holes of one language and kind: packages in turn, a random file of each, a random
    candidate of that file, without replacement (fewer when the sources run out)."""
    rng = random.Random(f"{seed}:{language}:{kind}")
    pools = [(s, list(s.files)) for s in sources if s.language == language and s.files]
    taken: dict[Path, list[Candidate]] = {}
    holes: list[Hole] = []
    turn = 0
    while len(holes) < count and pools:
        source, files = pools[turn % len(pools)]
        if not files:
            pools.remove((source, files))
            continue
        path = files[rng.randrange(len(files))]
        if path not in taken:
            name = str(path.relative_to(source.root.parent))  # as hole_at names it
            taken[path] = [c for c in candidates(path, language, seed, name) if c.kind == kind
                           and (kind == "line" or MIN_BLOCK_LINES <= c.end - c.start + 1 <= max_block_lines)]
        pool = taken[path]
        if not pool:
            files.remove(path)
            continue
        candidate = pool.pop(rng.randrange(len(pool)))
        holes.append(hole_at(source, path, candidate))
        turn += 1
    return holes
