"""The remote backend's llama.cpp protocols end to end against llama.cpp's own server
(``llama-server``, built from the llama.cpp that llama-cpp-python's sdist vendors by
``bench/llama_server_build.py``), started here on loopback with the default GGUF
(Qwen2.5-Coder-0.5B-Instruct).

What is checked, and why that way:

- ``llama.cpp`` (``/completion`` with our token ids): the server runs our prompt exactly, so the
  completion equals the local engine's on the same ids, or it parts from it at a token where
  our engine's two best logits nearly tie (a gap under ``NEAR_TIE``: llama.cpp's CPU kernels
  multiply the quantized weights by activations quantized to 8 bits, ours by float activations).
- ``llama.cpp-infill`` (``/infill``): the server builds the FIM prompt from the parts, with a
  repository head of its own names (``<|repo_name|>myproject\\n … <|file_sep|>filename\\n``) even
  when there are no chunks. So each case first asks the server (not streamed, one token) for the
  prompt it built (its final event's ``prompt``, detokenized, and ``tokens_evaluated``), and
  checks it against the prompt that layout gives (``expected``:
  ours, with llama.cpp's head where ours has none; with chunks and the repository named
  ``myproject``, the current file ``filename``, ours and the server's are the same ids); then the
  streamed completion through the remote backend is held to the local engine's on that prompt,
  near ties excepted as above.
- An early stop (post-processing's ``done``) and a cancellation close the stream: the server's one
  slot is idle again at once (``/slots``), where the request asked for hundreds of tokens, and the
  next request is served.

Marked ``heavy`` (not in CI): the first run builds llama-server from source
(``bench/llama_server_build.py``, cached in ``~/.cache/wizardcoder-tpu/llama-server/``), which
takes far longer than the few minutes CI has beside its other builds (the README's Tests
section gives the numbers).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from support.http_servers import serving

from wizardcoder_tpu.inference.context import RepoContext, Snippet
from wizardcoder_tpu.inference.engine import CancelToken, GenerationParams
from wizardcoder_tpu.inference.loader import load_engine
from wizardcoder_tpu.inference.prompt import build_prompt
from wizardcoder_tpu.inference.remote import WIRE_PROTOCOLS, RemoteConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from llama_server_build import build_server  # noqa: E402

pytestmark = pytest.mark.heavy
MAX_NEW_TOKENS = 16
NEAR_TIE = 0.5  # logits
STARTUP_S = 120
CONTEXT = RepoContext("myproject", (Snippet("geometry.py", "def area(width, height):\n    return width * height\n"),))
CASES = [  # (prefix, suffix, repository context)
    ("def fibonacci(n):\n", "\n\nprint(fibonacci(10))\n", None),
    ("import os\n\ndef list_files(path):\n    ", "\n", None),
    ("from geometry import area\n\ndef total_area(rects):\n    ", "\n", CONTEXT),
]


@pytest.fixture(scope="module")
def llama_server(qwen_model, tmp_path_factory):
    binary = build_server()  # at once when cached
    command = lambda port: [str(binary), "--model", str(qwen_model), "--host", "127.0.0.1",  # noqa: E731
                            "--port", str(port), "--ctx-size", "4096", "--parallel", "1", "--threads", "2", "--no-webui"]
    with serving(command, "/health", tmp_path_factory.mktemp("llama-server") / "server.log", "llama-server",
                 STARTUP_S) as url:
        yield url


@pytest.fixture(scope="module")
def local(qwen_model):
    return load_engine(str(qwen_model), "cpu")


def _engine(llama_server, qwen_model, protocol: str):
    return load_engine(str(qwen_model), "remote", remote=RemoteConfig(llama_server, protocol, timeout_s=120))


def _prompt(tokenizer, prefix: str, suffix: str, context):
    prompt = build_prompt(prefix, suffix, tokenizer, "fim", 1024, file_name="filename" if context else "",
                          context=context)
    assert prompt.context_snippets == (1 if context else 0)
    return prompt, GenerationParams(max_new_tokens=MAX_NEW_TOKENS, stop_strings=prompt.stop_strings)


def _llama_cpp_head(tokenizer) -> list[int]:
    """The repository head llama.cpp's format_prompt_infill writes when there is no chunk."""
    fim = tokenizer.fim
    return [tokenizer.require(fim.repo_name), *tokenizer.encode("myproject\n"),
            tokenizer.require(fim.file_sep), *tokenizer.encode("filename\n")]


