"""Capture ghost text in a real terminal Neovim for the README: docs/img/nvim-ghost-text.{txt,png}.

Neovim runs in tmux with the plugin, the real server and the default model; the script types a
line of a function body, waits for the suggestion (read through tests/harness.lua over the
Neovim socket), then saves `tmux capture-pane` as plain text, and renders the coloured capture
(`-e`) as HTML to a PNG with headless chromium when chromium is installed.

    .venv/bin/python editor-client/nvim/tests/capture_ghost_text.py [OUT_DIR]
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))
from test_nvim import HARNESS, PLUGIN, SOURCE, find_nvim, server_command  # noqa: E402

CHROMIUM = "/usr/lib/chromium/chromium"  # the real binary; /usr/bin/chromium is a shell wrapper
COLUMNS, ROWS = 84, 20


def run(*args: str, **kwargs) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60, **kwargs).stdout


def state(nvim: str, sock: Path) -> dict | None:
    done = subprocess.run([nvim, "--headless", "--clean", "--server", str(sock), "--remote-expr",
                           "luaeval('WizardcoderTest.state()')"], capture_output=True, text=True, timeout=30)
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout.startswith("{") else None


def wait(nvim: str, sock: Path, what: str, predicate, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = state(nvim, sock)
        if current is not None and predicate(current):
            return current
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


# ANSI (SGR) to HTML, enough for tmux's capture-pane -e --------------------------------------
BASIC = ["#000000", "#cd3131", "#0dbc79", "#e5e510", "#2472c8", "#bc3fbc", "#11a8cd", "#e5e5e5",
         "#666666", "#f14c4c", "#23d18b", "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#ffffff"]
FOREGROUND, BACKGROUND = "#e0e2ea", "#14161b"  # Neovim's default dark scheme (NvimLightGrey2 on NvimDarkGrey1)


def xterm256(n: int) -> str:
    if n < 16:
        return BASIC[n]
    if n < 232:
        n -= 16
        levels = [0, 95, 135, 175, 215, 255]
        return "#%02x%02x%02x" % (levels[n // 36], levels[n // 6 % 6], levels[n % 6])
    grey = 8 + 10 * (n - 232)
    return "#%02x%02x%02x" % (grey, grey, grey)


def sgr(params: list[int], style: dict) -> None:
    i = 0
    while i < len(params):
        p = params[i]
        if p == 0:
            style.clear()
        elif p in (1, 3, 4, 7):
            style[{1: "bold", 3: "italic", 4: "underline", 7: "reverse"}[p]] = True
        elif p in (22, 23, 24, 27):
            style.pop({22: "bold", 23: "italic", 24: "underline", 27: "reverse"}[p], None)
        elif 30 <= p <= 37 or 90 <= p <= 97:
            style["fg"] = BASIC[p - 30 if p < 90 else p - 90 + 8]
        elif 40 <= p <= 47 or 100 <= p <= 107:
            style["bg"] = BASIC[p - 40 if p < 100 else p - 100 + 8]
        elif p in (39, 49):
            style.pop("fg" if p == 39 else "bg", None)
        elif p in (38, 48) and i + 1 < len(params):
            key = "fg" if p == 38 else "bg"
            if params[i + 1] == 5 and i + 2 < len(params):
                style[key] = xterm256(params[i + 2])
                i += 2
            elif params[i + 1] == 2 and i + 4 < len(params):
                style[key] = "#%02x%02x%02x" % tuple(params[i + 2:i + 5])
                i += 4
        i += 1


def ansi_to_html(text: str) -> str:
    out, style = [], {}
    for chunk in re.split(r"(\x1b\[[0-9;:]*m)", text):
        if chunk.startswith("\x1b["):
            sgr([int(x or 0) for x in re.split(r"[;:]", chunk[2:-1])] or [0], style)
            continue
        if not chunk:
            continue
        fg, bg = style.get("fg", FOREGROUND), style.get("bg")
        if style.get("reverse"):
            fg, bg = bg or BACKGROUND, fg
        css = [f"color:{fg}"] + ([f"background:{bg}"] if bg else [])
        css += ["font-weight:bold"] * bool(style.get("bold")) + ["font-style:italic"] * bool(style.get("italic"))
        css += ["text-decoration:underline"] * bool(style.get("underline"))
        out.append(f'<span style="{";".join(css)}">{html.escape(chunk)}</span>')
    body = "".join(out)
    return (f"<!doctype html><meta charset='utf-8'><body style='margin:0;background:{BACKGROUND}'>"
            f"<pre style='margin:0;padding:10px;font:15px/1.3 \"DejaVu Sans Mono\",monospace;"
            f"color:{FOREGROUND}'>{body}</pre></body>")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "img").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not shutil.which("tmux"):
        raise SystemExit("tmux is needed (apt-get install tmux)")
    nvim = find_nvim()
    tmp = Path(tempfile.mkdtemp(prefix="wizardcoder-nvim-capture-"))
    sample = tmp / "work" / "fib.py"
    sample.parent.mkdir()
    sample.write_text(SOURCE)
    cmd = [*server_command(), "--log-file", str(tmp / "server.log")]
    (tmp / "init.lua").write_text(f"""
