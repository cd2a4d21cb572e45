"""First token and decode speed of the CPU backend against llama.cpp and transformers, side by side.

    python bench/engine.py [--model default] [--threads 1 2] [--repeats 3] [--out bench/results/engine.md]
    python bench/engine.py --smoke        # one short round, for CI: every engine runs, nothing is judged

For each thread count, engine and prompt (about 100, 500 and 1,500 tokens of real code: this
Python's standard library, whole lines, the same token ids for every engine), one round is: an
empty cache, the prompt, the first token (ms, prefill included), then ``--decode`` greedy tokens
one at a time (tokens/s). Rounds are interleaved over the engines (engine A, B, C, then A, B, C
again …) so that a burst of load on the shared machine hits all of them; the table gives the
median and the min–max of ``--repeats`` rounds, and each engine's ratio to llama.cpp on the same
file.

Engines (each with its best settings for this machine):

- ours: ``CPUBackend`` at ``f32`` (the reference graph), ``int8``, ``int4`` and ``auto``
  (the file's own blocks), on the shipped GGUF, and on a Q4_0 copy of it;
- llama.cpp through llama-cpp-python (``bench/llama_cpp_wheel.py`` builds it without AMX), on
  the same GGUF and on the Q4_0 copy (llama.cpp has no fast x86 kernel for Q4_1: the copy keeps
  the comparison from being decided by a missing kernel);
- transformers (torch fp32, ``generate``: logits for the last position only) on the GGUF's
  dequantized weights;
- ours through the engine (``Engine.generate``) at ``auto`` with prompt-lookup speculation on
  (``--speculate``, 8) and off, the same greedy tokens: each call feeds a draft copied from
  earlier in the context and keeps what greedy decoding produces.

Prompts: the standard library's code at each size (what a model seldom copies), and, for the
speculation rows, completions of this repository's own files cut where the text goes on in the
shape of what came before (``REPO_CUTS``: a method beside its siblings, a table of settings),
where copying happens as it does when a user types.

Peak resident memory is measured per engine in a child process (load, one 500-token prompt,
``--decode`` tokens), since a process's peak never comes down.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROMPT_TOKENS = (100, 500, 1500)
WEIGHTS = ("f32", "int8", "int4", "auto")  # f32 first: the other rows' tokens are compared with its


# --- prompts ---------------------------------------------------------------------------------------

def code_prompt(tokenizer, tokens: int) -> list[int]:
    """About ``tokens`` tokens of real code, whole lines: standard-library sources."""
    import json.decoder
    import textwrap
    import tokenize

    text = "".join(inspect.getsource(m) for m in (json.decoder, textwrap, tokenize))
    ids: list[int] = []
    kept: list[str] = []
    for line in text.splitlines(keepends=True):
        kept.append(line)
        ids = tokenizer.encode("".join(kept))
        if len(ids) >= tokens:
            break
    return ids


# This repository's files, cut just after the text given (the prompt ends there): what follows
# repeats the shape of the lines before it.
REPO_CUTS = (("lsp/requests.py", "    def changed(self, uri: str"),
             ("lsp/settings.py", "    debounce_ms: int = setting("),
             ("inference/model/cpu_graph.py", "def _skip_norm("))


def repo_prompts(tokenizer, tokens: int) -> dict[str, list[int]]:
    """The last ``tokens`` tokens before each cut of ``REPO_CUTS``, by a label naming the file."""
    prompts = {}
    for name, cut in REPO_CUTS:
        text = (ROOT / name).read_text()
        ids = tokenizer.encode(text[: text.index(cut) + len(cut)])[-tokens:]
        prompts[f"{len(ids)} {name}"] = ids
    return prompts


# --- engines ---------------------------------------------------------------------------------------

@dataclass
class Engine:
    """One engine loaded at one thread count: ``first`` runs a prompt from an empty cache and
    returns the first token; ``step`` feeds one token and returns the next."""

    name: str
    file: str  # the GGUF it reads
    first: Callable[[list[int]], int]
    step: Callable[[int], int]
    generate: Callable[[list[int], int], tuple[float, float, list[int]]] | None = None  # (ms, tokens/s, tokens)
    close: Callable[[], None] = lambda: None
    drafts: list[tuple[int, int]] | None = None  # speculation's (drafted, accepted) per round


def ours(path: Path, weights: str, threads: int) -> Engine:
    from wizardcoder_tpu.inference.backends.cpu import CPUBackend
    from wizardcoder_tpu.inference.weights import open_checkpoint

    backend = CPUBackend(open_checkpoint(path), threads=threads, weights=weights)

    def first(prompt: list[int]) -> int:
        backend.truncate(0)
        return int(np.argmax(backend.forward(prompt)))

    return Engine(f"ours {weights}", path.name, first, lambda t: int(np.argmax(backend.forward([t]))),
                  close=backend.close)


def ours_speculating(path: Path, threads: int, speculate: int) -> Engine:
    """The engine's own loop (prefix cache emptied first) with ``speculate`` drafted tokens per
    call; no stop token ends it, so that every row generates the same number of tokens."""
    from wizardcoder_tpu.inference.backends.cpu import CPUBackend
    from wizardcoder_tpu.inference.engine import Engine as InferenceEngine
    from wizardcoder_tpu.inference.engine import GenerationParams
    from wizardcoder_tpu.inference.weights import open_checkpoint

    checkpoint = open_checkpoint(path)

    class NoStops:
        stop_ids = frozenset()
        decode = checkpoint.tokenizer().decode

    engine = InferenceEngine(CPUBackend(checkpoint, threads=threads, weights="auto"), NoStops())
    drafts: list[tuple[int, int]] = []  # (drafted, accepted) of each round

    def generate(prompt: list[int], new: int) -> tuple[float, float, list[int]]:
        engine.reset()
        result = engine.generate(prompt, GenerationParams(max_new_tokens=new + 1, speculate=speculate))
        drafts.append((result.drafted_tokens, result.accepted_draft_tokens))
        return result.prefill_ms, (len(result.token_ids) - 1) / (result.decode_ms / 1e3), result.token_ids

    unused = lambda *a: 0  # noqa: E731
    name = f"ours auto, speculate {speculate}" if speculate else "ours auto, engine loop"
    return Engine(name, path.name, unused, unused, generate=generate, close=engine.close, drafts=drafts)


def llama_cpp(path: Path, threads: int, context: int) -> Engine:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=context, n_batch=512, n_ubatch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False, logits_all=False)

    vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:
        # llama-cpp-python 0.3.36 keeps no scores without logits_all: read the context's last row.
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))

    def first(prompt: list[int]) -> int:
        llm.reset()
        llm.eval(prompt)
        return int(np.argmax(last_logits()))

    def step(token: int) -> int:
        llm.eval([token])
        return int(np.argmax(last_logits()))

    return Engine("llama.cpp", path.name, first, step, close=llm.close)


def transformers_engine(path: Path, threads: int) -> Engine:
    """``generate`` with a logits processor that stamps the time of each step (it runs once per
    new token, on the last position's logits only)."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    sys.path.insert(0, str(ROOT / "tests"))
    from reference import load_transformers

    torch.set_num_threads(threads)
    model = load_transformers(path)

    class Stamp(LogitsProcessor):
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    def generate(prompt: list[int], new: int) -> tuple[float, float, list[int]]:
        torch.set_num_threads(threads)
        stamp = Stamp()
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=new + 1, min_new_tokens=new + 1,
                                 do_sample=False, logits_processor=LogitsProcessorList([stamp]), pad_token_id=0)
        times = stamp.times
        return (times[0] - start) * 1000, (len(times) - 1) / (times[-1] - times[0]), out[0, len(prompt):].tolist()

    unused = lambda *a: 0  # noqa: E731
    return Engine("transformers", path.name, unused, unused, generate=generate)


