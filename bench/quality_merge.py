"""The tables of ``bench/quality.py`` from rows run in separate invocations on the same holes.

    python bench/quality_merge.py part1.jsonl part2.jsonl … [--base default] [--rows a,b,…]

On this 2-core machine a row of 40 holes takes 10–20 minutes, so a run is done in parts: the rows
that post-processing does not change (``bare``, ``llama.cpp``, ``naive``) once, the rows it
changes again after each edit. Each part's ``--details`` file holds every answer scored; this
prints the tables as the report has them, each row on its own holes with their count, and then,
for each row against ``--base``, the paired comparison on the holes both filled: how many only
the base row completed exactly, how many only the other, and which. With a few dozen holes a
difference of a few points is a handful of holes: the pairs say which.

A (row, hole) answered in two files takes the later file's answer (a rerun).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import row  # noqa: E402
from quality_replay import hole_of  # noqa: E402
from quality_score import Outcome, score, summarize  # noqa: E402

HEADER = ("| row | holes | exact line 1 | ES line 1 | ES all | repeats suffix¹ | empty | errors | p50 ms | p95 ms |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def load(paths: list[Path]) -> dict[str, dict[str, dict]]:
    """row → hole name → entry, later files first."""
    rows: dict[str, dict[str, dict]] = defaultdict(dict)
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                rows[entry["row"]][entry["hole"]] = entry
    return rows


def outcome(entry: dict) -> Outcome:
    return Outcome(hole_of(entry), entry["answer"], entry["latency_ms"], entry["error"], entry.get("reindented", False))


def counted_row(name: str, outcomes: list[Outcome]) -> str:
    """``quality.row`` with the row's hole count after its name."""
    head, rest = row(name, summarize(outcomes)).split(" | ", 1)
    return f"{head} | {len(outcomes)} | {rest}"


def tables(rows: dict[str, dict[str, dict]], order: list[str]) -> list[str]:
    lines: list[str] = []
    groups: dict[tuple[str, str], dict[str, list[Outcome]]] = defaultdict(lambda: defaultdict(list))
    for name in order:
        for entry in rows[name].values():
            for language in (entry["language"], "all languages"):
                groups[(entry["kind"], language)][name].append(outcome(entry))
    for (kind, language), by_row in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] == "all languages", kv[0][1])):
        lines += ["", f"## {language}, {kind} holes", "", HEADER]
        lines += [counted_row(name, by_row[name]) for name in order if by_row.get(name)]
    return lines


def pairs(rows: dict[str, dict[str, dict]], order: list[str], base: str) -> list[str]:
    if base not in rows:
        return []
    lines = ["", f"## Paired against {base}", "",
             f"| kind | row | holes both filled | {base} exact | row exact | only {base} | only the row |",
             "|---|---|---|---|---|---|---|"]
    named: list[str] = []
    for kind in sorted({e["kind"] for e in rows[base].values()}):
        for name in order:
            if name == base:
                continue
            common = [h for h, e in rows[base].items() if e["kind"] == kind and h in rows[name]]
            if not common:
                continue
            exact_base = {h for h in common if score(outcome(rows[base][h])).exact}
            exact_other = {h for h in common if score(outcome(rows[name][h])).exact}
            only_base, only_other = sorted(exact_base - exact_other), sorted(exact_other - exact_base)
            lines.append(f"| {kind} | {name} | {len(common)} | {len(exact_base)} | {len(exact_other)} "
                         f"| {len(only_base)} | {len(only_other)} |")
            if only_base or only_other:
                named.append(f"- {kind}, {name}: only {base}: {', '.join(only_base) or '–'}; "
                             f"only {name}: {', '.join(only_other) or '–'}")
    return lines + ([""] + named if named else [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("details", nargs="+", type=Path, help="--details files of bench/quality.py (or quality_replay.py --write)")
    p.add_argument("--rows", help="comma-separated rows, in this order (default: as found)")
    p.add_argument("--base", default="default", help="the row the others are paired against (default: default)")
    args = p.parse_args(argv)
    rows = load(args.details)
    order = [r.strip() for r in args.rows.split(",")] if args.rows else list(rows)
    missing = [name for name in order if name not in rows]
    if missing:
        raise SystemExit(f"no answers of row(s) {', '.join(missing)} in {', '.join(map(str, args.details))}")
    print("\n".join(tables(rows, order) + pairs(rows, order, args.base)).lstrip("\n"))
    print("\n¹ of the non-empty answers.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
