"""The open documents as the editor has them, and the cursor in one: positions checked and
converted, the text split around it.

LSP positions count characters in the negotiated encoding's code units (UTF-16 unless the
client offered UTF-8) and lines by ``\\n``, ``\\r\\n`` or ``\\r`` only. Python strings count code
points, so every position goes through the workspace's ``PositionCodec``.

Two rules for two kinds of position:
- an edit (``textDocument/didChange``) is applied as the editor applied it, so the server's copy
  stays equal to the editor's: LSP's line breaks only (pygls 2.1.1 splits with ``str.splitlines``,
  which also breaks at U+2028, U+2029, ``\\v``, ``\\f``, ``\\x1c``-``\\x1e`` and ``\\x85``), a position
  past the end of its line or of the document clamped to that end, a reversed range reordered, and
  in UTF-16 a position between the two halves of a surrogate pair splitting it (exactly what
  ``vscode-languageserver-textdocument`` does, the model VS Code and most clients keep);
- a request's cursor (completion, explain) must lie in the text: past the end of its line or of
  the document it is an error, never silently clamped.

The server never reads a file: a document exists here only while the editor has it open.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePosixPath
from urllib.parse import unquote, urlparse

from collections.abc import Sequence
from typing import Any

from lsprotocol import types
from pygls.workspace import TextDocument, Workspace
from pygls.workspace.position_codec import PositionCodec

from ..inference.postprocess import Surroundings
from .errors import BadRequest

MAX_DOCUMENT_CHARS = 4_000_000  # larger files are generated or minified: no completion there
LINE_BREAK = re.compile(r"\r\n|\r|\n")
_BINARY_SAMPLE = 8192
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")  # one line with its break
_SURROGATE = re.compile("[\ud800-\udfff]")
log = logging.getLogger(__name__)


class EditorDocument(TextDocument):
    """pygls' TextDocument with LSP's line breaks and the editor's edit rules (module docstring);
    its text only ever comes from the editor, never from disk."""

    @property
    def source(self) -> str:
        return self._source or ""

    @property
    def lines(self) -> Sequence[str]:
        return tuple(_LINE.findall(self.source))

    def _apply_incremental_change(self, change: types.TextDocumentContentChangePartial) -> None:
        self._source = apply_edit(self.source, change.range, change.text, self.position_codec.encoding)


class EditorWorkspace(Workspace):
    """The workspace of ``EditorDocument``s; a change to a document that is not open is ignored
    (pygls raises KeyError, which became a pop-up)."""

    def _create_text_document(self, doc_uri: str, source: str | None = None, version: int | None = None,
                              language_id: str | None = None) -> TextDocument:
        return EditorDocument(doc_uri, source=source or "", version=version, language_id=language_id,
                              sync_kind=self._sync_kind, position_codec=self._position_codec)

    def get_text_document(self, doc_uri: str) -> TextDocument:
        """The open document; an empty one (never the file on disk) when it is not open."""
        return self._text_documents.get(unquote(doc_uri)) or self._create_text_document(doc_uri)

    def update_text_document(self, text_doc: types.VersionedTextDocumentIdentifier,
                             change: types.TextDocumentContentChangeEvent) -> None:
        if unquote(text_doc.uri) not in self._text_documents:
            log.warning("didChange for %s, which is not open: ignored", text_doc.uri)
            return
        super().update_text_document(text_doc, change)

    def digests(self) -> dict[str, dict[str, Any]]:
        """Per open document: version, length and SHA-256 of its text (UTF-8, lone surrogates
        passed through), so that a test can check the server's copy without the server ever
        sending document text back."""
        return {uri: {"version": document.version, "length": len(document.source),
                      "sha256": hashlib.sha256(document.source.encode("utf-8", "surrogatepass")).hexdigest()}
                for uri, document in self._text_documents.items()}


def apply_edit(text: str, edit_range: types.Range, new_text: str,
               encoding: types.PositionEncodingKind | str | None) -> str:
    """``text`` with ``edit_range`` (client positions) replaced by ``new_text``, as the editor did it."""
    start, end = edit_range.start, edit_range.end
    if (start.line, start.character) > (end.line, end.character):
        start, end = end, start
    starts = [0] + [m.end() for m in LINE_BREAK.finditer(text)]
    head, _ = _split_at(text, starts, start, encoding)
    _, tail = _split_at(text, starts, end, encoding)
    result = head + new_text + tail
    joins = (head[-1:], new_text[:1], new_text[-1:], tail[:1])
    if any(_SURROGATE.match(ch) for ch in joins if ch):  # halves of a pair may meet again
        result = result.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return result


def _split_at(text: str, starts: list[int], position: types.Position,
              encoding: types.PositionEncodingKind | str | None) -> tuple[str, str]:
    """``text`` before and after a client position, clamped like the editor clamps it."""
    if position.line < 0:
        return "", text
    if position.line >= len(starts):
        return text, ""
    line_start = starts[position.line]
    next_start = starts[position.line + 1] if position.line + 1 < len(starts) else len(text)
    line = text[line_start:next_start].rstrip("\r\n")
    before, after = _split_line(line, max(position.character, 0), encoding)
    return text[:line_start] + before, after + text[line_start + len(line):]


def _split_line(line: str, character: int, encoding: types.PositionEncodingKind | str | None) -> tuple[str, str]:
    if line.isascii() or encoding == types.PositionEncodingKind.Utf32:
        return line[:character], line[character:]
    units = 0
    for column, ch in enumerate(line):
        if units >= character:
            return line[:column], line[column:]
        width = _units(ch, encoding)
        if units + width > character:  # inside the character
            if width == 2 and encoding != types.PositionEncodingKind.Utf8:  # UTF-16: split the pair
                pair = ch.encode("utf-16-le")
                high = pair[:2].decode("utf-16-le", "surrogatepass")
                low = pair[2:].decode("utf-16-le", "surrogatepass")
                return line[:column] + high, low + line[column + 1:]
            return line[:column], line[column:]  # UTF-8: round down to the character's start
        units += width
    return line, ""


def _units(ch: str, encoding: types.PositionEncodingKind | str | None) -> int:
    code = ord(ch)
    if encoding == types.PositionEncodingKind.Utf8:
        return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
    return 2 if code > 0xFFFF else 1


def for_the_model(text: str) -> str:
    """``text`` with each lone surrogate (valid JSON, not valid Unicode: tokenizers refuse it) as
    U+FFFD; the length in code points stays the same."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


