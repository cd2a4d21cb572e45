"""What the remote backend costs: llama.cpp in this process against the same llama.cpp behind
llama-cpp-python's OpenAI-compatible server, reached through ``RemoteEngine`` on loopback, with
our own CPU engine beside them, on the same model and prompts.

    python bench/remote_overhead.py [--model smollm2-135m] [--repeats 5] [--tokens 16] [--out bench/results/remote-overhead.md]

The protocol's overhead is the remote row against the in-process llama.cpp row (the same engine,
with HTTP, JSON, server-sent events and the server's own Python between them); our engine's row
says where the local default stands. Each round takes the next prompt of ``PREFIXES`` (built by
``build_prompt`` as the language server builds it; rotating them leaves each engine's prefix
reuse little to reuse, the same for all three) and times the first piece of text (prefill
included) and the whole completion of ``--tokens`` greedy tokens. Rounds interleave the engines
so that a burst of load on the shared machine hits all of them; the table gives medians and
min–max. A last row times our client alone: a completion of ``--tokens`` pieces from
``tests/fake_inference_server.py``, which answers at once (connection, request, server-sent
events, JSON, the watchdog thread), the part of the overhead that this project's code owns.
Needs the llama-cpp-python wheel (``bench/llama_cpp_wheel.py --install``) and its
server's dependencies (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from wizardcoder_tpu.inference.engine import GenerationParams
from wizardcoder_tpu.inference.loader import load_engine, resolve_model
from wizardcoder_tpu.inference.prompt import build_prompt
from wizardcoder_tpu.inference.remote import RemoteConfig

PREFIXES = [
    "import os\n\ndef list_files(path):\n    ",
    "def is_prime(n):\n    if n < 2:\n        return False\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "def fibonacci(n):\n",
    "# sum of a list\ndef total(xs):\n",
]


def start_server(model: Path, port: int, threads: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                                "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("llama_cpp.server did not start")
            time.sleep(0.2)


def client_alone(model: Path, tokens: int, rounds: int = 50) -> list[tuple[float, float]]:
    """(first piece ms, whole ms) of ``rounds`` completions from the fake server, which answers at once."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fake_inference_server import FakeInferenceServer

    fake = FakeInferenceServer()
    try:
        fake.behaviour, fake.many_pieces = "many", tokens
        engine = load_engine(str(model), "remote", remote=RemoteConfig(fake.url))
        prompt = build_prompt(PREFIXES[0], "", engine.tokenizer, "auto", 1024)
        measured = []
        for _ in range(rounds):
            started = time.perf_counter()
            result = engine.generate(prompt.ids, GenerationParams(max_new_tokens=tokens))
            measured.append((result.prefill_ms, (time.perf_counter() - started) * 1e3))
        return measured
    finally:
        fake.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--port", type=int, default=18733)
    parser.add_argument("--out", type=Path, default=Path("bench/results/remote-overhead.md"))
    args = parser.parse_args()

    import llama_cpp

    path = resolve_model(args.model)
    server = start_server(path, args.port, args.threads)
    try:
        remote = load_engine(str(path), "remote", remote=RemoteConfig(f"http://127.0.0.1:{args.port}", timeout_s=120))
        ours = load_engine(str(path), "cpu", threads=args.threads)
        llm = llama_cpp.Llama(str(path), n_ctx=2048, n_threads=args.threads, verbose=False)

        def run_llama(prompt) -> tuple[float, float]:
            started = time.perf_counter()
            first = None
            for _ in llm.create_completion(prompt.text, max_tokens=args.tokens, temperature=0, repeat_penalty=1.0,
                                           stream=True):
                first = first or time.perf_counter()
            return (first - started) * 1e3, (time.perf_counter() - started) * 1e3

        def run_engine(engine, prompt) -> tuple[float, float]:
            started = time.perf_counter()
            result = engine.generate(prompt.ids, GenerationParams(max_new_tokens=args.tokens))
            return result.prefill_ms, (time.perf_counter() - started) * 1e3

        engines = {"llama.cpp in process": run_llama,
                   "llama.cpp via llama-cpp-python's server (RemoteEngine, openai protocol, loopback)":
                       lambda p: run_engine(remote, p),
                   "ours (CPU backend, auto weights)": lambda p: run_engine(ours, p)}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
        for round_ in range(args.repeats * len(PREFIXES) + 1):
            prompt = build_prompt(PREFIXES[round_ % len(PREFIXES)], "", remote.tokenizer, "auto", 1024)
            for name, run in engines.items():
                measured = run(prompt)
                if round_:  # the first round warms every engine up
                    times[name].append(measured)
    finally:
        server.terminate()
        server.wait(10)

    alone = "our client alone (RemoteEngine against a server that answers at once)"
    times[alone] = client_alone(path, args.tokens)
    base = statistics.median(t for _, t in times["llama.cpp in process"])
    load = os.getloadavg()
    lines = [f"# Remote backend overhead ({dt.date.today()}, {platform.node()}, {args.model}, {args.threads} thread(s), "
             f"{args.tokens} new tokens, {len(PREFIXES)} prompts × {args.repeats} rounds)", "",
             f"Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs.", "",
             "| engine | first piece ms (median, min–max) | whole completion ms (median, min–max) | vs in-process llama.cpp |",
             "|---|---|---|---|"]
    for name, measured in times.items():
        first, whole = [m[0] for m in measured], [m[1] for m in measured]
        lines.append(f"| {name} | {statistics.median(first):.1f} ({min(first):.1f}–{max(first):.1f}) | "
                     f"{statistics.median(whole):.1f} ({min(whole):.1f}–{max(whole):.1f}) | "
                     f"{'—' if name == alone else f'{statistics.median(whole) - base:+.0f} ms'} |")
    lines += ["", f"Command: `python bench/remote_overhead.py --repeats {args.repeats} --tokens {args.tokens} "
                  f"--threads {args.threads}`", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
