"""The language server: the state it owns and the LSP features it registers.

Handlers here are thin: each converts its errors once (``boundary``), hands the completion path
(``completion.py``) and the explain command (``explain.py``) the parts they need as arguments,
and maps their results to LSP types. A ``WizardServer`` is one client's session: pygls owns its
documents (incremental sync); this class owns its settings, result cache and per-document request
state (``requests.py``); the model host and the inference worker belong to its ``Team``
(``team.py``), which every session of a TCP server shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer

from .. import __version__
from ..inference.context import ContextStore
from ..inference.engine import CancelToken
from ..inference.errors import InferenceError
from ..inference.remote import RemoteAccess
from . import completion, explain
from .cache import CompletionCache
from .documents import encoding_name
from .loop_post import post
from .errors import BadRequest, NotReady, to_response_error
from .acceptance import ACCEPTED, DISMISSED, PARTIALLY_ACCEPTED, SHOWN, AcceptanceLog
from .model_host import ModelHost
from .prefetch import LABEL as PREFETCH_LABEL
from .prefetch import Prefetcher
from .progress import Progress
from .protocol import WizardProtocol
from .requests import DocumentRequests
from .settings import SETTINGS, Settings, merge
from .status import SERVER_STATUS, STATS, Stats, Status
from .team import ClientJobs, Refused, Team
from .trigger import excluded, is_deletion

log = logging.getLogger(__name__)


MODEL_SETTINGS = ("model", "backend", "fallback_to_cpu", "weights", "threads", "cache_slots", "endpoint",
                  "remote_protocol", "remote_model", "remote_timeout_ms")  # a team's, not a client's


class WizardServer(LanguageServer):
    def __init__(self, settings: Settings, team: Team | None = None):
        super().__init__("wizardcoder-tpu", __version__, protocol_cls=WizardProtocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.settings = settings
        self.team = team or Team(settings)
        self.host: ModelHost = self.team.host
        self.cache = CompletionCache()
        self.context = ContextStore()  # other files' code for the prompt, fed by the document notifications
        self.stats = Stats()
        self.status = Status(self)
        self.worker = ClientJobs(self.team, on_state=self._worker_state)
        self.requests = DocumentRequests()
        self.prefetcher = Prefetcher()
        self.acceptance = AcceptanceLog(None)  # replaced by the session's file once the loop runs
        self._warned: set[str] = set()
        self._model_key: tuple | None = None  # what the last load was asked for (Settings.model_key)
        self.loop: asyncio.AbstractEventLoop | None = None

    # The worker's state ------------------------------------------------------------------------
    def _worker_state(self, state: str, label: str) -> None:
        """From the worker thread: busy while a job runs, idle (or the load error) after."""
        if self.loop is not None:
            post(self.loop, self._show_worker_state, state, label)

    def _show_worker_state(self, state: str, label: str) -> None:
        if self.host.loading:
            return  # the status says "loading" until the load reports
        if state == "busy" and label == PREFETCH_LABEL:
            # Prefetching is idle time put to use: the user is not waiting. Idle is shown here too,
            # as the worker may start the prefetch before it reports the completion's end.
            self.show_model_state()
        elif state == "busy":
            self.status.set("busy", label)
        elif not self.host.loading:
            self.show_model_state()

    def show_model_state(self) -> None:
        if self.host.failure and self.host.description:  # the backend failed the last request
            self.status.set("error", self.host.failure)
        elif self.host.description:
            note = f" (instead of the requested model: {self.host.error})" if self.host.error else ""
            self.status.set("idle", f"ready: {self.host.description}{note}", self.acceptance.last_latency_ms)
        elif self.host.error:
            self.status.set("error", self.host.error)

    # The session -------------------------------------------------------------------------------
    def admit(self, options: Any) -> str | None:
        """From the protocol, before ``initialize`` runs: None when this client may start a session
        (the token, if the server asks for one, is taken out of ``options``), else why not."""
        token = options.pop("token", None) if isinstance(options, dict) else None
        try:
            self.worker.client = self.team.admit(self, token)
        except Refused as refused:
            log.warning("refused a client: %s", refused)
            return str(refused)
        log.info("session of client %s started", self.worker.client)
        return None

    def end_session(self) -> None:
        """The client has gone: its requests are stale, its place is free."""
        self.requests.cancel_all()
        self.team.leave(self)
        if self.worker.client:
            log.info("session of client %s ended", self.worker.client)

    # The model ---------------------------------------------------------------------------------
    async def load_model(self) -> None:
        """Load what the settings ask for, in the worker; progress and status while it runs. A
        model already loaded for these settings (a team server's, for its next client) is kept."""
        settings = self.settings
        self._model_key = settings.model_key
        self.cache.forget()
        if self.host.serves(settings):
            self.show_model_state()
            return
        progress = await Progress.begin(self, "Loading model", "load")
        self.host.loading = True
        self.status.set("loading", f"loading {settings.model} on {settings.backend}")
        assert self.loop is not None
        loop = self.loop

        def message(text: str) -> None:  # worker thread
            post(loop, self._loading_message, progress, text)

        try:
            report = await self.worker.run(lambda cancel: self.host.load(settings, message), CancelToken(), "loading",
                                           kind="load")
        finally:
            progress.end()
        if report is not None and report.error:
            self.status.set("error", report.error)
        self.show_model_state()

    def _loading_message(self, progress: Progress, text: str) -> None:
        progress.report(text)
        self.status.log(types.MessageType.Info, text)

    def apply_settings(self, raw: Any) -> None:
        before = self.settings
        self.settings, problems = merge(before, raw)
        if self.team.shared:  # the model is the team's: one client's choice would stall the others
            pinned = {name: getattr(self.team.settings, name) for name in MODEL_SETTINGS}
            asked = [name for name, value in pinned.items() if getattr(self.settings, name) != value]
            if asked:
                problems.append(f"this server serves {self.team.settings.model} on {self.team.settings.backend} "
                                f"to every client: {', '.join(asked)} are set where it starts; ignored")
                self.settings = replace(self.settings, **pinned)
        for problem in problems:
            self.status.log(types.MessageType.Warning, problem)
        if self.settings != before:
            changed = [row.key for row in SETTINGS.values() if getattr(self.settings, row.name) != getattr(before, row.name)]
            log.info("settings changed: %s", ", ".join(changed))  # keys only: the log holds no values
            self.cache.forget()
        if self._model_key is not None and self.settings.model_key != self._model_key:
            asyncio.ensure_future(self.load_model())

    def served(self, found: completion.Completion, started: float) -> None:
        """A suggestion went back to the editor: the statistics and the status line hear of it."""
        latency_ms = (time.perf_counter() - started) * 1e3
        if self.settings.statistics:
            self.acceptance.served(found.tag, language=found.cursor.language_id, model=self.host.description,
                                   source=found.source, latency_ms=latency_ms, chars=len(found.result.text))
        else:
            self.acceptance.last_latency_ms = latency_ms
        log.info("served suggestion %s from %s in %.0f ms", found.tag, found.source, latency_ms)
        if self.status.state == "idle":
            self.show_model_state()

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.status.log(types.MessageType.Warning, message)

    def excluded(self, uri: str) -> bool:
        """Whether ``uri`` is one of ``disabledFiles``/``disabledLanguages`` (trigger.py)."""
        document = self.workspace.text_documents.get(uri)
        return excluded(self.settings, uri, document.language_id or "" if document else "") is not None

    @property
    def client_has_inline_completion(self) -> bool:
        document = self.client_capabilities.text_document
        return document is not None and document.inline_completion is not None


@contextlib.contextmanager
def boundary(ls: WizardServer, method: str) -> Iterator[None]:
    """The one place where errors become LSP errors (and get logged with the request id). A
    backend that failed while running (an inference server that refused, stalled or answered an
    error) shows as the status (``ModelHost.failure``, once the worker is idle)."""
    try:
        yield
    except Exception as exc:
        response = to_response_error(exc)
        log.warning("request %s %s failed: %s", ls.protocol.msg_id, method, response.message)
        if not isinstance(exc, (BadRequest, NotReady, InferenceError, JsonRpcException)):
            log.exception("request %s %s: unexpected error", ls.protocol.msg_id, method)
        raise response from exc


def create_server(settings: Settings, team: Team | None = None, access: RemoteAccess = RemoteAccess()) -> WizardServer:
    """One session; ``team``: what it shares with the other sessions of a TCP server (a team of
    its own when None, as over stdio). ``access`` (the remote backend's API key, ``--allow-http``)
    comes from the command line only: no client setting reaches it."""
    server = WizardServer(settings, team or Team(settings, access=access))

    @server.feature(types.INITIALIZE)
    def initialize(ls: WizardServer, params: types.InitializeParams) -> None:
        ls.apply_settings(params.initialization_options)
        folders = params.workspace_folders or []
        ls.context.root_uri = params.root_uri or (folders[0].uri if folders else None)

    @server.feature(types.INITIALIZED)
    async def initialized(ls: WizardServer, params: types.InitializedParams) -> None:
        ls.loop = asyncio.get_running_loop()
        if ls.settings.statistics:
            ls.acceptance = AcceptanceLog.for_session(ls.loop.call_later)
        await ls.load_model()

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: WizardServer, params: types.DidChangeConfigurationParams) -> None:
        ls.apply_settings(params.settings)

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: WizardServer, params: types.DidOpenTextDocumentParams) -> None:
        ls.requests.opened(params.text_document.uri)
        if not ls.excluded(params.text_document.uri):  # secrets never become another file's context
            ls.context.opened(params.text_document.uri, params.text_document.text)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: WizardServer, params: types.DidChangeTextDocumentParams) -> None:
        last = params.content_changes[-1] if params.content_changes else None
        last_range = getattr(last, "range", None)
        deletion = last is not None and is_deletion(last.text, None if last_range is None else
                                                    last_range.start == last_range.end)
        ls.requests.changed(params.text_document.uri, deletion)
        if ls.excluded(params.text_document.uri):
            return
        if (document := ls.workspace.text_documents.get(params.text_document.uri)) is not None:
            ls.context.changed(params.text_document.uri, document.source,
                               last_range.start.line if last_range is not None else None)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls: WizardServer, params: types.DidSaveTextDocumentParams) -> None:
        if ls.excluded(params.text_document.uri):
            return
        if (document := ls.workspace.text_documents.get(params.text_document.uri)) is not None:
            ls.context.saved(params.text_document.uri, document.source)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: WizardServer, params: types.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.cache.forget(uri)
        ls.requests.closed(uri)
        ls.context.closed(uri)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: WizardServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
        started = time.perf_counter()
        with boundary(ls, "inlineCompletion"):
            automatic = params.context.trigger_kind != types.InlineCompletionTriggerKind.Invoked
            found = await complete(ls, params.text_document.uri, params.position, automatic)
        if found is None:
            return types.InlineCompletionList(items=[])
        ls.served(found, started)
        text = found.result.text
        # LSP 3.18: the client runs the item's command once the user accepted it (the whole rest).
        accepted = types.Command(title="WizardCoder: accepted", command=ACCEPTED,
                                 arguments=[{"id": found.tag, "chars": len(text)}])
        item = types.InlineCompletionItem(insert_text=text, range=found.cursor.range_replacing(found.result.replace),
                                          command=accepted)
        return types.InlineCompletionList(items=[item])

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
    async def completion_fallback(ls: WizardServer, params: types.CompletionParams) -> types.CompletionList:
        if ls.client_has_inline_completion:  # that client shows inline completions; no second model run
            return types.CompletionList(is_incomplete=False, items=[])
        started = time.perf_counter()
        with boundary(ls, "completion"):
            invoked = params.context is not None and params.context.trigger_kind == types.CompletionTriggerKind.Invoked
            found = await complete(ls, params.text_document.uri, params.position, not invoked)
        if found is None:
            return types.CompletionList(is_incomplete=True, items=[])
        ls.served(found, started)
        return types.CompletionList(is_incomplete=True, items=[completion_item(ls, found)])

    @server.command(explain.COMMAND)
    async def explain_selection(ls: WizardServer, params: types.ExecuteCommandParams) -> dict[str, str]:
        ls.prefetcher.cancel()
        with boundary(ls, explain.COMMAND):
            return await explain.explain_selection(
                ls.workspace, params.arguments, settings=ls.settings, host=ls.host, worker=ls.worker,
                stats=ls.stats, request_id=ls.protocol.msg_id,
                begin_progress=lambda: Progress.begin(ls, "Explaining selection", "explain",
                                                      params.work_done_token, cancellable=True))

    @server.command(ACCEPTED)
    async def suggestion_accepted(ls: WizardServer, params: Any) -> None:
        arguments = params if isinstance(params, list) else getattr(params, "arguments", None)
        report = _suggestion_report(arguments[0] if arguments else None)
        if report is not None:
            log.info("suggestion %s accepted (%d characters)", *report)
            ls.acceptance.accepted(*report)

    @server.feature(SHOWN)
    def suggestion_shown(ls: WizardServer, params: Any) -> None:
        if (report := _suggestion_report(params)) is not None:
            ls.acceptance.shown(report[0])

    @server.feature(PARTIALLY_ACCEPTED)
    def suggestion_partially_accepted(ls: WizardServer, params: Any) -> None:
        if (report := _suggestion_report(params)) is not None:
            log.info("suggestion %s partially accepted (%d characters)", *report)
            ls.acceptance.partially_accepted(*report)

    @server.feature(DISMISSED)
    def suggestion_dismissed(ls: WizardServer, params: Any) -> None:
        if (report := _suggestion_report(params)) is not None:
            log.info("suggestion %s dismissed", report[0])
            ls.acceptance.dismissed(report[0])

    @server.feature(STATS)
    def stats(ls: WizardServer, params: Any) -> dict[str, Any]:
        return ls.stats.snapshot(cacheHits=ls.cache.hits, skippedJobs=ls.worker.skipped,
                                 prefetch={"running": ls.prefetcher.running is not None,
                                           "started": ls.prefetcher.started, "stored": ls.prefetcher.stored,
                                           "cancelled": ls.prefetcher.cancelled, "adopted": ls.prefetcher.adopted},
                                 suggestions=ls.acceptance.records(),
                                 model=ls.host.description, modelError=ls.host.error,
                                 status={"state": ls.status.state, "message": ls.status.message},
                                 positionEncoding=encoding_name(ls.workspace.position_encoding))

    @server.feature(SERVER_STATUS)
    def server_status(ls: WizardServer, params: Any) -> dict[str, Any]:
        return ls.team.status()

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: WizardServer, params: Any) -> None:
        ls.prefetcher.cancel()
        ls.acceptance.flush()
        ls.requests.cancel_all()
        if not ls.team.shared:
            ls.team.close()

    return server


