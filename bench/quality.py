"""Completion quality: holes cut from real code, filled by the real server and by references.

    python bench/quality.py [--holes 20] [--seed 0] [--systems default,bare,naive,llama.cpp]
                            [--model M] [--server-arg ARG]… [--gguf FILE] [--output FILE]
    python bench/quality.py --smoke          # a handful of holes, the default row, < 1 min

After llm-ls' testbed and RepoEval. ``quality_holes.py`` cuts line and block holes from Python
packages installed here, numpy's C headers and this repository's ``csrc/`` (seeded); every row
fills the same holes; ``quality_score.py`` scores them (exact first line, edit similarity,
repeats of the text after the cursor, empty answers, latency). The rows (``--systems``):

- ``default``: the server as shipped (``--model``, ``--server-arg``): our prompts and
  post-processing;
- ``nocontext``: the same without code from other places (``contextTokens: 0``, the default since
  the run of 2026-12-02 measured it better: then the same as ``default``);
- ``withcontext``: the same with code from other places (``contextTokens: 512``);
- ``context``: ``withcontext`` with up to ``--context-files`` other files of the hole's folder
  opened first (what cross-file context adds);
- ``bare``: the same model with the plain prompt of ``mode: auto`` (FIM where the vocabulary has
  it; ``contextTokens: 0``) and post-processing off (``postprocess: false``), plus any
  ``--bare-option``: the ``nocontext`` row's prompt, the model's raw answer;
- ``llama.cpp``: the same GGUF (``--gguf``, default: the file ``--model`` names) on llama.cpp with
  llama.vim's rules (``quality_llamavim.py``);
- ``noheal``: the default row without token healing (``tokenHealing: false``), to measure it;
- ``small``: the tiny option (``--small-model``, SmolLM2) as shipped;
- ``naive``: greedy continuation of the prefix (``mode: prefix``, no post-processing), cut at
  the first line break;
- ``--variant NAME:KEY=JSON;…``: the default row with other settings (a prompt budget, a context
  budget, other open files), for tuning.

To tune post-processing, run the model once with the ``bare`` row and ``--details``, then score
each change in seconds with ``bench/quality_replay.py``.

Every server row runs with ``debounceMs: 0`` (one request per document, nothing to wait for) and
its own server process; the rows run one after another, and the machine's load average is in the
report. Each row takes the holes in the order of their files (language, package, path), so that
the server's ring of chunks from places visited before holds code of the same package, as in an
editor session within one project, not of an unrelated one. The result is a markdown file (``--output``, default ``bench/results/quality.md``) with
the date, the machine, the versions, the hole counts and a table per language and hole kind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality_holes as holes_mod  # noqa: E402
from quality_holes import KINDS, LANGUAGES, Hole  # noqa: E402
from quality_llamavim import LlamaVimSystem  # noqa: E402
from quality_score import Outcome, Summary, first_line, score, summarize  # noqa: E402
from quality_systems import LspSystem  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "quality.md"
SYSTEMS = ("default", "nocontext", "withcontext", "context", "bare", "llama.cpp", "small", "naive", "noheal")
CONTEXT_TOKENS = 512  # the budget the context rows give code from other places
FULL = {"holes": 20, "languages": LANGUAGES, "kinds": KINDS, "systems": ("default", "bare", "naive"), "options": {}}
SMOKE = {"holes": 1, "languages": ("python", "cpp"), "kinds": KINDS, "systems": ("default",),
         "options": {"maxNewTokens": 16, "promptTokens": 256}}  # checks the path end to end, not the quality
REPLAY_SUFFIX_CHARS = 4096  # as much of the text after the cursor as post-processing looks at
NAIVE_MAX_NEW_TOKENS = 48  # the naive row keeps one line: no need to decode a whole block


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--holes", type=int, help=f"holes per language and kind (default {FULL['holes']})")
    p.add_argument("--seed", type=int, default=0, help="the holes' seed (default 0)")
    p.add_argument("--languages", help=f"comma-separated, of {', '.join(LANGUAGES)} (default all)")
    p.add_argument("--kinds", help=f"comma-separated, of {', '.join(KINDS)} (default both)")
    p.add_argument("--max-block-lines", type=int, default=holes_mod.MAX_BLOCK_LINES, help="longest block hole")
    p.add_argument("--systems", help=f"comma-separated rows, of {', '.join(SYSTEMS)} (default {','.join(FULL['systems'])})")
    p.add_argument("--model", default="default", help="the server's model for default/context/bare/naive (default: default)")
    p.add_argument("--server-arg", action="append", default=[], help="one more argument to `serve` (repeatable)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=JSON",
                   help="a setting for every server row, e.g. maxNewTokens=32 (repeatable)")
    p.add_argument("--bare-option", action="append", default=[], metavar="KEY=JSON",
                   help="a setting for the bare row only, e.g. contextTokens=0 (repeatable)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=JSON[;KEY=JSON…]",
                   help="one more row: the default row with these settings (tuning, issue 11 item 7); the key "
                        "@files=N opens N other files of the folder first, e.g. 'budget512:promptTokens=512' "
                        "(repeatable)")
    p.add_argument("--context-files", type=int, default=4, help="other files opened by the context row (default 4)")
    p.add_argument("--small-model", default="smollm2-135m", help="the small row's model (default smollm2-135m)")
    p.add_argument("--gguf", help="the llama.cpp row's GGUF (default: the file --model names)")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default 2)")
    p.add_argument("--output", help=f"the report (default {DEFAULT_OUTPUT.relative_to(ROOT)}; --smoke: stdout only)")
    p.add_argument("--details", help="also write every hole's answers here, one JSON object a line")
    p.add_argument("--log-dir", help="keep the servers' logs here, one per row (default: a temporary folder)")
    p.add_argument("--smoke", action="store_true",
                   help="one hole per Python/C++ line/block, the default row, short prompts and answers")
    args = p.parse_args(argv)
    base = SMOKE if args.smoke else FULL
    args.holes = base["holes"] if args.holes is None else args.holes
    args.option = [f"{k}={json.dumps(v)}" for k, v in base["options"].items()] + args.option
    args.languages = _choices(args.languages or ",".join(base["languages"]), LANGUAGES, "--languages", p)
    args.kinds = _choices(args.kinds or ",".join(base["kinds"]), KINDS, "--kinds", p)
    args.systems = _choices(args.systems or ",".join(base["systems"]), SYSTEMS, "--systems", p)
    try:
        args.options = _options(args.option)
        args.bare_options = _options(args.bare_option)
        args.variants = [_variant(v) for v in args.variant]
    except ValueError as exc:
        p.error(str(exc))
    names = [*args.systems, *(name for name, _ in args.variants)]
    if len(set(names)) != len(names):
        p.error(f"two rows share a name: {', '.join(names)}")
    return args


def _variant(spec: str) -> tuple[str, dict[str, Any]]:
    name, sep, pairs = spec.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"--variant expects NAME:KEY=JSON[;KEY=JSON…], got {spec!r}")
    return name.strip(), _options([pair for pair in pairs.split(";") if pair.strip()])


def _choices(value: str, allowed: tuple[str, ...], flag: str, parser: argparse.ArgumentParser) -> tuple[str, ...]:
    chosen = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        parser.error(f"{flag}: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(allowed)}")
    return chosen


def _options(pairs: list[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=JSON, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value  # a bare string
    return options


# The rows ---------------------------------------------------------------------------------------
def build_systems(args: argparse.Namespace, log_dir: Path) -> list[Any]:
    model_args = ["--model", args.model, *args.server_arg]
    common = dict(args.options)

    def server(name: str, description: str, options: dict[str, Any], **extra: Any) -> LspSystem:
        return LspSystem(name, description, extra.pop("server_args", model_args), {**common, **options},
                         log_file=log_dir / f"{name}.log", **extra)

    makers: dict[str, Callable[[], Any]] = {
        "default": lambda: server("default", "the server as shipped: our prompts and post-processing", {}),
        "nocontext": lambda: server("nocontext", "the same without code from other places", {"contextTokens": 0}),
        "withcontext": lambda: server("withcontext", f"the same with code from other places ({CONTEXT_TOKENS} tokens)",
                                      {"contextTokens": CONTEXT_TOKENS}),
        "context": lambda: server("context", f"the same with code from other places, and up to {args.context_files} "
                                  "other files of the folder open", {"contextTokens": CONTEXT_TOKENS},
                                  context_count=args.context_files),
        "bare": lambda: server("bare", "the same model, plain prompt (mode auto), post-processing off",
                               {"mode": "auto", "postprocess": False, "tokenHealing": False, "contextTokens": 0,
                                **args.bare_options}),
        "llama.cpp": lambda: LlamaVimSystem("llama.cpp", "the same GGUF on llama.cpp with llama.vim's rules",
                                            _gguf(args), threads=args.threads),
        "small": lambda: server("small", f"the small model ({args.small_model}) as shipped", {},
                                server_args=["--model", args.small_model, *args.server_arg]),
        "noheal": lambda: server("noheal", "the default row without token healing", {"tokenHealing": False}),
        "naive": lambda: server("naive", "greedy continuation of the prefix, cut at the first line break",
                                {"mode": "prefix", "postprocess": False, "tokenHealing": False, "contextTokens": 0,
                                 "maxNewTokens": min(NAIVE_MAX_NEW_TOKENS, common.get("maxNewTokens", 64))},
                                cut_first_line=True),
    }
    rows = [makers[name]() for name in args.systems]
    for name, options in args.variants:
        options = dict(options)
        files = int(options.pop("@files", 0))
        shown = "; ".join(f"{k}={json.dumps(v)}" for k, v in options.items()) + (f"; {files} other files open" if files else "")
        rows.append(server(name, f"the default row with {shown}", options, context_count=files))
    return rows


def _gguf(args: argparse.Namespace) -> Path:
    if args.gguf:
        return Path(args.gguf).expanduser()
    from wizardcoder_tpu.inference.loader import resolve_model  # the server's own resolution of --model

    path = resolve_model(args.model)
    if path.suffix != ".gguf":
        raise SystemExit(f"bench/quality.py: the llama.cpp row needs a GGUF; --model {args.model} is {path}: pass --gguf")
    return path


async def run_system(system: Any, holes: list[Hole], progress: Callable[[str], None],
                     keep: Callable[[Outcome], None] = lambda outcome: None) -> tuple[list[Outcome], str | None]:
    """Every hole through one row, each answer given to ``keep`` as it comes (the ``--details``
    file: a run of an hour can be read, and replayed, while it runs); ([], why) when the row
    cannot start."""
    started = time.monotonic()
    try:
        await system.start()
    except Exception as exc:
        await system.stop()
        return [], f"{type(exc).__name__}: {exc}"
    progress(f"{system.name}: {system.model} (ready in {time.monotonic() - started:.0f} s)")
    outcomes = []
    try:
        for number, hole in enumerate(holes, 1):
            outcome = await system.complete(hole)
            outcomes.append(outcome)
            keep(outcome)
            mark = "error" if outcome.error else "exact" if score(outcome).exact else ""
            progress(f"  {system.name} {number}/{len(holes)} {hole.language}/{hole.kind} {hole.name} "
                     f"{outcome.latency_ms:.0f} ms {mark} {first_line(outcome.text)[:60]!r}")
    finally:
        await system.stop()
    return outcomes, None


# The report -------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def versions(systems: list[Any]) -> str:
    names = ["wizardcoder-tpu", "onnxruntime", "tokenizers", "pygls", "rapidfuzz"]
    if any(isinstance(s, LlamaVimSystem) for s in systems):
        names.append("llama-cpp-python")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found) + f"; checkout {git_revision()}"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + (" with uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def row(name: str, s: Summary) -> str:
    def pct(x: float) -> str:
        return "–" if x != x else f"{100 * x:.1f} %"

    def ms(x: float) -> str:
        return "–" if x != x else f"{x:.0f}"

    return (f"| {name} | {pct(s.exact)} | {s.es_line:.3f} | {s.es_all:.3f} | {pct(s.repeats)} | {pct(s.empty)} "
            f"| {s.errors} | {ms(s.p50_ms)} | {ms(s.p95_ms)} |")


HEADER = ("| row | exact line 1 | ES line 1 | ES all | repeats suffix¹ | empty | errors | p50 ms | p95 ms |\n"
          "|---|---|---|---|---|---|---|---|---|")


def report(args: argparse.Namespace, argv: list[str], holes: list[Hole], systems: list[Any],
           results: dict[str, tuple[list[Outcome], str | None]], sources: list[holes_mod.Source],
           load_start: str, load_end: str, minutes: float) -> str:
    today = dt.datetime.now(dt.timezone.utc)
    lines = [f"# Completion quality, {today:%Y-%m-%d}", "",
             f"Command: `python bench/quality.py {shlex.join(argv)}` ({minutes:.1f} min)", "",
             f"- Date: {today:%Y-%m-%d %H:%M} UTC",
             f"- Machine: {machine()}; load average {load_start} at the start, {load_end} at the end "
             "(the machine is shared: latencies are only comparable within one run)",
             f"- Versions: {versions(systems)}",
             "- Sources: " + "; ".join(f"{s.language} {s.package} {s.version} ({len(s.files)} files)"
                                       for s in sources if s.language in args.languages),
             f"- Holes (seed {args.seed}): " + ", ".join(
                 f"{lang} {kind} {sum(h.language == lang and h.kind == kind for h in holes)}"
                 for lang in args.languages for kind in args.kinds),
             "", "Rows:", ""]
    for system in systems:
        outcomes, failure = results[system.name]
        what = f"not run: {failure}" if failure else system.model
        lines.append(f"- **{system.name}**: {system.description}; {what}")
        for warning in dict.fromkeys(system.warnings):
            lines.append(f"  - server warning: {warning}")
    ran = [s for s in systems if not results[s.name][1]]
    for lang in args.languages:
        for kind in args.kinds:
            count = sum(h.language == lang and h.kind == kind for h in holes)
            if not count:
                continue
            lines += ["", f"## {lang}, {kind} holes ({count})", "", HEADER]
            for system in ran:
                picked = [o for o in results[system.name][0] if o.hole.language == lang and o.hole.kind == kind]
                lines.append(row(system.name, summarize(picked)))
    if len(args.languages) * len(args.kinds) > 1:
        for kind in args.kinds:
            lines += ["", f"## All languages, {kind} holes ({sum(h.kind == kind for h in holes)})", "", HEADER]
            for system in ran:
                lines.append(row(system.name, summarize([o for o in results[system.name][0] if o.hole.kind == kind])))
    lines += ["", "¹ of the non-empty answers.", "",
              "Exact: the first line of the answer equals the first deleted line (trailing blanks ignored). "
              "ES: 1 − Levenshtein distance / longer length, of the first lines and of the whole answer against "
              "the whole deleted text (an answer that runs on loses). Repeats suffix: a line of the answer equals "
              "the first non-blank line after the hole (a substantial one the author did not also write in the "
              "hole). Latency: the request's round trip as the client sees it; the llama.cpp row is in-process. "
              "Holes and the trivial-hole rule: `bench/quality_holes.py`; llama.vim's rules: "
              "`bench/quality_llamavim.py`."]
    return "\n".join(lines) + "\n"


def detail(name: str, o: Outcome) -> str:
    """One line of the ``--details`` file: a row's answer to one hole, scored."""
    return json.dumps({"row": name, "hole": o.hole.name, "language": o.hole.language,
                       "kind": o.hole.kind, "package": o.hole.package, "truth": o.hole.truth,
                       "answer": o.text, "latency_ms": round(o.latency_ms, 1), "error": o.error,
                       "reindented": o.reindented, **asdict(score(o)),
                       # what post-processing reads, for bench/quality_replay.py
                       "line_prefix": o.hole.line_prefix, "suffix_head": o.hole.suffix[:REPLAY_SUFFIX_CHARS],
                       }) + "\n"


