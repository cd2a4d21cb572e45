"""What a BM1684X should do with WizardCoder-15B and Qwen2.5-Coder: a forecast, not a measurement.

    python bench/tpu_forecast.py [--bmodel X.bmodel ...] [--out bench/results/tpu-forecast.md]

No chip has run here, and the cmodel simulator cannot time one. What can be known without a chip:

- **bytes per weight**, from compiled bmodels' own numbers: ``model_tool --weight`` lists every
  net's weight ranges; a ``block_cache`` net (one layer) and the ``lm_head`` net divided by the
  parameters of that layer and head (from the bmodel's manifest) give bytes per parameter for each
  quantization, alignment and scales included. The bmodels are the ones given with ``--bmodel``,
  else the largest of each quantization in the test cache (SmolLM2-135M when it was compiled there).
  A 15B or 1.5B bmodel cannot be compiled on this machine (hours, ~100 GB of disk): their bytes
  are these measured bytes per parameter times their configs' parameter counts, as the report says.
- **how weights split over chips**: a tiny 2-device bmodel's per-device nets (``model_tool --weight``).
- the chip's public figures: DDR bandwidth 64 GB/s (tpu-mlir 1.30's profile plots GDMA bandwidth
  against 64 GB/s: ``profile_helper/bmprofile_generator.py``), 16 TFLOPS f16 (W4F16/W8F16 compute
  in f16 after dequantizing the weights), 32 TOPS int8 (only W8A8 models use it; none here).

Decode (one token): every layer's weights and the lm_head's are read once from DDR, and the KV
cache of the context: tokens/s ≤ bandwidth / bytes. Prefill of P rows: ≥ max(FLOPs / 16 TFLOPS,
weight bytes / bandwidth) per block call. These are bounds: the report puts Sophgo's published
figures beside them and the ratio, which is how far a real kernel schedule is from the bound.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from wizardcoder_tpu.inference.model.architectures import architecture
from wizardcoder_tpu.inference.model.config import ModelConfig
from wizardcoder_tpu.inference.paths import cache_dir

ROOT = Path(__file__).resolve().parents[1]

DDR_BYTES_PER_S = 64e9
F16_FLOPS = 16e12
INT8_OPS = 32e12
KV_BYTES = 4  # the pieces take past_k/past_v as float32 (docs/tpu-pieces.md)
BOARD_GIB = (12, 16)  # SE7/SM7 and PCIe cards: 12 or 16 GB of DDR, some of it the system's
NOMINAL = {"f16": 2.0, "int8": 1.0 + 2 / 64, "int4": 0.5 + 4 / 64}  # only when no bmodel measured it
MIN_LAYER_PARAMS = 1_000_000  # below this, 4 KiB alignment per tensor decides a layer's bytes
# A measurement of an earlier session whose bmodel is no longer on disk (docs/tpu-tools.md): one
# layer at WizardCoder-15B's dimensions compiled in int4, 214 MB (block, block_cache and
# block_chunk combined keep the weights once) for its 379,128,064 parameters.
RECORDED = {"int4": (214e6 / 379_128_064, "one WizardCoder-15B-sized layer compiled here in int4: 214 MB "
                                          "(docs/tpu-tools.md; its bmodel is no longer on disk)")}

# The configs, as their Hugging Face config.json files give them.
MODELS = {
    "WizardCoder-15B": ModelConfig(arch="gpt_bigcode", vocab_size=49152, hidden_size=6144, num_layers=40,
                                   num_heads=48, num_kv_heads=1, intermediate_size=24576, max_positions=8192,
                                   norm_eps=1e-5),
    "Qwen2.5-Coder-0.5B": ModelConfig(arch="qwen2", vocab_size=151936, hidden_size=896, num_layers=24,
                                      num_heads=14, num_kv_heads=2, intermediate_size=4864, max_positions=32768,
                                      norm_eps=1e-6, rope_theta=1e6, tie_embeddings=True),
    "Qwen2.5-Coder-1.5B": ModelConfig(arch="qwen2", vocab_size=151936, hidden_size=1536, num_layers=28,
                                      num_heads=12, num_kv_heads=2, intermediate_size=8960, max_positions=32768,
                                      norm_eps=1e-6, rope_theta=1e6, tie_embeddings=True),
}
ROWS = (("WizardCoder-15B", "int4", 512), ("WizardCoder-15B", "int8", 512),
        ("Qwen2.5-Coder-0.5B", "int4", 512), ("Qwen2.5-Coder-1.5B", "int4", 512))
DEVICES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Published:
    what: str
    model: str
    quantize: str
    seq_len: int
    first_token_s: float
    tokens_per_s: float
    source: str


PUBLISHED = (
    Published("WizardCoder-15B int4, one chip", "WizardCoder-15B", "int4", 512, 1.658, 4.75,
              "Sophgo's WizardCoder-15B demo for the BM1684X (as issue 16 quotes it)"),
    Published("Qwen2.5-1.5B int4, seq 512", "Qwen2.5-Coder-1.5B", "int4", 512, 0.283, 14.7,
              "Sophgo LLM-TPU's Qwen2.5 table (Qwen2.5-1.5B: the Coder's shapes; as issue 16 quotes it)"),
)


# --- parameters from the one model definition -------------------------------------------------------

def layer_params(c: ModelConfig) -> tuple[int, int]:
    """(matrix parameters, vector parameters) of layer 0, from the architecture's weight shapes."""
    matrices = vectors = 0
    for name, shape in architecture(c).weight_shapes(c).items():
        if name.startswith("layers.0."):
            n = 1
            for d in shape:
                n *= d
            matrices, vectors = (matrices + n, vectors) if len(shape) == 2 else (matrices, vectors + n)
    return matrices, vectors


