"""The CPU backend's graph cache under concurrency (servers that start together on one cache) and
its size (graphs no one loads any more are removed).

Regression: onnx appends external data to an existing file, and two processes building the same
graph into one folder interleaved their weights; the graph that won then read the other's bytes
and the model produced fluent garbage. Each build now happens in a private folder renamed into
place whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import onnx

from wizardcoder_tpu.inference.backends.cpu import ensure_decoder
from wizardcoder_tpu.inference.graph_cache import evict, mark_used
from wizardcoder_tpu.inference.weights import open_checkpoint

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


def graph_folder(root: Path, name: str, size: int, used_hours_ago: float, now: float) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "decoder.weights").write_bytes(b"\0" * size)
    mark_used(folder)
    then = now - used_hours_ago * 3600
    os.utime(folder / ".used", (then, then))
    return folder


def test_a_build_removes_the_least_recently_used_graphs_beyond_the_budget(tmp_path):
    """A developer's cache had grown to 19 GB of graphs no one loaded again (old graph versions,
    weight settings tried once): each build now brings the folder back under its budget."""
    now = time.time()
    old = graph_folder(tmp_path, "old", 4000, 24 * 30, now)
    older = graph_folder(tmp_path, "older", 4000, 24 * 60, now)
    recent = graph_folder(tmp_path, "recent", 4000, 24 * 3, now)
    in_use = graph_folder(tmp_path, "in-use", 4000, 1, now)  # another server may have it open
    new = graph_folder(tmp_path, "new", 4000, 0, now)
    removed = evict(tmp_path, keep=new, budget_bytes=12_500, now=now)
    assert removed == [older, old]  # the least recently used first, and no more than needed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in-use", "new", "recent"]


def test_graphs_in_use_and_the_new_one_stay_even_over_the_budget(tmp_path):
    now = time.time()
    in_use = graph_folder(tmp_path, "in-use", 4000, 2, now)
    new = graph_folder(tmp_path, "new", 4000, 48, now)  # as old as it may be: it is the one being built
    assert evict(tmp_path, keep=new, budget_bytes=0, now=now) == []
    assert in_use.exists() and new.exists()


def test_loading_a_cached_graph_marks_it_used(tiny_model_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("WIZARDCODER_TPU_CACHE", str(tmp_path))
    checkpoint = open_checkpoint(tiny_model_factory("llama_gqa"))
    path = ensure_decoder(checkpoint)
    past = time.time() - 7 * 24 * 3600
    os.utime(path.parent / ".used", (past, past))
    assert ensure_decoder(checkpoint) == path
    assert time.time() - (path.parent / ".used").stat().st_mtime < 60


WARM_START = """
import sys
import numpy as np
from wizardcoder_tpu.inference.backends.cpu import CPUBackend
from wizardcoder_tpu.inference.weights import open_checkpoint
backend = CPUBackend(open_checkpoint({model!r}))
print(int(np.argmax(backend.forward([5, 17, 99]))) >= 0)
print("onnx" in sys.modules)
"""


def test_a_warm_start_loads_the_built_graph_without_the_graph_builder(tiny_model_factory, tmp_path):
    """A server that finds its graph built needs onnxruntime only: ``onnx`` (the builder's, a
    second or more to import) stays out of a warm start."""
    model = tiny_model_factory("qwen2")
    env = {**os.environ, "WIZARDCODER_TPU_CACHE": str(tmp_path / "cache")}
    code = WARM_START.format(model=str(model))
    cold, warm = (subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
                  for _ in range(2))
    assert cold.returncode == 0 and warm.returncode == 0, cold.stderr + warm.stderr
    assert cold.stdout.split() == ["True", "True"]  # the first start built the graph
    assert warm.stdout.split() == ["True", "False"]
