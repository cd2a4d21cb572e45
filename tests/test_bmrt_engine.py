"""The C++ bmrt engine (csrc/) and the TPU backend on tpu-mlir's BM1684X cmodel simulator.

Every engine runs in a child interpreter (test_tpu_engine.run_json): the Sophgo libraries load
once per process, and a crash there must fail a test, not end pytest. CPU references run here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pytest_lsp import ClientServerConfig

from test_tpu_engine import (SANITIZED_MODULE, argmax_bmodel, build_sanitized_module, cmodel_lib_dir, run_json,
                             tiny_tokenizer)
from test_lsp_support import inline, open_document, server_config, start, stats
from tpu_models import CHUNK_LEN, SEQ_LEN, tiny_bmodel, tiny_checkpoint

from wizardcoder_tpu.inference.backends.cpu import CPUBackend
from wizardcoder_tpu.inference.weights import open_checkpoint

KINDS = ("gpt_bigcode_mq", "llama_gqa")
PROMPT_SEEDS = {"gpt_bigcode_mq": (8, 8, 7), "llama_gqa": (6, 6, 2)}
NEW_TOKENS = 12


def prompt(length: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(1, 500, length).tolist()


def cpu_greedy(kind: str, ids: list[int], steps: int, margins: list[float] | None = None) -> list[int]:
    """The CPU backend's greedy continuation: the reference the C++ engine must equal. ``margins``
    receives each step's gap between the top two logits."""
    backend = CPUBackend(open_checkpoint(tiny_checkpoint(kind)))
    out: list[int] = []
    feed = list(ids)
    for _ in range(steps):
        logits = backend.forward(feed)
        top2 = np.sort(logits)[-2:]
        if margins is not None:
            margins.append(float(top2[1] - top2[0]))
        out.append(int(np.argmax(logits)))
        feed = [out[-1]]
    return out


# F16 logits differ from the CPU's f32 by ~0.02 on these models (seen: 0.014-0.027). Where the
# CPU's top two are closer than this, the F16 argmax may rightly differ, and every later token too.
NEAR_TIE = 0.1


def comparable(reference: list[int], margins: list[float]) -> list[int]:
    """The reference tokens up to the first near-tie (exclusive)."""
    for i, margin in enumerate(margins):
        if margin < NEAR_TIE:
            return reference[:i]
    return reference


def run_scenario(name: str, timeout: float = 300, **arguments):
    """``support.tpu_scenarios.<name>(**arguments)`` in a child interpreter; its result."""
    code = (f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            f"from support import tpu_scenarios\nemit(tpu_scenarios.{name}(**{arguments!r}))\n")
    return run_json(code, timeout=timeout)


# ---- libraries, devices and files that are not right: clear errors, the process lives on --------

def test_missing_libraries_are_a_clear_error(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "libbmlib.so").write_text("not a library")
    (fake / "libbmrt.so").write_text("not a library")
    only_bmlib = tmp_path / "only-bmlib"
    only_bmlib.mkdir()
    (only_bmlib / "libbmlib.so").write_text("")
    empty_cache = tmp_path / "cache"
    code = f"""
from wizardcoder_tpu import _bmrt
from wizardcoder_tpu.inference.backends.tpu import TPUBackend, TPUUnavailableError
out = {{}}
try:
    _bmrt.Engine({str(argmax_bmodel())!r})
except _bmrt.LibraryError as exc:
    out["before_load"] = str(exc)
try:
    _bmrt.load_libraries([{str(tmp_path / 'nowhere')!r}, {str(only_bmlib)!r}, {str(fake)!r}])
except _bmrt.LibraryError as exc:
    out["direct"] = str(exc)
try:
    TPUBackend({str(argmax_bmodel())!r})
except TPUUnavailableError as exc:
    out["backend"] = str(exc)
out["loaded_from"] = _bmrt.loaded_from()
emit(out)
"""
    env = {"WIZARDCODER_TPU_CACHE": str(empty_cache), "LIBSOPHON_DIR": str(tmp_path / "no-libsophon"),
           "WIZARDCODER_TPU_LIB_DIR": ""}
    out = run_json(code, env)
    assert "not loaded" in out["before_load"]
    direct = out["direct"]
    assert f"{tmp_path / 'nowhere'}: no libbmlib.so/libbmrt.so there" in direct
    assert f"{only_bmlib}: no libbmlib.so/libbmrt.so there" in direct
    assert f"{fake}: dlopen failed" in direct
    assert str(tmp_path / "no-libsophon" / "lib") in out["backend"]
    assert "Install libsophon" in out["backend"]
    assert out["loaded_from"] == ""


