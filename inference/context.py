"""Code from other places as context for a completion: what llama.vim's ring buffer of chunks and
Continue's snippets do, fed by the editor's document notifications.

Chunks of ``chunk_lines`` whole lines are picked where the user has been:

- the head of a document when it is opened (its imports and definitions, what other code uses);
- a place the user left: an edit or a completion request more than ``chunk_lines`` lines from
  the previous one in the same document, or in another document, picks the lines around the
  place left (llama.vim picks when the cursor has moved more than 32 lines);
- the last place in a document when it is saved or closed (llama.vim picks on BufWritePost and
  BufLeave).

The ring holds at most ``max_chunks``, the oldest leaving first. A new chunk more than 0.9
similar to one held replaces it (llama.vim's ``s:pick_chunk``). When a prompt asks for the
snippets, chunks more than 0.5 similar to the lines around the cursor are evicted: they make the
model repeat what is already there. Similarity is llama.vim's ``s:chunk_sim``: the words (runs
of ``[0-9A-Za-z_]``) of the new text that occur among the held chunk's words, counted with
repeats, times two, over both word counts.

Stable on purpose: a keystroke at the same place adds nothing, evicts nothing and changes no
chunk's text, so the snippets, which the prompt puts first, keep their token ids and stay in the
engine's KV cache. A new chunk goes at the end. Chunks are snapshots: a chunk's text is what the
place held when it was picked.

Only text the editor sent is used: a document the editor never opened is never read from disk.
Pure functions and one small class, no server inside; the class takes a lock, because the
notifications arrive on the event loop and prompts are built on the inference worker.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath
from urllib.parse import unquote, urlparse

MAX_CHUNKS = 16  # llama.vim's ring_n_chunks
CHUNK_LINES = 16  # llama.vim takes 32 of a 64-line window for a 32k context; ours is ~512 tokens
MIN_CHUNK_LINES = 3  # llama.vim does not pick fewer lines
REPLACE_SIMILARITY = 0.9  # a new chunk this similar to a held one replaces it
CURSOR_SIMILARITY = 0.5  # a held chunk this similar to the text around the cursor is evicted
DEFAULT_NAME = "project"  # the repository's name in the prompt when the workspace has no folder

_WORD = re.compile(r"[0-9A-Za-z_]+")  # Vim's \w: llama.vim splits on \W\+
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # LSP's line breaks (not str.splitlines' others)


@dataclass(frozen=True)
class Snippet:
    """Code from elsewhere, as the prompt shows it: a path and whole lines."""

    path: str
    text: str


@dataclass(frozen=True)
class RepoContext:
    """What a prompt gets: the repository's name and the snippets, oldest first."""

    name: str
    snippets: tuple[Snippet, ...]


@dataclass(frozen=True)
class Chunk:
    """A snippet as the ring holds it: where it came from, and its words for the similarity."""

    uri: str
    first_line: int  # where the lines were when the chunk was picked
    snippet: Snippet
    words: tuple[str, ...]


# Pure functions -------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    return _WORD.findall(text)


def similarity(held: Sequence[str], new: Sequence[str]) -> float:
    """llama.vim's ``s:chunk_sim``, 0 (nothing shared) to 1: the words of ``new`` found among the
    words of ``held``, with repeats, times two, over both lengths. Two empty texts are alike."""
    if not held and not new:
        return 1.0
    vocabulary = set(held)
    common = sum(1 for word in new if word in vocabulary)
    return 2.0 * common / (len(held) + len(new))


def line_range(text: str, start: int, stop: int) -> list[str]:
    """Lines ``start`` to ``stop`` (exclusive) of ``text``, each ending in ``\\n`` whatever the
    document's line breaks; scanning stops at ``stop``, so a place near the top of a long
    document costs little."""
    lines: list[str] = []
    position = number = 0
    for match in _LINE_BREAK.finditer(text):
        if number >= stop:
            return lines
        if number >= start:
            lines.append(text[position:match.start()] + "\n")
        position = match.end()
        number += 1
    if start <= number < stop and position < len(text):  # the last line, without a line break
        lines.append(text[position:] + "\n")
    return lines


def cursor_window(prefix: str, suffix: str, lines: int) -> str:
    """The last ``lines`` lines of ``prefix`` (the cursor's included) and the first ``lines`` of
    ``suffix``: the text a chunk must not repeat. Found from the cursor outwards."""
    if lines <= 0:
        return ""
    start = len(prefix)
    for _ in range(lines):
        start = prefix.rfind("\n", 0, start)
        if start < 0:
            break
    end = -1
    for _ in range(lines):
        end = suffix.find("\n", end + 1)
        if end < 0:
            end = len(suffix)
            break
    return prefix[start + 1:] + suffix[:end]


def display_path(uri: str, root_uri: str | None) -> str:
    """The path a prompt shows for ``uri``: relative to the workspace root when it is inside it,
    else the file's name (never the user's absolute path)."""
    path = PurePosixPath(unquote(urlparse(uri).path))
    if root_uri:
        root = PurePosixPath(unquote(urlparse(root_uri).path))
        if path.is_relative_to(root) and path != root:
            return str(path.relative_to(root))
    return path.name or uri


