"""The remote backend: the same completion path in front of an inference server that already
scales (llama.cpp's server, vLLM, Text Generation Inference, llama-cpp-python's server).

Why a text-level engine beside ``Engine`` and not a ``Backend``: a Backend returns the logits of
each position, which no inference server sends; a server streams text. ``RemoteEngine`` offers
what the language server uses of an engine (``tokenizer``, ``max_context``, ``model_name``,
``generate(prompt_ids, params, cancel, on_text) -> Generation``, ``reset``, ``close``: the
``TextEngine`` protocol of engine.py), so the prompt builder, post-processing, cache, statistics
and the editors stay one code path whatever runs the model.

What stays ours: the prompt (built with the model's own tokenizer: the named model's GGUF, a
GGUF, a checkpoint directory or a ``tokenizer.json``) and the stop rules. The stream's text goes
through the same ``on_text`` as the local engine's tokens; when post-processing has decided (or
a stop string shows, or the request is cancelled) the HTTP stream is closed, which is how both
servers stop generating. Decoding is greedy, without penalties (llama.cpp's servers default to a
repetition penalty of 1.1; ``repeat_penalty: 1`` turns it off, other servers ignore the field).

Two protocols, one adapter each (the request body, the reading of one event; wire types stay in
this file):

- ``llama.cpp``: ``POST /completion`` with the prompt as token ids, so the server runs exactly
  our ids (no second tokenization), ``cache_prompt`` for its KV reuse; ``GET /props`` at load
  (the context size).
- ``openai``: ``POST /v1/completions`` with the prompt as text (special tokens spelled out; the
  server tokenizes it, parsing those spellings), ``stop``, ``max_tokens``, ``stream`` (server-sent
  events), as vLLM, TGI, llama-cpp-python's and llama.cpp's servers accept it; ``GET /v1/models``
  at load (the served model's name when ``remoteModel`` is ``auto``, vLLM's ``max_model_len``).
  Text is the one prompt form every such server takes; the price: a special-token spelling that
  the user typed (``<|im_end|>`` in a file) becomes that token on the server, where our own
  tokenization keeps it text.

Every failure is a ``RemoteError`` (inference/errors.py) with the endpoint in its message:
refused connection, timeout or a stall mid-stream (``http_stream.py``'s watchdog), an error
status, a body that is not the protocol's, a stream that ends before its final event.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .engine import CancelToken, Generation, GenerationParams, OnText, _stop_string_cut, check_prompt, interruption
from .errors import RemoteError
from .http_stream import ApiKey, Endpoint, get_json, post_events
from .tokenizer import Tokenizer

PROTOCOLS = ("openai", "llama.cpp")
DEFAULT_CONTEXT = 4096  # when neither the server nor the tokenizer's source says


@dataclass(frozen=True)
class RemoteAccess:
    """What only the server's operator decides (command-line flags, never a client's settings):
    the API key, the one endpoint it may be sent to, and whether ``http://`` may leave loopback."""

    api_key: ApiKey | None = None
    key_endpoint: str | None = None  # the --endpoint the key was given with
    allow_http: bool = False


@dataclass(frozen=True)
class RemoteConfig:
    endpoint: str
    protocol: str = "openai"
    model: str = "auto"  # the served model's name (openai); auto: the first /v1/models lists
    timeout_s: float = 15.0
    access: RemoteAccess = RemoteAccess()


@dataclass(frozen=True)
class Piece:
    """One streamed event, read: new text, and whether (and why) the completion ended."""

    text: str
    ids: tuple[int, ...] | None = None  # the tokens of ``text`` when the server sends them
    finish: str | None = None  # eos | stop_string | max_tokens; None: more follows
    cached: int | None = None  # prompt tokens the server took from its cache


@dataclass(frozen=True)
class ServerInfo:
    model: str  # the name to send (openai) or to show
    context: int | None  # the server's context size, when it says


