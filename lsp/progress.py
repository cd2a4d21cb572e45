"""Work-done progress (``$/progress`` begin, report, end): the one helper that starts it.

The token is the client's own (a request's ``workDoneToken``) or one this server creates with
``window/workDoneProgress/create`` when the client says it accepts them; otherwise, or when the
client refuses the token, the work runs without progress and every call here is a no-op. Call
from the event loop thread (a worker marshals with ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from lsprotocol import types
from pygls.lsp.server import LanguageServer

log = logging.getLogger(__name__)


class Progress:
    def __init__(self, server: LanguageServer, token: types.ProgressToken | None):
        self._server = server
        self.token = token

    @classmethod
    async def begin(cls, server: LanguageServer, title: str, name: str,
                    token: types.ProgressToken | None = None, cancellable: bool | None = None) -> "Progress":
        """Progress titled ``title`` on ``token``, or on a new ``wizardcoder-<name>-…`` token."""
        if token is None:
            token = await _create_token(server, name)
        progress = cls(server, token)
        if token is not None:
            server.work_done_progress.begin(token, types.WorkDoneProgressBegin(title=title, cancellable=cancellable))
        return progress

    def report(self, message: str) -> None:
        if self.token is not None:
            self._server.work_done_progress.report(self.token, types.WorkDoneProgressReport(message=message))

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the user cancels this progress in the editor
        (``window/workDoneProgress/cancel``: pygls cancels the token's future)."""
        future = self._server.work_done_progress.tokens.get(self.token) if self.token is not None else None
        if future is not None:
            future.add_done_callback(lambda done: callback() if done.cancelled() else None)

    def end(self) -> None:
        if self.token is not None:
            self._server.work_done_progress.end(self.token, types.WorkDoneProgressEnd())
            # pygls keeps every token it has seen (a future per token, never dropped): a server
            # that explains all day would grow without end
            self._server.work_done_progress.tokens.pop(self.token, None)


async def _create_token(server: LanguageServer, name: str) -> types.ProgressToken | None:
    window = server.client_capabilities.window
    if window is None or not window.work_done_progress:
        return None
    token = f"wizardcoder-{name}-{uuid.uuid4()}"
    try:
        await server.work_done_progress.create_async(token)
    except Exception as exc:  # the client refused: the work goes on without progress
        log.warning("window/workDoneProgress/create failed: %s", exc)
        return None
    return token
