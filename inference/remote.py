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

Three protocols, one adapter each (the request, the reading of one event; wire types stay in
this file):

- ``llama.cpp``: ``POST /completion`` with the prompt as token ids, so the server runs exactly
  our ids (no second tokenization), ``cache_prompt`` for its KV reuse; ``GET /props`` at load
  (the context size).
- ``llama.cpp-infill``: llama.cpp's own FIM endpoint, ``POST /infill``, for a fill-in-the-middle
  prompt (``input_prefix``, ``input_suffix``, the repository head's snippets as ``input_extra``
  chunks), taken apart from our prompt's ids; the server then builds the FIM prompt itself (its
  ``format_prompt_infill``), with its own names in the repository head (``myproject``, ``filename``)
  and its own cut of the chunks to its context. Prompts of other modes go to ``/completion``
  as ids. ``LlamaCppInfillProtocol`` says what that changes.
- ``openai``: ``POST /v1/completions`` with the prompt as text (special tokens spelled out; the
  server tokenizes it, parsing those spellings), ``stop``, ``max_tokens``, ``stream`` (server-sent
  events), as vLLM, TGI, llama-cpp-python's and llama.cpp's servers accept it; ``GET /v1/models``
  at load (the served model's name when ``remoteModel`` is ``auto``, vLLM's ``max_model_len``).
  Text is the one prompt form every such server takes; the price: a special-token spelling that
  the user typed (``<|im_end|>`` in a file) becomes that token on the server, where our own
  tokenization keeps it text.

Connections are kept alive between requests where the server allows it (``http_stream.Connections``).

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
from .http_stream import ApiKey, Connections, Endpoint, get_json, post_events
from .tokenizer import Tokenizer

PROTOCOLS = ("openai", "llama.cpp", "llama.cpp-infill")
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

    def probe(self, connections: Connections, headers: dict[str, str], model: str) -> ServerInfo: ...

    def request(self, prompt_ids: Sequence[int], tokenizer: Tokenizer, stops: Sequence[str], budget: int,
                model: str, deadline_ms: int | None) -> tuple[str, dict[str, Any]]:
        """The path and JSON body that ask for ``budget`` greedy tokens after the prompt."""
        ...

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

    name = "llama.cpp"
    _FINISH = {"eos": "eos", "word": "stop_string", "limit": "max_tokens"}

    def probe(self, connections: Connections, headers: dict[str, str], model: str) -> ServerInfo:
        props = get_json(connections, "/props", headers)
        if not isinstance(props, dict):
            raise RemoteError(f"{connections.endpoint}/props: not llama.cpp's server properties: {str(props)[:160]}")
        name = props.get("model_alias") or Path(str(props.get("model_path") or "")).name
        settings = props.get("default_generation_settings")
        context = settings.get("n_ctx") if isinstance(settings, dict) else None
        return ServerInfo(str(name or model), context if isinstance(context, int) and context > 0 else None)

    def request(self, prompt_ids: Sequence[int], tokenizer: Tokenizer, stops: Sequence[str], budget: int,
                model: str, deadline_ms: int | None) -> tuple[str, dict[str, Any]]:
        return "/completion", {"prompt": list(prompt_ids), **self._generation(stops, budget, deadline_ms)}

    @staticmethod
    def _generation(stops: Sequence[str], budget: int, deadline_ms: int | None) -> dict[str, Any]:
        """What both endpoints take: greedy, streamed, the budget, the stop strings, the KV reuse;
        the deadline as ``t_max_predict_ms`` (the server's own stop after a line break once that
        time has passed since the first token: a backstop, the client stops at the deadline)."""
        body: dict[str, Any] = {"n_predict": budget, "stream": True, "stop": list(stops), "cache_prompt": True,
                                "return_tokens": True, "temperature": 0, "top_k": 1, "repeat_penalty": 1.0}
        if deadline_ms is not None:
            body["t_max_predict_ms"] = deadline_ms
        return body

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


