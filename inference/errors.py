"""The one error family of ``inference``: messages a user can act on (which file, which tensor).

The language server converts these once, at its boundary, into LSP errors or a status line.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every error that ``inference`` raises on purpose."""


class ModelLoadError(InferenceError):
    """A model file or directory cannot be used: missing, corrupt, unsupported, inconsistent."""


class ModelFetchError(ModelLoadError):
    """A named model (inference/models.py) could not be fetched from the package index or verified."""


class TokenizerError(InferenceError):
    """The tokenizer files are missing or lack a token the prompt format needs."""


class BackendError(InferenceError):
    """A backend failed while running: device gone, out of memory, runtime error."""


class ContextOverflowError(InferenceError):
    """The prompt plus the tokens to generate do not fit the model's context."""


class RemoteError(BackendError):
    """The inference server behind ``backend: remote`` failed a request: refused or timed-out
    connection, an error status, a stream that is not the protocol's, a server that stalls. The
    message names the endpoint and what to check; it never holds the API key."""