@lru_cache(maxsize=16)
def repository_name(root_uri: str | None) -> str:
    """The workspace folder's name (asked for on every keystroke, so remembered)."""
    if root_uri:
        name = PurePosixPath(unquote(urlparse(root_uri).path)).name
        if name:
            return name
    return DEFAULT_NAME


def _looks_binary(text: str) -> bool:
    controls = sum(1 for ch in text if ch < " " and ch not in "\t\n\r\f\v")
    return "\x00" in text or controls > len(text) // 10


# The store ------------------------------------------------------------------------------------
class ContextStore:
    """The ring of chunks, fed by ``opened`` / ``changed`` / ``visited`` / ``saved`` / ``closed``
    and read by ``context``."""

    def __init__(self, root_uri: str | None = None, max_chunks: int = MAX_CHUNKS, chunk_lines: int = CHUNK_LINES):
        if max_chunks < 0 or chunk_lines < MIN_CHUNK_LINES:
            raise ValueError(f"max_chunks must be >= 0 and chunk_lines >= {MIN_CHUNK_LINES}")
        self.root_uri = root_uri
        self.max_chunks = max_chunks
        self.chunk_lines = chunk_lines
        self.evicted = 0  # chunks removed for similarity (a count for the logs)
        self._chunks: list[Chunk] = []
        self._texts: dict[str, str] = {}  # uri -> the latest text of each open document
        self._places: dict[str, int] = {}  # uri -> the line of the last edit or request there
        self._last_uri: str | None = None  # the document of the last place
        self._lock = threading.Lock()

    # Notifications ----------------------------------------------------------------------------
    def opened(self, uri: str, text: str) -> None:
        with self._lock:
            self._texts[uri] = text
            self._pick(uri, text, 0)

    def changed(self, uri: str, text: str, line: int | None) -> None:
        """An edit at ``line`` (None when the editor sent the whole text: no place is known)."""
        with self._lock:
            self._texts[uri] = text
            if line is not None:
                self._move(uri, text, line)

    def visited(self, uri: str, text: str, line: int) -> None:
        """A completion request at ``line``."""
        with self._lock:
            self._texts[uri] = text
            self._move(uri, text, line)

    def saved(self, uri: str, text: str) -> None:
        with self._lock:
            self._texts[uri] = text
            if uri in self._places:
                self._pick_around(uri, text, self._places[uri])

    def closed(self, uri: str, text: str | None = None) -> None:
        """The document's last place is picked (from ``text``, else the last text it sent); its
        chunks stay, as a recently visited place."""
        with self._lock:
            latest = self._texts.pop(uri, None)
            text = latest if text is None else text
            place = self._places.pop(uri, None)
            if text is not None and place is not None:
                self._pick_around(uri, text, place)
            if self._last_uri == uri:
                self._last_uri = None

    # Reading ----------------------------------------------------------------------------------
    def context(self, prefix: str, suffix: str) -> RepoContext:
        """The snippets for a prompt at the cursor between ``prefix`` and ``suffix``, after
        evicting the chunks too similar to the lines around it."""
        around = words(cursor_window(prefix, suffix, self.chunk_lines // 2))
        with self._lock:
            kept = [chunk for chunk in self._chunks if similarity(chunk.words, around) <= CURSOR_SIMILARITY]
            self.evicted += len(self._chunks) - len(kept)
            self._chunks = kept
            return RepoContext(repository_name(self.root_uri), tuple(chunk.snippet for chunk in kept))

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        with self._lock:
            return tuple(self._chunks)

    def path(self, uri: str) -> str:
        return display_path(uri, self.root_uri)

    # Inside (the lock held) -------------------------------------------------------------------
    def _move(self, uri: str, text: str, line: int) -> None:
        """The user is at ``line`` of ``uri``: a place left behind becomes a chunk."""
        left = self._last_uri
        if left is not None and left != uri and left in self._places and left in self._texts:
            self._pick_around(left, self._texts[left], self._places[left])
        previous = self._places.get(uri)
        if previous is not None and abs(line - previous) > self.chunk_lines:
            self._pick_around(uri, text, previous)
        self._places[uri] = line
        self._last_uri = uri

    def _pick_around(self, uri: str, text: str, line: int) -> None:
        self._pick(uri, text, max(0, line - self.chunk_lines // 2))

    def _pick(self, uri: str, text: str, first_line: int) -> None:
        if self.max_chunks == 0:
            return
        lines = line_range(text, first_line, first_line + self.chunk_lines)
        if sum(1 for line in lines if line.strip()) < MIN_CHUNK_LINES:
            return
        body = "".join(lines)
        if _looks_binary(body):
            return
        new = Chunk(uri, first_line, Snippet(self.path(uri), body), tuple(words(body)))
        if any(chunk.snippet == new.snippet for chunk in self._chunks):
            return  # already held: nothing moves
        kept = [chunk for chunk in self._chunks if similarity(chunk.words, new.words) <= REPLACE_SIMILARITY]
        self.evicted += len(self._chunks) - len(kept)
        kept.append(new)
        self._chunks = kept[-self.max_chunks:]
