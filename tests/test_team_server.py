"""One server, many editors over TCP (issue 13): each connection its own session sharing one model,
tokens, per-client connection limits, ``wizardcoder/serverStatus`` and ``wizardcoder-tpu status``,
and a client that misbehaves leaving the others alone. Real server processes on 127.0.0.1 with the
tiny named model; nothing here connects to an address that is not loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from raw_lsp import RawClient, connect, free_port, start_tcp_server
from wizardcoder_tpu.lsp.main import parse_tcp
from wizardcoder_tpu.lsp.tokens import TokenFileError, TokenTable

ALICE = "alice-0123456789abcdef"
BOB = "bob-fedcba9876543210xyz"
CODE_A = "def add(a, b):\n    return "
CODE_B = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self."


def inline(client: RawClient, uri: str, line: int, character: int) -> dict:
    return client.call("textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
        "context": {"triggerKind": 1}}, timeout=120)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def end_of(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    return len(lines) - 1, len(lines[-1])


@pytest.fixture
def team_server(tmp_path):
    """A TCP server with a token file naming alice and bob; yields (port, log file, process)."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# the team\nalice {ALICE}\n\nbob {BOB}\n", encoding="utf-8")
    port, log_file = free_port(), tmp_path / "server.log"
    process = start_tcp_server(log_file, port, "--token-file", str(tokens), "--connections-per-client", "2")
    yield port, log_file, process
    if process.poll() is None:
        process.terminate()
        process.wait(30)


@pytest.fixture
def open_server(tmp_path):
    """A TCP server without tokens (loopback only)."""
    port, log_file = free_port(), tmp_path / "server.log"
    process = start_tcp_server(log_file, port)
    yield port, log_file, process
    if process.poll() is None:
        process.terminate()
        process.wait(30)


def test_two_clients_with_their_own_documents_and_settings_get_their_own_completions(open_server):
    port, _, process = open_server
    uri = "file:///tmp/team/same_name.py"  # the same URI in both editors, with different text
    a, b = RawClient.tcp(port), RawClient.tcp(port)
    try:
        a.initialize({"maxNewTokens": 3, "debounceMs": 0})
        b.initialize({"maxNewTokens": 12, "debounceMs": 0})
        a.open(uri, CODE_A)
        b.open(uri, CODE_B)
        assert {u: d["sha256"] for u, d in a.digests().items()} == {uri: sha(CODE_A)}
        assert {u: d["sha256"] for u, d in b.digests().items()} == {uri: sha(CODE_B)}
        answer_a, answer_b = inline(a, uri, *end_of(CODE_A)), inline(b, uri, *end_of(CODE_B))
        assert "result" in answer_a and "result" in answer_b, (answer_a, answer_b)
        stats_a, stats_b = a.call("wizardcoder/stats")["result"], b.call("wizardcoder/stats")["result"]
        (gen_a,), (gen_b,) = stats_a["generations"], stats_b["generations"]  # each session counts its own
        assert gen_a["tokens"] <= 3 and gen_b["tokens"] <= 12
        assert gen_a["promptTokens"] != gen_b["promptTokens"]  # each from its own document
        if gen_b["stopReason"] == "max_tokens":
            assert gen_b["tokens"] == 12  # b's own maxNewTokens, not a's
        status = a.call("wizardcoder/serverStatus")["result"]
        assert status["connections"] == 2 and status["requestsServed"] == 2
        assert sorted(c["name"] for c in status["clients"]) == ["local-1", "local-2"]
        assert sum(1 for slot in status["slots"] if slot["tokens"]) == 2  # two documents, two KV-cache slots
        assert a.shutdown_and_exit() is None  # a's connection ends, the server serves on
        assert "result" in inline(b, uri, *end_of(CODE_B)) and process.poll() is None
        process.terminate()  # with b still connected: SIGTERM ends the server cleanly, and closes b
        assert process.wait(30) == 0
        b.wait_closed(10)
    finally:
        a.close()
        b.close()


def test_a_client_without_a_valid_token_is_refused_and_one_with_it_is_served(team_server, tmp_path):
    port, log_file, process = team_server
    for options in ({}, {"token": "not-the-token-0000000000"}, {"token": ALICE[:-1]}, {"token": 12}):
        stranger = RawClient.tcp(port)
        try:
            answer = stranger.call_initialize(options)
            assert "error" in answer and "valid token" in answer["error"]["message"], answer
            stranger.wait_closed(10)  # and the connection is closed
        finally:
            stranger.close()
    alice = RawClient.tcp(port)
    try:
        alice.initialize({"token": ALICE, "debounceMs": 0})
        alice.open("file:///tmp/team/a.py", CODE_A)
        assert "result" in inline(alice, "file:///tmp/team/a.py", *end_of(CODE_A))
        assert not [m for m in alice.notifications("window/logMessage") if "token" in m["params"]["message"]]
        status = alice.call("wizardcoder/serverStatus")["result"]
        assert [c["name"] for c in status["clients"] if c["connections"]] == ["alice"]
    finally:
        alice.close()
    logged = "".join(p.read_text(encoding="utf-8") for p in log_file.parent.glob(log_file.name + "*"))
    assert ALICE not in logged and ALICE[:-1] not in logged and "refused a client" in logged


