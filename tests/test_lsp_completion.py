"""The language server over LSP, against the real default model (SmolLM2-135M-Instruct): inline
completion, the typed-ahead cache, supersession and ``$/cancelRequest``, explain selection, bad
input, and that the server never edits a document.

One server for the module (the model loads once); each test opens its own document. Engine
counters come from the server's ``wizardcoder/stats`` request.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcRequestCancelled
from pytest_lsp import LanguageClient

from test_lsp_support import apply_edit, change_document, inline, open_document, server_config, start, stats

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOG = Path(tempfile.gettempdir()) / "wizardcoder-test_lsp_completion.log"
SETTINGS = {"maxNewTokens": 16, "debounceMs": 0, "explainMaxNewTokens": 24}

AREA = ('import math\n\n\ndef circle_area(radius):\n    """Return the area of a circle."""\n    return \n'
        '\n\ndef main():\n    print(circle_area(2.0))\n')
AREA_CURSOR = (5, 11)  # after "    return ", with main() after the cursor
# The first ten lines are top-level comments: at column 0 of a blank last line nothing can dedent,
# so the model runs until its token budget unless it is stopped.
LONG = "# Count from one to one hundred, one number per line.\n" + "".join(f"# {n}\n" for n in range(1, 6))


@pytest_lsp.fixture(scope="module", config=server_config(LOG))
async def client(lsp_client: LanguageClient):
    lsp_client.recorder, lsp_client.init_result = await start(lsp_client, SETTINGS)
    yield
    await lsp_client.shutdown_session()


async def test_capabilities_advertise_inline_completion_and_the_command(client: LanguageClient):
    caps = client.init_result.capabilities
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is not None
    # explain, and the inline items' command that tells the statistics of an accept (docs/protocol.md)
    assert sorted(caps.execute_command_provider.commands) == ["wizardcoder.accepted", "wizardcoder.explainSelection"]
    sync = caps.text_document_sync
    assert getattr(sync, "change", sync) == types.TextDocumentSyncKind.Incremental
    assert caps.position_encoding == types.PositionEncodingKind.Utf16
    loaded = [s for s in client.recorder.statuses if s["state"] == "idle"]
    assert loaded and "SmolLM2" in loaded[-1]["message"]
    assert client.recorder.statuses[0]["state"] == "loading"
    # work-done progress while the model loaded: begin ... end on a server-created token
    load_tokens = [t for t in client.progress_reports if str(t).startswith("wizardcoder-load")]
    assert load_tokens and isinstance(client.progress_reports[load_tokens[0]][-1], types.WorkDoneProgressEnd)


async def test_inline_completion_mid_file(client: LanguageClient):
    uri = "file:///tmp/area.py"
    open_document(client, uri, AREA)
    result = await inline(client, uri, *AREA_CURSOR)
    assert len(result.items) == 1
    item = result.items[0]
    cursor = types.Position(*AREA_CURSOR)
    assert item.range == types.Range(cursor, cursor)  # nothing after the cursor on its line: an insertion
    text = item.insert_text
    assert text.strip() and text == text.rstrip()
    assert "radius" in text  # the model continues the return statement with the argument
    assert "def main" not in text  # stopped before repeating the text after the cursor
    for line in text.split("\n")[1:]:  # nothing dedents out of the function body
        assert not line.strip() or line.startswith("    ")
    last = (await stats(client))["generations"][-1]
    assert last["kind"] == "completion" and last["tokens"] >= 1


async def test_auto_closed_characters_are_replaced_not_doubled(client: LanguageClient):
    uri = "file:///tmp/greet.py"
    text = 'def greet(name):\n    print("Hello, ")\n'
    open_document(client, uri, text)
    result = await inline(client, uri, 1, 18)  # inside the string, before the auto-closed '")'
    assert len(result.items) == 1
    item = result.items[0]
    assert item.range.start == types.Position(1, 18)
    replaced = item.range.end.character - item.range.start.character
    assert item.range.end.line == 1 and replaced in (0, 1, 2)
    edited = apply_edit(text, 1, 18, 18 + replaced, item.insert_text).split("\n")[1]
    assert edited.count("(") == edited.count(")"), edited
    assert edited.count('"') % 2 == 0, edited
    assert item.insert_text.endswith('")'[:replaced]) and replaced == 2  # the model closes the call


async def test_typed_ahead_hit_does_not_run_the_model(client: LanguageClient):
    uri = "file:///tmp/area_cache.py"
    open_document(client, uri, AREA)
    first = (await inline(client, uri, *AREA_CURSOR)).items[0].insert_text
    assert len(first) >= 3
    calls = (await stats(client))["engineCalls"]
    typed = first[:2]
    change_document(client, uri, 2, AREA_CURSOR, AREA_CURSOR, typed)
    second = await inline(client, uri, AREA_CURSOR[0], AREA_CURSOR[1] + 2)
    after = await stats(client)
    assert after["engineCalls"] == calls  # served without the model
    assert after["cacheHits"] >= 1
    assert [i.insert_text for i in second.items] == [first[2:]]
    position = types.Position(AREA_CURSOR[0], AREA_CURSOR[1] + 2)
    assert second.items[0].range == types.Range(position, position)


def set_max_new_tokens(client: LanguageClient, count: int) -> None:
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"wizardcoder": {"maxNewTokens": count}}))


async def wait_for_generation(client: LanguageClient, request_id: object) -> dict:
    """The worker records a generation once the engine has returned."""
    for _ in range(300):
        mine = [g for g in (await stats(client))["generations"] if g["requestId"] == request_id]
        if mine:
            return mine[-1]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no generation recorded for request {request_id!r}")


async def start_long_completion(client: LanguageClient, uri: str, trigger: types.InlineCompletionTriggerKind,
                                msg_id: str) -> tuple[types.InlineCompletionParams, asyncio.Future]:
    """Open ``LONG`` at ``uri`` and send a 200-token completion request as ``msg_id``; returns once
    the model is a few tokens into it (the settings go back to the module's afterwards)."""
    open_document(client, uri, LONG)
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(6, 0),
        context=types.InlineCompletionContext(trigger_kind=trigger))
    set_max_new_tokens(client, 200)  # long enough that only a cancellation ends it early
    mark = len(client.recorder.statuses)
    request = asyncio.ensure_future(client.protocol.send_request_async(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=msg_id))
    await client.recorder.wait_for(lambda s: s["state"] == "busy", timeout=60, start=mark)
    set_max_new_tokens(client, SETTINGS["maxNewTokens"])  # busy: the request has read its settings
    await asyncio.sleep(0.5)  # a few tokens into the generation
    return params, request

