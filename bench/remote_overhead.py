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
min–max. The last rows time our client alone: a completion of ``--tokens`` pieces from
``tests/fake_inference_server.py``, which answers at once (request, server-sent events, JSON,
the watchdog thread), the part of the overhead that this project's code owns; over ``http://``
and ``https://`` (TLS 1.3, a self-signed certificate made with the openssl command), each with
the connection kept alive between requests (``http_stream.Connections``) and with a server that
closes it after each answer (the client then connects a spare one in the background, ready by
the next request 5 ms later); and a new connection alone (TCP connect, TLS handshake): what
every request paid before connections were kept.
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
import tempfile
import time
import urllib.request
from collections.abc import Callable
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


def client_variants(model: Path, tokens: int, tls: tuple[str, str]) -> tuple[dict[str, Callable[[], tuple[float, float]]], Callable[[], None]]:
    """The client-alone variants, each a call that times one round (first piece ms, whole ms), and
    what closes them: a completion of ``tokens`` pieces from the fake server (which answers at
    once) with the connection kept or closed by the server after each answer, and a new
    connection alone, each over http:// and https://."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fake_inference_server import FakeInferenceServer

    from wizardcoder_tpu.inference.http_stream import Connections, Endpoint

    fakes: list[FakeInferenceServer] = []
    variants: dict[str, Callable[[], tuple[float, float]]] = {}

    def completion(engine, prompt) -> tuple[float, float]:
        started = time.perf_counter()
        result = engine.generate(prompt.ids, GenerationParams(max_new_tokens=tokens))
        return result.prefill_ms, (time.perf_counter() - started) * 1e3

    def connection(connections: Connections) -> tuple[float, float]:
        started = time.perf_counter()
        conn, _ = connections.take(fresh=True)
        elapsed = (time.perf_counter() - started) * 1e3
        conn.close()
        return elapsed, elapsed

    for scheme, certificate in (("http", None), ("https", tls)):
        for keep_alive in (True, False):
            fake = FakeInferenceServer(tls=certificate)
            fakes.append(fake)
            fake.behaviour, fake.many_pieces, fake.keep_alive = "many", tokens, keep_alive
            fake.close_idle = not keep_alive  # the model list's answer too
            engine = load_engine(str(model), "remote", remote=RemoteConfig(fake.url))
            prompt = build_prompt(PREFIXES[0], "", engine.tokenizer, "auto", 1024)
            name = (f"our client alone, {scheme}, " + ("connection kept alive" if keep_alive else
                    "the server closes it after each answer") + " (RemoteEngine, a server that answers at once)")
            variants[name] = lambda engine=engine, prompt=prompt: completion(engine, prompt)
        connections = Connections(Endpoint.parse(fakes[-1].url), 15.0)
        variants[f"a new connection alone, {scheme} (connect{', TLS handshake' if certificate else ''})"] = \
            lambda connections=connections: connection(connections)

    def close() -> None:
        for fake in fakes:
            fake.close()

    return variants, close


def self_signed_certificate(folder: Path) -> tuple[str, str]:
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


def engine_rows(path: Path, args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    """llama.cpp in process, behind llama-cpp-python's server, and ours, rounds interleaved."""
    import llama_cpp

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

        engines = {IN_PROCESS: run_llama,
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
        return times
    finally:
        server.terminate()
        server.wait(10)


def client_rows(path: Path, tokens: int, rounds: int = 60) -> dict[str, list[tuple[float, float]]]:
    """Our client alone and a new connection alone, over http:// and https://, rounds interleaved;
    5 ms between two rounds (a spare connection, where one is opened, is ready as between two
    keystrokes)."""
    with tempfile.TemporaryDirectory() as folder:
        tls = self_signed_certificate(Path(folder))
        os.environ["SSL_CERT_FILE"] = tls[0]  # this process trusts the certificate
        variants, close = client_variants(path, tokens, tls)
        try:
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
            for round_ in range(rounds + 1):
                for name, run in variants.items():
                    time.sleep(0.005)
                    measured = run()
                    if round_:  # the first round warms each up
                        times[name].append(measured)
            return times
        finally:
            close()


IN_PROCESS = "llama.cpp in process"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--port", type=int, default=18733)
    parser.add_argument("--client-only", action="store_true",
                        help="only the rows of our client and of a connection (no llama.cpp needed)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/remote-overhead.md"))
    args = parser.parse_args()

    path = resolve_model(args.model)
    times = {} if args.client_only else engine_rows(path, args)
    times.update(client_rows(path, args.tokens))
    base = statistics.median(t for _, t in times[IN_PROCESS]) if IN_PROCESS in times else None
    load = os.getloadavg()
    rounds = "" if args.client_only else f", {len(PREFIXES)} prompts × {args.repeats} rounds"
    lines = [f"# Remote backend overhead ({dt.date.today()}, {platform.node()}, {args.model}, {args.threads} thread(s), "
             f"{args.tokens} new tokens{rounds})", "",
             f"Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs.", "",
             "| engine | first piece ms (median, min–max) | whole completion ms (median, min–max) | vs in-process llama.cpp |",
             "|---|---|---|---|"]
    for name, measured in times.items():
        first, whole = [m[0] for m in measured], [m[1] for m in measured]
        versus = "—" if base is None or not name.startswith(("llama.cpp", "ours")) else \
            f"{statistics.median(whole) - base:+.0f} ms"
        lines.append(f"| {name} | {statistics.median(first):.2f} ({min(first):.2f}–{max(first):.1f}) | "
                     f"{statistics.median(whole):.2f} ({min(whole):.2f}–{max(whole):.1f}) | {versus} |")
    flags = " --client-only" if args.client_only else f" --repeats {args.repeats} --threads {args.threads}"
    lines += ["", f"Command: `python bench/remote_overhead.py{flags} --tokens {args.tokens}`", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