# Main -------------------------------------------------------------------------------------------
def cut_holes(args: argparse.Namespace, sources: list[holes_mod.Source]) -> list[Hole]:
    return [hole for lang in args.languages for kind in args.kinds
            for hole in holes_mod.sample(sources, lang, kind, args.holes, args.seed, args.max_block_lines)]


async def run(args: argparse.Namespace, argv: list[str]) -> tuple[str, bool]:
    """The report, and whether every row ran."""
    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = time.monotonic()
    load_start = load()
    sources = (holes_mod.python_sources() if "python" in args.languages else []) + holes_mod.c_sources()
    holes = cut_holes(args, sources)
    progress(f"{len(holes)} holes cut in {time.monotonic() - started:.0f} s")
    with tempfile.TemporaryDirectory(prefix="wizardcoder-quality-") as logs:
        log_dir = Path(args.log_dir or logs)
        log_dir.mkdir(parents=True, exist_ok=True)
        systems = build_systems(args, log_dir)
        results = {}
        in_file_order = sorted(holes, key=lambda h: (h.language, h.package, h.relative_path, h.line))
        with contextlib.ExitStack() as stack:
            details = stack.enter_context(Path(args.details).open("w", encoding="utf-8")) if args.details else None
            for system in systems:
                def keep(outcome: Outcome, name: str = system.name) -> None:
                    if details is not None:
                        details.write(detail(name, outcome))
                        details.flush()

                results[system.name] = await run_system(system, in_file_order, progress, keep)
                if results[system.name][1]:
                    progress(f"{system.name}: not run: {results[system.name][1]}")
    text = report(args, argv, holes, systems, results, sources, load_start, load(), (time.monotonic() - started) / 60)
    return text, all(failure is None for _, failure in results.values())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    text, complete = asyncio.run(run(args, argv))
    output = Path(args.output) if args.output else None if args.smoke else DEFAULT_OUTPUT
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        print(f"wrote {output}", file=sys.stderr)
    print(text)
    return 0 if complete else 1  # a row that could not start fails the run (and the smoke test)


if __name__ == "__main__":
    raise SystemExit(main())
