"""What onnxruntime runs for one decode step of the CPU graph: kernels per call and time by op.

Reads onnxruntime's own profiler (``SessionOptions.enable_profiling``) for a decode step after
a prompt of ``--prompt`` tokens, so that fusions (or their absence) show as node counts rather
than guesses. Usage: ``python bench/graph_profile.py [--model M] [--weights auto|int8|int4|f32]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def profile(model: str, weights: str, prompt_tokens: int, threads: int) -> dict:
    from wizardcoder_tpu.inference.backends import cpu
    from wizardcoder_tpu.inference.loader import resolve_model
    from wizardcoder_tpu.inference.weights import open_checkpoint

    ort = cpu.ort
    checkpoint = open_checkpoint(resolve_model(model))
    backend = cpu.CPUBackend(checkpoint, threads=threads, weights=weights)
    path = cpu.ensure_decoder(checkpoint, backend.options)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "profile")
    backend._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    backend._binding = backend.bind_buffers(backend._kv)
    rng = np.random.default_rng(0)
    backend.forward(rng.integers(0, checkpoint.config.vocab_size, prompt_tokens).tolist())
    for _ in range(5):
        backend.forward([int(rng.integers(0, checkpoint.config.vocab_size))])
    trace = json.loads(Path(backend._session.end_profiling()).read_text())
    runs = [e for e in trace if e.get("name") == "model_run"]
    decode = runs[1:]  # after the prompt's call
    nodes = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
             and any(r["ts"] <= e["ts"] <= r["ts"] + r["dur"] for r in decode)]
    by_op = collections.Counter()
    time_by_op = collections.Counter()
    for e in nodes:
        op = e.get("args", {}).get("op_name", "?")
        by_op[op] += 1
        time_by_op[op] += e["dur"]
    calls = len(decode)
    return {"calls": calls, "nodes_per_call": len(nodes) / calls,
            "ms_per_call": sum(r["dur"] for r in decode) / calls / 1000,
            "ops": {op: (n / calls, time_by_op[op] / calls / 1000) for op, n in by_op.most_common()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--weights", default="auto")
    parser.add_argument("--prompt", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    result = profile(args.model, args.weights, args.prompt, args.threads)
    print(f"{args.weights}: {result['nodes_per_call']:.0f} kernels per decode call, "
          f"{result['ms_per_call']:.1f} ms per call (profiled)")
    for op, (count, ms) in result["ops"].items():
        print(f"  {op:36s} {count:6.0f} {ms:8.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
