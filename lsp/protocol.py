"""The JSON-RPC and LSP rules this server keeps where pygls 2.1.1 does not: every request gets
exactly one answer, the session follows LSP's lifecycle, nothing a client sends can crash the
server, and no message's content reaches the log at the default level.

pygls parses a frame with its ``structure_message`` as ``json.loads``' object hook: a request
whose parameters fail validation (``line: -1``, a missing ``position``) raises inside the parser,
where the request's id is unknown, so the client gets only a ``window/showMessage`` pop-up and
waits for ever. Here a frame goes through ``receive``, which answers in JSON-RPC's terms:

- not UTF-8 JSON: -32700 ParseError (id null); not a JSON-RPC 2.0 message: -32600 InvalidRequest
  (with the id when there is one; a notification is dropped with a log line that quotes nothing);
- parameters that do not fit the method's LSP type: -32602 InvalidParams naming the fields (types
  checked strictly: a line ``"1"`` or ``1.5`` is not an integer, a text ``5`` is not a string);
- before ``initialize``: -32002 ServerNotInitialized; a second ``initialize``, or any request after
  ``shutdown``: -32600 InvalidRequest; ``exit`` ends the session with 0 after ``shutdown``, 1 without;
- a handler that fails unexpectedly: its error without pygls' traceback in ``data``.

Further departures from pygls' stock protocol:
- Position encoding: pygls takes the client's first offer; this server prefers UTF-8 whenever
  the client offers it (Python counts code points, so UTF-8 and UTF-16 cost the same to convert,
  and UTF-8 is what most editors speak natively), and falls back to UTF-16, the LSP default.
- Documents live in ``EditorWorkspace`` (``documents.py``): edits applied as the editor applies them.
- ``initialized`` runs the server's handler (which loads the model) once; later ones are ignored.
- A request to the client (``window/workDoneProgress/create``…) fails after
  ``CLIENT_REPLY_TIMEOUT_S`` without an answer, so a client that never answers cannot keep the
  model from loading.
- ``workspace/executeCommand``: pygls runs a command as a separate inner task that
  ``$/cancelRequest`` cannot reach. Dispatching here, as one coroutine registered under the
  request's id, lets a cancel reach the command and through it the engine.
- ``wizardcoder/documentDigests``: the SHA-256 of each open document, so that a test can check
  that the server's copy equals the editor's without the server ever sending text back.
- Errors outside a request (a failing notification handler) are logged; the client sees at most
  one ``window/showMessage`` per session about them.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import uuid
from collections.abc import Callable, Generator
from concurrent.futures import Future
from typing import Any, Union

import attrs
from cattrs import transform_error
from lsprotocol import types
from pygls.capabilities import ServerCapabilitiesBuilder
from pygls.exceptions import (JsonRpcException, JsonRpcInvalidParams, JsonRpcInvalidRequest, JsonRpcParseError,
                              JsonRpcRequestCancelled, JsonRpcServerNotInitialized)
from pygls.protocol import JsonRPCNotification, JsonRPCRequestMessage, LanguageServerProtocol, _dict_to_object
from pygls.protocol.language_server import lsp_method
from pygls.uris import from_fs_path

from .documents import EditorWorkspace
from .errors import to_response_error
from .framing import Frame

log = logging.getLogger(__name__)
DOCUMENT_DIGESTS = "wizardcoder/documentDigests"
_SHOWN_VERSION = re.compile(r"[0-9.]{1,8}")


def _is_id(value: Any) -> bool:
    return isinstance(value, str) or isinstance(value, int) and not isinstance(value, bool)


def _name(value: Any) -> str:
    """A method name for the log: the client's own words, but short and quoted."""
    return repr(value[:80]) if isinstance(value, str) else f"<{type(value).__name__}>"