@pytest.mark.slow
def test_device_that_cannot_be_opened_is_a_clear_error():
    """The cmodel's bmlib exits the process when its simulator cannot start and asserts on a device
    id it does not have; both become TPUUnavailableError here, and the process goes on."""
    code = f"""
from wizardcoder_tpu.inference.backends.tpu import TPUBackend, TPUUnavailableError
out = {{}}
for devices in ([0], [3]):
    try:
        TPUBackend({str(argmax_bmodel())!r}, devices=devices)
    except TPUUnavailableError as exc:
        out[str(devices[0])] = str(exc)
emit(out)
"""
    out = run_json(code, {"TPUKERNEL_FIRMWARE_PATH": "/nonexistent/libcmodel_bm1684x.so"})
    assert "cannot open TPU device(s) [0]" in out["0"] and "exited with status" in out["0"]
    assert "not able to open libcmodel.so" in out["0"]
    assert "cannot open TPU device 3: 1 device(s) visible" in out["3"]


def _corrupt_variants(good: Path, out: Path) -> dict[str, Path]:
    data = good.read_bytes()
    header = 64
    description = int.from_bytes(data[8:12], "little")  # flatbuffers_size, after magic and header_size
    variants = {
        "text": b"def not_a_bmodel(): pass\n" * 8,
        "truncated": data[: len(data) // 2],
        "magic": b"\0\0\0\0" + data[4:],
        "description": data[:header + 10] + b"\xff" * 64 + data[header + 74:],
        # Found by fuzzing the argmax bmodel: 8 zero bytes here remove a field that bmrt then
        # dereferences (a SIGSEGV in CoeffMemory::Register); the header check cannot see it.
        "segfault": data[:951] + b"\0" * 8 + data[959:],
    }
    assert 959 < header + description
    paths = {}
    for name, content in variants.items():
        paths[name] = out / f"{name}.bmodel"
        paths[name].write_bytes(content)
    return paths


@pytest.mark.slow
def test_corrupt_bmodels_are_clear_errors(tmp_path):
    variants = _corrupt_variants(argmax_bmodel(), tmp_path)
    bmodel = tiny_bmodel("gpt_bigcode_mq")
    code = f"""
from wizardcoder_tpu.inference.backends.tpu import TPUBackend
from wizardcoder_tpu.inference.errors import ModelLoadError
out = {{}}
for name, path in {({k: str(v) for k, v in variants.items()} | {"contract": str(argmax_bmodel())})!r}.items():
    try:
        TPUBackend(path, devices=[0])
    except ModelLoadError as exc:
        out[name] = type(exc).__name__ + ": " + str(exc)
backend = TPUBackend({str(bmodel)!r}, devices=[0])  # after all that, a good model still runs here
out["after"] = backend.greedy_step([1, 2, 3])
backend.close()
emit(out)
"""
    # A cache of its own: no probe marker, so each file is loaded in the probe child first.
    out = run_json(code, {"WIZARDCODER_TPU_CACHE": str(tmp_path / "cache"), "WIZARDCODER_TPU_LIB_DIR": str(cmodel_lib_dir())})
    assert out["text"].startswith("ModelLoadError: ") and "not a bmodel" in out["text"]
    assert "truncated bmodel" in out["truncated"]
    assert "wrong magic number" in out["magic"]
    assert "corrupt bmodel" in out["description"]
    # SIGSEGV; under ASan, whose handler reports the fault in libbmrt and aborts, SIGABRT.
    assert "crashed (SIGSEGV) while loading it" in out["segfault"] or (
        os.environ.get(SANITIZED_MODULE) and "crashed (SIGABRT) while loading it" in out["segfault"]
        and "bmodel::Binary::size" in out["segfault"])
    assert "no net 'embed'" in out["contract"]
    assert 0 <= out["after"] < 512


# ---- the real thing: tiny models compiled to F16 ---------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_greedy_tokens_equal_the_cpu_backend(kind):
    bmodel = tiny_bmodel(kind)
    # Prefill (longer than a chunk), chunks from empty (shorter), and one past the chunk's length.
    # Random tiny models have many near-ties; these seeds give greedy paths without one on the CPU,
    # so all their tokens are compared (found by scanning seeds 1-11 on the CPU alone).
    seeds = PROMPT_SEEDS[kind]
    prompts = [prompt(24, seeds[0]), prompt(5, seeds[1]), prompt(CHUNK_LEN + 1, seeds[2])]
    got = run_scenario("greedy", bmodel=str(bmodel), prompts=prompts, steps=NEW_TOKENS)
    compared = 0
    for ids, result in zip(prompts, got):
        margins: list[float] = []
        expected = comparable(cpu_greedy(kind, ids, NEW_TOKENS, margins), margins)
        assert result["tokens"][: len(expected)] == expected, f"prompt of {len(ids)}, CPU margins {margins}"
        assert result["reason"] == "max_steps" and len(result["tokens"]) == NEW_TOKENS
        compared += len(expected)
    assert compared >= 2 * NEW_TOKENS, "too many near-ties: pick other prompts"  # not a vacuous pass
    assert got[0]["block_rows"] == SEQ_LEN + NEW_TOKENS - 1  # one prefill over N rows, then decodes


@pytest.mark.slow
def test_prefix_reuse_through_chunks_equals_a_cold_prefill():
    """The engine keeps the cached prefix; the new tail goes through block_chunk (K rows a call),
    not a new prefill (N rows), and gives the cold prefill's tokens."""
    kind = "llama_gqa"
    bmodel = tiny_bmodel(kind)
    first, second = prompt(20, 4), prompt(20, 4) + prompt(CHUNK_LEN + 3, 5)
    warm = run_scenario("prefix_reuse", bmodel=str(bmodel), first=first, second=second, new_tokens=NEW_TOKENS)
    cold = run_scenario("greedy", bmodel=str(bmodel), prompts=[second], steps=NEW_TOKENS)[0]
    margins: list[float] = []
    expected = comparable(cpu_greedy(kind, second, NEW_TOKENS, margins), margins)
    assert warm["tokens"] == cold["tokens"]  # the same device, the same F16: exactly equal
    assert len(expected) >= NEW_TOKENS // 2 and warm["tokens"][: len(expected)] == expected, margins
    assert warm["reused"] == len(first)
    assert warm["prefills"] == 0 and warm["chunks"] >= 2
    tail = len(second) - len(first)
    assert warm["fed"] == tail + NEW_TOKENS - 1
    # Two chunks of K for the tail, then one row per decode, against N rows for the cold prefill.
    assert warm["rows"] == 2 * CHUNK_LEN + NEW_TOKENS - 1
    assert warm["rows"] < cold["block_rows"]


@pytest.mark.slow
def test_kv_cache_slots_on_the_device_keep_each_document_cached():
    """Issue 13 on the TPU: the engine keeps several KV caches in device memory (as many as fit
    when left to it), and switching between two documents and back prefills neither again: the
    edited prompt feeds only its new tokens, and gives the tokens of a cold run. A switch is
    a pointer change on the device: no launch, no byte moved."""
    bmodel = tiny_bmodel("llama_gqa")
    docs, edits = [prompt(20, 11), prompt(24, 12)], [prompt(5, 13), prompt(3, 14)]
    got = run_scenario("slots", bmodel=str(bmodel), docs=docs, edits=edits, new_tokens=4)
    # The simulator's bmlib reports no heap statistics, so the engine allocates slots until the
    # device refuses one or it has the most (64); the simulator holds 64 of the tiny model's.
    assert got["fit"] == 64 and got["asked_3"] == 3, got
    assert got["slot_bytes"] > 0
    for doc, edit, warm, cold in zip(docs, edits, got["warm"], got["cold"]):
        assert warm["reused"] == len(doc) and warm["prefills"] == 0, warm
        assert warm["fed"] == len(edit) + 4 - 1, warm  # the edit, then each token but the last
        assert warm["tokens"] == cold
    assert got["lengths"][0] == got["lengths"][2] > len(docs[0]) and got["lengths"][1] > len(docs[1])
    assert got["switch"] == {"launches": 0, "bytes_to_device": 0, "bytes_from_device": 0, "bytes_on_device": 0}
    assert "slot 2 does not exist" in got["no_such_slot"]


@pytest.mark.slow
def test_cancel_stops_within_one_step():
    """cancel() from another thread while the C++ loop runs: no step after the one in flight."""
    bmodel = tiny_bmodel("gpt_bigcode_mq")
    out = run_scenario("cancel_mid_loop", bmodel=str(bmodel))
    assert {k: out.pop(k) for k in ("tokens", "reason", "decodes", "engine")} == {
        "tokens": 3, "reason": "cancelled", "decodes": 3, "engine": [2, "cancelled"]}
    # Misuse is a Python error of the backend, the engine's plain errors included.
    assert out == {"empty": "TPU engine: feed needs at least one token",
                   "past_vocab": "TPU engine: token id 99999 is out of range",
                   "closed": "TPU engine: the engine is closed"}


# ---- the same tests under AddressSanitizer and UBSan ---------------------------------------------

@pytest.mark.slow
def test_engine_tests_pass_under_asan_and_ubsan(tmp_path):
    if os.environ.get(SANITIZED_MODULE):
        pytest.skip("already the sanitized run")
    started = time.monotonic()
    module = build_sanitized_module(tmp_path / "build")
    # Every engine path (prefill, chunks from empty, decode, cancel, each failure) in ~5 minutes:
    # the Llama parity and prefix-reuse runs repeat these C++ paths and would double the time.
    tests = ["test_missing_libraries_are_a_clear_error", "test_device_that_cannot_be_opened_is_a_clear_error",
             "test_corrupt_bmodels_are_clear_errors", "test_greedy_tokens_equal_the_cpu_backend[gpt_bigcode_mq]",
             "test_cancel_stops_within_one_step"]
    sanitized = run_json("from wizardcoder_tpu import _bmrt\nemit(_bmrt.__file__)", {SANITIZED_MODULE: str(module)})
    assert sanitized == str(module)  # the children below really run the sanitized build
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           *(f"{__file__}::{t}" for t in tests)], env={**os.environ, SANITIZED_MODULE: str(module)},
                          cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-4000:]
    assert f"{len(tests)} passed" in done.stdout, done.stdout[-2000:]
    assert time.monotonic() - started < 600


