"""Helpers of the C++ engine tests (no tests here): the argmax bmodel, a tiny tokenizer, fresh
interpreters for everything that loads the Sophgo libraries, and the sanitizer build.

Everything heavy lands under ``$WIZARDCODER_TPU_CACHE/test-bmodels/<key>``, the key a hash of
what it is built from, so a second CI run on a warm cache compiles nothing.

The Sophgo libraries load once per process and can end it, so each engine test runs its engine
in a child (``run_python``). With ``$WIZARDCODER_TPU_SANITIZED_MODULE`` set to an ASan/UBSan build
of ``_bmrt`` those children import that build instead (test_bmrt_engine.py's sanitizer test).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from wizardcoder_tpu.inference.paths import cache_dir

REPO = Path(__file__).resolve().parents[1]
SANITIZED_MODULE = "WIZARDCODER_TPU_SANITIZED_MODULE"
# Imported by every child under the sanitizers, first thing: the sanitized _bmrt in place of the
# installed one (children of children inherit PYTHONPATH, so the device probe is sanitized too).
_SITECUSTOMIZE = """\
import importlib.util, os, sys
_spec = importlib.util.spec_from_file_location("wizardcoder_tpu._bmrt", os.environ["WIZARDCODER_TPU_SANITIZED_MODULE"])
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
sys.modules["wizardcoder_tpu._bmrt"] = _module
"""


def toolchain():
    """tpu-mlir's venv (built on first use by the TPU tools: a few minutes)."""
    from wizardcoder_tpu.inference.tpu.toolchain import ensure_toolchain

    return ensure_toolchain()


def cmodel_lib_dir() -> Path:
    """tpu-mlir's ``lib/`` with the simulator builds of libbmlib/libbmrt/libcmodel."""
    return toolchain().package_dir / "lib"


def _cached(key_parts: list[str], name: str, build) -> Path:
    """``build(tmp_dir) -> Path`` once per key; the result is moved into the cache atomically."""
    key = hashlib.sha256("|".join(key_parts).encode()).hexdigest()[:16]
    target = cache_dir() / "test-bmodels" / f"{name}-{key}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(work)
        try:
            os.rename(work, target)  # another process may have won the race: keep its copy
        except OSError:
            if not target.exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def argmax_bmodel() -> Path:
    """A one-net bmodel (``lm_head``: hidden [1,1,8] → top-1 token) compiled from a 3-node ONNX
    graph; a real bmodel that is not a model, for the loading and error paths."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["hidden", "flat_shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"]),
         helper.make_node("ArgMax", ["logits"], ["top"], axis=-1, keepdims=1),
         helper.make_node("Cast", ["top"], ["token"], to=TensorProto.INT32)],
        "lm_head",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, 1, 8])],
        [helper.make_tensor_value_info("token", TensorProto.INT32, [1, 1])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([1, 8], np.int64), "flat_shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    data = model.SerializeToString()

    def build(work: Path) -> None:
        tc = toolchain()
        (work / "lm_head.onnx").write_bytes(data)
        log = work / "compile.log"
        tc.run([str(tc.script("model_transform.py")), "--model_name", "lm_head", "--model_def", "lm_head.onnx",
                "--input_shapes", "[[1,1,8]]", "--mlir", "lm_head.mlir"], work, log, timeout=600)
        tc.run([str(tc.script("model_deploy.py")), "--mlir", "lm_head.mlir", "--quantize", "F16",
                "--chip", "bm1684x", "--model", "lm_head.bmodel"], work, log, timeout=600)

    return _cached([hashlib.sha256(data).hexdigest(), "F16", "bm1684x", "1"], "argmax", build) / "lm_head.bmodel"


def tiny_tokenizer(out: Path, vocab_size: int, eos: str) -> Path:
    """A byte-level BPE ``tokenizer.json`` of at most ``vocab_size`` ids, ``eos`` at id 0 (the tiny
    GPTBigCode's eos), trained on a little Python: the tiny checkpoints come without one and the
    server needs text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = ["def add(a, b):\n    return a + b\n", "class Stack:\n    def push(self, item):\n        self.items.append(item)\n",
            "for i in range(10):\n    print(i)\n", "import os\nimport sys\n"] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[eos],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(text, trainer)
    assert tok.token_to_id(eos) == 0 and tok.get_vocab_size() <= vocab_size
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return out


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an engine child; under the sanitizers, with the sanitized module."""
    merged = {**os.environ, **(env or {})}
    module = merged.get(SANITIZED_MODULE)
    if module:
        site = Path(module).parent / "sitecustomize"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        merged["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), merged.get("PYTHONPATH")]))
        merged["LD_PRELOAD"] = " ".join(sanitizer_preload())
        # Leaks: Python and the Sophgo libraries keep their globals to the end, by design.
        merged["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
        merged["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    return merged


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (the Sophgo libraries load once per process)."""
    return subprocess.run([sys.executable, "-c", code], env=child_env(env), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


RESULT = "RESULT:"


def run_json(code: str, env: dict[str, str] | None = None, timeout: float = 300):
    """``code`` in a fresh interpreter; it calls ``emit(obj)`` once. Fails with the child's output
    when the child dies (a crash there is a failure here, never a crash of pytest)."""
    prelude = "import json\ndef emit(obj):\n    print(%r + json.dumps(obj), flush=True)\n" % RESULT
    done = run_python(prelude + code, env, timeout)
    found = [line[len(RESULT):] for line in done.stdout.splitlines() if line.startswith(RESULT)]
    assert done.returncode == 0 and found, (
        f"child exited with {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-6000:]}")
    return json.loads(found[-1])


# ---- the sanitizer build ------------------------------------------------------------------------

def sanitizer_preload() -> list[str]:
    """libasan first (it must come before everything), then libstdc++: python does not link it, and
    ASan's __cxa_throw interceptor must find it at start-up or the first C++ throw aborts."""
    found = []
    for lib, compiler in (("libasan.so", "gcc"), ("libstdc++.so", "g++")):
        path = subprocess.run([compiler, f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
        found.append(os.path.realpath(path))
    return found


def build_sanitized_module(build_dir: Path) -> Path:
    """``_bmrt`` built with -DWIZARDCODER_SANITIZE=ON by cmake directly (no wheel, no install)."""
    import pybind11

    # cmake's default generator (make): the image has no ninja unless someone installed it.
    subprocess.run(["cmake", "-S", str(REPO), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Debug",
                    "-DWIZARDCODER_SANITIZE=ON", f"-DPython_EXECUTABLE={sys.executable}",
                    f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"], check=True, capture_output=True, timeout=300)
    subprocess.run(["cmake", "--build", str(build_dir), "--parallel", "2"], check=True, capture_output=True,
                   timeout=600)
    (module,) = build_dir.glob("csrc/_bmrt*.so")
    return module