@dataclass(frozen=True)
class InfillParts:
    """A fill-in-the-middle prompt of ``prompt.py``'s layout, taken apart into ``/infill``'s fields."""

    prefix: str
    suffix: str
    extra: tuple[tuple[str, str], ...] = ()  # (path, code) of each snippet of the repository head


def infill_parts(prompt_ids: Sequence[int], tokenizer: Tokenizer) -> InfillParts | None:
    """The parts of a FIM prompt (``[head] FIM_PRE prefix FIM_SUF suffix FIM_MID``, the head
    ``REPO name (FILE_SEP path\\ncode)* FILE_SEP current-path\\n``), or None for a prompt of
    another mode. Special ids stand only where prompt.py put them (the user's text is encoded
    with special spellings as plain text), so they delimit the parts unambiguously; decoding a
    part gives back the text it was encoded from. The head's repository name and current path
    have no field in ``/infill`` (llama.cpp writes ``myproject`` and ``filename``), nor has
    StarCoder's ``<filename>path`` header: those are dropped."""
    fim = tokenizer.fim
    if fim is None or not prompt_ids:
        return None
    pre, suf, mid = (tokenizer.token_id(t) for t in (fim.prefix, fim.suffix, fim.middle))
    ids = list(prompt_ids)
    if ids[-1] != mid or ids.count(pre) != 1 or ids.count(suf) != 1 or ids.count(mid) != 1:
        return None
    at_pre, at_suf = ids.index(pre), ids.index(suf)
    if at_pre > at_suf:
        return None
    decode = lambda part: tokenizer.decode(part, skip_special=False)  # noqa: E731
    prefix = decode(ids[at_pre + 1:at_suf])
    if fim.file_name and ids[at_pre + 1:at_pre + 2] == [tokenizer.token_id(fim.file_name)]:
        prefix = decode(ids[at_pre + 2:at_suf]).partition("\n")[2]  # after "<filename>path\n"
    extra: list[tuple[str, str]] = []
    head = ids[:at_pre]
    if head:
        repo, sep = (tokenizer.token_id(t) if t else None for t in (fim.repo_name, fim.file_sep))
        if repo is None or sep is None or head[0] != repo:
            return None
        cuts = [i for i, token in enumerate(head) if token == sep]
        for start, end in zip(cuts, cuts[1:]):  # the last separator is the current file's
            path, _, code = decode(head[start + 1:end]).partition("\n")
            extra.append((path, code))
    return InfillParts(prefix, decode(ids[at_suf + 1:-1]), tuple(extra))


class LlamaCppInfillProtocol(LlamaCppProtocol):
    """llama.cpp's server, ``/infill`` for FIM prompts (``/completion`` with ids for the rest).

    What the server does with the parts, and so how its prompt differs from ours (llama.cpp's
    ``format_prompt_infill``): for a vocabulary with repository tokens (Qwen2.5-Coder's) it always
    writes a repository head, ``<|repo_name|>myproject\\n``, the chunks as
    ``<|file_sep|>{filename}\\n{text}``, then ``<|file_sep|>filename\\n``, even with no chunk (our
    prompt then has no head at all); it tokenizes each part on its own; it keeps the prefix's
    last ``3/4 n_batch`` and the suffix's first ``n_batch/4 - 2`` tokens, and of the chunks
    what fits a slot's ``n_ctx - n_batch - 2 n_predict`` (the server's ``--n-predict``, not the
    request's). So the completion is the model's answer to the
    server's prompt, not to ours; ``llama.cpp`` (ids to ``/completion``) runs ours exactly.
    ``tests/test_remote_llama_cpp_server.py`` holds both to the local engine on the prompt each
    one runs.

    ``n_indent`` (the server's stop at a line indented less than N) is not sent: where a
    completion leaves the cursor's scope is post-processing's rule (``postprocess.scope_end``,
    which measures tabs as 4 columns and keeps a line closing the completion's own block),
    reached through ``on_text``; its early stop closes the stream at the piece where it decides,
    so the server's second copy of the rule would save nothing and could cut differently."""

    name = "llama.cpp-infill"

    def request(self, prompt_ids: Sequence[int], tokenizer: Tokenizer, stops: Sequence[str], budget: int,
                model: str, deadline_ms: int | None) -> tuple[str, dict[str, Any]]:
        parts = infill_parts(prompt_ids, tokenizer)
        if parts is None:
            return super().request(prompt_ids, tokenizer, stops, budget, model, deadline_ms)
        return "/infill", {"input_prefix": parts.prefix, "input_suffix": parts.suffix,
                           "input_extra": [{"filename": path, "text": code} for path, code in parts.extra],
                           **self._generation(stops, budget, deadline_ms)}


