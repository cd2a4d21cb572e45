"""Tune post-processing without running a model again: replay it on a run's raw answers.

    python bench/quality.py --systems nocontext,bare --details run.jsonl   # the model, once
    python bench/quality_replay.py run.jsonl                             # seconds, after each edit

The ``bare`` row of ``bench/quality.py`` keeps what the model wrote, unstopped and uncut
(``postprocess: false``), from the same greedy prompt as the ``nocontext`` row (the default
settings with ``contextTokens: 0``). So that row's answer is ``postprocess`` of the bare one, as ``lsp/completion.py`` calls it (the kind from
``completion_kind``, then ``postprocess``), and a change to ``inference/postprocess.py`` can be
scored against the same raw answers in seconds (issue 11, item 7: the single/multi-line
decision, the dedent and bracket stops, the suffix-overlap rule, whitespace). The replay also
checks itself: where the run has a nocontext row, the replayed answers should equal it (they
differ only when the bare row ran out of tokens before the point where post-processing cuts, or
when the server's early stop and ``postprocess`` disagree, which is a bug worth seeing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections import defaultdict
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import HEADER, detail, row  # noqa: E402
from quality_holes import Hole  # noqa: E402
from quality_score import Outcome, summarize  # noqa: E402

from wizardcoder_tpu.inference import postprocess as this_postprocess  # noqa: E402


def replay(raw: str, line_prefix: str, suffix_head: str, module: ModuleType | None = None) -> str:
    """What the server would show for the model's ``raw`` text (lsp/completion.py's steps), with
    this checkout's post-processing or ``module``'s (another version of it)."""
    pp = module if module is not None else this_postprocess
    around = pp.Surroundings.of(line_prefix, suffix_head)
    kind = pp.completion_kind(around)
    if kind is None:
        return ""
    processed = pp.postprocess(raw, around, kind)
    return processed.text if processed is not None else ""


def load_postprocess(path: Path) -> ModuleType:
    """Another version of ``inference/postprocess.py`` (``git show REV:inference/postprocess.py >
    FILE``): the replay of the post-processing a run had before an edit. The module imports only
    the standard library, so it loads from any file."""
    spec = importlib.util.spec_from_file_location(f"postprocess_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def hole_of(entry: dict) -> Hole:
    """Enough of the hole to score an answer: the cursor's line, the text after it, the truth;
    named as the entry names it (``path:line:column``)."""
    path, line, column = entry["hole"].rsplit(":", 2)
    return Hole(entry["language"], entry["kind"], entry.get("package", ""), Path(path), path, int(line) - 1,
                int(column), entry["line_prefix"], entry["suffix_head"], entry["truth"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("details", help="a --details file of bench/quality.py with a bare row")
    p.add_argument("--row", default="bare", help="the row of raw answers (default bare)")
    p.add_argument("--against", default="nocontext",
                   help="the row the replay should reproduce: one with the bare row's prompt (default nocontext)")
    p.add_argument("--postprocess", type=Path, help="replay this file's post-processing (another version of "
                   "inference/postprocess.py) instead of this checkout's")
    p.add_argument("--write", type=Path, help="also write the replayed answers here, as a --details file whose "
                   "row is --name (for bench/quality_merge.py)")
    p.add_argument("--name", default="replayed", help="the replayed row's name in --write (default replayed)")
    args = p.parse_args(argv)
    module = load_postprocess(args.postprocess) if args.postprocess else None
    written = []
    entries = [json.loads(line) for line in Path(args.details).read_text(encoding="utf-8").splitlines() if line.strip()]
    raw = [e for e in entries if e["row"] == args.row and e["error"] is None]
    if not raw:
        raise SystemExit(f"{args.details}: no answers of row {args.row!r} (run bench/quality.py with --systems …,bare)")
    against = {e["hole"]: e for e in entries if e["row"] == args.against}
    groups: dict[tuple[str, str], dict[str, list[Outcome]]] = defaultdict(lambda: defaultdict(list))
    differ = []
    for entry in raw:
        hole = hole_of(entry)
        text = replay(entry["answer"], entry["line_prefix"], entry["suffix_head"], module)
        written.append(detail(args.name, Outcome(hole, text, entry["latency_ms"])))
        for key in ((hole.language, hole.kind), ("all", hole.kind)):
            groups[key][f"{args.row} (raw)"].append(Outcome(hole, entry["answer"], entry["latency_ms"]))
            groups[key]["replayed"].append(Outcome(hole, text, entry["latency_ms"]))
            if entry["hole"] in against:
                served = against[entry["hole"]]
                groups[key][f"{args.against} (served)"].append(Outcome(hole, served["answer"], served["latency_ms"],
                                                                       served["error"]))
        if entry["hole"] in against and against[entry["hole"]]["answer"] != text:
            differ.append((entry["hole"], against[entry["hole"]]["answer"], text))
    for (language, kind), rows in sorted(groups.items()):
        print(f"\n## {language}, {kind} holes ({len(rows['replayed'])})\n\n{HEADER}")
        for name, outcomes in rows.items():
            print(row(name, summarize(outcomes)))
    if args.write:
        args.write.write_text("".join(written), encoding="utf-8")
    if against:
        print(f"\nreplayed = {args.against} row on {len(raw) - len(differ)} of {len(raw)} holes")
        for hole, served, text in differ:
            print(f"- {hole}: served {served!r}, replayed {text!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