async def test_newer_request_supersedes_and_stops_the_engine(client: LanguageClient):
    params, stale = await start_long_completion(client, "file:///tmp/count.py",
                                                types.InlineCompletionTriggerKind.Automatic, "stale")
    fresh = asyncio.ensure_future(client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="fresh"))
    assert list((await stale).items) == []  # the superseded request answers with nothing
    assert isinstance(await asyncio.wait_for(fresh, timeout=120), types.InlineCompletionList)
    generation = await wait_for_generation(client, "stale")
    assert generation["stopReason"] == "cancelled"
    assert 1 <= generation["tokens"] < 200  # the engine stopped early, not at its budget


async def test_cancel_request_reaches_the_engine(client: LanguageClient):
    _, request = await start_long_completion(client, "file:///tmp/count_cancel.py",
                                             types.InlineCompletionTriggerKind.Invoked, "cancel-me")
    client.cancel_request(types.CancelParams(id="cancel-me"))
    with pytest.raises(JsonRpcRequestCancelled):
        await request
    generation = await wait_for_generation(client, "cancel-me")
    assert generation["stopReason"] == "cancelled"
    assert generation["tokens"] < 200


async def test_explain_selection_returns_markdown_with_progress(client: LanguageClient):
    uri = "file:///tmp/explain.py"
    open_document(client, uri, AREA)
    token = "explain-token"
    client.progress_reports.setdefault(token, [])
    selection = types.Range(types.Position(3, 0), types.Position(6, 0))
    result = await client.workspace_execute_command_async(types.ExecuteCommandParams(
        command="wizardcoder.explainSelection", arguments=[uri, client.protocol._converter.unstructure(selection)],
        work_done_token=token))
    markdown = result["markdown"] if isinstance(result, dict) else result.markdown
    assert isinstance(markdown, str) and markdown.strip()
    reports = client.progress_reports[token]
    assert isinstance(reports[0], types.WorkDoneProgressBegin)
    assert isinstance(reports[-1], types.WorkDoneProgressEnd)
    messages = [r.message for r in reports if isinstance(r, types.WorkDoneProgressReport)]
    assert messages and messages[-1] == markdown  # reports carry the whole text so far
    assert all(markdown.startswith(m.strip()[:10]) for m in messages if m)
    last = (await stats(client))["generations"][-1]
    assert last["kind"] == "explain" and last["mode"] == "explain"