async def complete(ls: WizardServer, uri: str, position: types.Position,
                   automatic: bool) -> completion.Completion | None:
    """The completion path with this server's parts, for both completion requests."""
    return await completion.complete(ls.workspace, uri, position, settings=ls.settings, host=ls.host, cache=ls.cache,
                                     requests=ls.requests, worker=ls.worker, context=ls.context, stats=ls.stats,
                                     warn=ls.warn_once, request_id=ls.protocol.msg_id, automatic=automatic,
                                     prefetcher=ls.prefetcher)


def _suggestion_report(params: Any) -> tuple[str, int] | None:
    """``{id, chars?}`` from a client's notification or the accept command (None: malformed; the
    notification is dropped, as LSP asks, with a log line)."""
    suggestion_id = _field(params, "id")
    chars = _field(params, "chars", 0)
    if not isinstance(suggestion_id, str) or isinstance(chars, bool) or not isinstance(chars, int):
        log.warning("dropped a suggestion report without a string id and an integer chars")
        return None
    return suggestion_id, chars


def _field(params: Any, name: str, default: Any = None) -> Any:
    if isinstance(params, dict):
        return params.get(name, default)
    return getattr(params, name, default)


def completion_item(ls: WizardServer, found: completion.Completion) -> types.CompletionItem:
    """The model's completion as one completion item, marked as coming from the model."""
    text = found.result.text
    first_line = text.strip().split("\n", 1)[0]
    label = first_line if len(first_line) <= 60 else first_line[:57] + "..."
    language = found.cursor.language_id
    return types.CompletionItem(
        label=label or text.strip()[:60],
        kind=types.CompletionItemKind.Text,
        detail=f"WizardCoder model completion ({ls.host.description})",
        label_details=types.CompletionItemLabelDetails(description="wizardcoder (model)"),
        documentation=(types.MarkupContent(kind=types.MarkupKind.Markdown, value=f"```{language}\n{text}\n```")
                       if _client_shows_markdown_documentation(ls) else text),
        text_edit=types.TextEdit(range=found.cursor.range_replacing(found.result.replace), new_text=text),
        insert_text_format=types.InsertTextFormat.PlainText,
        filter_text=text,
        sort_text="0",
        data={"source": "wizardcoder", "origin": found.source},
    )


def _client_shows_markdown_documentation(ls: WizardServer) -> bool:
    """Markdown documentation only for a client that lists it in ``completionItem.documentationFormat``
    (plain text otherwise, as the specification asks)."""
    document = ls.client_capabilities.text_document
    item = document.completion.completion_item if document is not None and document.completion else None
    formats = item.documentation_format if item is not None else None
    return bool(formats) and types.MarkupKind.Markdown in formats
