"""The remote backend against a server that misbehaves on purpose (tests/fake_inference_server.py):
each fault is a clear RemoteError within the configured timeout, and the next request is served.
Then the rules around it: cancellation and an early stop close the stream, credentials go only
where the operator said, ``http://`` stays on loopback, and the language server turns its status
to error and keeps serving. The real servers are in test_remote_llama_server.py.
"""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from fake_inference_server import MODEL_ID, PIECES, FakeInferenceServer
from raw_lsp import RawClient, free_port

from wizardcoder_tpu.inference.engine import CancelToken, GenerationParams
from wizardcoder_tpu.inference.errors import ModelLoadError, RemoteError
from wizardcoder_tpu.inference.http_stream import ApiKey, Endpoint
from wizardcoder_tpu.inference.loader import load_engine
from wizardcoder_tpu.inference.remote import RemoteAccess, RemoteConfig, RemoteEngine

TIMEOUT_S = 0.5
SLACK_S = 1.5  # what a loaded two-core machine may add to a timeout before the test calls it a hang
PROMPT = [1, 2, 3]


@pytest.fixture
def fake():
    server = FakeInferenceServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tokenizer_source(smollm2_model, tmp_path_factory) -> str:
    """SmolLM2's tokenizer as a tokenizer.json (read in milliseconds, where the GGUF takes a second)."""
    from wizardcoder_tpu.inference.remote import tokenizer_source

    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tokenizer_source(smollm2_model)[0].save(path)
    return str(path)


@pytest.fixture
def engine(fake, tokenizer_source) -> RemoteEngine:
    return load_engine(tokenizer_source, "remote", remote=RemoteConfig(fake.url, "openai", timeout_s=TIMEOUT_S))


def test_a_completion_streams_through_the_openai_protocol(fake, engine):
    result = engine.generate(PROMPT, GenerationParams(max_new_tokens=7, stop_strings=("```",)))
    assert (result.text, result.stop_reason) == ("".join(PIECES), "max_tokens")
    body = fake.requests[-1]["body"]
    assert fake.requests[-1]["path"] == "/v1/completions"
    assert body["model"] == MODEL_ID and body["max_tokens"] == 7 and body["stream"] is True
    assert body["temperature"] == 0 and body["repeat_penalty"] == 1.0 and body["stop"] == ["```"]
    assert body["prompt"] == engine.tokenizer.decode(PROMPT, skip_special=False)
    assert result.token_ids == engine.tokenizer.encode(result.text)


FAULTS = {  # behaviour -> what the error must say
    "stall": "stalled", "stall_headers": "stalled", "slowloris": "stalled", "status_500": "500",
    "status_401": "API key", "broken_sse": "not JSON", "not_sse": "not an event stream",
    "cut": "ended before the completion", "error_event": "out of KV cache",
}


@pytest.mark.parametrize("behaviour", FAULTS)
def test_each_fault_is_a_clear_error_in_time_and_the_next_request_is_served(fake, engine, behaviour):
    fake.behaviour = behaviour
    started = time.monotonic()
    with pytest.raises(RemoteError, match=FAULTS[behaviour]) as raised:
        engine.generate(PROMPT, GenerationParams(max_new_tokens=8))
    assert time.monotonic() - started < TIMEOUT_S + SLACK_S
    assert fake.url.split("//")[1] in str(raised.value)  # the message names the endpoint
    fake.behaviour = "ok"
    assert engine.generate(PROMPT, GenerationParams(max_new_tokens=8)).text == "".join(PIECES)


def test_a_refused_connection_fails_the_load_clearly(tokenizer_source):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RemoteError, match="connection refused"):
        load_engine(tokenizer_source, "remote", remote=RemoteConfig(url, timeout_s=TIMEOUT_S))


def test_malformed_json_from_the_model_list_fails_the_load_clearly(fake, tokenizer_source):
    fake.models_behaviour = "malformed"
    with pytest.raises(RemoteError, match="malformed JSON"):
        load_engine(tokenizer_source, "remote", remote=RemoteConfig(fake.url, timeout_s=TIMEOUT_S))


