"""The language server as different clients see it, against the real default model: a client
without inline completion (the ``textDocument/completion`` fallback), position encodings (UTF-8
when offered, UTF-16 by default) on non-ASCII lines, ``serve --tcp`` on the loopback address,
``workspace/didChangeConfiguration``, and the debounce.

The module's server is started by a client that has no inline completion and offers UTF-16 and
UTF-8; the TCP test starts a second server for a client with inline completion and the UTF-16
default. Counters come from the server's ``wizardcoder/stats`` request; waits are on responses
and statuses, never on sleeps.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import LanguageClient, make_test_lsp_client

from raw_lsp import free_port
from test_lsp_support import LOAD_TIMEOUT_S, capabilities, change_document, inline, open_document, server_config, \
    start, stats
from wizardcoder_tpu.lsp.main import parse_tcp

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOG = Path(tempfile.gettempdir()) / "wizardcoder-test_lsp_clients.log"
SETTINGS = {"maxNewTokens": 16, "debounceMs": 0}

AREA = ('import math\n\n\ndef circle_area(radius):\n    """Return the area of a circle."""\n    return \n'
        '\n\ndef main():\n    print(circle_area(2.0))\n')
AREA_CURSOR = (5, 11)  # after "    return "
# Nothing can dedent at column 0 of the last line: only maxNewTokens ends the model's run.
COUNT = "# Count from one to one hundred, one number per line.\n" + "".join(f"# {n}\n" for n in range(1, 6))
COUNT_CURSOR = (6, 0)

# Two non-ASCII lines: é and ö are 2 UTF-8 bytes and 1 UTF-16 unit, 😀 is 4 bytes and 2 units.
UNICODE = ('def greet(name):\n    return "héllo " + name\n\n\n'
           's = "héllo wörld 😀" + \n'
           'print(greet("wörld 😀", ))\n')
END_LINE, CALL_LINE = 4, 5


def units(text: str, encoding: str) -> int:
    """The length of ``text`` in the code units of an LSP position encoding."""
    return len(text.encode("utf-8")) if encoding == "utf-8" else len(text.encode("utf-16-le")) // 2


def line_of(text: str, number: int) -> str:
    return text.split("\n")[number]


@pytest_lsp.fixture(scope="module", config=server_config(LOG))
async def client(lsp_client: LanguageClient):
    caps = capabilities(inline=False, encodings=[types.PositionEncodingKind.Utf16, types.PositionEncodingKind.Utf8])
    lsp_client.recorder, lsp_client.init_result = await start(lsp_client, SETTINGS, caps)
    yield
    await lsp_client.shutdown_session()


def configure(client: LanguageClient, **settings) -> None:
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"wizardcoder": settings}))


async def completion(client: LanguageClient, uri: str, line: int, character: int) -> types.CompletionList:
    return await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line, character)))


# The completion fallback ------------------------------------------------------------------------
async def test_completion_fallback_gives_one_item_from_the_model(client: LanguageClient):
    uri = "file:///tmp/clients_area.py"
    open_document(client, uri, AREA)
    calls = (await stats(client))["engineCalls"]
    result = await completion(client, uri, *AREA_CURSOR)
    assert (await stats(client))["engineCalls"] == calls + 1  # the model ran for it
    assert len(result.items) == 1
    item = result.items[0]
    cursor = types.Position(*AREA_CURSOR)
    assert item.text_edit.range == types.Range(cursor, cursor)
    text = item.text_edit.new_text
    assert text.strip() and "radius" in text  # the model continues the return statement
    assert item.label and text.strip().startswith(item.label.removesuffix("..."))
    # marked as coming from the model, in the fields an editor's menu shows
    assert item.label_details.description == "wizardcoder (model)"
    assert "model completion" in item.detail and "SmolLM2" in item.detail
    assert item.data["source"] == "wizardcoder" and item.data["origin"] == "model"
    assert item.documentation == text  # plain text: this client lists no Markdown documentation format
    assert result.is_incomplete  # asked again as the user types, not filtered client-side


# Position encodings -----------------------------------------------------------------------------
async def check_encoding(client: LanguageClient, uri: str, encoding: str) -> None:
    """Inline completions on the two non-ASCII lines of UNICODE, positions in ``encoding``."""
    end_line = line_of(UNICODE, END_LINE)
    at_end = types.Position(END_LINE, units(end_line, encoding))
    result = await inline(client, uri, at_end.line, at_end.character)
    assert len(result.items) == 1, "no completion after the non-ASCII line"
    assert result.items[0].range == types.Range(at_end, at_end)  # an insertion at the line's end

    call_line = line_of(UNICODE, CALL_LINE)
    column = call_line.index(")")  # before the auto-closed ")", after the emoji
    at_call = types.Position(CALL_LINE, units(call_line[:column], encoding))
    result = await inline(client, uri, at_call.line, at_call.character)
    assert len(result.items) == 1, "no completion inside the call"
    item = result.items[0]
    assert item.range.start == at_call and item.range.end.line == CALL_LINE
    replaced = item.range.end.character - at_call.character  # ASCII after the cursor: 1 unit each
    assert replaced in (0, 1, 2)  # the "))" of greet and print, auto-closed
    edited = call_line[:column] + item.insert_text + call_line[column + replaced:]
    assert edited.startswith('print(greet("wörld 😀", ') and edited.count("(") == edited.count(")"), edited

    # a position inside a character of this encoding is refused, not rounded
    inside = units('s = "h', encoding) + 1 if encoding == "utf-8" else units('s = "héllo wörld ', encoding) + 1
    with pytest.raises(JsonRpcException, match=f"falls inside a character \\({encoding}"):
        await inline(client, uri, END_LINE, inside)


async def test_utf8_is_chosen_when_offered_and_non_ascii_lines_are_right(client: LanguageClient):
    assert client.init_result.capabilities.position_encoding == types.PositionEncodingKind.Utf8
    assert (await stats(client))["positionEncoding"] == "utf-8"
    uri = "file:///tmp/clients_unicode_utf8.py"
    open_document(client, uri, UNICODE)
    await check_encoding(client, uri, "utf-8")
    # the UTF-16 column of the end of the line is a different place in UTF-8: inside the line
    end_line = line_of(UNICODE, END_LINE)
    assert units(end_line, "utf-16") < units(end_line, "utf-8")


# serve --tcp, with the UTF-16 default -----------------------------------------------------------
def tcp_listeners(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} spell them) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


async def test_tcp_address_defaults_to_loopback():
    assert parse_tcp("8123") == ("127.0.0.1", 8123)
    assert parse_tcp(":8123") == ("127.0.0.1", 8123)
    assert parse_tcp("127.0.0.1:8123") == ("127.0.0.1", 8123)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_tcp("localhost")
    with pytest.raises(ValueError, match="out of range"):
        parse_tcp("127.0.0.1:70000")


async def connect(port: int, server: subprocess.Popen, timeout: float) -> LanguageClient:
    """A client connected to the server once it listens."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        tcp_client = make_test_lsp_client()
        try:
            await tcp_client.start_tcp("127.0.0.1", port)
            return tcp_client
        except OSError:
            if server.poll() is not None:
                raise AssertionError(f"serve --tcp exited with {server.returncode}: {server.stderr.read()}")
            if loop.time() > deadline:
                raise AssertionError(f"serve --tcp did not listen on port {port} within {timeout} s")
            await asyncio.sleep(0.2)


