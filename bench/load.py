"""N simulated editors typing into different real files at a human pace, over TCP, against one
team server: is every request answered once, is the queue fair, do the KV-cache slots hold?

    python bench/load.py [--model default] [--editors 1 2 4 8] [--seconds 120] [--out bench/results/load.md]
    python bench/load.py --smoke      # the tiny model, 1 and 2 editors, 15 s each: everything runs, nothing is judged

For each N a fresh ``wizardcoder-tpu serve --tcp 127.0.0.1:PORT --token-file …`` (editor k presents
the token of ``editor-k``). Each editor opens one of this repository's own source files with a
run of lines taken out after a point, then types them back, a character at a time: 60–180 ms
between keys, a 400–900 ms pause after each word and line (the pause in which a completion is
read). After every key: ``didChange``, then ``textDocument/inlineCompletion`` at the cursor,
without waiting for the answer to the previous one (as an editor does; the server supersedes
it). Measured per editor:

- keystroke-to-item latency: from sending a request to its answer, for the requests still the
  newest when answered (what a user sees; a superseded one answers empty at once), p50 and p95;
- served / empty / superseded / cancelled, as the server counted them (``wizardcoder/serverStatus``;
  a request superseded during its debounce, before it reached the queue, is the remainder);
- requests answered exactly once (every one must be);

and per run: the ratio of the slowest editor's p50 to the fastest's, the slot hit rate (prompt
tokens served from a KV-cache slot over all prompt tokens), and the server's resident memory at
the start and the end of the typing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FILES = ["inference/engine.py", "lsp/worker.py", "lsp/completion.py", "inference/postprocess.py",
         "lsp/documents.py", "inference/prompt.py", "lsp/cache.py", "inference/context.py"]
HOLE_LINES = 40  # lines taken out after the cut, then typed back (--hole-lines: about 7 min of typing)
RSS_EVERY_S = 60.0  # the server's resident memory is read this often while the editors type


def frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message).encode("utf-8")
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class Connection:
    """An LSP connection that sends without waiting and keeps every answer with its arrival time."""

    def __init__(self, port: int):
        deadline = time.monotonic() + 60
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.sock.settimeout(None)
        self._lock = threading.Condition()
        self._next = 0
        self.answers: dict[int, list[tuple[float, dict[str, Any]]]] = {}
        self.notifications: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(frame(message))

    def request(self, method: str, params: Any) -> int:
        with self._lock:
            self._next += 1
            msg_id = self._next
        self.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return msg_id

    def notify(self, method: str, params: Any) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def wait(self, msg_id: int, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while msg_id not in self.answers:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer to request {msg_id}")
                self._lock.wait(0.5)
            return self.answers[msg_id][0][1]

    def wait_status(self, states: tuple[str, ...], timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not any(n.get("method") == "wizardcoder/status" and n["params"]["state"] in states
                          for n in self.notifications):
                if time.monotonic() > deadline:
                    raise TimeoutError("the model did not load")
                self._lock.wait(0.5)

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\r\n\r\n" in buffer:
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                if len(rest) < length:
                    break
                message, buffer = json.loads(rest[:length]), rest[length:]
                now = time.monotonic()
                with self._lock:
                    if "method" not in message:
                        self.answers.setdefault(message.get("id"), []).append((now, message))
                    elif "id" in message:  # the server's own request (progress tokens): answer it
                        self.send({"jsonrpc": "2.0", "id": message["id"], "result": None})
                    else:
                        self.notifications.append(message)
                    self._lock.notify_all()

    def close(self) -> None:
        """Shut the socket down before closing it: a plain close while the reader thread is blocked
        in ``recv`` sends no FIN on Linux, so the server would never see this client leave (and
        would count its connection against the token's limit until it stops)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class Editor:
    name: str
    token: str
    path: Path
    sent: list[tuple[int, float]] = field(default_factory=list)  # (request id, when sent)
    latencies_ms: list[float] = field(default_factory=list)
    once: bool = True


def type_file(editor: Editor, connection: Connection, seconds: float, rng: random.Random,
              hole_lines: int = HOLE_LINES) -> None:
    """Open the file with a hole, type the hole back at a human pace until ``seconds`` pass."""
    lines = editor.path.read_text(encoding="utf-8").split("\n")
    hole_lines = min(hole_lines, len(lines) - 12)  # the cut starts at line 10 at the earliest
    cut = rng.randrange(10, max(11, len(lines) - hole_lines - 1))
    hole = lines[cut:cut + hole_lines]
    text_lines = lines[:cut] + [""] + lines[cut + hole_lines:]
    uri = f"file://{editor.path}"
    version = 1
    connection.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                                "text": "\n".join(text_lines)}})
    line, character = cut, 0
    end = time.monotonic() + seconds
    for typed_line in hole:
        for index, char in enumerate(typed_line + "\n"):
            if time.monotonic() > end:
                return
            version += 1
            connection.notify("textDocument/didChange", {
                "textDocument": {"uri": uri, "version": version},
                "contentChanges": [{"range": {"start": {"line": line, "character": character},
                                              "end": {"line": line, "character": character}}, "text": char}]})
            if char == "\n":
                line, character = line + 1, 0
            else:
                character += 1
            msg_id = connection.request("textDocument/inlineCompletion", {
                "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
                "context": {"triggerKind": 2}})
            editor.sent.append((msg_id, time.monotonic()))
            word_end = char in " \n(),:" and index > 0
            time.sleep(rng.uniform(0.4, 0.9) if word_end else rng.uniform(0.06, 0.18))


