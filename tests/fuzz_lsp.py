"""The project's fuzz client for the language server (no tests here; ``test_fuzz.py`` runs it, and
``python tests/fuzz_lsp.py --messages 10000 --out bench/results/fuzz.md`` writes the table).

A hypothesis state machine drives one running server (stdio or TCP) with a weighted mix of
messages: well-formed LSP (documents opened, edited, closed; completions; explain; cancels),
structure-aware near misses (one field deleted or replaced, positions out of range, the wrong
jsonrpc, the wrong id type, a notification sent as a request) and raw bytes for the framing
(broken headers, lying lengths, NULs, non-JSON bodies). It keeps its own copy of every document,
applying each edit as ``vscode-languageserver-textdocument`` does (in UTF-16 code units, written
here independently of the server's code), and after each example checks:

- the server is alive and wrote only well-formed frames;
- every request with a usable id got exactly one answer;
- the server's copy of every open document (its SHA-256 through ``wizardcoder/documentDigests``,
  which never returns text) equals the client's.

``Tally`` counts messages by kind and responses by kind for the table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

sys.path.insert(0, str(Path(__file__).resolve().parent))
from raw_lsp import RawClient, answer_key, free_port, start_tcp_server  # noqa: E402

SETTINGS = {"maxNewTokens": 4, "debounceMs": 0, "explainMaxNewTokens": 4}
ANSWER_TIMEOUT_S = 300.0
UINT_MAX = 2**31 - 1
EXPLAIN = "wizardcoder.explainSelection"

# kind -> weight: how often each kind of message is sent
KINDS: dict[str, int] = {
    "didOpen": 8, "didChange": 40, "didChange full": 3, "didChange out of range": 8, "didClose": 2,
    "inlineCompletion": 1, "inlineCompletion bad position": 8, "explain": 1, "explain bad arguments": 4,
    "request near miss": 22, "notification near miss": 14, "unknown method": 6, "$/cancelRequest": 8,
    "stats": 4, "bad jsonrpc": 8, "bad id": 4, "notification as request": 3, "not an object": 3,
    "response to nothing": 3, "broken frame": 12, "not JSON": 4,
}
WEIGHTED = [kind for kind, weight in KINDS.items() for _ in range(weight)]

PIECES = ["a", "b", "x", "def f():", "    ", "\t", " ", "\n", "\r\n", "\r", "\u2028", "\u2029", "\v", "\f",
          "\x1c", "\x1d", "\x1e", "\x85", "é", "中", "😀", "\U0001F600\U0001F601", "\ud800", "\udc00",
          "\ud83d", "\ude00", "\x00", "'", '"', "\\", "{", "}"]
TEXT = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False,
                    allow_infinity=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)
SMALL = st.integers(0, 6)
COORDINATE = st.one_of(SMALL, SMALL, SMALL, st.integers(0, UINT_MAX), st.just(UINT_MAX))
BAD_COORDINATE = st.one_of(st.just(-1), st.just(2**31), st.integers(-2**40, -1), st.just("1"), st.none(), st.just(1.5))
BROKEN_HEADERS = [b"Content-Length: 18446744073709551616", b"Content-Length: 100000000000", b"Content-Length: -5",
                  "Content-Length: ５".encode(), b"Content-Length: 2\x00", b"Content-Type: text/plain",
                  b"Content-Length: 99999999999999999999999999999999", b"content-length:", b"\x00\x00\x00",
                  b"Content-Length: 1e3", b"Content-Length: 0x10", b"Content-Length: 3", b"Content-Length: 12"]


# The client's copy of a document, kept as vscode-languageserver-textdocument keeps it --------------
class ClientDocument:
    """Text as UTF-16 code units; offsets, clamping and reordering as in
    ``vscode-languageserver-textdocument``'s ``offsetAt``/``update``."""

    def __init__(self, text: str, version: int):
        self.units = _units(text)
        self.version = version

    def line_offsets(self) -> list[int]:
        offsets, units, i = [0], self.units, 0
        while i < len(units):
            if units[i] in (13, 10):
                if units[i] == 13 and i + 1 < len(units) and units[i + 1] == 10:
                    i += 1
                offsets.append(i + 1)
            i += 1
        return offsets

    def offset_at(self, line: int, character: int, offsets: list[int]) -> int:
        if line >= len(offsets):
            return len(self.units)
        if line < 0:
            return 0
        line_offset = offsets[line]
        if character <= 0:
            return line_offset
        next_offset = offsets[line + 1] if line + 1 < len(offsets) else len(self.units)
        offset = min(line_offset + character, next_offset)
        while offset > line_offset and self.units[offset - 1] in (13, 10):
            offset -= 1
        return offset

    def update(self, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
        if start > end:
            start, end = end, start
        offsets = self.line_offsets()
        begin, finish = self.offset_at(*start, offsets), self.offset_at(*end, offsets)
        self.units = self.units[:begin] + _units(text) + self.units[finish:]

    @property
    def text(self) -> str:
        return self.units.tobytes().decode("utf-16-le", "surrogatepass")

    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest()

    def lines(self) -> list[str]:
        offsets = self.line_offsets() + [len(self.units)]
        return [self.units[a:b].tobytes().decode("utf-16-le", "surrogatepass") for a, b in zip(offsets, offsets[1:])]


def _units(text: str) -> array:
    return array("H", text.encode("utf-16-le", "surrogatepass"))


# Counting --------------------------------------------------------------------------------------
@dataclass
class Tally:
    transport: str
    sent: Counter = field(default_factory=Counter)  # message kind -> count
    owed: dict[tuple[str, Any], str] = field(default_factory=dict)  # request -> its kind
    examples: int = 0
    documents_checked: int = 0
    documents_equal: int = 0
    crashes: int = 0
    internal_errors: int = 0
    tracebacks: list[str] = field(default_factory=list)  # the server log's, so a failure shows them
    summary: tuple[int, int, int, Counter] = (0, 0, 0, Counter())  # answers(), taken at the end
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    @property
    def messages(self) -> int:
        return sum(self.sent.values())

    def answers(self, client: RawClient) -> tuple[int, int, int, Counter]:
        """(requests owed, answered exactly once, answered more than once, responses by kind)."""
        once = more = 0
        kinds: Counter = Counter()
        for key in self.owed:
            responses = client.answers.get(key, [])
            once += len(responses) == 1
            more += len(responses) > 1
            for response in responses:
                kinds[_response_kind(response)] += 1
        return len(self.owed), once, more, kinds

    def table(self, client: RawClient) -> str:
        owed, once, more, kinds = self.answers(client)
        unmatched = Counter(_response_kind(r) for r in client.answers.get(answer_key(None), []))
        rows = [f"| Transport | {self.transport} |", "|---|---|",
                f"| Messages sent | {self.messages:,} in {self.seconds:.0f} s ({self.examples} hypothesis examples) |",
                f"| Crashes | {self.crashes} |",
                f"| Internal errors (tracebacks in the server log) | {self.internal_errors} |",
                f"| Malformed frames from the server | {len(client.malformed)} |",
                f"| Requests owed an answer | {owed:,} |",
                f"| ... answered exactly once | {once:,} |",
                f"| ... answered more than once | {more} |",
                f"| Documents compared (SHA-256, after each example) | {self.documents_checked:,} |",
                f"| ... server's copy equal to the client's | {self.documents_equal:,} |"]
        by_kind = ["", "| Messages by kind | Sent |", "|---|---|"] + [
            f"| {kind} | {count:,} |" for kind, count in sorted(self.sent.items(), key=lambda kv: -kv[1])]
        responses = ["", "| Responses by kind (to owed requests) | Count |", "|---|---|"] + [
            f"| {kind} | {count:,} |" for kind, count in sorted(kinds.items(), key=lambda kv: -kv[1])]
        if unmatched:
            responses += ["", "| Responses with id null (broken frames, bad ids) | Count |", "|---|---|"] + [
                f"| {kind} | {count:,} |" for kind, count in sorted(unmatched.items(), key=lambda kv: -kv[1])]
        return "\n".join(rows + by_kind + responses) + "\n"


def _response_kind(response: dict[str, Any]) -> str:
    if "error" in response:
        code = response["error"].get("code")
        return f"error {code} {ERROR_NAMES.get(code, '')}".strip()
    return "result"


ERROR_NAMES = {-32700: "ParseError", -32600: "InvalidRequest", -32601: "MethodNotFound", -32602: "InvalidParams",
               -32603: "InternalError", -32002: "ServerNotInitialized", -32800: "RequestCancelled",
               -32803: "RequestFailed"}


# The state machine -----------------------------------------------------------------------------
def machine(client: RawClient, tally: Tally) -> type[RuleBasedStateMachine]:
    class LspFuzz(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            tally.examples += 1
            self.example = tally.examples
            self.documents: dict[str, ClientDocument] = {}
            self.count = 0
            self.outstanding: list[Any] = []

        # sending, counted
        def send(self, kind: str, message: Any, owed: bool = False) -> None:
            tally.sent[kind] += 1
            if owed:
                tally.owed[answer_key(message["id"])] = kind
                self.outstanding.append(message["id"])
            client.send(message)

        def request(self, kind: str, method: str, params: Any = None, omit: bool = False) -> Any:
            msg_id = f"fz-{tally.transport}-{self.example}-{client.new_id()}"
            message = {"jsonrpc": "2.0", "id": msg_id, "method": method}
            if not omit:
                message["params"] = params
            self.send(kind, message, owed=True)
            return msg_id

        def notify(self, kind: str, method: str, params: Any) -> None:
            self.send(kind, {"jsonrpc": "2.0", "method": method, "params": params})

        def pick(self, data: st.DataObject) -> str | None:
            if not self.documents:
                return None
            return data.draw(st.sampled_from(sorted(self.documents)))

        @initialize(text=TEXT)
        def open_first(self, text: str) -> None:
            self.open(text)
            self.decoy = f"file:///fuzz/{tally.transport}/{self.example}/decoy.py"
            self.notify("didOpen", "textDocument/didOpen", {"textDocument": {
                "uri": self.decoy, "languageId": "python", "version": 1, "text": "decoy"}})

        def open(self, text: str) -> None:
            self.count += 1
            uri = f"file:///fuzz/{tally.transport}/{self.example}/doc{self.count}.py"
            self.notify("didOpen", "textDocument/didOpen", {"textDocument": {
                "uri": uri, "languageId": "python", "version": 1, "text": text}})
            self.documents[uri] = ClientDocument(text, 1)

        @rule(kind=st.sampled_from(WEIGHTED), data=st.data())
        def step(self, kind: str, data: st.DataObject) -> None:
            getattr(self, "do_" + kind.replace(" ", "_").replace("/", "").replace("$", ""))(data)

        # well-formed documents
        def do_didOpen(self, data: st.DataObject) -> None:
            self.open(data.draw(TEXT))

        def do_didChange(self, data: st.DataObject, kind: str = "didChange") -> None:
            uri = self.pick(data)
            if uri is None:
                return self.do_didOpen(data)
            document = self.documents[uri]
            # Every draw before the copy changes: hypothesis may stop a step at any draw (its buffer
            # runs out), and a copy edited for a notification never sent differs from the server's.
            edits = []
            for _ in range(data.draw(st.integers(1, 3))):
                start = (data.draw(COORDINATE), data.draw(COORDINATE))
                end = data.draw(st.one_of(st.just(start), st.tuples(COORDINATE, COORDINATE)))
                edits.append((start, end, data.draw(TEXT)))
            changes = []
            for start, end, text in edits:
                changes.append({"range": {"start": {"line": start[0], "character": start[1]},
                                          "end": {"line": end[0], "character": end[1]}}, "text": text})
                document.update(start, end, text)
            document.version += 1
            self.notify(kind, "textDocument/didChange", {
                "textDocument": {"uri": uri, "version": document.version}, "contentChanges": changes})

        def do_didChange_full(self, data: st.DataObject) -> None:
            uri = self.pick(data)
            if uri is None:
                return self.do_didOpen(data)
            text = data.draw(TEXT)
            document = self.documents[uri]
            document.units, document.version = _units(text), document.version + 1
            self.notify("didChange full", "textDocument/didChange", {
                "textDocument": {"uri": uri, "version": document.version}, "contentChanges": [{"text": text}]})

        def do_didChange_out_of_range(self, data: st.DataObject) -> None:
            """Invalid coordinates: the server drops the whole notification; so does the copy."""
            uri = self.pick(data) or "file:///fuzz/never-opened.py"
            position = {"line": data.draw(BAD_COORDINATE), "character": data.draw(COORDINATE)}
            if data.draw(st.booleans()):
                position = {"line": data.draw(COORDINATE), "character": data.draw(BAD_COORDINATE)}
            self.notify("didChange out of range", "textDocument/didChange", {
                "textDocument": {"uri": uri, "version": 99}, "contentChanges": [
                    {"range": {"start": position, "end": position}, "text": "lost"}]})

        def do_didClose(self, data: st.DataObject) -> None:
            uri = self.pick(data)
            if uri is None:
                return
            del self.documents[uri]
            self.notify("didClose", "textDocument/didClose", {"textDocument": {"uri": uri}})

        # requests
        def valid_position(self, data: st.DataObject, uri: str) -> tuple[int, int]:
            lines = self.documents[uri].lines()
            line = data.draw(st.integers(0, max(len(lines) - 1, 0)))
            text = lines[line].rstrip("\r\n") if lines else ""
            column = data.draw(st.integers(0, len(text)))
            return line, len(text[:column].encode("utf-16-le", "surrogatepass")) // 2

        def do_inlineCompletion(self, data: st.DataObject) -> None:
            uri = self.pick(data)
            if uri is None:
                return self.do_didOpen(data)
            line, character = self.valid_position(data, uri)
            msg_id = self.request("inlineCompletion", "textDocument/inlineCompletion", {
                "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
                "context": {"triggerKind": 2}})
            if data.draw(st.integers(0, 3)) == 0:  # cancel a quarter of them at once
                self.notify("$/cancelRequest", "$/cancelRequest", {"id": msg_id})

        def do_inlineCompletion_bad_position(self, data: st.DataObject) -> None:
            uri = self.pick(data) or "file:///fuzz/never-opened.py"
            position = {"line": data.draw(st.one_of(COORDINATE, BAD_COORDINATE)),
                        "character": data.draw(st.one_of(COORDINATE, BAD_COORDINATE))}
            method = data.draw(st.sampled_from(["textDocument/inlineCompletion", "textDocument/completion"]))
            params = {"textDocument": {"uri": uri}, "position": position}
            if method.endswith("inlineCompletion"):
                params["context"] = {"triggerKind": 1}
            self.request("inlineCompletion bad position", method, params)

        def do_explain(self, data: st.DataObject) -> None:
            uri = self.pick(data)
            if uri is None:
                return self.do_didOpen(data)
            start, end = sorted([self.valid_position(data, uri), self.valid_position(data, uri)])
            self.request("explain", "workspace/executeCommand", {"command": EXPLAIN, "arguments": [
                uri, {"start": {"line": start[0], "character": start[1]}, "end": {"line": end[0], "character": end[1]}}]})

        def do_explain_bad_arguments(self, data: st.DataObject) -> None:
            command = data.draw(st.sampled_from([EXPLAIN, EXPLAIN, "wizardcoder.nothing", ""]))
            self.request("explain bad arguments", "workspace/executeCommand",
                         {"command": command, "arguments": data.draw(st.one_of(st.none(), st.lists(JSON, max_size=3)))})

        def do_request_near_miss(self, data: st.DataObject) -> None:
            uri = self.pick(data) or "file:///fuzz/never-opened.py"
            method, params = data.draw(st.sampled_from([
                ("textDocument/inlineCompletion", {"textDocument": {"uri": uri}, "position": {"line": 0, "character": 0},
                                                   "context": {"triggerKind": 1}}),
                ("textDocument/completion", {"textDocument": {"uri": uri}, "position": {"line": 0, "character": 0}}),
                ("wizardcoder/stats", {}), ("wizardcoder/documentDigests", {}),
                ("workspace/executeCommand", {"command": EXPLAIN, "arguments": [uri, {}]}),
                ("initialize", {"processId": None, "rootUri": None, "capabilities": {}}),
            ]))
            mutated = _mutate(data, params)
            omit = data.draw(st.integers(0, 9)) == 0
            self.request("request near miss", method, mutated, omit=omit)

        def do_notification_near_miss(self, data: st.DataObject) -> None:
            """Aimed at the example's decoy document: a near miss may still be valid LSP (a didChange
            without its range replaces the whole text), which only a decoy can absorb."""
            uri = self.decoy
            method, params = data.draw(st.sampled_from([
                ("textDocument/didChange", {"textDocument": {"uri": uri, "version": 5}, "contentChanges": [
                    {"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}}, "text": "z"}]}),
                ("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": ""}}),
                ("textDocument/didClose", {"textDocument": {"uri": uri}}),
                ("$/cancelRequest", {"id": 1}), ("initialized", {}), ("$/setTrace", {"value": "off"}),
                ("workspace/didChangeConfiguration", {"settings": {"wizardcoder": {"debounceMs": 0}}}),
            ]))
            mutated = _mutate(data, params, required=True)
            self.notify("notification near miss", method, mutated)

        def do_unknown_method(self, data: st.DataObject) -> None:
            method = data.draw(st.sampled_from(["textDocument/hover", "foo", "", "wizardcoder/", "$/x"]))
            if data.draw(st.booleans()):
                self.request("unknown method", method, data.draw(JSON.filter(lambda v: isinstance(v, (dict, list)))))
            else:
                self.notify("unknown method", method, data.draw(JSON))

        def do_cancelRequest(self, data: st.DataObject) -> None:
            target = data.draw(st.sampled_from(self.outstanding)) if self.outstanding else 12345
            self.notify("$/cancelRequest", "$/cancelRequest", {"id": target})

        def do_stats(self, data: st.DataObject) -> None:
            self.request("stats", "wizardcoder/stats", {}, omit=data.draw(st.booleans()))

        def do_bad_jsonrpc(self, data: st.DataObject) -> None:
            version = data.draw(st.sampled_from([None, "1.0", "2", 2.0, "", "3.0"]))
            message: dict[str, Any] = {"method": "wizardcoder/stats", "params": {}}
            if version is not None:
                message["jsonrpc"] = version
            if data.draw(st.booleans()):
                message["id"] = f"fz-{tally.transport}-{self.example}-{client.new_id()}"
                self.send("bad jsonrpc", message, owed=True)
            else:
                self.send("bad jsonrpc", message)

        def do_bad_id(self, data: st.DataObject) -> None:
            bad = data.draw(st.sampled_from([None, 1.5, [], {}, True]))
            self.send("bad id", {"jsonrpc": "2.0", "id": bad, "method": "wizardcoder/stats", "params": {}})

        def do_notification_as_request(self, data: st.DataObject) -> None:
            uri = self.pick(data) or "file:///fuzz/never-opened.py"
            self.request("notification as request", "textDocument/didClose", {"textDocument": {"uri": uri}})

        def do_not_an_object(self, data: st.DataObject) -> None:
            value = data.draw(st.sampled_from([[], [1, 2], "text", 5, None, [{"jsonrpc": "2.0", "method": "x"}]]))
            self.send("not an object", value)

        def do_response_to_nothing(self, data: st.DataObject) -> None:
            self.send("response to nothing", {"jsonrpc": "2.0", "id": data.draw(st.sampled_from([7, "zz", 99])),
                                              "result": data.draw(JSON)})

        def do_broken_frame(self, data: st.DataObject) -> None:
            """Bytes that do not frame a message. A declared length may be a few bytes longer than
            the body (the reader must find the next frame's header inside it), never more than
            that header is long: then the next frame would be cut in the middle of its body, which
            no reader can tell from a frame of its own."""
            header = data.draw(st.sampled_from(BROKEN_HEADERS))
            body = data.draw(st.binary(max_size=40)).replace(b"\n", b" ")
            declared = header.rsplit(b" ", 1)[-1]
            if declared.isdigit() and int(declared) < 1000:
                body = body.ljust(int(declared), b"x")[:int(declared) - data.draw(st.integers(0, 16))]
            separator = data.draw(st.sampled_from([b"\r\n\r\n", b"\r\n", b"\n\n", b""]))
            tally.sent["broken frame"] += 1
            client.send_bytes(header + separator + body)

        def do_not_JSON(self, data: st.DataObject) -> None:
            body = data.draw(st.sampled_from([b"{", b"nul", b"\xff\xfe{}", b"NaN", b'{"a": Infinity}', b"[" * 5000,
                                              b'{"jsonrpc": "2.0", "id": 1e999}', b"1" * 5000]))
            tally.sent["not JSON"] += 1
            client.send_bytes(b"Content-Length: %d\r\n\r\n" % len(body) + body)

        def teardown(self) -> None:
            check_example(client, tally, self.documents)
            for uri in [*self.documents, self.decoy]:
                tally.sent["didClose"] += 1
                client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})

    return LspFuzz


def _mutate(data: st.DataObject, params: dict[str, Any], required: bool = False) -> Any:
    """``params`` with one field deleted or replaced somewhere inside (or, rarely, kept)."""
    mutated = json.loads(json.dumps(params))
    paths: list[list[Any]] = []

    def walk(value: Any, path: list[Any]) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                paths.append(path + [key])
                walk(child, path + [key])
        elif isinstance(value, list):
            for index, child in enumerate(value):
                paths.append(path + [index])
                walk(child, path + [index])

    walk(mutated, [])
    if not paths or (not required and data.draw(st.integers(0, 9)) == 0):
        return mutated
    path = data.draw(st.sampled_from(paths))
    parent = mutated
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(st.one_of(JSON, BAD_COORDINATE))
    return mutated


def check_example(client: RawClient, tally: Tally, documents: dict[str, ClientDocument]) -> None:
    """After an example: every owed request answered once, the server's documents equal the client's.

    Hypothesis swallows an exception raised in the teardown of an example whose data ran out (it
    ends such an example with its own StopTest), so the counts in ``tally`` are the check that
    always holds: ``test_fuzz.py`` compares them at the end of the run."""
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while True:
        missing = [key for key in tally.owed if key not in client.answers]
        if not missing:
            break
        if client.malformed or (client.process is not None and client.process.poll() is not None):
            tally.crashes += client.process is not None and client.process.poll() is not None
            raise AssertionError(f"the server died or wrote a malformed frame: {client.malformed}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(missing)} requests never answered, e.g. {missing[:5]} "
                                 f"({[tally.owed[k] for k in missing[:5]]})")
        time.sleep(0.02)
    doubled = [key for key in tally.owed if len(client.answers[key]) > 1]
    assert not doubled, f"requests answered more than once: {doubled[:5]}"
    digests = client.call("wizardcoder/documentDigests", {}, timeout=ANSWER_TIMEOUT_S)["result"]["documents"]
    tally.sent["digests (the check)"] += 1
    for uri, document in documents.items():
        tally.documents_checked += 1
        server = digests.get(uri)
        assert server is not None, f"{uri} is open in the client, not in the server"
        assert server["sha256"] == document.sha256(), (
            f"{uri}: the server's copy ({server['length']} characters) differs from the client's: {document.text!r}")
        tally.documents_equal += 1


# Running ---------------------------------------------------------------------------------------
def run(transport: str, messages: int, log_dir: Path, seed: int = 0) -> tuple[Tally, str]:
    """Fuzz a fresh server with about ``messages`` messages; the tally and its table."""
    log_file = log_dir / f"fuzz-{transport}.log"
    for old in log_dir.glob(log_file.name + "*"):  # this run's log only (it rotates: count every file)
        old.unlink()
    process = None
    if transport == "stdio":
        client = RawClient.stdio(log_file, level="warning")
    else:
        port = free_port()
        process = start_tcp_server(log_file, port, level="warning")
        client = RawClient.tcp(port, process)
    tally = Tally(transport)
    try:
        client.initialize(SETTINGS)
        steps = 50
        while tally.messages < messages:  # hypothesis draws how many steps each example takes
            examples = max(1, (messages - tally.messages) // (steps + 6) + 1)
            run_state_machine_as_test(machine(client, tally), settings=settings(
                max_examples=examples, stateful_step_count=steps, deadline=None, database=None,
                derandomize=tally.examples == 0, phases=[Phase.generate], suppress_health_check=list(HealthCheck)))
        tally.seconds = time.monotonic() - tally.started
        alive = client.call("wizardcoder/stats", omit_params=True, timeout=ANSWER_TIMEOUT_S)
        assert "result" in alive, alive
        tally.summary = tally.answers(client)
        tally.tracebacks = server_tracebacks(log_dir, log_file.name)
        tally.internal_errors = len(tally.tracebacks)
        code = client.shutdown_and_exit()
        assert code in (0, None), f"exit code {code}"
    except AssertionError:
        if client.process is not None and client.process.poll() not in (None, 0):
            tally.crashes += 1
        raise
    finally:
        client.close()
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
    return tally, tally.table(client)


def server_tracebacks(log_dir: Path, name: str) -> list[str]:
    """Each traceback in the server's (rotated) logs with the log line before it, which says what
    the server was doing."""
    found = []
    for path in sorted(log_dir.glob(name + "*")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(lines):
            if line.startswith("Traceback"):
                end = i + 1
                while end < len(lines) and (lines[end].startswith(" ") or not lines[end].strip()):
                    end += 1
                found.append("\n".join(lines[max(0, i - 1):end + 1]))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--transports", default="stdio,tcp")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    parts = [f"# Fuzzing the language server ({time.strftime('%Y-%m-%d')})\n",
             f"`python tests/fuzz_lsp.py --messages {args.messages}`: a hypothesis state machine (tests/fuzz_lsp.py) "
             "against `wizardcoder-tpu serve` with the default SmolLM2 model (maxNewTokens 4), on a shared 2-core "
             "machine. After each example: every owed request answered exactly once, the server's copy of every "
             "open document equal to the client's (SHA-256).\n"]
    for transport in args.transports.split(","):
        tally, table = run(transport, args.messages, Path(tempfile.gettempdir()))
        print(table)
        parts.append(f"## {transport}\n\n{table}")
    if args.out:
        args.out.write_text("\n".join(parts), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