# ---- the language server on the tpu backend ------------------------------------------------------

def tpu_model_dir(out: Path, kind: str = "gpt_bigcode_mq") -> Path:
    """What ``wizardcoder-tpu compile`` leaves, plus the tokenizer the tiny checkpoints lack."""
    bmodel = tiny_bmodel(kind)
    out.mkdir(parents=True, exist_ok=True)
    (out / bmodel.name).symlink_to(bmodel)
    shutil.copyfile(bmodel.parent / "manifest.json", out / "manifest.json")
    tiny_tokenizer(out / "tokenizer.json", vocab_size=500, eos="<|endoftext|>")  # the tiny GPTBigCode's eos is 0
    return out


async def _server(log: Path, *args: str, env: dict[str, str] | None = None):
    base = server_config(log, *args)
    client = await ClientServerConfig(server_command=base.server_command, server_env=env).start()
    return client


LSP_SETTINGS = {"maxNewTokens": 8, "debounceMs": 0}
CODE = "import os\n\ndef add(a, b):\n    return "


async def _complete_once(tmp_path: Path, *server_args: str, env: dict[str, str] | None = None):
    """One server session: start, one inline completion at the end of ``CODE``, the stats, shut
    down. Returns (status recorder, completion, stats)."""
    client = await _server(tmp_path / "server.log", *server_args, env=env)
    try:
        recorder, _ = await start(client, LSP_SETTINGS)
        open_document(client, "file:///tmp/add.py", CODE)
        result = await inline(client, "file:///tmp/add.py", 3, 11)
        served = await stats(client)
        await client.shutdown_session()
    finally:
        await client.stop()
    return recorder, result, served

