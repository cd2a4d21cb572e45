"""The server as a hostile or buggy client finds it: bad frames, bad parameters, the lifecycle out
of order, edits that pygls applied wrongly, a second TCP client, faults in the model. Each test
is named after what it protects. The regression tests of issue 14's defects failed on the code
before the fix; the model-fault, UTF-8 and soak tests hold what already worked.

Most tests speak through ``raw_lsp.RawClient`` (pytest-lsp cannot send a broken frame). One
server with the real default model serves the module; tests of the lifecycle start their own
(without ``initialized`` no model loads, so they start in a second).
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from lsprotocol import types

from raw_lsp import RawClient, free_port, frame, start_tcp_server

from wizardcoder_tpu.lsp import framing
from wizardcoder_tpu.lsp.documents import apply_edit
from wizardcoder_tpu.lsp.framing import FrameReader

LOG = Path(tempfile.gettempdir()) / "wizardcoder-test_lsp_reliability.log"
SETTINGS = {"maxNewTokens": 8, "debounceMs": 0, "explainMaxNewTokens": 8}
SECRET = "SECRET-DOCUMENT-TEXT-4711"
CODE = "def add(a, b):\n    return "
INLINE = "textDocument/inlineCompletion"


def inline_params(uri: str, line: int, character: int) -> dict:
    return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 2}}


@pytest.fixture(scope="module")
def server():
    LOG.unlink(missing_ok=True)  # the log test reads this session's lines only
    client = RawClient.stdio(LOG)
    client.initialize(SETTINGS)
    yield client
    assert client.shutdown_and_exit() == 0
    assert not client.malformed


@pytest.fixture
def fresh(tmp_path):
    """A server of its own, not initialized."""
    client = RawClient.stdio(tmp_path / "server.log")
    yield client
    client.close()


def assert_alive(client: RawClient) -> None:
    """The server still reads and answers after whatever came before."""
    response = client.call("wizardcoder/stats", {}, timeout=30)
    assert "result" in response, response


# The frame reader ------------------------------------------------------------------------------
async def read_all(data: bytes, chunk: int) -> list[framing.Frame]:
    position = 0

    async def read_some(size: int) -> bytes:
        nonlocal position
        part = data[position:position + min(size, chunk)]
        position += len(part)
        return part

    reader, frames = FrameReader(read_some), []
    while (found := await reader.next()) is not None:
        frames.append(found)
    return frames


GOOD = frame({"jsonrpc": "2.0", "method": "x"})
BAD_FRAMES = {
    "overflowing length": b"Content-Length: 18446744073709551616\r\n\r\n{}",
    "huge length": b"Content-Length: 100000000000\r\n\r\n{}",
    "negative length": b"Content-Length: -5\r\n\r\n{}",
    "missing length": b"Content-Type: application/vscode-jsonrpc\r\n\r\n{}",
    "non-ASCII length": "Content-Length: ５\r\n\r\n{}".encode(),
    "NUL in a header": b"Content-Length: 2\x00\r\n\r\n{}",
    "length too short": b'Content-Length: 3\r\n\r\n{"jsonrpc": "2.0"}',
    "length too long": b'Content-Length: 5000\r\n\r\n{"jsonrpc": "2.0"}',
    "length a few bytes too long": b'Content-Length: 25\r\n\r\n{"jsonrpc": "2.0"}',  # eats "Content"
    "two different lengths": b"Content-Length: 5\r\n",  # the next frame's header joins this block
    "garbage line": b"hello\r\n",
    "8000-digit length": b"Content-Length: " + b"9" * 8000 + b"\r\n\r\n{}",
}


@pytest.mark.parametrize("chunk", [1, 5, 65536])
@pytest.mark.parametrize("name", list(BAD_FRAMES))
async def test_frame_reader_resynchronises_at_the_next_header(name, chunk):
    frames = await read_all(BAD_FRAMES[name] + GOOD + GOOD, chunk)
    bodies = [f.body for f in frames if f.body is not None and f.body.startswith(b'{"jsonrpc": "2.0", "method"')]
    assert len(bodies) == 2, frames  # both good frames after the bad one arrive whole
    assert frames[-1].body == frames[-2].body == GOOD.split(b"\r\n\r\n", 1)[1]


async def test_frame_reader_reads_a_large_body_whole():
    body = json.dumps({"jsonrpc": "2.0", "method": "x", "params": {"text": "x\\n" * 3_000_000}}).encode()
    frames = await read_all(b"Content-Length: %d\r\n\r\n" % len(body) + body + GOOD, 65536)
    assert [f.body for f in frames] == [body, GOOD.split(b"\r\n\r\n", 1)[1]]


async def test_frame_reader_caps_the_frame_size_without_allocating_it():
    frames = await read_all(b"Content-Length: %d\r\n\r\n" % (framing.MAX_FRAME_BYTES + 1) + GOOD, 65536)
    assert frames[0].body is None and "limit" in frames[0].problem
    assert frames[1].body is not None


# The server survives bad frames and answers every request --------------------------------------
@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_bad_frame_neither_crashes_nor_deafens_the_server(server, name):
    server.send_bytes(BAD_FRAMES[name])
    assert_alive(server)
    assert server.process.poll() is None


def test_broken_json_gets_a_parse_error(server):
    mark = len(server.messages)
    server.send_bytes(b"Content-Length: 9\r\n\r\n{not json")
    error = server.wait_for(lambda m: "error" in m and m.get("id") is None, 10, "a parse error", mark)
    assert error["error"]["code"] == -32700
    assert_alive(server)


INVALID_PARAMS = {
    "line -1": inline_params("file:///tmp/params.py", -1, 0),
    "line 2**31": inline_params("file:///tmp/params.py", 2147483648, 0),
    "no context": {"textDocument": {"uri": "file:///tmp/params.py"}, "position": {"line": 0, "character": 0}},
    "no position": {"textDocument": {"uri": "file:///tmp/params.py"}, "context": {"triggerKind": 2}},
    "no params": None,
    "params a number": 5,
}


def test_invalid_params_get_an_invalid_params_error_and_no_popups(server):
    server.open("file:///tmp/params.py", CODE)
    mark = len(server.messages)
    for name, params in INVALID_PARAMS.items():
        for _ in range(3):
            if params is None:
                response = server.call(INLINE, omit_params=True)
            else:
                server.send({"jsonrpc": "2.0", "id": (msg_id := server.new_id()), "method": INLINE, "params": params})
                response = server.response(msg_id)
            assert response["error"]["code"] == -32602, (name, response)
            assert "data" not in response["error"]  # no traceback
    popups = [m for m in server.messages[mark:] if m.get("method") == "window/showMessage"]
    assert popups == []


def test_a_response_with_the_id_of_a_clients_own_request_changes_nothing(server):
    server.open("file:///tmp/own.py", CODE)
    msg_id = server.request(INLINE, inline_params("file:///tmp/own.py", 1, 11))
    server.send({"jsonrpc": "2.0", "id": msg_id, "result": {"items": [{"insertText": "forged"}]}})
    response = server.response(msg_id, timeout=60)
    assert "forged" not in json.dumps(response)
    assert_alive(server)
    assert len(server.responses(msg_id)) == 1
    assert "failed to handle a message" not in LOG.read_text(encoding="utf-8")


def test_cancels_with_ids_that_are_not_ids_are_dropped(server):
    for bad in ([1], {"a": 1}, None, 1.5, True):
        server.notify("$/cancelRequest", {"id": bad})
        server.notify("window/workDoneProgress/cancel", {"token": bad})
    assert_alive(server)
    assert "failed to handle a message" not in LOG.read_text(encoding="utf-8")


def test_stats_without_params_is_answered(server):
    response = server.call("wizardcoder/stats", omit_params=True)
    assert "engineCalls" in response["result"]


def test_broken_notifications_give_at_most_one_popup(server):
    mark = len(server.messages)
    for _ in range(20):
        server.notify("textDocument/didChange", {"textDocument": {"uri": "file:///tmp/x.py"},
                                                 "contentChanges": [{"range": {"start": {"line": -3}}, "text": 1}]})
    assert_alive(server)
    popups = [m for m in server.messages[mark:] if m.get("method") == "window/showMessage"]
    assert len(popups) <= 1


def test_requests_before_initialize_get_server_not_initialized(fresh):
    for method in (INLINE, "wizardcoder/stats", "shutdown", "workspace/executeCommand"):
        response = fresh.call(method, {})
        assert response["error"]["code"] == -32002, response
        assert "data" not in response["error"] and "Traceback" not in response["error"]["message"]
    fresh.initialize(wait_for_model=False)


def test_requests_after_shutdown_get_invalid_request(fresh):
    fresh.initialize(wait_for_model=False)
    assert "result" in fresh.call("shutdown", omit_params=True)
    for method in (INLINE, "wizardcoder/stats", "shutdown", "initialize"):
        response = fresh.call(method, {}, timeout=10)
        assert response["error"]["code"] == -32600, response
    fresh.notify("exit")
    assert fresh.wait_exit() == 0


def test_exit_without_shutdown_exits_1(fresh):
    fresh.initialize(wait_for_model=False)
    fresh.notify("exit")
    assert fresh.wait_exit() == 1


def test_exit_before_initialize_exits_1(fresh):
    fresh.notify("exit")
    assert fresh.wait_exit() == 1


def test_second_initialize_is_refused_and_forgets_nothing(fresh):
    fresh.initialize(wait_for_model=False)
    fresh.open("file:///tmp/kept.py", CODE)
    before = fresh.digests()
    assert list(before) == ["file:///tmp/kept.py"]
    response = fresh.call("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
    assert response["error"]["code"] == -32600
    assert fresh.digests() == before


def test_repeated_initialized_does_not_reload_the_model(server):
    mark = len(server.messages)
    for _ in range(3):
        server.notify("initialized", {})
    assert_alive(server)
    time.sleep(0.5)
    statuses = [m["params"]["state"] for m in server.messages[mark:] if m.get("method") == "wizardcoder/status"]
    assert "loading" not in statuses


def test_a_client_that_never_answers_progress_create_still_gets_the_model(tmp_path):
    client = RawClient.stdio(tmp_path / "server.log")
    try:
        client.answer_server_requests = False
        client.initialize(SETTINGS, wait_for_model=False)
        create = client.wait_for(lambda m: m.get("method") == "window/workDoneProgress/create", 30, "progress create")
        status = client.wait_for_status(("idle", "error"))
        assert status["params"]["state"] == "idle", status
        assert client.responses(create["id"]) == []  # never answered: the server timed out and loaded
    finally:
        client.close()


def explain_whole(uri: str) -> dict:
    """``executeCommand`` params that explain the two-line function the explain tests open."""
    return {"command": "wizardcoder.explainSelection",
            "arguments": [uri, {"start": {"line": 0, "character": 0}, "end": {"line": 1, "character": 16}}]}


def test_an_answer_to_progress_create_after_the_explain_was_cancelled_is_dropped_quietly(tmp_path):
    """The fuzz found it: ``$/cancelRequest`` of an explain while the server awaits the client's
    answer to ``window/workDoneProgress/create`` cancels that await; the answer then arrived at a
    cancelled future (pygls: InvalidStateError, a traceback in the log)."""
    log_file = tmp_path / "server.log"
    client = RawClient.stdio(log_file)
    try:
        client.initialize(SETTINGS)
        client.answer_server_requests = False
        uri = "file:///tmp/cancel_explain.py"
        client.open(uri, "def add(a, b):\n    return a + b\n")
        mark = len(client.messages)
        explain = client.request("workspace/executeCommand", explain_whole(uri))
        create = client.wait_for(lambda m: m.get("method") == "window/workDoneProgress/create", 30,
                                 "progress create", mark)
        client.notify("$/cancelRequest", {"id": explain})
        cancelled = client.response(explain, 30)
        assert cancelled.get("error", {}).get("code") == -32800, cancelled  # RequestCancelled
        client.send({"jsonrpc": "2.0", "id": create["id"], "result": None})  # the answer, too late
        assert_alive(client)
        assert "Traceback" not in log_file.read_text(encoding="utf-8")
        client.answer_server_requests = True  # and the next explain is served as usual
        again = client.call("workspace/executeCommand", explain_whole(uri), timeout=120)
        assert "result" in again and again["result"]["markdown"], again
    finally:
        client.close()


def test_the_editors_cancel_button_on_the_explain_progress_stops_the_model_and_keeps_the_text(tmp_path):
    """VS Code shows a cancel button on a cancellable progress; it sends
    ``window/workDoneProgress/cancel``. The explanation stops within a token and the text so far
    is the answer."""
    client = RawClient.stdio(tmp_path / "server.log")
    try:
        client.initialize({**SETTINGS, "explainMaxNewTokens": 512})
        uri = "file:///tmp/cancel_button.py"
        client.open(uri, "def add(a, b):\n    return a + b\n")
        mark = len(client.messages)
        explain = client.request("workspace/executeCommand", explain_whole(uri))
        report = client.wait_for(lambda m: m.get("method") == "$/progress" and m["params"]["value"].get("kind") ==
                                 "report" and m["params"]["value"].get("message"), 120, "an explain report", mark)
        client.notify("window/workDoneProgress/cancel", {"token": report["params"]["token"]})
        answer = client.response(explain, 60)
        assert "result" in answer and answer["result"]["markdown"], answer
        last = client.call("wizardcoder/stats", {})["result"]["generations"][-1]
        assert last["kind"] == "explain" and last["stopReason"] == "cancelled" and last["tokens"] < 512, last
    finally:
        client.close()


# The documents ---------------------------------------------------------------------------------
def edit(text: str, start: tuple[int, int], end: tuple[int, int], new: str, encoding: str = "utf-16") -> str:
    return apply_edit(text, types.Range(types.Position(*start), types.Position(*end)), new, encoding)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85"])
def test_edits_break_lines_only_where_lsp_does(separator):
    text = f"a{separator}b\nc"
    assert edit(text, (1, 0), (1, 0), "X") == f"a{separator}b\nXc"
    assert edit(text, (0, 3), (0, 3), "Y") == f"a{separator}bY\nc"


def test_edits_past_the_end_clamp_like_the_editor():
    assert edit("abc", (0, 10), (0, 10), "\n") == "abc\n"
    assert edit("abc\ndef", (0, 99), (0, 99), "!") == "abc!\ndef"
    assert edit("abc\ndef", (5, 0), (5, 0), "!") == "abc\ndef!"
    assert edit("ab\r\ncd", (0, 3), (0, 3), "!") == "ab!\r\ncd"  # never between \r and \n
    assert edit("abc", (0, 2), (0, 1), "") == "ac"  # a reversed range is reordered


def test_edits_count_utf16_and_utf8_units():
    text = "x😀y é\nz"
    assert edit(text, (0, 3), (0, 3), "|") == "x😀|y é\nz"  # 😀 is two UTF-16 units
    assert edit(text, (0, 7), (0, 9), "E", "utf-8") == "x😀y E\nz"  # é is two UTF-8 bytes, 😀 four
    assert edit(text, (0, 8), (0, 8), "|", "utf-8") == "x😀y |é\nz"  # inside é: before it
    # between the halves of a surrogate pair the editor splits it; putting the halves back joins it
    split = edit(text, (0, 2), (0, 2), "|")
    assert split == "x\ud83d|\ude00y é\nz"
    assert edit(split, (0, 2), (0, 3), "") == text


def test_server_copy_follows_edits_as_the_editor_applies_them(server):
    uri = "file:///tmp/separators.py"
    text = "a\u2028b\nc"
    server.open(uri, text)
    changes = [((1, 0), (1, 0), "X"), ((0, 10), (0, 10), "\n"), ((9, 9), (9, 9), "end")]
    for version, (start, end, new) in enumerate(changes, start=2):
        server.notify("textDocument/didChange", {
            "textDocument": {"uri": uri, "version": version},
            "contentChanges": [{"range": {"start": {"line": start[0], "character": start[1]},
                                          "end": {"line": end[0], "character": end[1]}}, "text": new}]})
        text = edit(text, start, end, new)
    assert text == "a\u2028b\n\nXcend"
    digest = server.digests()[uri]
    assert digest["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert digest["version"] == 4


def test_server_copy_counts_utf8_units_when_negotiated(fresh):
    result = fresh.initialize(encodings=["utf-8", "utf-16"], wait_for_model=False)
    assert result["capabilities"]["positionEncoding"] == "utf-8"
    uri = "file:///tmp/utf8.py"
    fresh.open(uri, "é😀x\nz")
    fresh.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [
        {"range": {"start": {"line": 0, "character": 6}, "end": {"line": 0, "character": 6}}, "text": "|"}]})
    assert fresh.digests()[uri]["sha256"] == hashlib.sha256("é😀|x\nz".encode()).hexdigest()


def test_a_lone_surrogate_does_not_break_completion_or_explain(server):
    uri = "file:///tmp/surrogate.py"
    server.send_bytes(frame({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
        "uri": uri, "languageId": "python", "version": 1, "text": "# \ud800 odd\ndef add(a, b):\n    return "}}}))
    response = server.call(INLINE, inline_params(uri, 2, 11), timeout=60)
    assert "result" in response, response
    explain = server.call("workspace/executeCommand", {"command": "wizardcoder.explainSelection", "arguments": [
        uri, {"start": {"line": 0, "character": 0}, "end": {"line": 2, "character": 11}}]}, timeout=120)
    assert "result" in explain and explain["result"]["markdown"], explain


def test_a_file_the_editor_did_not_open_is_never_read(server, tmp_path):
    on_disk = tmp_path / "on_disk.py"
    on_disk.write_text(f"# {SECRET}\ndef add(a, b):\n    return ", encoding="utf-8")
    uri = on_disk.as_uri()
    mark = len(server.messages)
    response = server.call(INLINE, inline_params(uri, 2, 11))
    assert response["error"]["code"] == -32602 and "not open" in response["error"]["message"]
    server.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [
        {"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}}, "text": "x"}]})
    explain = server.call("workspace/executeCommand", {"command": "wizardcoder.explainSelection", "arguments": [
        uri, {"start": {"line": 0, "character": 0}, "end": {"line": 2, "character": 11}}]})
    assert explain["error"]["code"] == -32602 and "not open" in explain["error"]["message"]
    assert uri not in server.digests()
    assert SECRET not in json.dumps(server.messages[mark:])


# Logs ------------------------------------------------------------------------------------------
def test_messages_with_a_bad_jsonrpc_are_logged_without_their_content(server):
    document = {"textDocument": {"uri": "file:///tmp/secret.py", "languageId": "python", "version": 1,
                                 "text": SECRET}}
    server.send({"jsonrpc": "1.0", "method": "textDocument/didOpen", "params": document})
    server.send({"method": "textDocument/didOpen", "params": document})
    server.send({"jsonrpc": "2.0", "id": server.new_id(), "method": "textDocument/didOpen", "params": document})
    server.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {"text": SECRET}}})
    server.send({"jsonrpc": "2.0", "id": server.new_id(), "method": INLINE, "params": {"x": SECRET}})
    server.send({"jsonrpc": SECRET, "id": server.new_id(), "method": INLINE})
    assert_alive(server)
    assert "file:///tmp/secret.py" not in server.digests()
    log = LOG.read_text(encoding="utf-8")
    assert "jsonrpc 1.0" in log and "jsonrpc missing" in log
    assert SECRET not in log


def test_the_log_rotates(tmp_path):
    from wizardcoder_tpu.lsp import main

    path = tmp_path / "server.log"
    main.setup_logging(str(path), "warning")
    root = logging.getLogger()
    handler = root.handlers[-1]
    try:
        record = "x" * 1000
        for _ in range(main.LOG_BYTES // 1000 * 2):
            logging.getLogger("wizardcoder_tpu.test").warning(record)
    finally:
        root.removeHandler(handler)
        handler.close()
    sizes = sorted(p.stat().st_size for p in tmp_path.iterdir())
    assert len(sizes) >= 2 and max(sizes) <= main.LOG_BYTES + 2000


# TCP -------------------------------------------------------------------------------------------
def test_a_second_tcp_client_never_sees_the_first_ones_documents(tmp_path):
    """Each TCP connection is a session of its own (issue 13): a second client sees none of the
    first one's documents or replies, initialized or not."""
    port = free_port()
    process = start_tcp_server(tmp_path / "server.log", port)
    first = RawClient.tcp(port)
    explain = {"command": "wizardcoder.explainSelection", "arguments": [
        "file:///tmp/private.py", {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 5}}]}
    try:
        first.initialize(wait_for_model=False)
        first.open("file:///tmp/private.py", SECRET)
        intruder = RawClient.tcp(port)
        try:
            before = intruder.call("workspace/executeCommand", explain)  # never initialized
            assert before["error"]["code"] == -32002, before
            intruder.initialize(wait_for_model=False)
            assert intruder.digests() == {}
            after = intruder.call("workspace/executeCommand", explain, timeout=60)
            assert "error" in after and "not open" in after["error"]["message"], after
            time.sleep(0.5)
            assert SECRET not in json.dumps(intruder.messages)
        finally:
            intruder.close()
        assert "file:///tmp/private.py" in first.digests()  # the first client is still served
        assert first.shutdown_and_exit() is None and process.poll() is None  # its connection ends, not the server
    finally:
        first.close()
        process.terminate()
        assert process.wait(30) == 0  # SIGTERM ends a TCP server cleanly


