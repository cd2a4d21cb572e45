"""Two departures from pygls' stock protocol, each for a rule of the issue.

- Position encoding: pygls takes the client's first offer; this server prefers UTF-8 whenever
  the client offers it (Python counts code points, so UTF-8 and UTF-16 cost the same to convert,
  and UTF-8 is what most editors speak natively), and falls back to UTF-16, the LSP default.
- ``workspace/executeCommand``: pygls runs a command as a separate inner task that
  ``$/cancelRequest`` cannot reach. Dispatching here, as one coroutine registered under the
  request's id, lets a cancel reach the command and through it the engine.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method


class WizardProtocol(LanguageServerProtocol):
    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams) -> Generator[Any, Any, types.InitializeResult]:
        general = params.capabilities.general
        if general is not None and general.position_encodings:
            offered = list(general.position_encodings)
            if types.PositionEncodingKind.Utf8 in offered:
                general.position_encodings = [types.PositionEncodingKind.Utf8]
            else:
                general.position_encodings = [e for e in offered if e == types.PositionEncodingKind.Utf16] or offered
        return (yield from super().lsp_initialize(params))

    @lsp_method(types.WORKSPACE_EXECUTE_COMMAND)
    async def lsp_workspace__execute_command(self, params: types.ExecuteCommandParams) -> Any:
        handler = self.fm.commands.get(params.command)
        if handler is None:
            known = ", ".join(sorted(self.fm.commands)) or "none"
            raise JsonRpcInvalidParams(message=f"wizardcoder: unknown command {params.command!r} (this server has: {known})")
        return await handler(params)