@pytest.mark.slow
async def test_language_server_serves_inline_completion_on_the_tpu(tmp_path):
    model = tpu_model_dir(tmp_path / "model")
    _, result, served = await _complete_once(tmp_path, "--backend", "tpu", "--model", str(model))
    assert served["model"] == f"{tiny_bmodel('gpt_bigcode_mq').stem} on tpu", served
    assert served["modelError"] == ""
    assert served["engineCalls"] == 1 and served["generations"][0]["tokens"] >= 1, served
    assert result.items and result.items[0].insert_text.strip(), result


@pytest.mark.slow
async def test_language_server_says_the_device_cannot_be_opened_and_falls_back_to_the_cpu(tmp_path, qwen_model):
    model = tpu_model_dir(tmp_path / "model")
    # The cmodel is the device here: a simulator that cannot start is a device that cannot open.
    env = {**os.environ, "TPUKERNEL_FIRMWARE_PATH": str(tmp_path / "missing" / "libcmodel_bm1684x.so")}
    recorder, result, served = await _complete_once(tmp_path, "--backend", "tpu", "--model", str(model),
                                                    "--fallback-cpu", env=env)
    assert "cannot open TPU device(s) [0]" in served["modelError"], served
    assert "not able to open libcmodel.so" in served["modelError"]
    assert served["model"] == f"{qwen_model.name} on cpu", served  # the CPU default
    assert any("cannot open TPU device" in s["message"] for s in recorder.statuses), recorder.statuses
    assert served["engineCalls"] == 1 and result.items, (served, result)