def run_round(engine: Engine, prompt: list[int], new: int) -> tuple[float, float, list[int]]:
    """(first token ms, decode tokens/s, the tokens) of one round from an empty cache."""
    if engine.generate is not None:
        return engine.generate(prompt, new)
    start = time.perf_counter()
    tokens = [engine.first(prompt)]
    first_ms = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    for _ in range(new):
        tokens.append(engine.step(tokens[-1]))
    return first_ms, new / (time.perf_counter() - start), tokens


# --- the run ---------------------------------------------------------------------------------------

@dataclass
class Results:
    rows: dict[tuple[int, str, str, str], list[tuple[float, float]]] = field(default_factory=dict)
    tokens: dict[tuple[int, str, str, str], list[int]] = field(default_factory=dict)  # the first round's
    drafts: dict[tuple[int, str, str, str], list[tuple[int, int]]] = field(default_factory=dict)
    rounds: dict[int, int] = field(default_factory=dict)  # threads -> rounds completed

    def add(self, threads: int, engine: Engine, prompt: str, result: tuple[float, float, list[int]]) -> None:
        key = (threads, engine.name, engine.file, prompt)
        self.rows.setdefault(key, []).append(result[:2])
        self.tokens.setdefault(key, result[2])
        if engine.drafts:
            self.drafts.setdefault(key, []).append(engine.drafts[-1])