vim.opt.runtimepath:prepend({json.dumps(str(PLUGIN))})
vim.o.expandtab = true
vim.o.shiftwidth = 4
vim.o.number = true
vim.o.laststatus = 2
vim.o.statusline = " %f%=%{{v:lua.require'wizardcoder_tpu'.statusline()}} "
require('wizardcoder_tpu').setup({{ cmd = {{ {', '.join(json.dumps(a) for a in cmd)} }} }})
vim.api.nvim_create_autocmd('VimEnter', {{ once = true, command = 'luafile ' .. {json.dumps(str(HARNESS))} }})
""")
    sock, session = tmp / "nvim.sock", f"wizardcoder-capture-{tmp.name}"
    env_args = ["-e", f"XDG_CONFIG_HOME={tmp}/config", "-e", f"XDG_DATA_HOME={tmp}/data",
                "-e", f"XDG_STATE_HOME={tmp}/state", "-e", "COLORTERM=truecolor"]
    conf = tmp / "tmux.conf"
    conf.write_text("set -g default-terminal tmux-256color\nset -ga terminal-overrides ',*:Tc'\nset -g status off\n")
    run("tmux", "-f", str(conf), "-L", session, "new-session", "-d", "-s", session, "-x", str(COLUMNS),
        "-y", str(ROWS), *env_args, "-c", str(sample.parent), nvim, "-u", str(tmp / "init.lua"), "-i", "NONE",
        "--listen", str(sock), str(sample))
    try:
        wait(nvim, sock, "the server", lambda s: (s["status"] or {}).get("state") == "idle", 300)
        run("tmux", "-L", session, "send-keys", "-t", session, "G", "o")
        run("tmux", "-L", session, "send-keys", "-t", session, "-l", "if n")
        typed = SOURCE.splitlines() + ["    if n"]
        wait(nvim, sock, "the ghost text", lambda s: s["ghost"] is not None and s["lines"] == typed
             and (s["ghost"]["first"].strip() or s["ghost"]["rest"]) and (s["status"] or {}).get("state") == "idle",
             180)
        time.sleep(0.5)  # one redraw after the last status change
        plain = run("tmux", "-L", session, "capture-pane", "-p", "-t", session)
        coloured = run("tmux", "-L", session, "capture-pane", "-p", "-e", "-t", session)
    finally:
        subprocess.run(["tmux", "-L", session, "kill-server"], capture_output=True)
    (out / "nvim-ghost-text.txt").write_text(plain.rstrip("\n") + "\n")
    page = tmp / "nvim-ghost-text.html"
    page.write_text(ansi_to_html(coloured.rstrip("\n")))
    print(f"wrote {out / 'nvim-ghost-text.txt'}")
    if Path(CHROMIUM).exists():
        png = out / "nvim-ghost-text.png"
        run(CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--screenshot={png}", f"--window-size={COLUMNS * 9 + 20},{ROWS * 20 + 20}", page.as_uri())
        print(f"wrote {png}")
    else:
        print(f"no {CHROMIUM}: skipped the PNG (the HTML is {page})")


if __name__ == "__main__":
    main()