@pytest.mark.slow
def test_cli_tpu_path_from_the_repository_root_equals_another_folder(tmp_path):
    """`python -m` puts the current folder first on sys.path: from the repository root, a folder
    of the checkout named like the package would hide the installed one, in this process and in
    the TPU probe child alike. The same command must print the same completion from both."""
    model = tpu_model_dir(tmp_path / "model")
    repo_root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "wizardcoder_tpu", "complete", "--backend", "tpu", "--model", str(model),
               "--completion-only", "--max-tokens", "6", "def add(a, b):"]
    printed = {}
    for cwd in (repo_root, tmp_path):
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (cwd, done.stderr[-2000:])
        assert "No module named" not in done.stderr
        printed[cwd] = done.stdout
    assert printed[repo_root] == printed[tmp_path]
    assert "stop:" in done.stderr


# ---- stdout holds the answer alone: the runtime's prints go to stderr ------------------------------

@pytest.mark.slow
def test_cli_completion_only_prints_the_completion_alone(tmp_path):
    """The simulator prints a banner and a line per network call to the process's stdout; with
    ``--completion-only`` stdout must be the completion, byte for byte, and the runtime's lines
    must have gone to stderr."""
    model = tpu_model_dir(tmp_path / "model")
    prompt_text, steps = "def add(a, b):", 6
    expected = run_json(f"""
from wizardcoder_tpu.inference.backends.tpu import load_tpu_engine
from wizardcoder_tpu.inference.engine import GenerationParams
engine = load_tpu_engine({str(model)!r})
emit(engine.generate(engine.tokenizer.encode({prompt_text!r}), GenerationParams(max_new_tokens={steps})).text)
""")
    assert expected.strip(), "the tiny model completed nothing: the check below would prove little"
    command = [sys.executable, "-m", "wizardcoder_tpu", "complete", "--backend", "tpu", "--model", str(model),
               "--completion-only", "--max-tokens", str(steps), prompt_text]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout == (expected + "\n").encode()
    assert b"do_allreduce" in done.stderr, done.stderr[-2000:]  # the runtime did speak, elsewhere


HEADER = re.compile(rb"[A-Za-z][A-Za-z-]*: [^\r\n]*")