def test_done_from_post_processing_closes_the_stream(fake, engine):
    fake.behaviour = "endless"
    result = engine.generate(PROMPT, GenerationParams(max_new_tokens=4096), on_text=lambda text: len(text) < 10)
    assert result.stop_reason == "done" and result.text == " x" * 5
    _wait_for(lambda: fake.closed_early == 1, "the server to see the client leave")


def test_cancel_from_another_thread_closes_the_stream(fake, engine):
    fake.behaviour = "endless"
    cancel = CancelToken()
    threading.Timer(0.2, cancel.cancel).start()
    started = time.monotonic()
    result = engine.generate(PROMPT, GenerationParams(max_new_tokens=4096), cancel)
    assert result.stop_reason == "cancelled" and time.monotonic() - started < 0.2 + SLACK_S
    _wait_for(lambda: fake.closed_early == 1, "the server to see the client leave")


def test_cancel_reaches_a_server_that_sends_nothing(fake, tokenizer_source):
    engine = load_engine(tokenizer_source, "remote", remote=RemoteConfig(fake.url, timeout_s=30))
    fake.behaviour = "stall_headers"
    cancel = CancelToken()
    threading.Timer(0.2, cancel.cancel).start()
    started = time.monotonic()
    assert engine.generate(PROMPT, GenerationParams(), cancel).stop_reason == "cancelled"
    assert time.monotonic() - started < 0.2 + SLACK_S


def test_a_stop_string_is_ours_even_when_the_server_ignores_it(fake, engine):
    result = engine.generate(PROMPT, GenerationParams(max_new_tokens=8, stop_strings=(" +",)))
    assert (result.text, result.stop_reason) == ("    return a", "stop_string")


def test_the_api_key_goes_in_the_header_to_its_endpoint_only(fake, tokenizer_source, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "sk-test-4711")
    key = ApiKey.from_env("FAKE_KEY")
    assert "sk-test-4711" not in repr(key) + str(key)
    access = RemoteAccess(key, fake.url)
    engine = load_engine(tokenizer_source, "remote", remote=RemoteConfig(fake.url, access=access))
    engine.generate(PROMPT, GenerationParams(max_new_tokens=4))
    assert {r["headers"].get("Authorization") for r in fake.requests} == {"Bearer sk-test-4711"}
    assert "sk-test-4711" not in repr(engine) + engine.model_name
    other = f"http://localhost:{fake.port}"  # a different origin than the one the key was given for
    with pytest.raises(RemoteError, match="sent only to the endpoint given on the server's command line"):
        load_engine(tokenizer_source, "remote", remote=RemoteConfig(other, access=access))


def test_key_files_and_variables_that_cannot_be_used_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(RemoteError, match="NO_SUCH_KEY"):
        ApiKey.from_env("NO_SUCH_KEY")
    with pytest.raises(RemoteError, match="cannot read the API key file"):
        ApiKey.from_file(tmp_path / "missing")
    (tmp_path / "key").write_text("two words\n")
    with pytest.raises(RemoteError, match="spaces or control characters"):
        ApiKey.from_file(tmp_path / "key")
    (tmp_path / "key").write_text("sk-from-file\n")
    assert ApiKey.from_file(tmp_path / "key").headers() == {"Authorization": "Bearer sk-from-file"}


@pytest.mark.parametrize("url, allowed", [
    ("http://127.0.0.1:8080", True), ("http://localhost:8080/base/", True), ("http://[::1]:8080", True),
    ("https://gpu.example.com", True), ("http://gpu.example.com:8000", False),
    ("https://user:secret@gpu.example.com", False), ("ftp://gpu.example.com", False),
])
def test_plain_http_only_on_loopback(url, allowed):
    if allowed:
        assert str(Endpoint.parse(url)).startswith(url.split(":")[0])
    else:
        with pytest.raises(RemoteError) as raised:
            Endpoint.parse(url)
        assert "secret" not in str(raised.value)
    if url == "http://gpu.example.com:8000":
        assert Endpoint.parse(url, allow_http=True).origin == url