class OpenAIProtocol:
    """OpenAI's legacy completions API, streamed: ``/v1/completions``."""

    name = "openai"
    MAX_STOPS = 4  # OpenAI's limit, which some compatible servers enforce

    def probe(self, connections: Connections, headers: dict[str, str], model: str) -> ServerInfo:
        endpoint = connections.endpoint
        listing = get_json(connections, "/v1/models", headers)
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

    def request(self, prompt_ids: Sequence[int], tokenizer: Tokenizer, stops: Sequence[str], budget: int,
                model: str, deadline_ms: int | None) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": model, "prompt": tokenizer.decode(prompt_ids, skip_special=False),
                                "max_tokens": budget, "stream": True, "temperature": 0, "top_p": 1,
                                "repeat_penalty": 1.0}
        if stops:
            body["stop"] = list(stops)[: self.MAX_STOPS]  # the rest are still ours (checked on the text)
        return "/v1/completions", body

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


WIRE_PROTOCOLS: dict[str, WireProtocol] = {"openai": OpenAIProtocol(), "llama.cpp": LlamaCppProtocol(),
                                           "llama.cpp-infill": LlamaCppInfillProtocol()}


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

    def __init__(self, tokenizer: Tokenizer, connections: Connections, protocol: WireProtocol, info: ServerInfo,
                 context: int, headers: dict[str, str]):
        self.tokenizer = tokenizer
        self.connections = connections  # kept alive between requests where the server allows
        self.endpoint, self.protocol, self.info = connections.endpoint, protocol, info
        self.max_context = context
        self.timeout_s = connections.timeout_s
        self._headers = headers  # holds the API key: never logged, never in a message
        self.model_name = f"{info.model} at {self.endpoint} ({protocol.name})"
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
        deadline_ms = None if params.deadline is None else max(1, round((params.deadline - time.monotonic()) * 1e3))
        path, body = self.protocol.request(prompt, self.tokenizer, params.stop_strings, budget, self.info.model,
                                           deadline_ms)
        where = f"{self.endpoint}{path}"
        started = time.perf_counter()
        first: float | None = None
        ids: list[int] = []
        ids_known, cached, finished = True, 0, False
        events = post_events(self.connections, path, body, self._headers, cancel)
        with contextlib.closing(events):  # closing it early closes the connection: the server stops generating
            for event in events:
                try:
                    piece = self.protocol.read(event)
                except RemoteError as exc:
                    raise RemoteError(f"{where}: {exc}") from None
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
                    events.finish()  # the stream's end, so that its connection serves the next request
                    break
        if not finished:
            if not cancel.cancelled:
                raise RemoteError(f"{where}: the stream ended before the completion did "
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
        """Close the connection kept for the next request."""
        self.connections.close()


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
    connections = Connections(endpoint, config.timeout_s)
    try:
        info = protocol.probe(connections, headers, config.model)
    except BaseException:
        connections.close()
        raise
    known = [c for c in (info.context, declared) if c]
    return RemoteEngine(tokenizer, connections, protocol, info, min(known) if known else DEFAULT_CONTEXT, headers)
