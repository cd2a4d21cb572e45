"""The cursor in an open document: positions checked and converted, the text split around it.

LSP positions count characters in the negotiated encoding's code units (UTF-16 unless the
client offered UTF-8) and lines by ``\\n``, ``\\r\\n`` or ``\\r`` only. Python strings count code
points, so every position goes through the workspace's ``PositionCodec``. A position past the end
of its line or of the document is an error, never silently clamped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlparse

from lsprotocol import types
from pygls.workspace import TextDocument, Workspace
from pygls.workspace.position_codec import PositionCodec

from .errors import BadRequest

MAX_DOCUMENT_CHARS = 4_000_000  # larger files are generated or minified: no completion there
LINE_BREAK = re.compile(r"\r\n|\r|\n")
_BINARY_SAMPLE = 8192


@dataclass(frozen=True)
class Cursor:
    uri: str
    language_id: str
    file_name: str
    prefix: str  # the document's text before the cursor
    suffix: str  # and after it
    position: types.Position  # as the client sent it
    line_text: str  # the cursor's line without its line break
    character: int  # the cursor's column in code points
    codec: PositionCodec

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
                  prefix=text[:offset], suffix=text[offset:], position=position, line_text=line_text,
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
    return document.source[len(start.prefix): len(end.prefix)]