def test_the_llama_cpp_protocol_sends_our_token_ids(fake, tokenizer_source):
    """The llama.cpp adapter's request and its reading of llama.cpp's events (the format of its
    tools/server README), through a fake that answers /props and /completion."""
    import json

    def props(handler):
        handler._send(200, "application/json", json.dumps({"default_generation_settings": {"n_ctx": 512},
                                                             "model_path": "/m/model.gguf"}).encode())

    def completion(handler):
        handler._start_stream()
        handler._event({"content": "    return", "tokens": [11, 12], "stop": False})
        handler._event({"content": " a", "tokens": [13], "stop": False})
        handler._event({"content": "", "stop": True, "stop_type": "eos", "timings": {"cache_n": 2}})

    handler_class = fake.httpd.RequestHandlerClass
    handler_class.do_GET = lambda self: props(self)
    handler_class._llama = lambda self: completion(self)
    fake.behaviour = "llama"
    engine = load_engine(tokenizer_source, "remote", remote=RemoteConfig(fake.url, "llama.cpp"))
    assert engine.max_context == 512 and engine.info.model == "model.gguf"
    result = engine.generate(PROMPT, GenerationParams(max_new_tokens=8, stop_strings=("```",)))
    assert (result.text, result.stop_reason, result.token_ids, result.reused_tokens) == ("    return a", "eos",
                                                                                          [11, 12, 13], 2)
    body = fake.requests[-1]["body"]
    assert fake.requests[-1]["path"] == "/completion"
    assert body["prompt"] == PROMPT and body["n_predict"] == 8 and body["cache_prompt"] is True
    assert body["stop"] == ["```"] and body["temperature"] == 0 and body["repeat_penalty"] == 1.0


def test_an_unreachable_server_fails_the_load_with_the_reason(tokenizer_source):
    from wizardcoder_tpu.lsp.model_host import ModelHost
    from wizardcoder_tpu.lsp.settings import Settings

    host = ModelHost()
    url = f"http://127.0.0.1:{free_port()}"
    settings = Settings(model=tokenizer_source, backend="remote", endpoint=url, fallback_to_cpu=False)
    report = host.load(settings, lambda message: None)
    assert "connection refused" in report.error and report.loaded == "" and not report.fell_back
    with pytest.raises(ModelLoadError):
        host._load(settings.model, "remote", settings)


def test_a_failed_remote_request_is_served_by_the_cpu_default_with_fallback(fake, tokenizer_source, qwen_model):
    from wizardcoder_tpu.lsp.model_host import ModelHost
    from wizardcoder_tpu.lsp.settings import Settings

    host = ModelHost()
    settings = Settings(model=tokenizer_source, backend="remote", endpoint=fake.url, remote_timeout_ms=500)
    assert host.load(settings, lambda message: None).error == ""

    def work(engine):
        return engine.model_name, engine.generate(engine.tokenizer.encode("def add(a, b):\n"),
                                                  GenerationParams(max_new_tokens=4)).text

    assert host.run(settings, work) == (host.engine.model_name, "".join(PIECES))  # the fake ignores max_tokens
    fake.behaviour = "status_500"
    served_by, text = host.run(settings, work)
    assert served_by == qwen_model.name and text and "500" in host.failure and "CPU default" in host.failure
    asked = len(fake.requests)
    assert host.run(settings, work)[0] == qwen_model.name and len(fake.requests) == asked  # the server rests a while
    without = Settings(model=tokenizer_source, backend="remote", endpoint=fake.url, fallback_to_cpu=False)
    host.load(without, lambda message: None)
    with pytest.raises(RemoteError, match="the GPU caught fire"):
        host.run(without, work)
    assert "500" in host.failure
    fake.behaviour = "ok"
    host.run(without, work)
    assert host.failure == ""
    host.close()