async def test_explain_selection_is_cancellable(client: LanguageClient):
    uri = "file:///tmp/explain_cancel.py"
    open_document(client, uri, AREA)
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"wizardcoder": {"explainMaxNewTokens": 300}}))
    mark = len(client.recorder.statuses)
    selection = {"start": {"line": 0, "character": 0}, "end": {"line": 9, "character": 0}}
    request = asyncio.ensure_future(client.protocol.send_request_async(types.WORKSPACE_EXECUTE_COMMAND, types.ExecuteCommandParams(
        command="wizardcoder.explainSelection", arguments=[uri, selection]), msg_id="explain-cancel"))
    await client.recorder.wait_for(lambda s: s["state"] == "busy", timeout=60, start=mark)
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"wizardcoder": {"explainMaxNewTokens": SETTINGS["explainMaxNewTokens"]}}))
    await asyncio.sleep(0.5)
    client.cancel_request(types.CancelParams(id="explain-cancel"))
    with pytest.raises(JsonRpcRequestCancelled):
        await request
    generation = await wait_for_generation(client, "explain-cancel")
    assert generation["stopReason"] == "cancelled" and generation["tokens"] < 300


async def test_bad_input_gets_an_error_or_nothing_and_the_server_goes_on(client: LanguageClient):
    uri = "file:///tmp/bad.py"
    open_document(client, uri, "x = 1\ny = 2\n")
    with pytest.raises(JsonRpcException, match="past the end of line 0"):
        await inline(client, uri, 0, 40)
    with pytest.raises(JsonRpcException, match="past the end of the document"):
        await inline(client, uri, 7, 0)
    with pytest.raises(JsonRpcException, match="not open"):
        await inline(client, "file:///tmp/never-opened.py", 0, 0)

    huge = "file:///tmp/huge.py"
    open_document(client, huge, "x = 1\n" * (10 * 1024 * 1024 // 6))  # 10 MB
    assert list((await inline(client, huge, 100, 0)).items) == []
    binary = "file:///tmp/blob.bin"
    open_document(client, binary, "\x00\x01\x02ELF\x00\x00" * 100, language="plaintext")
    assert list((await inline(client, binary, 0, 3)).items) == []

    with pytest.raises(JsonRpcException, match="unknown command"):
        await client.workspace_execute_command_async(types.ExecuteCommandParams(command="wizardcoder.nope"))
    with pytest.raises(JsonRpcException, match="takes \\[uri, range\\]"):
        await client.workspace_execute_command_async(types.ExecuteCommandParams(
            command="wizardcoder.explainSelection", arguments=["file:///tmp/bad.py"]))

    messages = [m.message for m in client.log_messages]
    assert any("10," in m and "completion is off" in m for m in messages)
    assert any("binary" in m for m in messages)

    result = await inline(client, uri, 1, 5)  # the next valid request is served
    assert isinstance(result, types.InlineCompletionList)
    assert (await stats(client))["status"]["state"] in ("idle", "busy")


async def test_server_never_edits_documents(client: LanguageClient):
    assert client.recorder.apply_edits == []