@dataclass(frozen=True)
class Cursor:
    uri: str
    language_id: str
    file_name: str
    prefix: str  # the document's text before the cursor (lone surrogates as U+FFFD: for the model)
    suffix: str  # and after it
    position: types.Position  # as the client sent it
    line_text: str  # the cursor's line without its line break
    character: int  # the cursor's column in code points
    codec: PositionCodec

    @cached_property
    def around(self) -> Surroundings:
        """The text around the cursor as post-processing reads it: computed once per cursor, for
        the kind of completion here and for every token's stream check of the model run."""
        return Surroundings.of(self.prefix, self.suffix)

    def client_position(self, column: int) -> types.Position:
        """The client's position of code-point ``column`` on the cursor's line."""
        return types.Position(self.position.line, self.codec.client_num_units(self.line_text[:column]))

    def range_replacing(self, count: int) -> types.Range:
        """From the cursor over ``count`` characters after it on its line."""
        return types.Range(self.position, self.client_position(self.character + count))


def open_document(workspace: Workspace, uri: str) -> TextDocument:
    document = workspace.text_documents.get(unquote(uri))
    if document is None:
        raise BadRequest(f"document {uri} is not open (send textDocument/didOpen first)")
    return document


def unusable_reason(text: str) -> str | None:
    """Why a document's text is no place for completion, or None when it is."""
    if len(text) > MAX_DOCUMENT_CHARS:
        return f"the document has {len(text):,} characters (more than {MAX_DOCUMENT_CHARS:,}): completion is off for it"
    sample = text[:_BINARY_SAMPLE]
    controls = sum(1 for ch in sample if ch < " " and ch not in "\t\n\r\f\v")
    if "\x00" in sample or controls > len(sample) // 10:
        return "the document looks binary (NUL or control characters): completion is off for it"
    return None


def cursor_at(document: TextDocument, position: types.Position, codec: PositionCodec) -> Cursor:
    """Split ``document`` at the client's ``position``; BadRequest when it is not in the text."""
    text = document.source
    if position.line < 0 or position.character < 0:
        raise BadRequest(f"negative position {position.line}:{position.character}")
    starts = [0]
    for match in LINE_BREAK.finditer(text):
        if len(starts) > position.line:
            break
        starts.append(match.end())
    if position.line >= len(starts):
        raise BadRequest(f"line {position.line} is past the end of the document ({len(starts)} lines)")
    start = starts[position.line]
    end_match = LINE_BREAK.search(text, start)
    line_text = text[start: end_match.start() if end_match else len(text)]
    column = _column(line_text, position, codec)
    offset = start + column
    return Cursor(uri=document.uri, language_id=document.language_id or "", file_name=file_name(document.uri),
                  prefix=for_the_model(text[:offset]), suffix=for_the_model(text[offset:]), position=position, line_text=line_text,
                  character=column, codec=codec)


def _column(line_text: str, position: types.Position, codec: PositionCodec) -> int:
    """Code points before ``position.character`` code units of ``line_text``."""
    units = 0
    for column, ch in enumerate(line_text):
        if units == position.character:
            return column
        units += codec.client_num_units(ch)
        if units > position.character:
            raise BadRequest(f"character {position.character} of line {position.line} falls inside a character "
                             f"({encoding_name(codec.encoding)} code units)")
    if units == position.character:
        return len(line_text)
    raise BadRequest(f"character {position.character} is past the end of line {position.line}, which has "
                     f"{units} {encoding_name(codec.encoding)} code units")


def encoding_name(encoding: types.PositionEncodingKind | str) -> str:
    """The encoding as LSP spells it ("utf-16"); str() of the enum gives its Python name."""
    return getattr(encoding, "value", encoding)


def file_name(uri: str) -> str:
    """The file's name for the prompt: the last path segment of the URI ('' when none)."""
    path = unquote(urlparse(uri).path)
    return PurePosixPath(path).name if path else ""


def text_in_range(document: TextDocument, selection: types.Range, codec: PositionCodec) -> str:
    """The text between two client positions (both checked)."""
    start = cursor_at(document, selection.start, codec)
    end = cursor_at(document, selection.end, codec)
    if len(end.prefix) < len(start.prefix):
        raise BadRequest("the range ends before it starts")
    return for_the_model(document.source[len(start.prefix): len(end.prefix)])