def head_params(c: ModelConfig) -> int:
    return c.vocab_size * c.hidden_size


def matmul_flops(c: ModelConfig, rows: int, context: int) -> float:
    """FLOPs of one pass of ``rows`` rows through every layer against ``context`` positions (the
    static blocks compute the whole masked score matrix): 2 per weight and row, plus QKᵀ and AV."""
    matrices, _ = layer_params(c)
    attention = 2 * 2 * rows * context * c.num_heads * c.head_dim
    return c.num_layers * (2 * rows * matrices + attention)


# --- bytes per weight, from the bmodels' own numbers ---------------------------------------------------

def _tool(tc, *args: str) -> str:
    done = subprocess.run([str(tc.script("model_tool")), *args], env=tc.env(), capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"model_tool {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def net_weights(weight_listing: str) -> dict[str, list[int]]:
    """``model_tool --weight`` → {net: the byte size of each of its weight ranges}."""
    nets: dict[str, list[int]] = {}
    current = None
    for line in weight_listing.splitlines():
        if found := re.match(r'net \d+ : "(\w+)"', line):
            current = found.group(1)
            nets[current] = []
        elif current and (found := re.search(r"\[0x([0-9a-f]+), 0x([0-9a-f]+)\)", line)):
            nets[current].append(int(found.group(2), 16) - int(found.group(1), 16))
    return nets


@dataclass
class Measured:
    quantize: str
    bmodel: Path
    model: str
    layer_bytes: int
    layer_params: int
    head_bytes: int
    head_params: int
    file_bytes: int

    @property
    def layer_per_param(self) -> float:
        return self.layer_bytes / self.layer_params

    @property
    def head_per_param(self) -> float:
        return self.head_bytes / self.head_params


def measure(bmodel: Path, tc) -> Measured:
    manifest = json.loads((bmodel.parent / "manifest.json").read_text())
    c = ModelConfig.from_dict(manifest["config"])
    nets = net_weights(_tool(tc, "--weight", str(bmodel)))
    matrices, vectors = layer_params(c)
    return Measured(manifest["compiled"]["quantize"], bmodel, Path(manifest["source"]["path"]).name,
                    sum(nets["block_cache_0"]), matrices + vectors, sum(nets["lm_head"]), head_params(c),
                    bmodel.stat().st_size)


def cached_bmodels() -> list[Path]:
    return sorted(p for p in (cache_dir() / "test-bmodels").glob("*/bmodel-*-1dev/*.bmodel"))


def best_per_quantization(bmodels: list[Path], tc) -> dict[str, Measured]:
    """The bmodel with the most parameters per layer for each quantization (alignment to 4 KiB
    per tensor weighs least there)."""
    best: dict[str, Measured] = {}
    for path in bmodels:
        m = measure(path, tc)
        if m.layer_params < MIN_LAYER_PARAMS:
            continue
        if m.quantize not in best or m.layer_params > best[m.quantize].layer_params:
            best[m.quantize] = m
    return best


def device_split(tc) -> tuple[Path, float] | None:
    """Device 0's share of a layer's largest weight (the MLP's) in a 2-device bmodel
    (``block_cache_0_0`` against the 1-device ``block_cache_0`` of the same export), when the test
    cache holds both. The largest tensor, not the sum: on a tiny model 4 KiB alignment pads every
    small tensor (biases, norms) to the same size on each device."""
    for two in sorted((cache_dir() / "test-bmodels").glob("*/bmodel-f16-2dev/*.bmodel")):
        ones = list(two.parent.parent.glob("bmodel-f16-1dev/*.bmodel"))
        if ones:
            split = net_weights(_tool(tc, "--weight", str(two)))
            single = net_weights(_tool(tc, "--weight", str(ones[0])))
            return two, max(split["block_cache_0_0"]) / max(single["block_cache_0"])
    return None


# --- the forecast ----------------------------------------------------------------------------------

@dataclass
class Forecast:
    model: str
    quantize: str
    seq_len: int
    devices: int
    weight_bytes: float  # read per decoded token, per device
    kv_bytes: float
    resident_bytes: float  # the whole bmodel's weights (embeddings included), all devices
    tokens_per_s: float
    prefill_s: float  # the seq_len-row block
    prefill_64_s: float  # a 64-row chunk (a keystroke's new text)


def forecast(name: str, quantize: str, seq_len: int, devices: int, per_param: tuple[float, float]) -> Forecast:
    c = MODELS[name]
    layer_per_param, head_per_param = per_param
    matrices, vectors = layer_params(c)
    layer = (matrices + vectors) * layer_per_param
    head = head_params(c) * head_per_param
    per_device = 1.0 / devices  # an even split: see the report on what our 2-device bmodel does
    weights = (c.num_layers * layer + head) * per_device
    kv = 2 * c.num_layers * seq_len * c.num_kv_heads * c.head_dim * KV_BYTES * per_device  # a full context
    # The f16 embedding tables (embed and embed_cache share them), read one row a token.
    tables = c.vocab_size * c.hidden_size * 2 + (c.max_positions * c.hidden_size * 2 if c.arch == "gpt_bigcode" else 0)
    resident = c.num_layers * layer + head + tables

    def prefill(rows: int) -> float:
        compute = matmul_flops(c, rows, seq_len) * per_device / F16_FLOPS
        return max(compute, weights / DDR_BYTES_PER_S) + 2 * c.hidden_size * c.vocab_size * per_device / F16_FLOPS

    return Forecast(name, quantize, seq_len, devices, weights, kv, resident, DDR_BYTES_PER_S / (weights + kv),
                    prefill(seq_len), prefill(64))


def report(measured: dict[str, Measured], split: tuple[Path, float] | None) -> str:
    share = split[1] if split else float('nan')
    lines = [
        "# BM1684X forecast: WizardCoder-15B and Qwen2.5-Coder (bounds, not measurements)",
        "",
        f"`python bench/tpu_forecast.py` on {dt.date.today()}. **No BM1684X has run any of this**: every",
        "speed below is a bound computed from the chip's public figures and the bytes our bmodels hold.",
        "",
        "## Inputs",
        "",
        f"- DDR bandwidth {DDR_BYTES_PER_S / 1e9:.0f} GB/s (tpu-mlir 1.30's profiler draws GDMA bandwidth against",
        "  64 GB/s); 16 TFLOPS f16 (W4F16 and W8F16 dequantize to f16 and compute there); 32 TOPS int8",
        "  applies only to W8A8 models, which this project does not build.",
        "- Bytes per weight, measured on compiled bmodels (`model_tool --weight`: a layer's `block_cache_0`",
        "  net and the `lm_head` net over their parameters; scales, zero points and 4 KiB alignment included):",
        "",
        "| quantization | measured on | layer: bytes / params | bytes per param | lm_head: bytes per param | bmodel file |",
        "|---|---|---|---|---|---|",
    ]
    per_param: dict[str, tuple[float, float]] = {}
    for q in ("f16", "int8", "int4"):
        m = measured.get(q)
        if m:
            per_param[q] = (m.layer_per_param, m.head_per_param)
            lines.append(f"| {q} | `{m.bmodel.parent.parent.name}/{m.bmodel.name}` ({m.model}) | "
                         f"{m.layer_bytes:,} / {m.layer_params:,} | {m.layer_per_param:.4f} | {m.head_per_param:.4f} | "
                         f"{m.file_bytes / 2**20:.1f} MiB |")
        elif q in RECORDED:
            value, what = RECORDED[q]
            per_param[q] = (value, value)
            lines.append(f"| {q} | {what} | | {value:.4f} | (the same) | |")
        else:
            per_param[q] = (NOMINAL[q], NOMINAL[q])
            lines.append(f"| {q} | **no bmodel of ≥ 1 M parameters a layer: nominal {NOMINAL[q]:.4f} (1 byte + an f16 "
                         f"scale per 64), computed, not measured** | | | | |")
    lines += [
        "",
        "- Weight bytes of WizardCoder-15B and Qwen2.5-Coder-0.5B/1.5B are **computed** (their configs' parameter",
        "  counts × the measured bytes per parameter): their bmodels cannot be compiled on this 2-core machine.",
        f"  Tiny test bmodels (under {MIN_LAYER_PARAMS:,} parameters a layer) are not used: 4 KiB alignment per",
        "  tensor decides their size.",
    ]
    if split:
        lines.append(f"- Multi-chip rows assume the weights split evenly over the chips, as tensor parallelism does. "
                     f"**Our own 2-device bmodel does not do that yet**: in `{split[0].parent.parent.name}` (F16, "
                     f"`model_tool --weight`) each device's `block_cache_0` holds {share:.0%} of the 1-device net's "
                     "largest matrix, a full copy: tpu-mlir replicated these blocks instead of splitting them, so "
                     "as compiled today more chips would not read fewer bytes per token.")
    lines += [
        f"- KV cache read per token: a full context of float32 keys and values ({KV_BYTES} bytes each), every layer.",
        "- Multi-chip rows leave out the two all-reduces per layer between the chips (PCIe or the card's",
        "  links: latency the bound does not see), so they are the loosest bounds here.",
        "",
        "## Forecast",
        "",
        "| model | quant | chips | weights read per token (per chip) | resident weights | decode bound (tokens/s) | "
        "prefill bound, full block (s) | prefill bound, 64-row chunk (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    results = {}
    for name, q, seq in ROWS:
        for n in DEVICES:
            f = forecast(name, q, seq, n, per_param[q])
            results[(name, q, n)] = f
            fits = "" if n > 1 else (" (over 12 GB)" if f.resident_bytes > BOARD_GIB[0] * 2**30 else "")
            lines.append(f"| {name} seq {seq} | {q} | {n} | {f.weight_bytes / 1e9:.2f} GB | "
                         f"{f.resident_bytes / 1e9:.2f} GB{fits} | {f.tokens_per_s:.1f} | {f.prefill_s:.3f} | "
                         f"{f.prefill_64_s:.3f} |")
    lines += [
        "",
        "## Beside Sophgo's published figures (one chip)",
        "",
        "| published | first token (s) | tokens/s | our bound: prefill of the block (s) | decode (tokens/s) | "
        "published / bound: first token | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in PUBLISHED:
        f = results[(p.model, p.quantize, 1)]
        lines.append(f"| {p.what} ({p.source}) | {p.first_token_s:.3f} | {p.tokens_per_s:.2f} | {f.prefill_s:.3f} | "
                     f"{f.tokens_per_s:.1f} | {p.first_token_s / f.prefill_s:.2f}× slower | "
                     f"{p.tokens_per_s / f.tokens_per_s:.0%} of it |")
    wc = results[("WizardCoder-15B", "int4", 1)]
    q15 = results[("Qwen2.5-Coder-1.5B", "int4", 1)]
    q05 = results[("Qwen2.5-Coder-0.5B", "int4", 1)]
    wc_eff = PUBLISHED[0].tokens_per_s / wc.tokens_per_s
    q_eff = PUBLISHED[1].tokens_per_s / q15.tokens_per_s
    lines += [
        "",
        "## Reading it",
        "",
        f"- WizardCoder-15B int4 reaches {wc_eff:.0%} of its weight-read bound in Sophgo's demo: a big model",
        "  is bandwidth-bound, and the bound is a fair forecast once scaled by that efficiency.",
        f"- Qwen2.5-1.5B reaches only {q_eff:.0%} of its bound: at 1.5B a token's weight reads take",
        f"  {q15.weight_bytes / DDR_BYTES_PER_S * 1e3:.0f} ms at 64 GB/s, so the published "
        f"{1e3 / PUBLISHED[1].tokens_per_s:.0f} ms a token is mostly",
        "  something else: most likely the fixed cost per kernel launch over 28 layers and the demo's host",
        "  round trips (not measured here: the simulator cannot time them). For a small model the",
        "  published figure, not the bound, is the forecast.",
        f"- A keystroke's prefill: a 64-row chunk bounds at {q15.prefill_64_s * 1e3:.0f} ms on Qwen2.5-Coder-1.5B,",
        f"  {q05.prefill_64_s * 1e3:.0f} ms on 0.5B and {wc.prefill_64_s * 1e3:.0f} ms on WizardCoder-15B (one chip; the 15B's",
        f"  is its {wc.weight_bytes / 1e9:.1f} GB of weight reads: any call costs at least that), against "
        f"{PUBLISHED[0].first_token_s:.2f} s published for the 15B's full block.",
        "- WizardCoder-15B int8 needs about "
        f"{results[('WizardCoder-15B', 'int8', 1)].resident_bytes / 1e9:.0f} GB: more than a 12 GB board: two chips, once "
        "a multi-device bmodel splits the weights (ours replicates them today, above).",
        "",
        "**What inline completion on a BM1684X should use**: Qwen2.5-Coder-1.5B int4 (or 0.5B) for the",
        f"keystroke path (published {PUBLISHED[1].tokens_per_s} tokens/s: a 16-token line in about a second, after a",
        "chunk prefill of tens of ms), and WizardCoder-15B int4 for explain and long blocks (published",
        f"{PUBLISHED[0].tokens_per_s} tokens/s: a 16-token line takes over 3 s, too slow per keystroke). "
        "docs/tpu-tools.md gives the configuration.",
        "",
        "The effective speed with speculative verification (accepted draft tokens per verify call, issue 16",
        "item 5) is not in this report yet: the TPU backend's verify call (`Engine.verify`) and `bench/tpu_cmodel.py`,",
        "which counts accepted drafts per verify call on the simulator, are built; a real model's counts are not run yet.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bmodel", nargs="*", type=Path, help="bmodels to measure (default: the test cache's)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tpu-forecast.md")
    args = parser.parse_args(argv)
    from wizardcoder_tpu.inference.tpu.toolchain import ensure_toolchain

    tc = ensure_toolchain()
    measured = best_per_quantization(args.bmodel or cached_bmodels(), tc)
    text = report(measured, device_split(tc))
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
