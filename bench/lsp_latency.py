"""Keystroke to inline completion through the real server, as an editor sends them.

    python bench/lsp_latency.py [--models default smollm2-135m] [--speculate 8 0] [--out bench/results/lsp.md]
    python bench/lsp_latency.py --remote    # and one more session per model through the remote backend
    python bench/lsp_latency.py --smoke     # a few keystrokes on SmolLM2, for CI: it runs, nothing is judged

One session per model and ``speculate`` value: ``wizardcoder-tpu serve --stdio`` started as an
editor starts it, ``initialize`` with the default settings (the 150 ms debounce included), then
a real source file of this repository opened with a region cut out, and that region typed back
one character at a time at a human pace: a seeded gap of about 200 ms between keys, a pause
after each line, and now and then a longer one (reading, thinking). Each key is what VS Code
sends: ``$/cancelRequest`` for the inline request still in flight (the text it asked about is
gone), an incremental ``didChange``, then ``textDocument/inlineCompletion`` at the new cursor.
Every session types the same keys at the same times, so the rows differ only in the server.

Measured per request: the time from the key's ``didChange`` to the answer (the debounce is in
it; the table also gives the time after the debounce), whether it came with an item, was
cancelled by the client (a newer key came first) or answered nothing; from the server's
``wizardcoder/stats``: the cache hits (text typed ahead into a shown completion), the engine's
runs that a newer request stopped, the jobs skipped before they ran, the prompt tokens each run
fed the model (those not reused from the KV cache), and the tokens that came from accepted
prompt-lookup drafts.

With ``--remote``, each model also gets a session through the remote backend: the same server,
started with ``--backend remote --endpoint``, in front of llama-cpp-python's OpenAI-compatible
server on the same GGUF and thread count (``bench/remote_overhead.py`` starts it), so that the
row beside the local one shows what the protocol and the other engine cost a keystroke.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from engine import machine, versions  # noqa: E402  (bench/engine.py: one way to describe the machine)

STATUS = "wizardcoder/status"
STATS = "wizardcoder/stats"
DEBOUNCE_MS = 150  # the setting's default, which the sessions keep
# The region typed: a class whose methods repeat each other's shape (what editing code is like).
DEFAULT_FILE = "lsp/requests.py"
DEFAULT_START = "class DocumentRequests"


@dataclass
class Typing:
    """The keys of a session: the document as opened, where the typed region goes, and each
    character with the time (s from the first key) it is typed."""

    path: Path
    before: str
    after: str
    keys: list[tuple[float, str]]


def typing_session(path: Path, start: str, chars: int, seed: int = 0, gap_s: float = 0.2) -> Typing:
    """About ``chars`` characters of ``path`` from ``start`` to the end of a line (so that the
    line being typed has nothing after the cursor, as when writing new code), each key after a
    gap drawn around ``gap_s`` (sd a third of it, at least 60 ms), 1.5–4 s more after a line
    break (reading the suggestion, thinking of the next line), and a 1–3 s pause before one key
    in 25."""
    text = path.read_text(encoding="utf-8")
    begin = text.index(start)
    end = text.find("\n", begin + chars)
    region = text[begin:end if end >= 0 else len(text)]
    rng = random.Random(seed)
    at, keys = 0.0, []
    for i, ch in enumerate(region):
        if i:
            at += max(0.06, rng.gauss(gap_s, gap_s / 3))
            if region[i - 1] == "\n":
                at += rng.uniform(1.5, 4.0)
            elif rng.random() < 0.04:
                at += rng.uniform(1.0, 3.0)
        keys.append((at, ch))
    return Typing(path, text[:begin], text[begin + len(region):], keys)


@dataclass
class Request:
    key: int  # index of the key that sent it
    msg_id: int
    sent: float  # time.perf_counter() of the key's didChange
    answered: float | None = None
    outcome: str = "pending"  # item | empty | cancelled | error
    error: str = ""


@dataclass
class Session:
    model: str
    speculate: int
    endpoint: str = ""  # the remote backend's inference server, for a remote session
    description: str = ""
    requests: list[Request] = field(default_factory=list)
    generations: dict[Any, dict[str, Any]] = field(default_factory=dict)  # by requestId
    stats: dict[str, Any] = field(default_factory=dict)
    load_s: float = 0.0
    wall_s: float = 0.0


async def run_session(model: str, speculate: int, typing: Typing, log_file: Path, threads: int,
                      load_timeout_s: float = 900.0, endpoint: str = "") -> Session:
    """One session; with ``endpoint``, the server runs ``model`` through the remote backend there."""
    session = Session(model, speculate, endpoint)
    client = LanguageClient("wizardcoder-tpu-lsp-latency", "1")
    statuses: list[dict[str, Any]] = []

    @client.feature(STATUS)
    def on_status(params: Any) -> None:
        statuses.append(params if isinstance(params, dict) else {k: getattr(params, k, None) for k in ("state", "message")})

    args = ["-m", "wizardcoder_tpu", "serve", "--stdio", "--model", model, "--speculate", str(speculate),
            "--log-file", str(log_file), "--log-level", "info"]
    if threads:
        args += ["--threads", str(threads)]
    if endpoint:
        args += ["--backend", "remote", "--endpoint", endpoint]
    started = time.perf_counter()
    await client.start_io(sys.executable, *args)
    try:
        await client.initialize_async(types.InitializeParams(
            capabilities=types.ClientCapabilities(
                general=types.GeneralClientCapabilities(position_encodings=[types.PositionEncodingKind.Utf16]),
                text_document=types.TextDocumentClientCapabilities(
                    synchronization=types.TextDocumentSyncClientCapabilities(),
                    inline_completion=types.InlineCompletionClientCapabilities())),
            initialization_options={}, root_uri=None, process_id=None))
        client.initialized(types.InitializedParams())
        session.description = await _wait_for_model(client, statuses, load_timeout_s)
        session.load_s = time.perf_counter() - started
        await _type(client, typing, session)
        stats = await client.protocol.send_request_async(STATS, {})
        session.stats = _plain(stats)
        _collect(session, session.stats)
    finally:
        try:
            await asyncio.wait_for(client.shutdown_async(None), 30)
            client.exit(None)
        except Exception:  # noqa: BLE001  (a dead server has nothing to shut down)
            pass
        await client.stop()
    return session


async def _wait_for_model(client: LanguageClient, statuses: list[dict[str, Any]], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for status in statuses:
            if status.get("state") == "idle":
                return str(status.get("message", ""))
            if status.get("state") == "error":
                raise RuntimeError(f"the server could not load its model: {status.get('message')}")
        if client.stopped:
            raise RuntimeError("the server exited while loading")
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no model loaded within {timeout_s:.0f} s")


async def _type(client: LanguageClient, typing: Typing, session: Session) -> None:
    uri = typing.path.resolve().as_uri()
    text = typing.before + typing.after
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))
    lines = typing.before.split("\n")
    line, column = len(lines) - 1, len(lines[-1])  # the cursor, in UTF-16 units (the file is ASCII)
    pending: list[tuple[Request, asyncio.Future]] = []
    tasks: list[asyncio.Task] = []
    begin = time.perf_counter()
    for index, (at, ch) in enumerate(typing.keys):
        delay = begin + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        for request, future in pending:  # the editor cancels the request about the old text
            if not future.done():
                request.outcome = "cancelled"
                client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=request.msg_id))
        pending.clear()
        position = types.Position(line=line, character=column)
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=index + 2),
            content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=position, end=position),
                                                                    text=ch)]))
        sent = time.perf_counter()
        line, column = (line + 1, 0) if ch == "\n" else (line, column + 1)
        msg_id = 1_000_000 + index
        request = Request(index, msg_id, sent)
        session.requests.append(request)
        future = client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=line, character=column),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)),
            msg_id=msg_id)
        future = asyncio.ensure_future(future)
        pending.append((request, future))
        tasks.append(asyncio.create_task(_answer(request, future)))
        if index % 20 == 19:  # the stats keep the last 32 runs: read them as the session goes
            _collect(session, _plain(await client.protocol.send_request_async(STATS, {})))
    await asyncio.wait(tasks, timeout=120)
    session.wall_s = time.perf_counter() - begin


async def _answer(request: Request, future: asyncio.Future) -> None:
    try:
        result = await future
    except Exception as exc:  # noqa: BLE001  (a cancelled request answers with an error)
        request.answered = time.perf_counter()
        if request.outcome != "cancelled":
            request.outcome, request.error = "error", f"{type(exc).__name__}: {exc}"
        return
    request.answered = time.perf_counter()
    items = result.items if isinstance(result, types.InlineCompletionList) else (result or [])
    if request.outcome != "cancelled":
        request.outcome = "item" if items else "empty"
    elif items:
        request.outcome = "item"  # answered before the cancel reached the server: the editor had it


def _plain(value: Any) -> Any:
    """pygls hands custom results over as named tuples or attribute objects; the report wants dicts."""
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return {k: _plain(v) for k, v in vars(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _collect(session: Session, stats: dict[str, Any]) -> None:
    for generation in stats.get("generations", []):
        session.generations[generation.get("requestId")] = generation


# --- the report ------------------------------------------------------------------------------------

def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


@dataclass
class Summary:
    keys: int
    items: int
    empty: int
    cancelled: int
    errors: int
    p50_ms: float
    p95_ms: float
    model_p50_ms: float  # answered by a model run (not the cache, not "nothing here")
    model_p95_ms: float
    cache_hits: int
    stopped_runs: int  # engine runs stopped by a newer request
    skipped_jobs: int
    runs: int
    prefill_per_run: float  # prompt tokens fed (not reused) per engine run, mean
    prompt_per_run: float
    tokens: int
    drafted: int
    accepted: int
    decode_tps: float  # generated tokens per second of decode over the runs that produced some


def summarize(session: Session) -> Summary:
    requests = session.requests
    answered = [r for r in requests if r.outcome == "item" and r.answered is not None]
    latency = [(r.answered - r.sent) * 1e3 for r in answered]
    by_model = [(r.answered - r.sent) * 1e3 for r in answered if r.msg_id in session.generations]
    runs = list(session.generations.values())
    tokens = sum(g.get("tokens", 0) for g in runs)
    decode_ms = sum(g.get("decodeMs", 0.0) for g in runs if g.get("tokens", 0) > 1)
    decoded = sum(g.get("tokens", 0) - 1 for g in runs if g.get("tokens", 0) > 1)
    return Summary(
        keys=len(requests), items=len(answered), empty=sum(r.outcome == "empty" for r in requests),
        cancelled=sum(r.outcome == "cancelled" for r in requests), errors=sum(r.outcome == "error" for r in requests),
        p50_ms=_percentile(latency, 0.5), p95_ms=_percentile(latency, 0.95),
        model_p50_ms=_percentile(by_model, 0.5), model_p95_ms=_percentile(by_model, 0.95),
        cache_hits=int(session.stats.get("cacheHits", 0)),
        stopped_runs=sum(g.get("stopReason") == "cancelled" for g in runs),
        skipped_jobs=int(session.stats.get("skippedJobs", 0)), runs=len(runs),
        prefill_per_run=statistics.mean([g["promptTokens"] - g["reusedTokens"] for g in runs]) if runs else 0.0,
        prompt_per_run=statistics.mean([g["promptTokens"] for g in runs]) if runs else 0.0,
        tokens=tokens, drafted=sum(g.get("draftedTokens", 0) for g in runs),
        accepted=sum(g.get("acceptedDraftTokens", 0) for g in runs),
        decode_tps=decoded / (decode_ms / 1e3) if decode_ms else 0.0)


def report(sessions: list[Session], typing: Typing, load_before: tuple[float, ...], load_after: tuple[float, ...],
           threads: int) -> str:
    la = lambda v: ", ".join(f"{x:.1f}" for x in v)  # noqa: E731
    span = typing.keys[-1][0] if typing.keys else 0.0
    lines = [f"# Keystroke to inline completion through the server, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
             "", f"Machine: {machine()}.  ", f"Versions: {versions()}; git {_git_revision()}.  ",
             f"Load average (1, 5, 15 min) before: {la(load_before)}; after: {la(load_after)}. "
             + ("Other work ran on the machine at the same time: the latencies are those of a loaded machine. "
                if max(load_before[0], load_after[0]) > (os.cpu_count() or 1) else "")
             + "The rows ran one after another, not interleaved.  ",
             f"Typed: {len(typing.keys)} characters of `{typing.path.relative_to(ROOT)}` from "
             f"`{typing.keys[0][1] if typing.keys else ''}…` ({span:.0f} s of typing at about "
             f"{len(typing.keys) / span if span else 0:.1f} keys/s with pauses), each key a `didChange` and an "
             "`inlineCompletion` request, the previous request cancelled (`$/cancelRequest`) when still in flight; "
             f"default settings (debounce {DEBOUNCE_MS} ms), threads {threads or 'one per physical core'}.", "",
             "Latency: from the key's `didChange` to an answer with an item, debounce included; *model* counts the "
             "answers that came from an engine run (not the completion cache). Prefilled: prompt tokens per engine "
             "run that were not reused from the KV cache. Drafts: tokens that came from accepted prompt-lookup "
             "drafts, of all the tokens generated.", "",
             "| model | speculate | keys | items | cancelled | empty | p50 ms | p95 ms | model p50 ms | model p95 ms | "
             "p50 after debounce | cache hits | runs (stopped / skipped) | prompt / prefilled tokens per run | "
             "tokens from drafts | drafts accepted | decode tokens/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"]
    for s in sessions:
        m = summarize(s)
        share = f"{m.accepted / m.tokens:.0%}" if m.tokens else "–"
        rate = f"{m.accepted}/{m.drafted} ({m.accepted / m.drafted:.0%})" if m.drafted else "0/0"
        lines.append(f"| {_label(s)} | {s.speculate} | {m.keys} | {m.items} | {m.cancelled} | {m.empty} | "
                     f"{m.p50_ms:.0f} | {m.p95_ms:.0f} | {m.model_p50_ms:.0f} | {m.model_p95_ms:.0f} | "
                     f"{m.p50_ms - DEBOUNCE_MS:.0f} | {m.cache_hits} | {m.runs} ({m.stopped_runs} / {m.skipped_jobs}) | "
                     f"{m.prompt_per_run:.0f} / {m.prefill_per_run:.0f} | {share} | {rate} | {m.decode_tps:.1f} |")
    lines += ["", "Models as the server described them: " + "; ".join(
        f"{_label(s)} → {s.description} (ready in {s.load_s:.1f} s)" for s in sessions) + ".", ""]
    if any(s.endpoint for s in sessions):
        lines += ["A remote row's prefilled tokens are every prompt token it sent: how much of it the inference "
                  "server reused from its own prompt cache is not visible from here; its decode rate is the "
                  "completion's tokens over the time from the first to the last piece.", ""]
    errors = [r.error for s in sessions for r in s.requests if r.outcome == "error"]
    if errors:
        lines += [f"Errors ({len(errors)}): " + "; ".join(sorted(set(errors))[:5]), ""]
    return "\n".join(lines)


def _label(session: Session) -> str:
    return f"{session.model} (remote: {session.endpoint})" if session.endpoint else session.model


def _git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["default", "smollm2-135m"])
    parser.add_argument("--speculate", type=int, nargs="+", default=[8, 0], help="one session per value")
    parser.add_argument("--file", type=Path, default=ROOT / DEFAULT_FILE, help="the source file typed")
    parser.add_argument("--start", default=DEFAULT_START, help="the typed region begins at this text")
    parser.add_argument("--chars", type=int, default=400, help="characters typed")
    parser.add_argument("--threads", type=int, default=0, help="server threads (0: the default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp"), help="the servers' logs")
    parser.add_argument("--remote", action="store_true",
                        help="one more session per model: the remote backend before llama-cpp-python's server")
    parser.add_argument("--port", type=int, default=8871, help="--remote: the llama-cpp-python server's port")
    parser.add_argument("--smoke", action="store_true", help="SmolLM2, speculation on, 30 keys")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.speculate, args.chars = ["smollm2-135m"], [8], 30
    typing = typing_session(args.file.resolve(), args.start, args.chars, args.seed)
    load_before = os.getloadavg()
    sessions: list[Session] = []
    for model in args.models:
        for speculate in args.speculate:
            log = args.log_dir / f"lsp-latency-{model}-{speculate}.log"
            print(f"{model}, speculate {speculate}: typing {len(typing.keys)} keys", file=sys.stderr, flush=True)
            sessions.append(asyncio.run(run_session(model, speculate, typing, log, args.threads)))
            text = _write(sessions, typing, load_before, args)
        if args.remote:
            sessions.append(_remote_session(model, typing, args))
            text = _write(sessions, typing, load_before, args)
    print(text)
    return 0


def _write(sessions: list[Session], typing: Typing, load_before: tuple[float, ...], args: argparse.Namespace) -> str:
    text = report(sessions, typing, load_before, os.getloadavg(), args.threads)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return text


def _remote_session(model: str, typing: Typing, args: argparse.Namespace) -> Session:
    """``model``'s session through the remote backend, before llama-cpp-python's server on the same
    GGUF with the same threads (speculation is the local engines'; the remote one runs plain)."""
    from remote_overhead import start_server

    from wizardcoder_tpu.inference.backends.threads import physical_cores
    from wizardcoder_tpu.inference.models import model_path

    server = start_server(model_path(model), args.port, args.threads or physical_cores())
    try:
        endpoint = f"http://127.0.0.1:{args.port}"
        print(f"{model} through {endpoint}: typing {len(typing.keys)} keys", file=sys.stderr, flush=True)
        log = args.log_dir / f"lsp-latency-{model}-remote.log"
        return asyncio.run(run_session(model, 0, typing, log, args.threads, endpoint=endpoint))
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    raise SystemExit(main())
