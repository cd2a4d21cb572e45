"""What the prefetch changes for a user who accepts what is shown: the share of suggestions served
without waiting for the model, and the time from asking to the answer.

    .venv/bin/python bench/prefetch.py [--steps 6] [--think-ms 1500] [--model default]

The real server over stdio (tests/raw_lsp.py's client), twice: `prefetch` on, then off. In each
session it opens a few Python files and, from a cursor in each, repeats: ask automatically at the
cursor, accept the whole suggestion (the edit as an editor makes it, then the item's command),
"read" it for --think-ms (the idle time the prefetch uses), ask again at the end of it. Where
the server comes from (model, cache, prefetch) and how long each answer took are the server's own
log lines ("served suggestion … from SOURCE in N ms"). Statistics are off (nothing is written
under the cache).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from raw_lsp import RawClient  # noqa: E402

FILES = {
    "fib.py": ('def fibonacci(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n    if n', (2, 8)),
    "stack.py": ("class Stack:\n    \"\"\"A last-in, first-out stack.\"\"\"\n\n    def __init__(self):\n"
                 "        self.items = []\n\n    def push(self, item):\n        ", (7, 8)),
    "words.py": ("import collections\n\n\ndef word_counts(text: str) -> dict[str, int]:\n"
                 "    \"\"\"Count each word of text, lower-cased.\"\"\"\n    counts = ", (5, 13)),
}
SERVED = re.compile(r"served suggestion (\S+) from (\w+) in (\d+) ms")


def apply(text: str, start: tuple[int, int], end: tuple[int, int], insert: str) -> tuple[str, tuple[int, int]]:
    """The text with ``start..end`` (line, column) replaced by ``insert``, and the cursor after it."""
    lines = text.split("\n")
    offset = lambda pos: sum(len(line) + 1 for line in lines[:pos[0]]) + pos[1]  # noqa: E731
    new = text[:offset(start)] + insert + text[offset(end):]
    inserted = insert.split("\n")
    cursor = (start[0] + len(inserted) - 1, (start[1] if len(inserted) == 1 else 0) + len(inserted[-1]))
    return new, cursor


def session(prefetch: bool, args: argparse.Namespace, log_file: Path) -> list[tuple[str, int]]:
    client = RawClient.stdio(log_file, "--model", args.model)
    try:
        client.initialize({"prefetch": prefetch, "statistics": False, "maxNewTokens": args.max_new_tokens})
        for name, (text, cursor) in FILES.items():
            uri = f"file:///bench/{name}"
            client.open(uri, text)
            version = 1
            for _ in range(args.steps):
                answer = client.call("textDocument/inlineCompletion", {
                    "textDocument": {"uri": uri}, "position": {"line": cursor[0], "character": cursor[1]},
                    "context": {"triggerKind": 2}}, timeout=300)
                items = answer.get("result", {}).get("items", [])
                if not items:
                    break
                item = items[0]
                r = item["range"]
                start, end = (r["start"]["line"], r["start"]["character"]), (r["end"]["line"], r["end"]["character"])
                version += 1
                client.notify("textDocument/didChange", {
                    "textDocument": {"uri": uri, "version": version},
                    "contentChanges": [{"range": r, "text": item["insertText"]}]})
                text, cursor = apply(text, start, end, item["insertText"])
                client.call("workspace/executeCommand", {"command": item["command"]["command"],
                                                         "arguments": item["command"]["arguments"]})
                time.sleep(args.think_ms / 1000)
        client.shutdown_and_exit()
    finally:
        client.close()
    return [(source, int(ms)) for _, source, ms in SERVED.findall(log_file.read_text())]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="accepts per file at most (default 6)")
    parser.add_argument("--think-ms", type=int, default=1500, help="idle time after each accept (default 1500)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="the server's maxNewTokens (default 16)")
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    print(f"{len(FILES)} files, up to {args.steps} accepts each, {args.think_ms} ms between, maxNewTokens "
          f"{args.max_new_tokens}, model {args.model}\n")
    print("| prefetch | suggestions | from the model | from the cache/prefetch | share without waiting | "
          "median latency ms | mean latency ms |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for prefetch in (True, False):
            served = session(prefetch, args, Path(folder) / f"server-{prefetch}.log")
            latencies = [ms for _, ms in served]
            quick = sum(1 for source, _ in served if source != "model")
            share = f"{quick / len(served) * 100:.0f}%" if served else "-"
            print(f"| {'on' if prefetch else 'off'} | {len(served)} | {len(served) - quick} | {quick} | {share} | "
                  f"{statistics.median(latencies) if latencies else '-'} | "
                  f"{statistics.fmean(latencies) if latencies else 0:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