class WizardProtocol(LanguageServerProtocol):
    CLIENT_REPLY_TIMEOUT_S = 10.0

    def __init__(self, server: Any, converter: Any):
        super().__init__(server, converter)
        for kind, check in ((int, _strict_int), (str, _strict_str), (bool, _strict_bool),
                            (Union[int, str], _strict_id)):  # request ids and progress tokens
            converter.register_structure_hook(kind, check)
        self._outgoing: set[Any] = set()  # ids of our requests to the client still awaiting an answer
        self.initialized = False  # an initialize request was accepted
        self._initialized_seen = False  # the initialized notification was handled
        self.exit_code: int | None = None  # set by exit; the transport then stops reading
        self._error_shown = False

    # Receiving ---------------------------------------------------------------------------------
    def receive(self, frame: Frame) -> None:
        """One frame from the transport: checked, then dispatched, or answered with an error."""
        if frame.body is None:
            log.warning("dropped %d bytes of a broken frame: %s", frame.dropped, frame.problem)
            self._send_error(None, JsonRpcParseError(message=f"wizardcoder: broken frame: {frame.problem}"))
            return
        try:
            data = json.loads(frame.body.decode("utf-8"), parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "not JSON"
            log.warning("dropped a %d-byte message that is %s", len(frame.body), reason)
            self._send_error(None, JsonRpcParseError(message=f"wizardcoder: the message is {reason}"))
            return
        try:
            self._receive_message(data)
        except Exception as exc:  # a bug here must not end the session: log it, answer if we can
            log.exception("failed to handle a message")
            msg_id = data.get("id") if isinstance(data, dict) else None
            if isinstance(data, dict) and "method" in data and _is_id(msg_id):
                self._send_error(msg_id, to_response_error(exc))

    def _receive_message(self, data: Any) -> None:
        if not isinstance(data, dict):
            kind = "a batch (LSP has none)" if isinstance(data, list) else f"a JSON {type(data).__name__}"
            log.warning("dropped a message that is %s", kind)
            self._send_error(None, JsonRpcInvalidRequest(message=f"wizardcoder: a message must be an object, not {kind}"))
            return
        has_id, msg_id, method = "id" in data, data.get("id"), data.get("method")
        if has_id and not _is_id(msg_id):
            log.warning("dropped a message whose id is a %s", type(msg_id).__name__)
            self._send_error(None, JsonRpcInvalidRequest(message="wizardcoder: an id must be a string or an integer"))
            return
        if data.get("jsonrpc") != self.VERSION:
            version = data.get("jsonrpc")
            shown = version if isinstance(version, str) and _SHOWN_VERSION.fullmatch(version) else (
                "missing" if version is None else f"a {type(version).__name__}")
            log.warning("dropped a message with jsonrpc %s (not \"2.0\"): method %s, id %r", shown,
                        _name(method) if "method" in data else "none", msg_id if has_id else None)
            if has_id and "method" in data:
                self._send_error(msg_id, JsonRpcInvalidRequest(message='wizardcoder: "jsonrpc" must be "2.0"'))
            return
        if "method" not in data:
            self._receive_response(data)
            return
        if not isinstance(method, str):
            log.warning("dropped a message whose method is %s", _name(method))
            if has_id:
                self._send_error(msg_id, JsonRpcInvalidRequest(message="wizardcoder: a method must be a string"))
            return
        if "params" in data and not isinstance(data["params"], (dict, list)) and data["params"] is not None:
            if has_id:
                self._send_error(msg_id, JsonRpcInvalidParams(message="wizardcoder: params must be an object or an array"))
            else:
                self._dropped_notification(method, "params that are not an object or an array")
            return
        if has_id:
            self._receive_request(msg_id, method, data)
        else:
            self._receive_notification(method, data)

    def _receive_request(self, msg_id: Any, method: str, data: dict[str, Any]) -> None:
        refusal = self._lifecycle_refusal(method)
        if refusal is not None:
            log.warning("refused request %r %s: %s", msg_id, _name(method), refusal.message)
            self._send_error(msg_id, refusal)
            return
        if method == types.INITIALIZE and (refused := self._admit(data)) is not None:
            self._send_error(msg_id, JsonRpcInvalidRequest(message=refused))
            self.exit_code = 1  # the transport closes the connection after the answer
            return
        try:
            message = self._structure(method, data, JsonRPCRequestMessage)
        except _Invalid as invalid:
            log.warning("request %r %s: invalid params: %s", msg_id, _name(method), invalid.detail)
            self._send_error(msg_id, JsonRpcInvalidParams(
                message=f"wizardcoder: invalid params for {method}: {invalid.detail}"))
            return
        if method == types.INITIALIZE:
            self.initialized = True
        log.debug("request %r %s", msg_id, _name(method))
        contextvars.copy_context().run(self._handle_request, msg_id, method, message.params)

    def _admit(self, data: dict[str, Any]) -> str | None:
        """The server's word on this client (``WizardServer.admit``: its token), before anything
        of its ``initialize`` is structured or logged: None to go on, else why not."""
        admit = getattr(self._server, "admit", None)
        if admit is None:
            return None
        params = data.get("params")
        options = params.get("initializationOptions") if isinstance(params, dict) else None
        return admit(options)

    def _receive_notification(self, method: str, data: dict[str, Any]) -> None:
        if method == types.EXIT:
            self._exit()
            return
        if not self.initialized or self._shutdown:
            log.info("dropped notification %s %s", _name(method),
                     "before initialize" if not self.initialized else "after shutdown")
            return
        if method == types.INITIALIZED:
            if self._initialized_seen:
                log.warning("ignored a repeated initialized notification (the model is not reloaded)")
                return
            self._initialized_seen = True
        try:
            message = self._structure(method, data, JsonRPCNotification)
        except _Invalid as invalid:
            self._dropped_notification(method, f"invalid params: {invalid.detail}")
            return
        log.debug("notification %s", _name(method))
        contextvars.copy_context().run(self._handle_notification, method, message.params)

    def _receive_response(self, data: dict[str, Any]) -> None:
        msg_id = data.get("id")
        if not _is_id(msg_id) or ("result" in data) == ("error" in data):
            log.warning("dropped a response without a usable id, or without exactly one of result and error")
            return
        if msg_id not in self._outgoing:  # pygls would match the client's own pending request
            log.warning("dropped a response to %r, which is no request of this server's", msg_id)
            return
        self._outgoing.discard(msg_id)
        waiting = self._request_futures.get(msg_id)
        if waiting is not None and waiting.done():
            # The request that sent ours is gone ($/cancelRequest of an explain cancels its await
            # on window/workDoneProgress/create): pygls would set a result on a cancelled future
            # (InvalidStateError). The answer has no one left to hear it.
            self._request_futures.pop(msg_id, None)
            self._result_types.pop(msg_id, None)
            log.info("dropped the answer to %r: its request was cancelled meanwhile", msg_id)
            return
        if "error" in data:
            try:
                error = self._converter.structure(data["error"], types.ResponseError)
            except Exception:
                error = types.ResponseError(code=types.ErrorCodes.InternalError, message="unreadable error")
            self._handle_response(msg_id, None, error)
            return
        result_type = self._result_types.pop(msg_id, None)
        result = data["result"]
        if result_type is not None:
            try:
                result = self._converter.structure(data, result_type).result
            except Exception:
                log.warning("response %r: the result does not fit its type; passed on as is", msg_id)
        else:
            result = _dict_to_object(result)
        self._handle_response(msg_id, result)

    def _structure(self, method: str, data: dict[str, Any], generic: type) -> Any:
        """The message as lsprotocol's type for ``method`` (pygls' generic one for other methods,
        params as attribute objects); ``_Invalid`` with the fields at fault (never their values)."""
        message_type = self.get_message_type(method)
        if message_type is not None and ("id" in attrs.fields_dict(message_type)) != ("id" in data):
            raise _Invalid(f"{method} is a {'request' if 'id' not in data else 'notification'} in LSP: "
                           f"send it {'with' if 'id' not in data else 'without'} an id")
        if message_type is None:
            params = data.get("params")
            kwargs = {"id": data["id"]} if "id" in data else {}
            return generic(method=method, jsonrpc=self.VERSION, params=_dict_to_object(params), **kwargs)
        try:
            return self._converter.structure(data, message_type)
        except Exception as exc:
            try:
                detail = "; ".join(transform_error(exc))
            except Exception:
                detail = type(exc).__name__
            raise _Invalid(detail) from None

    def _lifecycle_refusal(self, method: str) -> JsonRpcException | None:
        if method == types.INITIALIZE:
            if self.initialized:
                return JsonRpcInvalidRequest(message="wizardcoder: the server is already initialized "
                                                     "(initialize is sent once per session)")
            return None
        if not self.initialized:
            return JsonRpcServerNotInitialized(message="wizardcoder: the server is not initialized "
                                                       "(send initialize first)")
        if self._shutdown:
            return JsonRpcInvalidRequest(message="wizardcoder: the server is shut down (only exit is accepted)")
        return None

    def _dropped_notification(self, method: str, why: str) -> None:
        log.warning("dropped notification %s: %s", _name(method), why)
        self._show_error_once(f"ignored a {method[:80]} notification with {why}")

    def _exit(self) -> None:
        self.exit_code = 0 if self._shutdown else 1
        log.info("exit %s shutdown: exit code %d", "after" if self._shutdown else "without", self.exit_code)
        for future in list(self._request_futures.values()):
            if not future.done():
                future.cancel()

    # Answering ---------------------------------------------------------------------------------
    def _send_error(self, msg_id: Any, error: JsonRpcException) -> None:
        self._send_data(types.ResponseErrorMessage(id=msg_id, error=error.to_response_error()))

    def _send_handler_result(self, future: Future[Any], *, msg_id: Any) -> None:
        """pygls' version, without a traceback in the error's data and with one log line for an
        expected error (pygls logs a traceback for each)."""
        self._request_futures.pop(msg_id, None)
        if future.cancelled():
            error: JsonRpcException = JsonRpcRequestCancelled(message=f'Request with id "{msg_id}" is canceled')
            self._send_error(msg_id, error)
            return
        exc = future.exception()
        if exc is None:
            self._send_response(msg_id, result=future.result())
            return
        if not isinstance(exc, JsonRpcException):
            log.error("request %r failed unexpectedly", msg_id, exc_info=(type(exc), exc, exc.__traceback__))
        else:
            log.info("request %r: error %d: %s", msg_id, exc.code, exc.message)
        self._send_error(msg_id, to_response_error(exc))

    def _handle_cancel_notification(self, msg_id: Any) -> None:
        """pygls' cancel, for the client's own requests only (not this server's to the client)."""
        if msg_id in self._outgoing:
            log.warning("ignored a cancel of %r, a request of this server's", msg_id)
            return
        super()._handle_cancel_notification(msg_id)

    def _check_handler_result(self, future: Future[Any]) -> None:
        if future.cancelled() or (exc := future.exception()) is None:
            return
        log.error("a notification handler failed", exc_info=(type(exc), exc, exc.__traceback__))
        self._show_error_once(f"internal error in a notification handler: {type(exc).__name__}")

    def _show_error_once(self, message: str) -> None:
        """At most one pop-up per session for problems no request is waiting to hear about."""
        if self._error_shown or not self.initialized:
            return
        self._error_shown = True
        self.notify(types.WINDOW_SHOW_MESSAGE, types.ShowMessageParams(
            type=types.MessageType.Warning,
            message=f"wizardcoder: {message} (further problems of this kind go to the server log only)"))

    def send_request(self, method: str, params: Any | None = None, callback: Callable[[Any], None] | None = None,
                     msg_id: Any | None = None) -> Future[Any]:
        """pygls' request to the client, failed with an error when no answer comes in time."""
        request_id = msg_id if msg_id is not None else str(uuid.uuid4())
        self._outgoing.add(request_id)
        future = super().send_request(method, params, callback, request_id)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return future
        loop.call_later(self.CLIENT_REPLY_TIMEOUT_S, self._expire, request_id, method)
        return future

    def _expire(self, request_id: Any, method: str) -> None:
        if request_id not in self._outgoing:
            return
        self._outgoing.discard(request_id)
        future = self._request_futures.pop(request_id, None)
        self._result_types.pop(request_id, None)
        if future is not None and not future.done():
            log.warning("the client did not answer %s within %.0f s", method, self.CLIENT_REPLY_TIMEOUT_S)
            future.set_exception(JsonRpcException(
                message=f"the client did not answer {method} within {self.CLIENT_REPLY_TIMEOUT_S:.0f} s"))

    # LSP methods -------------------------------------------------------------------------------
    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams) -> Generator[Any, Any, types.InitializeResult]:
        """pygls' initialize, with the encoding preference above and ``EditorWorkspace``."""
        general = params.capabilities.general
        if general is not None and general.position_encodings:
            offered = list(general.position_encodings)
            if types.PositionEncodingKind.Utf8 in offered:
                general.position_encodings = [types.PositionEncodingKind.Utf8]
            else:
                general.position_encodings = [e for e in offered if e == types.PositionEncodingKind.Utf16] or offered
        self._server.process_id = params.process_id
        self.client_capabilities = params.capabilities
        encoding = ServerCapabilitiesBuilder.choose_position_encoding(self.client_capabilities)
        root_uri = params.root_uri
        if params.root_path is not None and root_uri is None:
            root_uri = from_fs_path(params.root_path)
        sync_kind = self._server._text_document_sync_kind
        self._workspace = EditorWorkspace(root_uri, sync_kind, params.workspace_folders or [], encoding)
        if (user_handler := self.fm.features.get(types.INITIALIZE)) is not None:
            yield user_handler, (params,), None
        self.server_capabilities = ServerCapabilitiesBuilder(
            self.client_capabilities, set({**self.fm.features, **self.fm.builtin_features}.keys()),
            self.fm.feature_options, list(self.fm.commands.keys()), sync_kind,
            self._server._notebook_document_sync, encoding).build()
        return types.InitializeResult(capabilities=self.server_capabilities, server_info=self.server_info)

    @lsp_method(types.EXIT)
    def lsp_exit(self, *args: Any) -> None:
        """Reached only through pygls' own dispatch; ``receive`` handles exit before it."""
        self._exit()

    @lsp_method(types.WORKSPACE_EXECUTE_COMMAND)
    async def lsp_workspace__execute_command(self, params: types.ExecuteCommandParams) -> Any:
        handler = self.fm.commands.get(params.command)
        if handler is None:
            known = ", ".join(sorted(self.fm.commands)) or "none"
            raise JsonRpcInvalidParams(message=f"wizardcoder: unknown command {params.command!r} (this server has: {known})")
        return await handler(params)

    @lsp_method(DOCUMENT_DIGESTS)
    def lsp_document_digests(self, params: Any) -> dict[str, Any]:
        """Version, length and SHA-256 of each open document (never its text)."""
        return {"documents": self.workspace.digests()}


class _Invalid(Exception):
    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


# cattrs converts by calling the type: a line "1" or 1.5 became 1 and a text 5 became "5", so the
# server applied edits that the editor never made. LSP's schema says integer, string, boolean.
def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer")
    return value


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _strict_id(value: Any, _: type) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError("expected an integer or a string")
    return value


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")