@pytest.mark.parametrize("address", ["0.0.0.0", "[::]", "192.168.1.10", "example.com"])
def test_tcp_on_a_non_loopback_address_is_refused_at_start(tmp_path, address):
    done = subprocess.run([sys.executable, "-m", "wizardcoder_tpu", "serve", "--tcp", f"{address}:{free_port()}",
                           "--log-file", str(tmp_path / "server.log")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr and "authentication" in done.stderr


# Faults in the model ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_a_bad_model_file_gives_a_clear_error_and_the_server_keeps_serving(tmp_path, kind):
    model = tmp_path / "model.gguf"
    if kind == "corrupt":
        model.write_bytes(b"GGUF" + b"\xff" * 64)
    client = RawClient.stdio(tmp_path / "server.log")
    try:
        client.initialize({**SETTINGS, "model": str(model), "fallbackToCpu": False})
        status = client.wait_for_status(("error",), timeout=10)
        assert "model.gguf" in status["params"]["message"]
        client.open("file:///tmp/f.py", CODE)
        response = client.call(INLINE, inline_params("file:///tmp/f.py", 1, 11))
        assert response["error"]["code"] == -32803 and "model.gguf" in response["error"]["message"], response
        mark = len(client.messages)
        client.notify("workspace/didChangeConfiguration", {"settings": {"wizardcoder": {"model": "default"}}})
        client.wait_for_status(("idle",), start=mark)
        response = client.call(INLINE, inline_params("file:///tmp/f.py", 1, 11), timeout=60)
        assert "result" in response, response
        assert client.shutdown_and_exit() == 0
    finally:
        client.close()


def test_an_engine_exception_mid_generation_is_reported_and_the_server_keeps_serving(tmp_path):
    """In-process, so that the fault can be put into the real engine: after three tokens its
    ``on_text`` raises as a device error would, inside ``Engine.generate``."""
    import os

    from wizardcoder_tpu.lsp.server import create_server
    from wizardcoder_tpu.lsp.settings import Settings
    from wizardcoder_tpu.lsp.transport import serve_stdio

    server = create_server(Settings())
    to_server, from_client = os.pipe()
    to_client, from_server = os.pipe()
    server_in, server_out = os.fdopen(to_server, "rb", 0), os.fdopen(from_server, "wb", 0)
    thread = threading.Thread(target=serve_stdio, args=(server, server_in, server_out), daemon=True)
    thread.start()
    client_out, client_in = os.fdopen(from_client, "wb", 0), os.fdopen(to_client, "rb", 0)
    client = RawClient(client_out.write, client_in.read, client_out.close)
    try:
        client.initialize(SETTINGS)
        engine = server.host.engine
        real = engine.generate

        def failing(ids, params, cancel=None, on_text=None):
            count = 0

            def fault(text: str) -> bool:
                nonlocal count
                count += 1
                if count == 3:
                    raise RuntimeError("injected: the device stopped answering")
                return on_text(text) if on_text is not None else True
            return real(ids, params, cancel, fault)

        engine.generate = failing
        client.open("file:///tmp/fault.py", "# numbers\nvalues = [")
        response = client.call(INLINE, inline_params("file:///tmp/fault.py", 1, 10), timeout=60)
        assert response["error"]["code"] == -32803, response
        assert "the device stopped answering" in response["error"]["message"]
        del engine.generate
        response = client.call(INLINE, inline_params("file:///tmp/fault.py", 1, 10), timeout=60)
        assert "result" in response and response["result"]["items"], response
    finally:
        client.close()
        client_in.close()


# Soak ------------------------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def type_keys(client: RawClient, documents: dict[str, list[str]], count: int, start: int) -> list[int]:
    """``count`` keystrokes round-robin over ``documents`` (each a list of lines, edited here as the
    server should): insert a character at the end, ask for a completion there, cancel every fifth
    request. The request ids."""
    ids = []
    uris = sorted(documents)
    for n in range(start, start + count):
        uri = uris[n % len(uris)]
        lines = documents[uri]
        key = "\n" if n % 23 == 22 else "abcdefghij("[n % 11]
        line, character = len(lines) - 1, len(lines[-1])
        client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": n + 2}, "contentChanges": [
            {"range": {"start": {"line": line, "character": character}, "end": {"line": line, "character": character}},
             "text": key}]})
        if key == "\n":
            lines.append("")
        else:
            lines[-1] += key
        ids.append(client.request(INLINE, inline_params(uri, len(lines) - 1, len(lines[-1]))))
        if n % 5 == 4:
            client.notify("$/cancelRequest", {"id": ids[-2]})
        time.sleep(0.005)
    return ids