def test_the_language_server_shows_the_error_and_serves_the_next_request(fake, tmp_path):
    client = RawClient.stdio(tmp_path / "server.log", "--backend", "remote", "--endpoint", fake.url)
    try:
        client.initialize({"debounceMs": 0, "remoteTimeoutMs": 500, "maxNewTokens": 8, "fallbackToCpu": False})
        ready = client.notifications("wizardcoder/status")[-1]["params"]
        assert ready["state"] == "idle" and MODEL_ID in ready["message"], ready
        client.open("file:///a.py", "def add(a, b):\n")
        params = {"textDocument": {"uri": "file:///a.py"}, "position": {"line": 1, "character": 0},
                  "context": {"triggerKind": 2}}
        fake.behaviour = "status_500"
        failed = client.call("textDocument/inlineCompletion", params)
        assert "the GPU caught fire" in failed["error"]["message"]
        client.wait_for(lambda m: m.get("method") == "wizardcoder/status" and m["params"]["state"] == "error"
                        and "500" in m["params"]["message"], 10, "the error status")
        fake.behaviour = "ok"
        mark = len(client.messages)
        served = client.call("textDocument/inlineCompletion", params)
        assert served["result"]["items"][0]["insertText"] == "    return a + b", served
        client.wait_for(lambda m: m.get("method") == "wizardcoder/status" and m["params"]["state"] == "idle", 10,
                        "the status back to ready", start=mark)
    finally:
        assert client.shutdown_and_exit() == 0


def test_a_client_cannot_set_the_key_nor_allow_http():
    from wizardcoder_tpu.lsp.settings import SETTINGS

    assert not {"apiKeyEnv", "apiKeyFile", "allowHttp", "remoteApiKey"} & set(SETTINGS)


def _wait_for(predicate, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_complete_on_the_command_line_goes_through_the_remote_backend(fake, tokenizer_source):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "wizardcoder_tpu", "complete", "--backend", "remote", "--endpoint",
                           fake.url, "--model", tokenizer_source, "--completion-only", "def add(a, b):\n"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "".join(PIECES) + "\n"
    assert fake.requests[-1]["body"]["prompt"] == "def add(a, b):\n"


def test_the_key_flags_need_the_endpoint_they_are_bound_to(monkeypatch, tmp_path):
    import argparse

    from wizardcoder_tpu.lsp.main import remote_access

    monkeypatch.setenv("FAKE_KEY", "sk-test-4711")
    with pytest.raises(ValueError, match="needs --endpoint"):
        remote_access(argparse.Namespace(api_key_env="FAKE_KEY", api_key_file=None, endpoint=None, allow_http=False))
    (tmp_path / "key").write_text("sk-file")
    with pytest.raises(ValueError, match="not both"):
        remote_access(argparse.Namespace(api_key_env="FAKE_KEY", api_key_file=str(tmp_path / "key"),
                                         endpoint="https://gpu.example.com", allow_http=False))
    access = remote_access(argparse.Namespace(api_key_env=None, api_key_file=str(tmp_path / "key"),
                                              endpoint="https://gpu.example.com", allow_http=True))
    assert access.key_endpoint == "https://gpu.example.com" and access.allow_http
    assert access.api_key.headers() == {"Authorization": "Bearer sk-file"}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for localhost, made by the openssl command."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: no certificate for the TLS tests")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


def test_https_checks_the_certificate_streams_and_cancels(certificate, tokenizer_source, monkeypatch):
    fake = FakeInferenceServer(tls=certificate)
    try:
        with pytest.raises(RemoteError, match="TLS failed"):  # a certificate nobody vouches for
            load_engine(tokenizer_source, "remote", remote=RemoteConfig(fake.url, timeout_s=TIMEOUT_S))
        monkeypatch.setenv("SSL_CERT_FILE", certificate[0])  # now this process trusts it
        engine = load_engine(tokenizer_source, "remote", remote=RemoteConfig(fake.url, timeout_s=TIMEOUT_S))
        assert engine.generate(PROMPT, GenerationParams(max_new_tokens=8)).text == "".join(PIECES)
        fake.behaviour = "endless"
        cancel = CancelToken()
        threading.Timer(0.2, cancel.cancel).start()
        started = time.monotonic()
        assert engine.generate(PROMPT, GenerationParams(max_new_tokens=4096), cancel).stop_reason == "cancelled"
        assert time.monotonic() - started < 0.2 + SLACK_S
        fake.behaviour = "stall"
        with pytest.raises(RemoteError, match="stalled"):
            engine.generate(PROMPT, GenerationParams(max_new_tokens=8))
        fake.behaviour = "ok"
        assert engine.generate(PROMPT, GenerationParams(max_new_tokens=8)).text == "".join(PIECES)
    finally:
        fake.close()


