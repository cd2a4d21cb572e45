"""The C++ bmrt engine (csrc/) and the TPU backend on tpu-mlir's BM1684X cmodel simulator.

Every engine runs in a child interpreter (test_tpu_engine.run_json): the Sophgo libraries load
once per process, and a crash there must fail a test, not end pytest. CPU references run here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


def run_scenario(name: str, **arguments):
    """``support.tpu_scenarios.<name>(**arguments)`` in a child interpreter; its result."""
    code = (f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            f"from support import tpu_scenarios\nemit(tpu_scenarios.{name}(**{arguments!r}))\n")
    return run_json(code)


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