class WireProtocol(Protocol):
    name: str
    path: str

    def probe(self, endpoint: Endpoint, headers: dict[str, str], timeout_s: float, model: str) -> ServerInfo: ...

    def body(self, prompt_ids: Sequence[int], prompt_text: str, stops: Sequence[str], budget: int,
             model: str) -> dict[str, Any]: ...

    def read(self, event: dict[str, Any]) -> Piece: ...


def _server_error(event: dict[str, Any]) -> None:
    """An error reported inside the stream (llama.cpp and vLLM send ``{"error": …}`` as data)."""
    error = event.get("error")
    if error is not None:
        message = error.get("message", error) if isinstance(error, dict) else error
        raise RemoteError(f"the server reported an error mid-stream: {message}")


def _malformed(what: str, event: dict[str, Any]) -> RemoteError:
    return RemoteError(f"malformed event ({what}): {str(event)[:160]}")


class LlamaCppProtocol:
    """llama.cpp's server, ``/completion`` (tools/server/README.md of llama.cpp)."""

    name, path = "llama.cpp", "/completion"
    _FINISH = {"eos": "eos", "word": "stop_string", "limit": "max_tokens"}

    def probe(self, endpoint: Endpoint, headers: dict[str, str], timeout_s: float, model: str) -> ServerInfo:
        props = get_json(endpoint, "/props", headers, timeout_s)
        if not isinstance(props, dict):
            raise RemoteError(f"{endpoint}/props: not llama.cpp's server properties: {str(props)[:160]}")
        name = props.get("model_alias") or Path(str(props.get("model_path") or "")).name
        settings = props.get("default_generation_settings")
        context = settings.get("n_ctx") if isinstance(settings, dict) else None
        return ServerInfo(str(name or model), context if isinstance(context, int) and context > 0 else None)

    def body(self, prompt_ids: Sequence[int], prompt_text: str, stops: Sequence[str], budget: int,
             model: str) -> dict[str, Any]:
        return {"prompt": list(prompt_ids), "n_predict": budget, "stream": True, "stop": list(stops),
                "cache_prompt": True, "return_tokens": True, "temperature": 0, "top_k": 1, "repeat_penalty": 1.0}

    def read(self, event: dict[str, Any]) -> Piece:
        _server_error(event)
        text = event.get("content", "")
        if not isinstance(text, str):
            raise _malformed("content is not a string", event)
        tokens = event.get("tokens")
        ids = tuple(tokens) if isinstance(tokens, list) and all(isinstance(t, int) for t in tokens) else None
        if not event.get("stop"):
            return Piece(text, ids)
        timings = event.get("timings")
        cached = timings.get("cache_n") if isinstance(timings, dict) else None
        return Piece(text, ids, self._FINISH.get(str(event.get("stop_type")), "eos"),
                     cached if isinstance(cached, int) else None)


class OpenAIProtocol:
    """OpenAI's legacy completions API, streamed: ``/v1/completions``."""

    name, path = "openai", "/v1/completions"
    MAX_STOPS = 4  # OpenAI's limit, which some compatible servers enforce

    def probe(self, endpoint: Endpoint, headers: dict[str, str], timeout_s: float, model: str) -> ServerInfo:
        listing = get_json(endpoint, "/v1/models", headers, timeout_s)
        models = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(models, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in models):
            raise RemoteError(f"{endpoint}/v1/models: not an OpenAI model list: {str(listing)[:160]}")
        if model == "auto":
            if not models:
                raise RemoteError(f"{endpoint}/v1/models lists no model; set remoteModel")
            entry = models[0]
        else:
            entry = next((m for m in models if m["id"] == model), {"id": model})
        context = entry.get("max_model_len")  # vLLM's
        return ServerInfo(entry["id"], context if isinstance(context, int) and context > 0 else None)

    def body(self, prompt_ids: Sequence[int], prompt_text: str, stops: Sequence[str], budget: int,
             model: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "prompt": prompt_text, "max_tokens": budget, "stream": True,
                                "temperature": 0, "top_p": 1, "repeat_penalty": 1.0}
        if stops:
            body["stop"] = list(stops)[: self.MAX_STOPS]  # the rest are still ours (checked on the text)
        return body

    def read(self, event: dict[str, Any]) -> Piece:
        _server_error(event)
        choices = event.get("choices")
        if not isinstance(choices, list):
            raise _malformed("no choices", event)
        if not choices:  # a usage-only chunk
            return Piece("")
        choice = choices[0]
        text = choice.get("text", "") if isinstance(choice, dict) else None
        if not isinstance(text, str):
            raise _malformed("the choice has no text", event)
        reason = choice.get("finish_reason")
        if reason is None:
            return Piece(text)
        if reason == "length":
            return Piece(text, finish="max_tokens")
        if reason == "stop":  # vLLM says which stop string in stop_reason; others do not tell
            return Piece(text, finish="stop_string" if isinstance(choice.get("stop_reason"), str) else "eos")
        raise RemoteError(f"the server ended the completion with finish_reason {reason!r}")


