"""``wizardcoder-tpu export`` and ``wizardcoder-tpu compile``: argument parsing only.

The work is in ``export.py`` and ``compile.py``; errors of the inference family become one line
on stderr and exit status 1 (2 for bad usage, as argparse does).
"""

from __future__ import annotations

import argparse
import sys

from .pieces import DEFAULT_CHUNK


def add_subcommands(sub) -> None:
    export = sub.add_parser(
        "export", help="write a model as static ONNX pieces for the TPU compiler",
        description="Write MODEL (a .gguf file, a Hugging Face checkpoint directory, or a model name) as static "
                    "ONNX pieces with manifest.json and tokenizer.json: the input of `compile`. "
                    "Resumable: a rerun skips the layers already written.")
    export.add_argument("model", help="a .gguf file, a checkpoint directory (config.json + *.safetensors), "
                                      "or a name of `wizardcoder-tpu fetch --help` ('default' is the default's)")
    export.add_argument("--seq-len", type=int, required=True, help="the static context length N")
    export.add_argument("--chunk-len", type=int, default=DEFAULT_CHUNK,
                        help=f"tokens per prefix-reuse chunk K (default {DEFAULT_CHUNK})")
    export.add_argument("--prefill-chunks", type=_row_counts, default=(), metavar="R,R,…",
                        help="further chunk sizes, e.g. 64,256: the engine prefills a prompt through chunks "
                             "that cover it instead of the N-row block (default: none)")
    export.add_argument("--out", required=True, help="the export directory")
    export.set_defaults(func=_export)

    compile_ = sub.add_parser(
        "compile", help="compile an export into one .bmodel for the BM1684X",
        description="Compile the pieces in DIR with tpu-mlir (built in its own Python 3.10 venv on first use) "
                    "into one .bmodel with manifest.json and tokenizer.json beside it. Each piece is checked "
                    "on the cmodel simulator against onnxruntime; an interrupted compile resumes.")
    compile_.add_argument("dir", help="an export directory (from `wizardcoder-tpu export`)")
    compile_.add_argument("--quantize", default="f16", choices=("f16", "int8", "int4"),
                          help="f16 → F16; int8 → W8F16; int4 → W4F16 with groups of 64 (default f16)")
    compile_.add_argument("--num-device", type=int, default=1, choices=(1, 2, 4, 8),
                          help="split each net over this many chips (default 1)")
    compile_.add_argument("--jobs", type=int, default=2, help="pieces compiled at once (default 2)")
    compile_.add_argument("--out", help="output directory (default DIR/bmodel-QUANTIZE-Ndev)")
    compile_.add_argument("--validate", default="all", choices=("all", "decode", "none"),
                          help="check pieces on the cmodel simulator against onnxruntime: all (default); decode: "
                               "all but the N-row and K-row blocks, whose simulation is slow for big models; none")
    compile_.set_defaults(func=_compile)


def _row_counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected row counts like 64,256, not {text!r}") from None


def _export(args: argparse.Namespace) -> int:
    from ..errors import InferenceError
    from .export import export

    try:
        from ..loader import resolve_model

        model = resolve_model(args.model)  # a model name is its GGUF in the cache
        export(model, args.seq_len, args.out, chunk_len=args.chunk_len, prefill_chunks=args.prefill_chunks)
    except InferenceError as exc:
        print(f"wizardcoder-tpu export: {exc}", file=sys.stderr)
        return 1
    print(args.out)
    return 0


def _compile(args: argparse.Namespace) -> int:
    from ..errors import InferenceError
    from .compile import compile_export

    try:
        bmodel = compile_export(args.dir, quantize=args.quantize, num_device=args.num_device, jobs=args.jobs,
                                out=args.out, validate=args.validate)
    except InferenceError as exc:
        print(f"wizardcoder-tpu compile: {exc}", file=sys.stderr)
        return 1
    print(bmodel)
    return 0
