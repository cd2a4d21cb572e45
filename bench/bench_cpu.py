"""CPU speed of the engine against transformers on the same weights, and what prefix reuse buys.

    python bench/bench_cpu.py [--model default] [--repeats 5] [--out bench/results]

Three measurements, each against a reference taken in the same run (these machines are shared
and noisy: only the ratios travel between machines):

1. first token (prefill) and decode speed of our onnxruntime backend against transformers
   (torch, float32) for prompts of about 100 and 500 tokens cut from this repository's own
   source;
2. keystrokes: a user types one character at a time at the end of a 400-token file and each
   keystroke asks for a 16-token completion; the engine with prefix reuse against the same
   engine reset before every request (a cold prefill, what a server without reuse does);
3. the greedy tokens of both engines, compared, so that a fast wrong engine cannot pass.

The result is a markdown table with the machine and the date, printed and written to
``--out/cpu-<date>.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the transformers reference lives with the tests

from reference import load_transformers  # noqa: E402

from wizardcoder_tpu.inference.engine import GenerationParams  # noqa: E402
from wizardcoder_tpu.inference.loader import load_engine, resolve_model  # noqa: E402

DECODE_TOKENS = 32


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, load average at the end {load} (other jobs share the machine)")


def source_prompt(tokenizer, tokens: int) -> list[int]:
    """About ``tokens`` tokens of real code: this repository's engine source, whole lines."""
    text = (ROOT / "inference" / "engine.py").read_text() + (ROOT / "inference" / "prompt.py").read_text()
    ids: list[int] = []
    kept = []
    for line in text.splitlines(keepends=True):
        kept.append(line)
        ids = tokenizer.encode("".join(kept))
        if len(ids) >= tokens:
            break
    return ids


def time_ours(engine, prompt: list[int]) -> tuple[float, float, list[int]]:
    """(first-token ms, decode tokens/s, tokens) from a cold cache."""
    engine.reset()
    result = engine.generate(prompt, GenerationParams(max_new_tokens=DECODE_TOKENS + 1))
    decoded = max(len(result.token_ids) - 1, 1)
    return result.prefill_ms, decoded / (result.decode_ms / 1e3), result.token_ids


def time_transformers(model, prompt: list[int]) -> tuple[float, float, list[int]]:
    import torch

    out: list[int] = []
    with torch.no_grad():
        start = time.perf_counter()
        result = model(torch.tensor([prompt]), use_cache=True)
        out.append(int(result.logits[0, -1].argmax()))
        first = time.perf_counter()
        for _ in range(DECODE_TOKENS):
            result = model(torch.tensor([[out[-1]]]), past_key_values=result.past_key_values, use_cache=True)
            out.append(int(result.logits[0, -1].argmax()))
        end = time.perf_counter()
    return (first - start) * 1e3, DECODE_TOKENS / (end - first), out


def keystrokes(engine, base: list[int], tokenizer, reuse: bool, count: int) -> list[float]:
    """Per keystroke: ms until the first completion token (the latency a user feels)."""
    text = tokenizer.decode(base)
    typed = "    result = compute_total(values)\n"
    latencies = []
    engine.reset()
    engine.generate(tokenizer.encode(text), GenerationParams(max_new_tokens=1))  # the file as opened
    for i in range(1, count + 1):
        ids = tokenizer.encode(text + typed[:i])
        if not reuse:
            engine.reset()
        result = engine.generate(ids, GenerationParams(max_new_tokens=16, stop_strings=("\n",)))  # one line
        latencies.append(result.prefill_ms)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keystrokes", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    engine = load_engine(str(path), "cpu", threads=args.threads)
    reference = load_transformers(path)
    tok = engine.tokenizer

    rows = []
    agree = True
    for size in (100, 500):
        prompt = source_prompt(tok, size)
        ours = [time_ours(engine, prompt) for _ in range(args.repeats)]
        theirs = [time_transformers(reference, prompt) for _ in range(args.repeats)]
        ours_tokens, their_tokens = ours[0][2], theirs[0][2][: len(ours[0][2])]
        agree &= ours_tokens == their_tokens
        first_o, first_t = statistics.median(r[0] for r in ours), statistics.median(r[0] for r in theirs)
        tps_o, tps_t = statistics.median(r[1] for r in ours), statistics.median(r[1] for r in theirs)
        rows.append((f"first token, {len(prompt)}-token prompt (ms)", first_t, first_o, first_t / first_o))
        rows.append((f"decode after {len(prompt)} tokens (tokens/s)", tps_t, tps_o, tps_o / tps_t))

    base = source_prompt(tok, 400)
    cold = keystrokes(engine, base, tok, reuse=False, count=args.keystrokes)
    warm = keystrokes(engine, base, tok, reuse=True, count=args.keystrokes)
    cold_ms, warm_ms = statistics.median(cold), statistics.median(warm)

    date = dt.date.today().isoformat()
    lines = [
        f"# CPU benchmark, {date}",
        "",
        f"Machine: {machine()}; {args.threads} threads for both engines; model {path.name}; "
        f"median of {args.repeats} runs (keystrokes: {args.keystrokes}).",
        "",
        "| measurement | transformers (torch fp32) | wizardcoder-tpu cpu (onnxruntime) | speed-up |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {ref:.1f} | {ours:.1f} | {ratio:.2f}x |" for name, ref, ours, ratio in rows],
        "",
        "| keystroke latency to the first token (400-token file) | cold prefill every request | prefix reuse | speed-up |",
        "|---|---:|---:|---:|",
        f"| median ms | {cold_ms:.1f} | {warm_ms:.1f} | {cold_ms / warm_ms:.2f}x |",
        "",
        f"Greedy tokens identical to transformers: {'yes' if agree else 'NO'}.",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"cpu-{date}.md").write_text(report)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
