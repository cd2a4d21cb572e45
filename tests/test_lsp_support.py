"""Helpers for the language-server tests (no tests here): start the real server with a real
model under pytest-lsp, record what it sends besides responses, wait for its status.

Imported by the ``test_lsp_*`` modules; each module starts one server (module-scoped fixture),
so the model loads once per module.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

STATUS = "wizardcoder/status"
STATS = "wizardcoder/stats"
LOAD_TIMEOUT_S = 180.0  # the default model loads in seconds; a busy shared machine is slower


def server_config(log_file: Path, *extra: str) -> ClientServerConfig:
    """The server on SmolLM2-135M (these tests were written against its completions, and it loads
    and answers in seconds); ``extra`` comes last, so a ``--model`` there wins. The editors'
    end-to-end tests run the default model."""
    command = [sys.executable, "-m", "wizardcoder_tpu", "serve", "--stdio", "--log-file", str(log_file),
               "--log-level", "info", "--model", "smollm2-135m", *extra]
    return ClientServerConfig(server_command=command)


def capabilities(inline: bool = True, encodings: list[str] | None = None,
                 progress: bool = True) -> types.ClientCapabilities:
    return types.ClientCapabilities(
        general=types.GeneralClientCapabilities(position_encodings=encodings or [types.PositionEncodingKind.Utf16]),
        text_document=types.TextDocumentClientCapabilities(
            synchronization=types.TextDocumentSyncClientCapabilities(),
            completion=types.CompletionClientCapabilities(),
            inline_completion=types.InlineCompletionClientCapabilities() if inline else None),
        window=types.WindowClientCapabilities(work_done_progress=progress),
        workspace=types.WorkspaceClientCapabilities(apply_edit=True, configuration=False))


class Recorder:
    """What the server sent on its own: status notifications and any workspace/applyEdit."""

    def __init__(self, client: LanguageClient):
        self.statuses: list[dict[str, Any]] = []
        self.apply_edits: list[Any] = []

        @client.feature(STATUS)
        def on_status(params: Any) -> None:
            self.statuses.append(_as_dict(params))

        @client.feature(types.WORKSPACE_APPLY_EDIT)
        def on_apply_edit(params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
            self.apply_edits.append(params)
            return types.ApplyWorkspaceEditResult(applied=False, failure_reason="tests refuse edits")

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = LOAD_TIMEOUT_S,
                       start: int = 0) -> dict[str, Any]:
        """The first status from index ``start`` on that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for status in self.statuses[start:]:
                if predicate(status):
                    return status
            await asyncio.sleep(0.05)
        raise AssertionError(f"no matching status within {timeout} s; got {self.statuses}")


def _as_dict(params: Any) -> dict[str, Any]:
    if isinstance(params, dict):
        return params
    return {key: getattr(params, key) for key in ("state", "message")}


async def start(client: LanguageClient, options: dict[str, Any] | None = None,
                caps: types.ClientCapabilities | None = None) -> tuple[Recorder, types.InitializeResult]:
    """Initialize the server and wait until it has loaded a model (or failed to)."""
    recorder = Recorder(client)
    result = await client.initialize_session(types.InitializeParams(
        capabilities=caps or capabilities(), initialization_options=options or {}, root_uri="file:///tmp"))
    await recorder.wait_for(lambda s: s["state"] in ("idle", "error"))
    return recorder, result


def open_document(client: LanguageClient, uri: str, text: str, language: str = "python") -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)))


def change_document(client: LanguageClient, uri: str, version: int, start: tuple[int, int], end: tuple[int, int],
                    text: str) -> None:
    """One incremental change: replace ``start``..``end`` by ``text``."""
    change = types.TextDocumentContentChangePartial(
        range=types.Range(types.Position(*start), types.Position(*end)), text=text)
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version), content_changes=[change]))


async def inline(client: LanguageClient, uri: str, line: int, character: int) -> types.InlineCompletionList:
    return await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line, character),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))


async def stats(client: LanguageClient) -> dict[str, Any]:
    result = await client.protocol.send_request_async(STATS, {})
    return result if isinstance(result, dict) else _attrs_to_dict(result)


def _attrs_to_dict(value: Any) -> Any:
    """pygls hands unknown results back as namedtuple-like objects: turn them into dicts."""
    if hasattr(value, "_asdict"):
        return {k: _attrs_to_dict(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [_attrs_to_dict(v) for v in value]
    return value


def apply_edit(text: str, line: int, start: int, end: int, new_text: str) -> str:
    """``text`` with columns ``start``..``end`` of ``line`` replaced (ASCII lines)."""
    lines = text.split("\n")
    lines[line] = lines[line][:start] + new_text + lines[line][end:]
    return "\n".join(lines)