WIRE_PROTOCOLS: dict[str, WireProtocol] = {"openai": OpenAIProtocol(), "llama.cpp": LlamaCppProtocol()}


class _TextRun:
    """The engine's stop rules (``engine._Run``) for text that arrives in pieces: stop strings,
    the caller's ``on_text`` (done), then cancellation and the deadline. EOS and the token budget
    are the server's (it was asked for ``budget`` tokens and stops at the model's end tokens)."""

    def __init__(self, params: GenerationParams, cancel: CancelToken, on_text: OnText | None):
        self.params, self.cancel, self.on_text = params, cancel, on_text
        self.text = ""
        self.reason = "max_tokens"

    def interrupted(self) -> str | None:
        return interruption(self.params, self.cancel)

    def accept(self, piece: str) -> bool:
        """Add one piece; False ends the generation (``reason`` says why)."""
        text = self.text + piece
        cut = _stop_string_cut(text, self.params.stop_strings)
        if cut is not None:
            self.reason, self.text = "stop_string", text[:cut]
            return False
        self.text = text
        if self.on_text is not None and piece:
            go_on = self.on_text(text)
            if not isinstance(go_on, bool):
                raise TypeError(f"on_text must return whether to go on (a bool), not {go_on!r}")
            if not go_on:
                self.reason = "done"
                return False
        early = self.interrupted()
        if early:
            self.reason = early
            return False
        return True