def _frames(stream: bytes) -> tuple[list[dict], int]:
    """The complete LSP messages at the start of ``stream`` and how many bytes they take. Fails at
    the first byte that is not part of a well-formed Content-Length frame."""
    messages, at = [], 0
    while at < len(stream):
        rest = stream[at:]
        assert rest.startswith(b"Content-") or b"Content-".startswith(rest), \
            f"stray bytes on the protocol stream: {rest[:200]!r}"
        end = stream.find(b"\r\n\r\n", at)
        if end < 0:
            break
        lines = stream[at:end].split(b"\r\n")
        assert all(HEADER.fullmatch(line) for line in lines), f"stray bytes on the protocol stream: {rest[:200]!r}"
        headers = dict(line.split(b": ", 1) for line in lines)
        body_at, length = end + 4, int(headers[b"Content-Length"])
        if body_at + length > len(stream):
            break
        message = json.loads(stream[body_at:body_at + length])
        assert message.get("jsonrpc") == "2.0", message
        messages.append(message)
        at = body_at + length
    return messages, at


class RawClient:
    """An LSP client over the server's pipes that keeps every byte the server writes to stdout,
    so that the whole stream can be checked to be frames and nothing else. Answers the server's
    own requests (progress tokens) with null."""

    def __init__(self, command: list[str], stderr: Path):
        self._stderr = stderr.open("wb")
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self.raw = bytearray()
        self.messages: list[dict] = []
        self._parsed = 0
        self._lock = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next_id = 0

    def _read(self) -> None:
        while chunk := self.proc.stdout.read1(65536):
            with self._lock:
                self.raw += chunk
                self._lock.notify_all()
        with self._lock:
            self._lock.notify_all()

    def send(self, message: dict) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def request(self, method: str, params: dict | None = None, timeout: float = 300) -> dict:
        self._next_id += 1
        self.send({"id": self._next_id, "method": method, **({} if params is None else {"params": params})})
        reply = self.wait_for(lambda m: m.get("id") == self._next_id and "method" not in m, timeout)
        assert "error" not in reply, reply
        return reply["result"]

    def wait_for(self, predicate, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for message in self._take():
                    if "method" in message and "id" in message:  # the server asks: say nothing much
                        self.send({"id": message["id"], "result": None})
                    if predicate(message):
                        return message
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, (f"no such message within {timeout} s", self.messages)
                self._lock.wait(min(left, 1.0))

    def _take(self) -> list[dict]:
        fresh, used = _frames(bytes(self.raw[self._parsed:]))
        self._parsed += used
        self.messages += fresh
        return fresh

    def close(self) -> bytes:
        """Shut the server down; everything it wrote to stdout."""
        try:
            self.request("shutdown", timeout=60)
            self.send({"method": "exit"})
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(timeout=10)
            self._stderr.close()
        return bytes(self.raw)


@pytest.mark.slow
def test_no_stray_byte_reaches_the_protocol_stream_while_the_tpu_backend_runs(tmp_path):
    """Every byte the server writes to stdout, from start to exit, belongs to a Content-Length
    frame, through loading the bmodel (probe child included) and an inline completion on the
    simulator, which prints a line per network call."""
    model = tpu_model_dir(tmp_path / "model")
    client = RawClient([sys.executable, "-m", "wizardcoder_tpu", "serve", "--stdio", "--backend", "tpu",
                        "--model", str(model), "--log-file", str(tmp_path / "server.log")], tmp_path / "stderr")
    try:
        client.request("initialize", {
            "processId": None, "rootUri": "file:///tmp", "initializationOptions": LSP_SETTINGS,
            "capabilities": {"window": {"workDoneProgress": True},
                             "textDocument": {"inlineCompletion": {}, "synchronization": {}}}})
        client.send({"method": "initialized", "params": {}})
        status = client.wait_for(lambda m: m.get("method") == "wizardcoder/status"
                                 and m["params"]["state"] in ("idle", "error"))
        assert status["params"]["state"] == "idle", status
        client.send({"method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": "file:///tmp/add.py", "languageId": "python", "version": 1, "text": CODE}}})
        result = client.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": "file:///tmp/add.py"}, "position": {"line": 3, "character": 11},
            "context": {"triggerKind": 2}})
        assert result["items"] and result["items"][0]["insertText"].strip(), result
    finally:
        stream = client.close()
    messages, used = _frames(stream)
    assert used == len(stream), f"stray bytes after the last frame: {stream[used:used + 200]!r}"
    assert messages == client.messages
    assert b"do_allreduce" in (tmp_path / "stderr").read_bytes()  # the runtime did speak, elsewhere