def test_connections_per_client_are_limited_by_token(team_server):
    port, _, process = team_server
    clients = [RawClient.tcp(port) for _ in range(4)]
    try:
        assert "result" in clients[0].call_initialize({"token": BOB})
        assert "result" in clients[1].call_initialize({"token": BOB})
        third = clients[2].call_initialize({"token": BOB})  # --connections-per-client 2
        assert "error" in third and "2 connections" in third["error"]["message"], third
        assert "result" in clients[3].call_initialize({"token": ALICE})  # another client is not held back
        clients[0].close()
        clients[0].wait_closed(10)
        time.sleep(0.5)  # the server notices the end of bob's first connection
        again = RawClient.tcp(port)
        clients.append(again)
        assert "result" in again.call_initialize({"token": BOB})
    finally:
        for client in clients:
            client.close()


def test_garbage_or_a_disconnect_mid_request_does_not_disturb_another_client(open_server):
    port, _, process = open_server
    good = RawClient.tcp(port)
    try:
        good.initialize({"debounceMs": 0, "maxNewTokens": 16})
        good.open("file:///tmp/team/good.py", CODE_A)
        for garbage in (b"Content-Length: 18446744073709551616\r\n\r\n", b"\x00\xff garbage \r\n\r\n{]",
                        b"Content-Length: 5\r\n\r\n{oops"):
            rude = RawClient.tcp(port)
            rude.send_bytes(garbage)
            rude.close()
        leaver = RawClient.tcp(port)
        leaver.initialize({"debounceMs": 0, "maxNewTokens": 64}, wait_for_model=False)
        leaver.open("file:///tmp/team/leaver.py", CODE_B)
        leaver.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": "file:///tmp/team/leaver.py"}, "position": {"line": 3, "character": 13},
            "context": {"triggerKind": 1}})
        leaver.close()  # gone with its request in flight
        for _ in range(3):
            answer = inline(good, "file:///tmp/team/good.py", *end_of(CODE_A))
            assert "result" in answer, answer
        assert good.digests()["file:///tmp/team/good.py"]["sha256"] == sha(CODE_A)
        status = good.call("wizardcoder/serverStatus")["result"]
        assert status["connections"] == 1 and process.poll() is None
    finally:
        good.close()


def test_a_keystroke_does_not_wait_for_an_explanation(open_server):
    """Issue 14's one queue: a completion sent while a long explanation runs, from the same client
    or another one, is answered before the explanation ends (it waits one slice at most)."""
    port, _, _ = open_server
    explainer, typist = RawClient.tcp(port), RawClient.tcp(port)
    try:
        explainer.initialize({"explainMaxNewTokens": 160, "debounceMs": 0})
        typist.initialize({"debounceMs": 0, "maxNewTokens": 8})
        code = CODE_B + "x = x\n"
        for client in (explainer, typist):
            client.open("file:///tmp/team/e.py", code)
        explain = explainer.request("workspace/executeCommand", {"command": "wizardcoder.explainSelection", "arguments": [
            "file:///tmp/team/e.py", {"start": {"line": 0, "character": 0}, "end": {"line": 4, "character": 0}}]})
        explainer.wait_for(lambda m: m.get("method") == "$/progress" and m["params"]["value"]["kind"] == "report",
                           120, "the explanation under way")
        for client in (typist, explainer):
            answer = inline(client, "file:///tmp/team/e.py", 3, 13)
            assert "result" in answer, answer
            assert not explainer.responses(explain), "the keystroke waited for the whole explanation"
        done = explainer.response(explain, 300)
        assert "result" in done and done["result"]["markdown"], done
        generated = [g for g in explainer.call("wizardcoder/stats")["result"]["generations"] if g["kind"] == "explain"]
        assert generated[-1]["tokens"] > 16  # longer than one slice: it was sliced, and resumed
    finally:
        explainer.close()
        typist.close()