async def test_serve_tcp_on_loopback_with_utf16_default(client: LanguageClient):
    port = free_port()
    log = Path(tempfile.gettempdir()) / "wizardcoder-test_lsp_clients-tcp.log"
    server = subprocess.Popen([sys.executable, "-m", "wizardcoder_tpu", "serve", "--tcp", f"127.0.0.1:{port}",
                               "--log-file", str(log), "--log-level", "info"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    tcp_client = None
    try:
        tcp_client = await connect(port, server, timeout=120)
        if Path("/proc/net/tcp").exists():
            assert tcp_listeners(port) == ["0100007F"]  # 127.0.0.1 only, no wildcard or IPv6 listener
        caps = capabilities(inline=True)
        caps.general = None  # no position encodings offered: the LSP default, UTF-16
        recorder, init = await asyncio.wait_for(start(tcp_client, SETTINGS, caps), LOAD_TIMEOUT_S + 30)
        assert recorder.statuses[-1]["state"] == "idle", recorder.statuses
        assert init.capabilities.position_encoding == types.PositionEncodingKind.Utf16
        assert init.capabilities.inline_completion_provider is not None

        uri = "file:///tmp/clients_unicode_utf16.py"
        open_document(tcp_client, uri, UNICODE)
        await asyncio.wait_for(check_encoding(tcp_client, uri, "utf-16"), 300)
        assert (await stats(tcp_client))["positionEncoding"] == "utf-16"

        # this client shows inline completions: the completion fallback does not run the model again
        calls = (await stats(tcp_client))["engineCalls"]
        listed = await asyncio.wait_for(completion(tcp_client, uri, END_LINE, units(line_of(UNICODE, END_LINE), "utf-16")), 60)
        assert list(listed.items) == [] and (await stats(tcp_client))["engineCalls"] == calls

        await asyncio.wait_for(tcp_client.shutdown_session(), 60)
        await asyncio.sleep(0.5)
        assert server.poll() is None  # the session ended, the server serves on (issue 13)
        server.terminate()
        assert await asyncio.to_thread(server.wait, 60) == 0  # and stops cleanly on SIGTERM
    finally:
        if tcp_client is not None:
            await tcp_client.stop()
        if server.poll() is None:
            server.kill()
            server.wait(10)


# workspace/didChangeConfiguration ---------------------------------------------------------------
async def generation_for(client: LanguageClient, request_id: str) -> dict:
    mine = [g for g in (await stats(client))["generations"] if g["requestId"] == request_id]
    assert len(mine) == 1, mine
    return mine[0]


async def inline_as(client: LanguageClient, uri: str, position: tuple[int, int], msg_id: str):
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(*position),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked))
    return await client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=msg_id)


