"""The systems ``bench/quality.py`` compares, each a small adapter with one job: fill a hole.

- ``LspSystem``: the real server, ``wizardcoder-tpu serve --stdio``, asked over LSP as an editor
  asks it: ``initialize`` with the settings of the row, ``didOpen`` of the document with the
  hole (and, for the cross-file rows, of other files of the same folder first), one
  ``textDocument/inlineCompletion`` at the cursor, a ``didChange`` to the text the author wrote
  (the hole filled, as the user leaves the place), ``didClose``. The default, bare FIM, naive and
  SmolLM2 rows are this adapter with different settings.
- ``LlamaVimSystem``: the same GGUF on llama.cpp (``llama-cpp-python``, benchmark-only) with the
  rules of llama.vim and llama-server's ``/infill`` (see its docstring).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from quality_holes import MAX_FILE_BYTES, Hole
from quality_score import Outcome

STATUS = "wizardcoder/status"
LANGUAGE_OF_SUFFIX = {".py": "python", ".h": "c", ".c": "c", ".cpp": "cpp", ".hpp": "cpp", ".cc": "cpp"}


def language_id(hole_language: str, path: Path) -> str:
    """numpy's headers are C; csrc's headers are C++ (the language of the hole decides)."""
    return hole_language if path.suffix in (".h",) else LANGUAGE_OF_SUFFIX.get(path.suffix, hole_language)


def context_files(hole: Hole, count: int) -> list[Path]:
    """Up to ``count`` other files of the hole's folder with its language, drawn with a seed of
    the hole's own name: what an editor has open beside the file being edited."""
    if count <= 0:
        return []
    suffixes = {s for s, lang in LANGUAGE_OF_SUFFIX.items() if lang == hole.language} | {hole.path.suffix}
    siblings = sorted(p for p in hole.path.parent.iterdir()
                      if p.is_file() and p != hole.path and p.suffix in suffixes and p.stat().st_size <= MAX_FILE_BYTES)
    return random.Random(hole.name).sample(siblings, min(count, len(siblings)))


@dataclass
class LspSystem:
    """One server process, started once; every hole of the run asked in turn."""

    name: str
    description: str
    server_args: list[str]
    options: dict[str, Any]  # initializationOptions (settings) of this row
    context_count: int = 0  # other files of the folder opened before the document
    cut_first_line: bool = False  # the naive baseline: keep the first line only
    log_file: Path = Path("quality-server.log")
    load_timeout_s: float = 900.0
    request_timeout_s: float = 300.0
    warnings: list[str] = field(default_factory=list)
    model: str = ""

    async def start(self) -> None:
        self._client = LanguageClient("wizardcoder-tpu-quality", "1")
        self._statuses: list[dict[str, Any]] = []
        self._stderr: list[bytes] = []

        @self._client.feature(STATUS)
        def on_status(params: Any) -> None:
            self._statuses.append(_as_dict(params))

        @self._client.feature(types.WINDOW_LOG_MESSAGE)
        def on_log(params: types.LogMessageParams) -> None:
            if params.type in (types.MessageType.Warning, types.MessageType.Error):
                self.warnings.append(params.message)

        @self._client.feature(types.WINDOW_SHOW_MESSAGE)
        def on_show(params: types.ShowMessageParams) -> None:
            if params.type in (types.MessageType.Warning, types.MessageType.Error):
                self.warnings.append(params.message)

        command = ["-m", "wizardcoder_tpu", "serve", "--stdio", "--log-file", str(self.log_file),
                   "--log-level", "info", *self.server_args]
        await self._client.start_io(sys.executable, *command)
        self._drain = asyncio.create_task(self._read_stderr())
        await self._client.initialize_async(types.InitializeParams(
            capabilities=types.ClientCapabilities(
                general=types.GeneralClientCapabilities(position_encodings=[types.PositionEncodingKind.Utf16]),
                text_document=types.TextDocumentClientCapabilities(
                    synchronization=types.TextDocumentSyncClientCapabilities(),
                    inline_completion=types.InlineCompletionClientCapabilities())),
            initialization_options={"debounceMs": 0, **self.options}, root_uri=None, process_id=None))
        self._client.initialized(types.InitializedParams())
        status = await self._wait_for_model()
        if status["state"] == "error":
            raise RuntimeError(f"{self.name}: the server could not load its model: {status['message']}")
        self.model = status["message"]

    async def _wait_for_model(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.load_timeout_s
        while time.monotonic() < deadline:
            for status in self._statuses:
                if status["state"] in ("idle", "error"):
                    return status
            if self._client.stopped:
                raise RuntimeError(f"{self.name}: the server exited: {b''.join(self._stderr)[-2000:].decode(errors='replace')}")
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name}: no model loaded within {self.load_timeout_s:.0f} s (log: {self.log_file})")

    async def _read_stderr(self) -> None:
        stream = self._client._server.stderr if self._client._server else None
        while stream is not None:
            chunk = await stream.read(4096)
            if not chunk:
                return
            self._stderr.append(chunk)
            del self._stderr[:-16]

    async def complete(self, hole: Hole) -> Outcome:
        opened = []
        for path in context_files(hole, self.context_count):
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            opened.append(self._open(path.as_uri(), language_id(hole.language, path), text))
        uri = self._open(hole.path.as_uri(), hole.language, hole.text)
        started = time.perf_counter()
        error = None
        text = ""
        try:
            answer = await asyncio.wait_for(self._client.text_document_inline_completion_async(
                types.InlineCompletionParams(
                    text_document=types.TextDocumentIdentifier(uri=uri),
                    position=types.Position(line=hole.line, character=hole.utf16_column),
                    # Invoked: the benchmark asks at each hole, whatever follows the cursor (an automatic
                    # request mid-line would meet the trigger rules of lsp/trigger.py and get nothing).
                    context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked))),
                self.request_timeout_s)
            text = _insert_text(answer)
        except asyncio.TimeoutError:
            error = f"no answer within {self.request_timeout_s:.0f} s"
        except Exception as exc:  # a server error is a result of the row, not the end of the run
            error = f"{type(exc).__name__}: {exc}"
        latency = (time.perf_counter() - started) * 1e3
        # The author finishes the hole before leaving the file, as in an editing session: the
        # server's ring then keeps this place as written, not cut (a cut left there taught the
        # model, in later holes' prompts, to stop lines short: issue 11, item 7).
        self._client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=hole.prefix + hole.truth + hole.suffix)]))
        for opened_uri in [uri, *opened]:
            self._client.text_document_did_close(types.DidCloseTextDocumentParams(
                text_document=types.TextDocumentIdentifier(uri=opened_uri)))
        if self.cut_first_line:
            text = text.split("\n", 1)[0]
        return Outcome(hole, text, latency, error)

    def _open(self, uri: str, language: str, text: str) -> str:
        self._client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)))
        return uri

    async def stop(self) -> None:
        client = getattr(self, "_client", None)
        if client is None:
            return
        try:
            await asyncio.wait_for(client.shutdown_async(None), 30)
            client.exit(None)
        except Exception:
            pass
        try:
            await asyncio.wait_for(client.stop(), 30)
        except Exception:
            if client._server is not None and client._server.returncode is None:
                client._server.kill()


def _insert_text(answer: Any) -> str:
    items = answer.items if isinstance(answer, types.InlineCompletionList) else (answer or [])
    if not items:
        return ""
    text = items[0].insert_text
    return text if isinstance(text, str) else text.value


def _as_dict(params: Any) -> dict[str, Any]:
    if isinstance(params, dict):
        return params
    return {key: getattr(params, key) for key in ("state", "message")}