def test_status_command_reports_the_server(open_server):
    port, _, process = open_server
    client = RawClient.tcp(port)
    try:
        client.initialize({"debounceMs": 0})
        client.open("file:///tmp/team/s.py", CODE_A)
        assert "result" in inline(client, "file:///tmp/team/s.py", *end_of(CODE_A))
        done = subprocess.run([sys.executable, "-m", "wizardcoder_tpu", "status", "--tcp", f"127.0.0.1:{port}",
                               "--json"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert status["requestsServed"] == 1 and status["completionP50Ms"] is not None
        assert status["memory"]["rssKib"] > 0 and "smollm2" in status["model"].lower()
        text = subprocess.run([sys.executable, "-m", "wizardcoder_tpu", "status", "--tcp", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=60)
        assert text.returncode == 0 and "requests served: 1 " in text.stdout and "local-1" in text.stdout
    finally:
        client.close()


def test_status_command_with_a_token(team_server):
    port, _, _ = team_server
    connect(port).close()  # the server listens (the status command fails at once when it does not)
    command = [sys.executable, "-m", "wizardcoder_tpu", "status", "--tcp", f"127.0.0.1:{port}"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "WIZARDCODER_TOKEN": ""})
    assert refused.returncode == 1 and "valid token" in refused.stderr
    served = subprocess.run(command, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "WIZARDCODER_TOKEN": BOB})
    assert served.returncode == 0 and "bob" in served.stdout and BOB not in served.stdout


def _tcp_timer(local_port: int, remote_port: int) -> tuple[int, float]:
    """The kernel's timer on one end of a loopback connection, from /proc/net/tcp: (kind, seconds
    to expiry); kind 2 is the keepalive timer, 0 none."""
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        local, remote, timer = fields[1], fields[2], fields[5]
        if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == remote_port:
            kind, ticks = timer.split(":")
            return int(kind, 16), int(ticks, 16) / os.sysconf("SC_CLK_TCK")
    raise AssertionError(f"no connection {local_port} <- {remote_port} in /proc/net/tcp")


def _idle_timer(local_port: int, remote_port: int) -> tuple[int, float]:
    """The timer of one end once it has nothing in flight: while bytes it sent wait for their ACK
    (a delayed ACK on a loaded machine) the kernel shows the retransmit timer (kind 1) or a zero
    window probe (kind 4) in place of the keepalive timer."""
    deadline = time.monotonic() + 10
    while (timer := _tcp_timer(local_port, remote_port))[0] in (1, 4) and time.monotonic() < deadline:
        time.sleep(0.05)
    return timer


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc/net/tcp")
def test_an_idle_connection_is_probed_so_a_vanished_peer_frees_its_place(open_server):
    """A laptop that sleeps sends no FIN: only keepalive probes find that it has gone. The
    server's end of an idle, initialized connection has the kernel's keepalive timer running,
    due within the server's idle time (60 s), where Linux's default is none at all."""
    port, _, _ = open_server
    client = RawClient.tcp(port)
    try:
        client.initialize({"debounceMs": 0}, wait_for_model=False)
        kind, due_s = _idle_timer(port, client.local_port)
        assert kind == 2 and 0 < due_s <= 60, (kind, due_s)
        assert _idle_timer(client.local_port, port)[0] == 0  # the test's end asked for none
    finally:
        client.close()


# Start-up checks (no server needed) ------------------------------------------------------------
def test_a_non_loopback_address_is_allowed_only_with_tokens():
    with pytest.raises(ValueError, match="--token-file"):
        parse_tcp("0.0.0.0:8123")
    assert parse_tcp("0.0.0.0:8123", authenticated=True) == ("0.0.0.0", 8123)


def test_serve_on_a_non_loopback_address_without_a_token_file_exits_with_a_clear_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "wizardcoder_tpu", "serve", "--tcp", f"0.0.0.0:{free_port()}",
                           "--log-file", str(tmp_path / "server.log")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr and "--token-file" in done.stderr


@pytest.mark.parametrize("flag, least", [("--connections-per-client", 1), ("--requests-per-client", 1),
                                         ("--cache-slots", 0)])  # 0 slots: the backend's own number
def test_limits_below_their_least_are_refused_at_start(tmp_path, flag, least):
    done = subprocess.run([sys.executable, "-m", "wizardcoder_tpu", "serve", "--tcp", f"127.0.0.1:{free_port()}", flag,
                           str(least - 1), "--log-file", str(tmp_path / "server.log")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and f"{flag} must be at least {least}" in done.stderr


@pytest.mark.parametrize("content, problem", [
    ("alice\n", "two words"), ("alice short\n", "shorter than"), (f"a {ALICE}\na {BOB}\n", "named twice"),
    ("# nobody\n", "names no client")])
def test_a_bad_token_file_is_refused_at_start_without_showing_tokens(tmp_path, content, problem):
    path = tmp_path / "tokens"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TokenFileError, match=problem) as caught:
        TokenTable.read(path)
    assert ALICE not in str(caught.value) and BOB not in str(caught.value)
    done = subprocess.run([sys.executable, "-m", "wizardcoder_tpu", "serve", "--tcp", f"127.0.0.1:{free_port()}",
                           "--token-file", str(path), "--log-file", str(tmp_path / "server.log")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and problem in done.stderr


def test_tokens_are_matched_whole():
    table = TokenTable([("alice", ALICE), ("bob", BOB)])
    assert table.name_of(ALICE) == "alice" and table.name_of(BOB) == "bob"
    assert table.name_of(ALICE + "x") is None and table.name_of(ALICE[:-1]) is None
    assert table.name_of(None) is None and table.name_of(["x"]) is None and table.name_of("") is None


def test_a_missing_token_file_is_named(tmp_path):
    with pytest.raises(TokenFileError, match="cannot read the token file .*missing"):
        TokenTable.read(tmp_path / "missing")