# ---- prefill through chunks that cover the prompt, not the N-row block ---------------------------------

PREFILL_SEQ, PREFILL_CHUNKS = 512, (64, 256)  # with K = CHUNK_LEN: chunk sets of 16, 64 and 256 rows


def cpu_logits(kind: str, ids: list[int]) -> np.ndarray:
    return CPUBackend(open_checkpoint(tiny_checkpoint(kind))).forward(ids)


@pytest.mark.slow
def test_prefill_runs_only_the_chunk_rows_that_cover_the_prompt():
    """Prompts of 1, 17, 100 and 300 tokens on a bmodel with N = 512 and chunk sets of 16, 64 and
    256 rows: each runs only the rows of its plan (never the 512-row block), and its last
    position's logits equal the CPU backend's; the 300-token one then decodes the CPU's tokens."""
    kind = "llama_gqa"
    bmodel = tiny_bmodel(kind, seq_len=PREFILL_SEQ, prefill_chunks=PREFILL_CHUNKS)
    lengths, steps = (1, 17, 100, 300), 4
    prompts = [prompt(n, 21 + n) for n in lengths]  # 300 tokens: seed 321, no near-tie in its 4 CPU steps
    code = f"""
import numpy as np
from wizardcoder_tpu.inference.backends.tpu import TPUBackend
backend = TPUBackend({str(bmodel)!r}, devices=[0])
out = {{"chunk_rows": backend._engine.chunk_rows, "runs": []}}
for ids in {prompts!r}:
    backend.truncate(0)
    before = backend.stats
    logits = backend.forward(ids)
    after = backend.stats
    out["runs"].append({{"rows": after.block_rows - before.block_rows, "prefills": after.prefills - before.prefills,
                        "logits": logits.tolist()}})
out["tokens"] = [int(np.argmax(logits))] + backend.generate(int(np.argmax(logits)), {steps} - 1)[0]
backend.close()
emit(out)
"""
    got = run_json(code, timeout=900)
    assert got["chunk_rows"] == [CHUNK_LEN, *PREFILL_CHUNKS]
    assert [run["rows"] for run in got["runs"]] == [1, 64, 128, 320]  # plan_feed's; the block would run 512
    assert all(run["prefills"] == 0 for run in got["runs"])
    for ids, run in zip(prompts, got["runs"]):
        expected = cpu_logits(kind, ids)
        logits = np.array(run["logits"], np.float32)
        cosine = float(logits @ expected / np.linalg.norm(logits) / np.linalg.norm(expected))
        assert cosine > 0.999, (len(ids), cosine)
    margins: list[float] = []
    reference = comparable(cpu_greedy(kind, prompts[-1], steps, margins), margins)
    assert len(reference) == steps, margins  # this seed has no near-tie on the CPU: every token compared
    assert got["tokens"] == reference


# ---- speculative decoding: the draft verified on the device in one pass ----------------------------

SPECULATE, SPEC_TOKENS = 8, 4  # a simulated launch costs ~0.2 s: 4 tokens a run, 21 prompts
# Seeds of three kinds of prompt, 21 in all, picked by a scan on the CPU backend (the device's
# tokens are the CPU's here) so that the set holds runs whose every draft is accepted and runs
# whose every draft is rejected: a prompt, its greedy continuation and the prompt again (the
# drafter copies the continuation, which the model may or may not repeat); a phrase three times;
# random ids (chance matches, or no draft at all).
COPIED_SEEDS = (127, 142, 135, 136, 123, 159, 158)
REPEATED_SEEDS = (121, 134, 145, 154, 119, 155, 148)
RANDOM_SEEDS = (130, 151, 131, 133, 137, 141, 100)


def speculation_prompts() -> list[list[int]]:
    prompts = []
    for seed in COPIED_SEEDS:
        phrase = prompt(int(np.random.default_rng(seed).integers(4, 12)), seed)
        prompts.append(phrase + cpu_greedy("gpt_bigcode_mq", phrase, 6) + phrase)
    for seed in REPEATED_SEEDS:
        prompts.append(prompt(int(np.random.default_rng(seed).integers(4, 12)), seed) * 3)
    for seed in RANDOM_SEEDS:
        prompts.append(prompt(2 * int(np.random.default_rng(seed).integers(4, 12)) + 6, seed + 1000))
    return prompts