# Connections kept alive -----------------------------------------------------------------------
def test_a_stream_read_to_its_end_leaves_its_connection_for_the_next_request(fake, engine):
    """The model list and three completions, one connection: no request after the first pays a connect."""
    for _ in range(3):
        assert engine.generate(PROMPT, GenerationParams(max_new_tokens=8)).text == "".join(PIECES)
    assert fake.connections == 1 and engine.connections.opened == 1


def test_an_early_stop_closes_its_connection_and_the_next_request_finds_a_spare(fake, engine):
    fake.behaviour = "endless"
    result = engine.generate(PROMPT, GenerationParams(max_new_tokens=4096), on_text=lambda text: len(text) < 10)
    assert result.stop_reason == "done"
    _wait_for(lambda: fake.closed_early == 1, "the server to see the client leave")
    _wait_for(lambda: engine.connections.opened == 2, "the spare connection")
    fake.behaviour = "ok"
    assert engine.generate(PROMPT, GenerationParams(max_new_tokens=8)).text == "".join(PIECES)
    assert fake.connections == 2  # the spare served it: no connect while the request waited


def test_a_connection_the_server_closed_while_idle_is_not_used(fake, engine):
    fake.close_idle = True  # the server drops each connection after its answer, without saying so
    for _ in range(3):
        assert engine.generate(PROMPT, GenerationParams(max_new_tokens=8)).text == "".join(PIECES)
    assert fake.connections == 3  # the model list's served the first, a new one each of the others


def test_a_request_on_a_reused_connection_that_the_server_drops_is_sent_again_once(fake, engine):
    fake.behaviour = "close_reused"  # the first request on a connection is answered, a later one dropped
    assert engine.generate(PROMPT, GenerationParams(max_new_tokens=8)).text == "".join(PIECES)
    posts = [r for r in fake.requests if r["path"] == "/v1/completions"]
    assert len(posts) == 2  # the dropped one on the model list's connection, then on a fresh one
    time.sleep(0.3)  # time for a background spare, had one been started
    assert fake.connections == 2  # the retry's own fresh connection, and no spare beside it


def test_a_server_that_does_not_keep_connections_gets_a_new_one_each_time(fake, engine):
    fake.keep_alive = False
    for _ in range(3):
        assert engine.generate(PROMPT, GenerationParams(max_new_tokens=8)).text == "".join(PIECES)
    assert fake.connections >= 3  # the model list's, which served the first, then one each (spares may add one)


def test_close_drops_the_kept_connection(fake, engine):
    engine.generate(PROMPT, GenerationParams(max_new_tokens=8))
    engine.close()
    assert engine.connections._idle is None


# llama.cpp's /infill --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen_tokenizer_source(qwen_model, tmp_path_factory) -> str:
    """Qwen2.5-Coder's tokenizer (FIM and repository tokens) as a tokenizer.json."""
    from wizardcoder_tpu.inference.remote import tokenizer_source

    path = tmp_path_factory.mktemp("qwen-tokenizer") / "tokenizer.json"
    tokenizer_source(qwen_model)[0].save(path)
    return str(path)


def _llama_cpp_fake(fake) -> None:
    """The fake answers /props and llama.cpp's stream format at any POST path."""
    import json

    def props(handler):
        handler._send(200, "application/json", json.dumps({"default_generation_settings": {"n_ctx": 2048},
                                                             "model_path": "/m/qwen.gguf"}).encode())

    def completion(handler):
        handler._start_stream(keep_alive=True)
        handler._event({"content": "    return", "tokens": [11, 12], "stop": False})
        handler._event({"content": "", "stop": True, "stop_type": "limit", "timings": {"cache_n": 0}})
        handler._end_stream()

    handler_class = fake.httpd.RequestHandlerClass
    handler_class.do_GET = lambda self: props(self)
    handler_class._llama = lambda self: completion(self)
    fake.behaviour = "llama"