def _post(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.load(answer)


def _same_or_near_tie(local, prompt_ids: list[int], params: GenerationParams, theirs, what: str) -> bool:
    """True when the texts are equal; False when they part where our engine nearly ties (else fail)."""
    ours = local.generate(prompt_ids, params)
    if theirs.text == ours.text:
        return True
    their_ids = local.tokenizer.encode(theirs.text)
    common = next(i for i, (a, b) in enumerate(zip([*ours.token_ids, -1], [*their_ids, -2])) if a != b)
    local.reset()
    logits = local.backend.forward(prompt_ids + ours.token_ids[:common])
    local.reset()
    best, second = np.sort(logits)[::-1][:2]
    assert best - second < NEAR_TIE, (f"{what}: the texts part at token {common}, where our engine is sure "
                                       f"(gap {best - second:.3f}): ours {ours.text!r}, theirs {theirs.text!r}")
    return False


def test_the_completion_protocol_runs_our_ids_and_gives_the_local_engines_completion(llama_server, qwen_model,
                                                                                       local):
    remote = _engine(llama_server, qwen_model, "llama.cpp")
    equal = 0
    for prefix, suffix, context in CASES:
        prompt, params = _prompt(remote.tokenizer, prefix, suffix, context)
        theirs = remote.generate(prompt.ids, params)
        assert theirs.stop_reason in ("max_tokens", "eos", "stop_string"), theirs
        equal += _same_or_near_tie(local, prompt.ids, params, theirs, repr(prefix))
    assert equal >= 2, "most prompts should give the same text: the protocol, not the arithmetic, differs"
    remote.close()


def test_the_infill_protocol_runs_llama_cpps_fim_prompt_and_gives_the_local_engines_completion(
        llama_server, qwen_model, local):
    remote = _engine(llama_server, qwen_model, "llama.cpp-infill")
    protocol = WIRE_PROTOCOLS["llama.cpp-infill"]
    equal = 0
    for prefix, suffix, context in CASES:
        prompt, params = _prompt(remote.tokenizer, prefix, suffix, context)
        expected = prompt.ids if context else _llama_cpp_head(remote.tokenizer) + prompt.ids
        path, body = protocol.request(prompt.ids, remote.tokenizer, (), 1, "", None)
        assert path == "/infill" and len(body["input_extra"]) == (1 if context else 0)
        probe = _post(llama_server, path, {**body, "stream": False, "cache_prompt": False})
        assert probe["prompt"] == remote.tokenizer.decode(expected, skip_special=False), prefix
        assert probe["tokens_evaluated"] == len(expected), prefix
        theirs = remote.generate(prompt.ids, params)
        assert theirs.stop_reason in ("max_tokens", "eos", "stop_string"), theirs
        equal += _same_or_near_tie(local, expected, params, theirs, repr(prefix))
    assert equal >= 2, "most prompts should give the same text: the protocol, not the arithmetic, differs"
    remote.close()


def _slot_busy(url: str) -> bool:
    with urllib.request.urlopen(url + "/slots", timeout=10) as answer:
        return any(slot.get("is_processing") for slot in json.load(answer))


def _idle_within(url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _slot_busy(url):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_an_early_stop_and_a_cancellation_close_the_stream_and_the_server_stops(llama_server, qwen_model):
    remote = _engine(llama_server, qwen_model, "llama.cpp-infill")
    prefix, suffix, context = CASES[0]
    prompt, _ = _prompt(remote.tokenizer, prefix, suffix, context)
    long = GenerationParams(max_new_tokens=400)  # tens of seconds, were the server to go on
    done = remote.generate(prompt.ids, long, on_text=lambda text: len(text) < 8)
    assert done.stop_reason == "done"
    assert _idle_within(llama_server, 2.0), "the server went on generating after the stream was closed"
    cancel = CancelToken()

    def cancel_at_first_piece(text: str) -> bool:
        cancel.cancel()
        return True

    cancelled = remote.generate(prompt.ids, long, cancel, on_text=cancel_at_first_piece)
    assert cancelled.stop_reason == "cancelled"
    assert _idle_within(llama_server, 2.0), "the server went on generating after the cancellation"
    whole = remote.generate(prompt.ids, GenerationParams(max_new_tokens=MAX_NEW_TOKENS))
    assert whole.text.startswith(done.text) and whole.stop_reason in ("max_tokens", "eos")
    remote.close()