async def test_did_change_configuration_sets_max_new_tokens(client: LanguageClient):
    try:
        for count in (3, 7):
            uri = f"file:///tmp/clients_count_{count}.py"
            open_document(client, uri, COUNT)
            configure(client, maxNewTokens=count)
            await inline_as(client, uri, COUNT_CURSOR, f"max-new-tokens-{count}")
            generation = await generation_for(client, f"max-new-tokens-{count}")
            assert generation["tokens"] == count and generation["stopReason"] == "max_tokens", generation
    finally:
        configure(client, **SETTINGS)


async def test_did_change_configuration_disables_languages(client: LanguageClient):
    python_uri, js_uri = "file:///tmp/clients_lang.py", "file:///tmp/clients_lang.js"
    open_document(client, python_uri, AREA)
    open_document(client, js_uri, "function circleArea(radius) {\n  return \n}\n", language="javascript")
    try:
        configure(client, **SETTINGS, disabledLanguages=["python", "markdown"])
        calls = (await stats(client))["engineCalls"]
        assert list((await inline(client, python_uri, *AREA_CURSOR)).items) == []  # python is off
        assert list((await completion(client, python_uri, *AREA_CURSOR)).items) == []
        assert (await stats(client))["engineCalls"] == calls  # without asking the model
        assert len((await inline(client, js_uri, 1, 9)).items) == 1  # javascript is on
        assert (await stats(client))["engineCalls"] == calls + 1

        configure(client, **SETTINGS, disabledLanguages=[])  # empty: every language
        assert len((await inline(client, python_uri, *AREA_CURSOR)).items) == 1
    finally:
        configure(client, **SETTINGS, disabledLanguages=[])


async def test_a_bad_setting_is_reported_and_ignored(client: LanguageClient):
    uri = "file:///tmp/clients_bad_setting.py"
    open_document(client, uri, COUNT)
    before = len(client.log_messages)
    try:
        configure(client, maxNewTokens=4)
        configure(client, maxNewTokens="many")  # ignored: 4 stays
        await inline_as(client, uri, COUNT_CURSOR, "bad-setting")
        assert (await generation_for(client, "bad-setting"))["tokens"] == 4
        messages = [m.message for m in client.log_messages[before:]]
        assert any("'maxNewTokens'" in m and "keeping 4" in m for m in messages), messages
    finally:
        configure(client, **SETTINGS)


# Debounce ---------------------------------------------------------------------------------------
async def test_two_quick_changes_run_the_model_once(client: LanguageClient):
    """As an editor does: a change, a request, another change, another request. The first waits
    out the debounce, is superseded, and never reaches the worker (without the debounce it would
    be queued: run, or skipped as cancelled). Its position stays a place to complete after the
    second change, so nothing else could spare it."""
    uri = "file:///tmp/clients_debounce.py"
    open_document(client, uri, "def fahrenheit(celsius):\n    return \n")
    try:
        configure(client, debounceMs=3000)  # far longer than two messages apart, even on a busy machine
        before = await stats(client)
        change_document(client, uri, 2, (1, 11), (1, 11), "celsius")
        first = asyncio.ensure_future(inline_as(client, uri, (1, 18), "debounce-first"))
        change_document(client, uri, 3, (1, 18), (1, 18), " *")
        second = asyncio.ensure_future(inline_as(client, uri, (1, 20), "debounce-second"))
        assert list((await first).items) == []  # superseded while it waited
        assert isinstance(await second, types.InlineCompletionList)
        after = await stats(client)
        assert after["engineCalls"] == before["engineCalls"] + 1
        assert after["skippedJobs"] == before["skippedJobs"]
        assert after["generations"][-1]["requestId"] == "debounce-second"
        assert "debounce-first" not in [g["requestId"] for g in after["generations"]]
    finally:
        configure(client, **SETTINGS)