class RemoteEngine:
    """Generations from an inference server; one at a time, like ``Engine`` (the worker runs one
    job at a time anyway; the lock keeps a second caller from opening a second stream)."""

    heals = False  # a server's sampler takes no constraint on the first tokens: no token healing

    def __init__(self, tokenizer: Tokenizer, endpoint: Endpoint, protocol: WireProtocol, info: ServerInfo,
                 context: int, timeout_s: float, headers: dict[str, str]):
        self.tokenizer = tokenizer
        self.endpoint, self.protocol, self.info = endpoint, protocol, info
        self.max_context = context
        self.timeout_s = timeout_s
        self._headers = headers  # holds the API key: never logged, never in a message
        self.model_name = f"{info.model} at {endpoint} ({protocol.name})"
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RemoteEngine({self.model_name})"

    def generate(self, prompt_ids: Sequence[int], params: GenerationParams = GenerationParams(),
                 cancel: CancelToken | None = None, on_text: OnText | None = None) -> Generation:
        """Greedy continuation of ``prompt_ids`` by the server, streamed through ``on_text`` (as
        ``Engine.generate``: False from it ends the generation as ``done`` and closes the stream)."""
        check_prompt(prompt_ids, self.max_context)
        if params.heal:
            raise ValueError("a remote engine cannot heal tokens (heals is False): build the prompt without healing")
        with self._lock:
            return self._generate(list(prompt_ids), params, cancel or CancelToken(), on_text)

    def _generate(self, prompt: list[int], params: GenerationParams, cancel: CancelToken,
                  on_text: OnText | None) -> Generation:
        run = _TextRun(params, cancel, on_text)
        budget = min(params.max_new_tokens, self.max_context - len(prompt))
        early = run.interrupted()
        if early:
            return Generation([], "", early, len(prompt), 0, 0.0, 0.0)
        body = self.protocol.body(prompt, self.tokenizer.decode(prompt, skip_special=False), params.stop_strings,
                                  budget, self.info.model)
        started = time.perf_counter()
        first: float | None = None
        ids: list[int] = []
        ids_known, cached, finished = True, 0, False
        events = post_events(self.endpoint, self.protocol.path, body, self._headers, self.timeout_s, cancel)
        with contextlib.closing(events):  # closing it closes the connection: the server stops generating
            for event in events:
                try:
                    piece = self.protocol.read(event)
                except RemoteError as exc:
                    raise RemoteError(f"{self.endpoint}{self.protocol.path}: {exc}") from None
                if first is None:
                    first = time.perf_counter()
                if piece.ids is None:
                    ids_known = ids_known and not piece.text  # a final event without text may carry none
                else:
                    ids.extend(piece.ids)
                cached = piece.cached if piece.cached is not None else cached
                if not run.accept(piece.text):
                    finished = True
                    break
                if piece.finish is not None:
                    run.reason = piece.finish
                    if run.reason == "max_tokens" and budget < params.max_new_tokens:
                        run.reason = "context"
                    finished = True
                    break
        if not finished:
            if not cancel.cancelled:
                raise RemoteError(f"{self.endpoint}{self.protocol.path}: the stream ended before the completion did "
                                  "(no final event)")
            run.reason = "cancelled"
        done = time.perf_counter()
        first = first or done
        token_ids = ids if ids_known and run.reason != "stop_string" else self.tokenizer.encode(run.text)
        return Generation(token_ids, run.text, run.reason, len(prompt), cached, (first - started) * 1e3,
                          (done - first) * 1e3)

    def reset(self) -> None:
        """The server owns its cache; nothing here to forget."""

    def close(self) -> None:
        """Each request has its own connection; nothing stays open between them."""


def tokenizer_source(path: Path) -> tuple[Tokenizer, int | None]:
    """The tokenizer of the model the server runs, and the context its source declares: a
    ``tokenizer.json``, or a checkpoint (GGUF, directory) read for its tokenizer only."""
    if path.is_file() and path.suffix == ".json":
        return Tokenizer.from_file(path), None
    from .weights import open_checkpoint

    checkpoint = open_checkpoint(path)
    return checkpoint.tokenizer(), checkpoint.config.max_positions


def open_remote(tokenizer_path: Path, config: RemoteConfig) -> RemoteEngine:
    """Check the endpoint and the access rules, ask the server what it serves, and return the engine."""
    if config.protocol not in WIRE_PROTOCOLS:
        raise RemoteError(f"unknown remote protocol {config.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    access = config.access
    endpoint = Endpoint.parse(config.endpoint, access.allow_http)
    headers: dict[str, str] = {}
    if access.api_key is not None:
        bound = Endpoint.parse(access.key_endpoint, access.allow_http) if access.key_endpoint else None
        if bound is None or bound.origin != endpoint.origin:
            raise RemoteError(f"the API key is sent only to the endpoint given on the server's command line "
                              f"(--endpoint {bound or '(none)'}), not to {endpoint}: drop the editor's endpoint setting "
                              "or start the server with that endpoint")
        headers = access.api_key.headers()
    tokenizer, declared = tokenizer_source(tokenizer_path)
    protocol = WIRE_PROTOCOLS[config.protocol]
    info = protocol.probe(endpoint, headers, config.timeout_s, config.model)
    known = [c for c in (info.context, declared) if c]
    return RemoteEngine(tokenizer, endpoint, protocol, info, min(known) if known else DEFAULT_CONTEXT,
                        config.timeout_s, headers)