@pytest.mark.slow
def test_speculative_decoding_on_the_device_gives_the_plain_greedy_tokens():
    """Prompt-lookup speculation through ``TPUBackend.verify`` (a chunk pass over the draft's rows,
    then the top-1 per row on the device) against the engine's plain loop on the same bmodel, on
    21 prompts: the same tokens, among them prompts whose every draft is accepted and prompts
    whose every draft is rejected; after each run the cache holds exactly the prompt and the
    tokens fed. On the backend itself: a draft of the plain continuation is accepted whole in one
    chunk call, a wrong one rejected, and after the cut the next step equals a cold run's. A
    cancel that comes during a verify call stops the generation with no model call after it."""
    bmodel = tiny_bmodel("gpt_bigcode_mq")
    prompts = speculation_prompts()
    got = run_scenario("speculation", timeout=900, bmodel=str(bmodel), prompts=prompts, new_tokens=SPEC_TOKENS,
                       speculate=SPECULATE)
    kinds = {"all accepted": 0, "all rejected": 0, "no draft": 0, "some accepted": 0}
    for ids, run in zip(prompts, got["runs"]):
        plain, fast = run["0"], run[str(SPECULATE)]
        assert fast["tokens"] == plain["tokens"], (ids, run)
        assert plain["verifies"] == 0 and len(plain["tokens"]) == SPEC_TOKENS
        for result in (plain, fast):  # the prompt and every token but the last, which was never fed
            assert result["cached_length"] == len(ids) + SPEC_TOKENS - 1, (ids, run)
        drafted, accepted = fast["drafted"], fast["accepted"]
        kinds["no draft" if drafted == 0 else "all accepted" if accepted == drafted else
              "all rejected" if accepted == 0 else "some accepted"] += 1
    print(f"\n{len(prompts)} prompts: {kinds}; {sum(r[str(SPECULATE)]['accepted'] for r in got['runs'])} of "
          f"{sum(r[str(SPECULATE)]['drafted'] for r in got['runs'])} drafted tokens accepted")
    assert len(prompts) >= 20 and kinds["all accepted"] >= 2 and kinds["all rejected"] >= 2, kinds
    plain = got["plain_of_first"]
    assert got["accepted_draft"] == plain[1:4]
    call = got["verify_call"]  # embed, each layer's chunk block, then one head for all 3 rows
    assert call == {"chunks": 1, "decodes": 0, "block_rows": CHUNK_LEN, "launches": 1 + call["layers"] + 1,
                    "layers": call["layers"], "bytes_from_device": 3 * 4}
    assert got["rejected_draft"][0] == plain[1]
    assert got["after_rejection"] == plain[2] == got["cold"]
    assert got["cached_length"] == len(prompts[0]) + 2
    cancelled = got["cancelled"]
    assert cancelled["reason"] == "cancelled" and cancelled["calls_after_cancel"] == 0, cancelled
    assert cancelled["verifies_before"] >= 1 and len(cancelled["tokens"]) < SPEC_TOKENS, cancelled


# ---- a device that goes away under a request (issue 14) -------------------------------------------

@pytest.mark.slow
def test_a_device_closed_under_a_request_is_an_error_answer_and_the_next_request_is_served(tmp_path):
    """The language server on the tiny bmodel: the C++ engine's device handle is closed from
    another thread while an inline completion's prompt runs on the simulator. That request gets an
    error answer saying so, the status turns to error, and the next request is served (the backend
    opens the device again) with the status back to idle."""
    model = tpu_model_dir(tmp_path / "model")
    got = run_scenario("device_closed_under_a_request", timeout=600, model_dir=str(model))
    assert got["loaded"]["state"] == "idle", got["loaded"]
    assert got["closed"]
    error = got["failed"].get("error")
    assert error and error["code"] == -32803 and "TPU device was closed" in error["message"], got["failed"]
    assert "TPU device was closed" in got["status_after_failure"]["message"], got["status_after_failure"]
    assert got["next"]["result"]["items"], got["next"]
    assert got["status_after_next"]["state"] == "idle", got["status_after_next"]
    assert got["reopened"]
