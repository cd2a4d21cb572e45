"""What each generated token costs the TPU engine, plain and speculative, on the cmodel simulator.

    python bench/tpu_cmodel.py --model DIR [--new-tokens 16] [--keys 12] [--out bench/results/tpu-cmodel.md]
    python bench/tpu_cmodel.py --tiny qwen2      # the tests' trained tiny Qwen2, int4, one token a byte

The simulator says nothing about a chip's speed, so this counts instead of timing, from the C++
engine's own counters (``_bmrt.EngineStats``): network launches, bytes copied host → device,
device → host and device → device, positions run through the block nets (padding included), and
for speculation (prompt lookup, ``--speculate``) the drafted tokens, the accepted ones and the
verify calls. ``bench/tpu_forecast.py`` bounds what one call costs on a BM1684X; these counts
say how many calls, rows and bytes a token takes.

Workloads, from this repository's own code:

- file completions: the last ``--prompt-tokens`` tokens before each of ``bench/engine.py``'s
  ``REPO_CUTS`` (a method beside its siblings, a settings table, a norm like the one above it),
  ``--new-tokens`` greedy tokens each, from an empty cache;
- a typing session: ``--keys`` characters of ``lsp/requests.py`` typed one at a time after a cut,
  each key a request for ``--typing-tokens`` tokens over the text from a fixed start to the
  cursor (the engine reuses the cached prefix, as in the server).

Each request is split where its first token comes back (``on_text``'s first call): the prompt's
part (prefill or chunk, and the first head) and the decode part, whose counts are divided by the
tokens it produced. Plain and speculative runs must produce the same tokens (checked).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from engine import REPO_CUTS  # noqa: E402  (bench/engine.py: the cuts where code repeats)

COUNTERS = ("launches", "bytes_to_device", "bytes_from_device", "bytes_on_device", "block_rows", "prefills",
            "chunks", "decodes", "verifies")
TYPING_FILE, TYPING_CUT = "lsp/requests.py", "    def changed(self, uri: str"


def snapshot(backend) -> dict[str, int]:
    stats = backend.stats
    return {name: getattr(stats, name) for name in COUNTERS}


def minus(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a[k] - b[k] for k in a}


@dataclass
class Request:
    workload: str
    prompt_tokens: int
    reused: int
    tokens: list[int]
    prompt_part: dict[str, int]  # to the first token
    decode_part: dict[str, int]  # the tokens after it
    drafted: int
    accepted: int


@dataclass
class Run:
    speculate: int
    requests: list[Request] = field(default_factory=list)


def request(engine, workload: str, ids: list[int], new_tokens: int, speculate: int) -> Request:
    from wizardcoder_tpu.inference.engine import GenerationParams

    backend = engine.backend
    before = snapshot(backend)
    first: list[dict[str, int]] = []

    def on_text(text: str) -> bool:
        if not first:
            first.append(snapshot(backend))
        return True

    result = engine.generate(ids, GenerationParams(max_new_tokens=new_tokens, speculate=speculate), on_text=on_text)
    after = snapshot(backend)
    split = first[0] if first else after
    return Request(workload, len(ids), result.reused_tokens, result.token_ids, minus(split, before), minus(after, split),
                   result.drafted_tokens, result.accepted_draft_tokens)


def file_prompts(tokenizer, tokens: int) -> dict[str, list[int]]:
    prompts = {}
    for name, cut in REPO_CUTS:
        text = (ROOT / name).read_text()
        prompts[name] = tokenizer.encode(text[: text.index(cut) + len(cut)])[-tokens:]
    return prompts


def typing_prompts(tokenizer, keys: int, budget: int) -> list[list[int]]:
    """One prompt per key typed after the cut in ``TYPING_FILE``: the text from a fixed start (as
    far back as ``budget`` tokens allow at the last key) to the cursor."""
    text = (ROOT / TYPING_FILE).read_text()
    cursor = text.index(TYPING_CUT) + len(TYPING_CUT)
    final = text[: cursor + keys]
    start = len(final)
    while start > 0 and len(tokenizer.encode(final[start - 1:])) <= budget:
        start -= 1
    return [tokenizer.encode(text[start: cursor + k + 1]) for k in range(keys)]


def run(engine, speculate: int, files: dict[str, list[int]], typing: list[list[int]], new_tokens: int,
        typing_tokens: int, say: Callable[[str], None]) -> Run:
    out = Run(speculate)
    for name, ids in files.items():
        engine.reset()  # a file completion starts cold
        out.requests.append(request(engine, f"file {name}", ids, new_tokens, speculate))
        say(f"speculate {speculate}: {name}: {len(out.requests[-1].tokens)} tokens")
    engine.reset()
    for k, ids in enumerate(typing):
        out.requests.append(request(engine, "typing", ids, typing_tokens, speculate))
        say(f"speculate {speculate}: key {k + 1}/{len(typing)}: {len(out.requests[-1].tokens)} tokens, "
            f"{out.requests[-1].reused} of {len(ids)} prompt tokens reused")
    return out


def total(requests: list[Request], part: str) -> dict[str, int]:
    sums = {k: 0 for k in COUNTERS}
    for r in requests:
        for k, v in getattr(r, part).items():
            sums[k] += v
    return sums


def table(runs: list[Run]) -> list[str]:
    lines = ["| workload | speculate | requests | tokens after the first | launches / token | bytes host→device / token "
             "| bytes device→host / token | bytes device→device / token | block rows / token | verify calls "
             "| drafted | accepted | accepted / verify call |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for workload in ("file", "typing"):
        for r in runs:
            chosen = [q for q in r.requests if q.workload.startswith(workload)]
            if not chosen:
                continue
            decoded = sum(max(0, len(q.tokens) - 1) for q in chosen)
            d = total(chosen, "decode_part")
            per = (lambda k: f"{d[k] / decoded:,.1f}") if decoded else (lambda k: "–")
            drafted, accepted = sum(q.drafted for q in chosen), sum(q.accepted for q in chosen)
            verifies = d["verifies"]
            lines.append(f"| {workload} | {r.speculate} | {len(chosen)} | {decoded} | {per('launches')} | "
                         f"{per('bytes_to_device')} | {per('bytes_from_device')} | {per('bytes_on_device')} | "
                         f"{per('block_rows')} | {verifies} | {drafted} | {accepted} | "
                         f"{accepted / verifies if verifies else 0:.2f} |")
    return lines


def prompt_table(runs: list[Run]) -> list[str]:
    lines = ["| workload | speculate | requests | prompt tokens fed (of all) | launches | bytes host→device "
             "| block rows | prefill / chunk / decode calls |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for workload in ("file", "typing"):
        for r in runs:
            chosen = [q for q in r.requests if q.workload.startswith(workload)]
            if not chosen:
                continue
            p = total(chosen, "prompt_part")
            fed = sum(q.prompt_tokens - q.reused for q in chosen)
            lines.append(f"| {workload} | {r.speculate} | {len(chosen)} | {fed} ({sum(q.prompt_tokens for q in chosen)}) "
                         f"| {p['launches']} | {p['bytes_to_device']:,} | {p['block_rows']} | "
                         f"{p['prefills']} / {p['chunks']} / {p['decodes']} |")
    return lines


def report(runs: list[Run], described: str, args: argparse.Namespace, same: bool, facts: dict) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = [f"# The TPU engine on the cmodel simulator: what a token costs ({now})", "",
            f"Model: {described}; N = {facts['seq_len']}, chunk sets of {facts['chunk_rows']} rows, "
            f"{facts['num_layers']} layers. Machine: {platform.machine()}, {os.cpu_count()} CPUs; tpu-mlir's BM1684X "
            "cmodel is the device. Counts, not times.", "",
            f"Run as `python bench/tpu_cmodel.py {' '.join(sys.argv[1:])}`. Plain and speculative decoding "
            f"produced {'the same tokens on every request' if same else 'DIFFERENT tokens (a bug)'}.", "",
            "## Per generated token (the tokens after the first of each request)", "", *table(runs), "",
            "## The prompt's part (up to the first token, whatever the mode)", "", *prompt_table(runs), ""]
    return "\n".join(text)


def tiny_engine(kind: str):
    """The tests' trained tiny ``kind`` at int4 (``tests/tpu_models.py``, compiled on first use)
    with a byte tokenizer (the model was trained one token a byte)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from byte_vocab import byte_tokenizer
    from tpu_models import tiny_bmodel

    from wizardcoder_tpu.inference.backends.tpu import TPUBackend
    from wizardcoder_tpu.inference.engine import Engine

    bmodel = tiny_bmodel(kind, "int4", trained=True)
    return Engine(TPUBackend(bmodel, devices=[0]), byte_tokenizer()), f"the tests' trained tiny {kind}, int4 (`{bmodel.name}`)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a compiled model directory (.bmodel + manifest.json + tokenizer.json)")
    source.add_argument("--tiny", choices=("qwen2", "gpt_bigcode_mq"), help="the tests' trained tiny model, int4")
    parser.add_argument("--speculate", type=int, default=8, help="draft tokens per verify call at most (default 8)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens per file completion (default 16)")
    parser.add_argument("--prompt-tokens", type=int, default=0,
                        help="prompt tokens per file completion (default: what the context leaves)")
    parser.add_argument("--keys", type=int, default=12, help="keys of the typing session (default 12; 0: none)")
    parser.add_argument("--typing-tokens", type=int, default=8, help="tokens per keystroke's request (default 8)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tpu-cmodel.md")
    args = parser.parse_args(argv)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731

    if args.tiny:
        engine, described = tiny_engine(args.tiny)
    else:
        from wizardcoder_tpu.inference.backends.tpu import load_tpu_engine

        engine = load_tpu_engine(args.model)
        described = f"`{engine.backend.path.name}`"
    core = engine.backend._engine
    facts = {"seq_len": core.seq_len, "chunk_rows": core.chunk_rows, "num_layers": core.num_layers}
    room = core.seq_len - max(args.new_tokens, args.typing_tokens) - 1
    prompt_tokens = min(args.prompt_tokens or room, room)
    files = file_prompts(engine.tokenizer, prompt_tokens)
    typing = typing_prompts(engine.tokenizer, args.keys, core.seq_len - args.typing_tokens - 1) if args.keys else []
    runs = [run(engine, k, files, typing, args.new_tokens, args.typing_tokens, say) for k in (0, args.speculate)]
    same = all(a.tokens == b.tokens for a, b in zip(runs[0].requests, runs[1].requests))
    engine.close()
    text = report(runs, described, args, same, facts)
    args.out.write_text(text)
    print(text)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