def restore(client: RawClient, documents: dict[str, list[str]], original: dict[str, list[str]], version: int) -> None:
    """Put every document back to its ``original`` lines with one whole-range edit, so that the
    prompts of a long soak stay as long as those of its warm-up: memory then measures leaks, not
    the KV rows and buffers that longer documents rightly take."""
    for uri, lines in documents.items():
        end = {"line": len(lines) - 1, "character": len(lines[-1])}
        client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version}, "contentChanges": [
            {"range": {"start": {"line": 0, "character": 0}, "end": end}, "text": "\n".join(original[uri])}]})
        documents[uri] = list(original[uri])


@pytest.mark.slow
def test_soak_1000_keystrokes_with_cancels_one_answer_each_and_flat_memory(tmp_path):
    client = RawClient.stdio(tmp_path / "server.log", level="warning")
    try:
        client.initialize({**SETTINGS, "maxNewTokens": 4, "debounceMs": 30})
        original = {f"file:///tmp/soak{k}.py": ["# soak", f"def f{k}(x):", "    return "] for k in range(3)}
        documents = {uri: list(lines) for uri, lines in original.items()}
        for uri, lines in documents.items():
            client.open(uri, "\n".join(lines))

        def in_sync() -> None:
            digests = client.digests()
            for uri, lines in documents.items():
                assert digests[uri]["sha256"] == hashlib.sha256("\n".join(lines).encode()).hexdigest(), uri

        def rounds(first: int, count: int) -> list[int]:  # 50 keys, then the documents as they were
            ids = []
            for start in range(first, first + count, 50):
                ids += type_keys(client, documents, 50, start)
                for msg_id in ids[-50:]:
                    client.response(msg_id, timeout=300)
                in_sync()
                restore(client, documents, original, 10_000 + start)
            return ids

        warm = rounds(0, 100)
        time.sleep(1.0)
        before = rss_kib(client.process.pid)
        ids = rounds(100, 900)
        time.sleep(1.0)
        after = rss_kib(client.process.pid)
        answers = [len(client.responses(msg_id)) for msg_id in warm + ids]
        assert answers == [1] * 1000
        kinds = {"result" if "result" in r else r["error"]["code"] for i in ids for r in client.responses(i)}
        assert kinds <= {"result", -32800}, kinds  # answered, or cancelled
        # Measured 2026-12-02 on this kind of machine: +0.5 % to +1.7 % over 900 keys with the documents
        # restored; +12 % when they grow (KV rows of longer prompts, not a leak). A leak of 20 KiB a key fails.
        assert after < before * 1.05, f"RSS grew from {before} KiB to {after} KiB"
        in_sync()
        print(f"\nsoak: 1000 keystrokes, RSS {before} KiB after warm-up, {after} KiB at the end "
              f"({(after - before) / before:+.1%})")
        assert client.shutdown_and_exit() == 0
    finally:
        client.close()