def engine_specs(shipped: Path, q4_0: Path | None, include_transformers: bool,
                 speculate: int = 0, weights: Sequence[str] = WEIGHTS) -> list[tuple[str, Path, str]]:
    """(kind, file, weights) in the order they run within a round; the speculating engines'
    "weights" is their number of drafted tokens."""
    specs = [("ours", shipped, w) for w in weights]
    if speculate:
        specs += [("ours-engine", shipped, str(speculate)), ("ours-engine", shipped, "0")]
    specs.append(("llama.cpp", shipped, ""))
    if q4_0 is not None:
        specs += [("ours", q4_0, "auto"), ("llama.cpp", q4_0, "")]
    if include_transformers:
        specs.append(("transformers", shipped, ""))
    return specs


def load(kind: str, path: Path, weights: str, threads: int, context: int) -> Engine:
    if kind == "ours":
        return ours(path, weights, threads)
    if kind == "ours-engine":
        return ours_speculating(path, threads, int(weights))
    if kind == "llama.cpp":
        return llama_cpp(path, threads, context)
    return transformers_engine(path, threads)


def available(kind: str) -> bool:
    if kind != "llama.cpp":
        return True
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def benchmark(shipped: Path, q4_0: Path | None, threads: Sequence[int], repeats: int, decode: int,
              prompt_tokens: Sequence[int], include_transformers: bool,
              on_round: Callable[[Results], None] = lambda r: None, speculate: int = 0,
              only_speculation: bool = False, weights: Sequence[str] = WEIGHTS) -> Results:
    """All rounds; ``on_round`` sees the results so far after each (a long run on a loaded
    machine leaves a report even when it is stopped)."""
    from wizardcoder_tpu.inference.weights import open_checkpoint

    tokenizer = open_checkpoint(shipped).tokenizer()
    prompts = {str(len(ids)): ids for ids in (code_prompt(tokenizer, n) for n in prompt_tokens)}
    if speculate:
        prompts.update(repo_prompts(tokenizer, min(prompt_tokens[len(prompt_tokens) // 2], 500)))
    context = max(len(p) for p in prompts.values()) + decode + 8
    results = Results()
    specs = [s for s in engine_specs(shipped, q4_0, include_transformers, speculate, weights) if available(s[0])
             and (not only_speculation or s[0] == "ours-engine" or s[:2] == ("llama.cpp", shipped))]
    for t in threads:
        engines = [load(kind, path, weights, t, context) for kind, path, weights in specs]
        for engine in engines:  # warm-up: first calls allocate
            run_round(engine, min(prompts.values(), key=len), 2)
            if engine.drafts:
                engine.drafts.clear()
        for r in range(repeats):
            for label, prompt in prompts.items():
                for engine in engines:
                    results.add(t, engine, label, run_round(engine, prompt, decode))
            results.rounds[t] = r + 1
            on_round(results)
            print(f"threads {t}: round {r + 1}/{repeats} done", file=sys.stderr, flush=True)
        for engine in engines:
            engine.close()
        del engines
    return results


def peak_memory(kind: str, path: Path, weights: str, threads: int, decode: int) -> float:
    """Peak RSS (MiB) of a child process that loads the engine and serves one 500-token prompt."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import engine as b; "
            f"b._memory_child({kind!r}, {str(path)!r}, {weights!r}, {threads}, {decode})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _memory_child(kind: str, path: str, weights: str, threads: int, decode: int) -> None:
    from wizardcoder_tpu.inference.weights import open_checkpoint

    prompt = code_prompt(open_checkpoint(Path(path)).tokenizer(), 500)
    engine = load(kind, Path(path), weights, threads, len(prompt) + decode + 8)
    run_round(engine, prompt, decode)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec from the parent, whose
    # peak (every engine loaded) would hide the child's.
    peak = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    print(int(peak.split()[1]) / 1024)


# --- the report ------------------------------------------------------------------------------------

def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {platform.python_version()}"]
    for name in ("onnxruntime", "numpy", "llama-cpp-python", "torch", "transformers", "gguf"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, {platform.system()} {platform.release()}"


def _stat(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def report(results: Results, load_before: tuple[float, ...], load_after: tuple[float, ...], repeats: int,
           decode: int, memory: dict[str, float]) -> str:
    la = lambda v: ", ".join(f"{x:.1f}" for x in v)  # noqa: E731
    lines = [f"# CPU engine benchmark, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC", "",
             f"Machine: {machine()}.  ",
             f"Versions: {versions()}.  ",
             f"Load average (1, 5, 15 min) before: {la(load_before)}; after: {la(load_after)}.  ",
             f"Median (min–max) of {repeats} interleaved rounds; first token = empty cache → prompt → first "
             f"token; decode = the next {decode} greedy tokens one call each. Ratios: llama.cpp's time ÷ ours for "
             "first token (above 1: we are faster), our tokens/s ÷ llama.cpp's for decode, against llama.cpp "
             "on the same file. Last column: the greedy tokens equal those of the first engine listed for that "
             "file and prompt (ours f32 for the shipped file).", ""]
    reference = {(t, f, p): rows for (t, name, f, p), rows in results.rows.items() if name == "llama.cpp"}
    first_engine: dict[tuple[int, str, int], list[int]] = {}  # the tokens of the first engine on a file
    for (t, name, f, p), tokens in results.tokens.items():
        first_engine.setdefault((t, f, p), tokens)
    for threads in sorted({k[0] for k in results.rows}):
        lines += [f"## {threads} thread{'s' if threads > 1 else ''} ({results.rounds.get(threads, 0)} of {repeats} rounds)", "",
                  "| engine | file | prompt tokens | first token ms | decode tokens/s | first token vs llama.cpp | "
                  "decode vs llama.cpp | tokens = first row's |", "|---|---|---:|---:|---:|---:|---:|---|"]
        for (t, name, file, prompt), rows in results.rows.items():
            if t != threads:
                continue
            first = [r[0] for r in rows]
            rate = [r[1] for r in rows]
            ref = reference.get((t, file, prompt))
            ratios = ["", ""]
            if ref and name != "llama.cpp":
                ratios = [f"{statistics.median(r[0] for r in ref) / statistics.median(first):.2f}×",
                          f"{statistics.median(rate) / statistics.median(r[1] for r in ref):.2f}×"]
            same = results.tokens[(t, name, file, prompt)] == first_engine[(t, file, prompt)]
            lines.append(f"| {name} | {file} | {prompt} | {_stat(first, '.0f')} | {_stat(rate, '.1f')} | "
                         f"{ratios[0]} | {ratios[1]} | {'yes' if same else 'no'} |")
        lines.append("")
        lines += speculation_table(results, threads)
    if memory:
        lines += ["## Peak resident memory (load, one 500-token prompt, decode)", "", "| engine | MiB |", "|---|---:|"]
        lines += [f"| {name} | {mib:.0f} |" for name, mib in memory.items()] + [""]
    return "\n".join(lines)


def speculation_table(results: Results, threads: int) -> list[str]:
    """Speculation on against off (the engine's loop both), per prompt: the decode speedup, the
    drafts accepted, and whether the tokens are the same."""
    on = {k: v for k, v in results.rows.items() if k[0] == threads and ", speculate " in k[1]}
    if not on:
        return []
    lines = ["Speculation (prompt lookup) against the engine's plain loop on the same prompts: decode speedup "
             "(median tokens/s ÷ median tokens/s), drafted tokens accepted (all rounds), tokens identical.", "",
             "| engine | prompt | decode tokens/s | plain loop tokens/s | speedup | drafts accepted | same tokens |",
             "|---|---|---:|---:|---:|---:|---|"]
    for (t, name, file, prompt), rows in on.items():
        plain_key = (t, "ours auto, engine loop", file, prompt)
        plain = results.rows.get(plain_key)
        rate = statistics.median(r[1] for r in rows)
        base = statistics.median(r[1] for r in plain) if plain else float("nan")
        drafted = sum(d for d, _ in results.drafts.get((t, name, file, prompt), []))
        accepted = sum(a for _, a in results.drafts.get((t, name, file, prompt), []))
        share = f"{accepted}/{drafted} ({accepted / drafted:.0%})" if drafted else "0/0"
        same = results.tokens[(t, name, file, prompt)] == results.tokens.get(plain_key)
        lines.append(f"| {name} | {prompt} | {rate:.1f} | {base:.1f} | {rate / base:.2f}× | {share} | "
                     f"{'yes' if same else 'no'} |")
    return lines + [""]


def q4_0_copy(shipped: Path) -> Path:
    """A Q4_0 copy of the shipped Q4_1 file in the cache, made once."""
    from wizardcoder_tpu.inference.paths import cache_dir
    from wizardcoder_tpu.inference.weights.gguf_requantize import requantize_gguf

    target = cache_dir() / "bench" / shipped.name.replace("Q4_1", "Q4_0")
    if target == shipped or target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    return requantize_gguf(shipped, target, {"Q4_1": "Q4_0"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="a GGUF file, or 'default'")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode", type=int, default=32, help="greedy tokens after the first")
    parser.add_argument("--prompts", type=int, nargs="+", default=list(PROMPT_TOKENS))
    parser.add_argument("--no-q4-0", action="store_true", help="skip the Q4_0 copy")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--weights", nargs="+", default=list(WEIGHTS), choices=WEIGHTS,
                        help="our engine's weight settings to run (all by default)")
    parser.add_argument("--speculate", type=int, default=8,
                        help="rows of the engine with this many drafted tokens and without (0: no such rows)")
    parser.add_argument("--only-speculation", action="store_true",
                        help="only the engine rows (speculation on and off) and llama.cpp")
    parser.add_argument("--memory", action="store_true", help="also measure peak RSS per engine (child processes)")
    parser.add_argument("--memory-only", action="store_true", help="print only the peak RSS table")
    parser.add_argument("--smoke", action="store_true", help="1 round, 1 thread, a 100-token prompt, 4 tokens")
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    args = parser.parse_args()
    if args.smoke:
        args.threads, args.repeats, args.decode, args.prompts = [1], 1, 4, [100]

    from wizardcoder_tpu.inference.loader import resolve_model

    shipped = resolve_model(args.model)
    copy = None if args.no_q4_0 or "Q4_1" not in shipped.name else q4_0_copy(shipped)
    if not available("llama.cpp"):
        print("llama-cpp-python is not installed (python bench/llama_cpp_wheel.py --install): llama.cpp skipped",
              file=sys.stderr)
    load_before = os.getloadavg()

    def write(results: Results, memory: dict[str, float] | None = None) -> str:
        text = report(results, load_before, os.getloadavg(), args.repeats, args.decode, memory or {})
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
        return text

    results = Results() if args.memory_only else benchmark(
        shipped, copy, args.threads, args.repeats, args.decode, args.prompts, not args.no_transformers,
        on_round=write, speculate=args.speculate, only_speculation=args.only_speculation, weights=args.weights)
    memory = {}
    if args.memory or args.memory_only:
        for kind, path, weights in engine_specs(shipped, copy, include_transformers=False, weights=args.weights):
            if available(kind) and weights in ("", "auto", "int4"):
                name = f"{kind} {weights}".strip() + f" ({path.name})"
                memory[name] = peak_memory(kind, path, weights, args.threads[0], args.decode)
    print(write(results, memory))
    if args.smoke:
        json.dumps({str(k): v for k, v in results.rows.items()})  # every engine produced numbers
        assert all(rows for rows in results.rows.values())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