def test_the_infill_protocol_sends_the_parts_of_our_fim_prompt(fake, qwen_tokenizer_source):
    from wizardcoder_tpu.inference.context import RepoContext, Snippet
    from wizardcoder_tpu.inference.prompt import build_prompt

    _llama_cpp_fake(fake)
    engine = load_engine(qwen_tokenizer_source, "remote", remote=RemoteConfig(fake.url, "llama.cpp-infill"))
    tokenizer = engine.tokenizer
    context = RepoContext("proj", (Snippet("util.py", "def sub(a, b):\n    return a - b"),
                                   Snippet("b.py", "X = '<|file_sep|>'\n")))
    prefix, suffix = "import util\n\ndef add(a, b):\n", "\n\nprint(add(1, 2))\n"
    prompt = build_prompt(prefix, suffix, tokenizer, "fim", 1024, file_name="a.py", context=context)
    assert prompt.context_snippets == 2
    deadline = time.monotonic() + 2
    result = engine.generate(prompt.ids, GenerationParams(max_new_tokens=8, stop_strings=prompt.stop_strings,
                                                          deadline=deadline))
    assert (result.text, result.stop_reason, result.token_ids) == ("    return", "max_tokens", [11, 12])
    request = fake.requests[-1]
    body = request["body"]
    assert request["path"] == "/infill"
    assert (body["input_prefix"], body["input_suffix"]) == (prefix, suffix)
    assert body["input_extra"] == [{"filename": "util.py", "text": "def sub(a, b):\n    return a - b\n"},
                                   {"filename": "b.py", "text": "X = '<|file_sep|>'\n"}]  # typed text stays text
    assert body["n_predict"] == 8 and body["cache_prompt"] is True and body["stream"] is True
    assert body["stop"] == ["```"] and body["temperature"] == 0 and "n_indent" not in body
    assert 0 < body["t_max_predict_ms"] <= 2000

    bare = build_prompt(prefix, suffix, tokenizer, "fim", 1024)  # no repository head: no chunks
    engine.generate(bare.ids, GenerationParams(max_new_tokens=8))
    assert fake.requests[-1]["body"]["input_extra"] == [] and fake.requests[-1]["body"]["input_prefix"] == prefix
    plain = build_prompt(prefix, suffix, tokenizer, "prefix", 1024)  # not FIM: llama.cpp's /completion, our ids
    engine.generate(plain.ids, GenerationParams(max_new_tokens=8))
    assert fake.requests[-1]["path"] == "/completion" and fake.requests[-1]["body"]["prompt"] == plain.ids
    assert "t_max_predict_ms" not in fake.requests[-1]["body"]



@pytest.fixture(scope="module")
def qwen_tokenizer(qwen_tokenizer_source):
    from wizardcoder_tpu.inference.tokenizer import Tokenizer

    return Tokenizer.from_file(qwen_tokenizer_source)


CODE_TEXT = st.lists(st.sampled_from(list("abc xyz_():\n\t\"'{}é😀") + ["<|fim_prefix|>", "<|file_sep|>", "<|im_end|>"]),
                     max_size=40).map("".join)


@hypothesis_settings(max_examples=60, deadline=None)
@given(prefix=CODE_TEXT, suffix=CODE_TEXT, snippet=CODE_TEXT)
def test_infill_parts_give_back_the_text_our_fim_prompt_was_built_from(qwen_tokenizer, prefix, suffix, snippet):
    """Whatever the user typed (special-token spellings, tabs, emoji), taking our FIM prompt apart
    gives back the prefix, suffix and snippet it holds, as text: what /infill needs."""
    from wizardcoder_tpu.inference.context import RepoContext, Snippet
    from wizardcoder_tpu.inference.prompt import build_prompt
    from wizardcoder_tpu.inference.remote import infill_parts

    tokenizer = qwen_tokenizer
    context = RepoContext("proj", (Snippet("lib/x.py", snippet),)) if snippet.strip() else None
    prompt = build_prompt(prefix, suffix, tokenizer, "fim", 1024, file_name="a.py", context=context)
    parts = infill_parts(prompt.ids, tokenizer)
    assert parts is not None
    assert parts.prefix == prefix[len(prefix) - prompt.prefix_chars:] and parts.suffix == suffix[:prompt.suffix_chars]
    if prompt.context_snippets:
        assert parts.extra == (("lib/x.py", snippet if snippet.endswith("\n") else snippet + "\n"),)
    else:
        assert parts.extra == ()
    assert infill_parts(build_prompt(prefix, suffix, tokenizer, "prefix", 1024).ids, tokenizer) is None

