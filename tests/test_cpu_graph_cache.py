"""The CPU backend's graph cache under concurrency: servers that start together on one cache.

Regression: onnx appends external data to an existing file, and two processes building the same
graph into one folder interleaved their weights; the graph that won then read the other's bytes
and the model produced fluent garbage. Each build now happens in a private folder renamed into
place whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx

BUILD_AND_RUN = """
import sys
from wizardcoder_tpu.inference.backends.cpu import CPUBackend, ensure_decoder
from wizardcoder_tpu.inference.weights import open_checkpoint
sys.path.insert(0, {tests!r})
from reference import backend_greedy
checkpoint = open_checkpoint({model!r})
print(ensure_decoder(checkpoint))
print(backend_greedy(CPUBackend(checkpoint, threads=1), [5, 17, 99, 3], 12))
"""


def test_concurrent_builds_leave_one_whole_graph(tiny_model_factory, tmp_path):
    model = tiny_model_factory("llama_gqa")
    code = BUILD_AND_RUN.format(tests=str(Path(__file__).parent), model=str(model))
    env = {**os.environ, "WIZARDCODER_TPU_CACHE": str(tmp_path / "cache")}
    builders = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [b.communicate(timeout=300) for b in builders]
    for builder, (out, err) in zip(builders, outputs):
        assert builder.returncode == 0, err
    paths = {out.splitlines()[0] for out, _ in outputs}
    tokens = {out.splitlines()[1] for out, _ in outputs}
    assert len(paths) == 1 and len(tokens) == 1  # one graph, and every process reads the same model

    graph = Path(paths.pop())
    proto = onnx.load(str(graph), load_external_data=False)
    stored = sum(int(next(e.value for e in t.external_data if e.key == "length"))
                 for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    assert (graph.parent / "decoder.weights").stat().st_size == stored  # each weight written once
    leftovers = [p.name for p in graph.parent.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the losers' private folders are gone

    from reference import load_transformers, torch_greedy

    expected = torch_greedy(load_transformers(model), [5, 17, 99, 3], 12)
    assert tokens.pop() == str(expected)
