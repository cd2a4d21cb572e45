"""The LSP boundary for errors: ``inference`` raises its own family, handlers raise
``BadRequest``; ``to_response_error`` turns either into the one JSON-RPC error the client sees.

Handlers raise freely; ``server.py`` converts once (llm-ls' ``impl From<Error> for LspError``).
"""

from __future__ import annotations

from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams

from ..inference.errors import InferenceError

REQUEST_FAILED = -32803  # LSP's RequestFailed: valid request, the server could not serve it


class BadRequest(Exception):
    """The request cannot be served as asked: a position past the end, a document not open,
    wrong command arguments. The message says what was wrong."""


class NotReady(Exception):
    """No model is loaded (it is loading, or loading failed): the message says which."""


def to_response_error(exc: Exception) -> JsonRpcException:
    if isinstance(exc, JsonRpcException):
        return exc
    if isinstance(exc, BadRequest):
        return JsonRpcInvalidParams(message=f"wizardcoder: {exc}")
    if isinstance(exc, (InferenceError, NotReady)):
        return JsonRpcException(message=f"wizardcoder: {exc}", code=REQUEST_FAILED)
    return JsonRpcException(message=f"wizardcoder: internal error: {type(exc).__name__}: {exc}",
                            code=REQUEST_FAILED)