def measure(editor: Editor, connection: Connection) -> None:
    """Latency of the answers that were the newest request's when they came; one answer each."""
    for position, (msg_id, sent_at) in enumerate(editor.sent):
        connection.wait(msg_id)
        answers = connection.answers[msg_id]
        editor.once &= len(answers) == 1
        answered_at = answers[0][0]
        newer = editor.sent[position + 1][1] if position + 1 < len(editor.sent) else float("inf")
        if answered_at <= newer:
            editor.latencies_ms.append((answered_at - sent_at) * 1e3)


def server_status(port: int, token: str) -> dict[str, Any]:
    connection = Connection(port)
    try:
        init = connection.wait(connection.request("initialize", {"processId": None, "rootUri": None, "capabilities": {},
                                                                 "initializationOptions": {"token": token}}))
        assert "result" in init, init
        return connection.wait(connection.request("wizardcoder/serverStatus", {}))["result"]
    finally:
        connection.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(count: int, model: str, seconds: float, seed: int, workdir: Path,
        hole_lines: int = HOLE_LINES) -> dict[str, Any]:
    editors = [Editor(f"editor-{k + 1}", secrets.token_urlsafe(24), ROOT / FILES[k % len(FILES)]) for k in range(count)]
    admin = ("admin", secrets.token_urlsafe(24))
    tokens = workdir / f"tokens-{count}"
    tokens.write_text("".join(f"{e.name} {e.token}\n" for e in editors) + f"{admin[0]} {admin[1]}\n", encoding="utf-8")
    port = free_port()
    log_file = workdir / f"server-{count}.log"
    server = subprocess.Popen([sys.executable, "-m", "wizardcoder_tpu", "serve", "--tcp", f"127.0.0.1:{port}",
                               "--token-file", str(tokens), "--model", model, "--log-file", str(log_file),
                               "--log-level", "info"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    connections: list[Connection] = []
    try:
        for editor in editors:
            connection = Connection(port)
            init = connection.wait(connection.request("initialize", {
                "processId": os.getpid(), "rootUri": f"file://{ROOT}", "initializationOptions": {"token": editor.token},
                "capabilities": {"textDocument": {"inlineCompletion": {}}, "window": {"workDoneProgress": True}}}))
            assert "result" in init, init
            connection.notify("initialized", {})
            connections.append(connection)
        for connection in connections:
            connection.wait_status(("idle", "error"))
        before = server_status(port, admin[1])
        rng = random.Random(seed)
        threads = [threading.Thread(target=type_file, args=(e, c, seconds, random.Random(rng.random()), hole_lines))
                   for e, c in zip(editors, connections)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        rss_kib = [before["memory"]["rssKib"]]  # at the start, then every RSS_EVERY_S while they type
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=max(0.0, started + RSS_EVERY_S * len(rss_kib) - time.monotonic()))
                if thread.is_alive():
                    rss_kib.append(server_status(port, admin[1])["memory"]["rssKib"])
        for editor, connection in zip(editors, connections):
            measure(editor, connection)
        elapsed = time.monotonic() - started
        after = server_status(port, admin[1])
    finally:
        for connection in connections:
            connection.close()
        server.terminate()
        server.wait(60)
    by_name = {c["name"]: c for c in after["clients"]}
    rows = []
    for editor in editors:
        counts = by_name.get(editor.name, {}).get("requests", {})
        rows.append({"name": editor.name, "file": str(editor.path.relative_to(ROOT)), "requests": len(editor.sent),
                     "once": editor.once, "p50": _pct(editor.latencies_ms, 0.5), "p95": _pct(editor.latencies_ms, 0.95),
                     "live": len(editor.latencies_ms), **{k: counts.get(k, 0) for k in
                                                          ("served", "empty", "superseded", "cancelled", "error")}})
    for row in rows:  # a request superseded while it waited out the debounce never reaches the worker's counts
        row["debounced"] = row["requests"] - sum(row[k] for k in ("served", "empty", "superseded", "cancelled", "error"))
    p50s = [r["p50"] for r in rows if r["p50"] is not None]
    prompt = after["promptTokens"] - before["promptTokens"]
    return {"editors": count, "seconds": elapsed, "rows": rows,
            "ratio": max(p50s) / min(p50s) if p50s and min(p50s) > 0 else None,
            "hit_rate": (after["reusedTokens"] - before["reusedTokens"]) / prompt if prompt else None,
            "model": after["model"], "rss_kib": [*rss_kib, after["memory"]["rssKib"]]}


def _pct(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| editors | editor | file | requests | answered once | live answers | p50 ms | p95 ms | served | empty "
             "| superseded in the queue | superseded before it | cancelled | errors |", "|" + "---|" * 14]
    for result in results:
        for row in result["rows"]:
            lines.append(f"| {result['editors']} | {row['name']} | `{row['file']}` | {row['requests']} | "
                         f"{'yes' if row['once'] else '**no**'} | {row['live']} | {_ms(row['p50'])} | {_ms(row['p95'])} | "
                         f"{row['served']} | {row['empty']} | {row['superseded']} | {row['debounced']} | "
                         f"{row['cancelled']} | {row['error']} |")
    lines += ["", "| editors | seconds typed | slowest p50 / fastest p50 | slot hit rate | server RSS before → after (MiB) |",
              "|---|---|---|---|---|"]
    for result in results:
        ratio = f"{result['ratio']:.2f}" if result["ratio"] is not None else "-"
        hit = f"{100 * result['hit_rate']:.1f} %" if result["hit_rate"] is not None else "-"
        lines.append(f"| {result['editors']} | {result['seconds']:.0f} | {ratio} | {hit} | "
                     f"{result['rss_kib'][0] / 1024:.0f} → {result['rss_kib'][-1] / 1024:.0f} |")
    lines += ["", f"Server RSS (MiB) at the start, every {RSS_EVERY_S:.0f} s of typing, and at the end:", ""]
    lines += [f"- {result['editors']} editor(s): " + ", ".join(f"{kib / 1024:.0f}" for kib in result["rss_kib"])
              for result in results]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--editors", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hole-lines", type=int, default=HOLE_LINES, help="lines each editor types back (at most)")
    parser.add_argument("--smoke", action="store_true", help="smollm2-135m, 1 and 2 editors, 15 s each")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.smoke:
        args.model, args.editors, args.seconds = "smollm2-135m", [1, 2], 15.0
    results = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="wizardcoder-load-") as workdir:
        for count in args.editors:
            print(f"{count} editor(s) typing for {args.seconds:.0f} s ...", file=sys.stderr)
            results.append(run(count, args.model, args.seconds, args.seed, Path(workdir), args.hole_lines))
    load_after = os.getloadavg()
    report = (f"`python bench/load.py --model {args.model} --editors {' '.join(map(str, args.editors))} "
              f"--seconds {args.seconds:.0f} --hole-lines {args.hole_lines}` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
              f"{platform.machine()}, {os.cpu_count()} CPUs, model {results[0]['model']}; load average (1, 5, 15 min) "
              f"before {', '.join(f'{v:.1f}' for v in load_before)}, after {', '.join(f'{v:.1f}' for v in load_after)}."
              "\n\n" + table(results) + "\n")
    print(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")
    bad = [r["name"] for result in results for r in result["rows"] if not r["once"]]
    if bad:
        print(f"requests not answered exactly once: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
