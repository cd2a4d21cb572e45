#!/usr/bin/env node
// The extension end to end, for real: a VS Code 1.100.3 (code-server 4.100.3) driven by Debian's
// chromium through playwright-core, the packaged .vsix installed into it, the real
// `wizardcoder-tpu serve --stdio` and the real default model. No mocks.
//
//   node e2e/run.mjs [--vsix out/wizardcoder-tpu.vsix] [--out DIR] [--shots DIR] [--server-log FILE]
//
// Environment: CODE_SERVER_ENTRY and CHROMIUM (as e2e/setup.sh prints them; setup.sh is run when
// they are unset), WIZARDCODER_SERVER_COMMAND (a JSON argv; default: the repository's
// .venv/bin/wizardcoder-tpu serve --stdio).
//
// One editor session, in order: it opens a Python file, types, waits for the inline suggestion
// (ghost text); takes one word (VS Code's acceptNextWord), one line (acceptNextLine) and the rest
// (Tab), saving with Ctrl+S and reading the file from disk after each (ghost text is rendered
// inside .view-line, so the DOM cannot tell a suggestion from text); waits for the prefetched next
// suggestion; presses Backspace (nothing may be suggested); turns automatic suggestions off
// (WizardCoder: Toggle Automatic Suggestions), types (nothing), asks with the extension's key (a
// suggestion); then runs "WizardCoder: Explain Selection" and reads the streamed markdown from the
// webview. Writes DIR/result.json and exits non-zero when a check fails (DIR then holds
// failure.png and code-server's log; result.json the status bar's text). With --server-log (the
// server's --log-file), it waits on the server's log lines where the editor shows nothing, and
// result.json's `logAt` holds the log's size in bytes at each step, so the caller can read what
// the server did in between. Screenshots vscode-ghost-text.png, vscode-partial-accept.png and
// vscode-explain.png go to --shots (default DIR).
import { execFileSync, spawn } from "node:child_process";
import { createServer } from "node:net";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, createWriteStream } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const EXTENSION_ROOT = path.resolve(HERE, "..");
const REPO_ROOT = path.resolve(EXTENSION_ROOT, "../..");

// Bounded waits, generous for a shared 2-core machine (the model loads on the CPU).
const TIMEOUT = {
  install: 180_000,
  codeServer: 120_000,
  workbench: 120_000,
  serverIdle: 240_000, // the extension starts the server, the server loads the model
  ghost: 120_000,
  retrigger: 30_000, // re-ask for a suggestion when none came this long after typing
  serverLog: 20_000, // a log line of the server's answer to a request the editor sent
  saved: 20_000,
  explanation: 240_000,
};

const SOURCE = 'def fibonacci(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n';
const TYPED = "    if n";
const FILE_NAME = "fibonacci.py";
const CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run"];
const RETRIGGER_KEY = "alt+]"; // bound to editor.action.inlineSuggest.trigger (no default key here)
const ACCEPT_LINE_KEY = "alt+l"; // bound to VS Code's editor.action.inlineSuggest.acceptNextLine (no default key)
const SUGGEST_KEY = "alt+\\"; // the extension's own binding of wizardcoder-tpu.suggest (package.json)
// The same keys as playwright names them.
const PRESS = { [RETRIGGER_KEY]: "Alt+BracketRight", [ACCEPT_LINE_KEY]: "Alt+KeyL", [SUGGEST_KEY]: "Alt+Backslash" };
const MANUAL_TYPED = "result = fibonacci(n - 1) + "; // typed with trigger "manual": nothing may come unasked

const { values: options } = parseArgs({
  options: {
    vsix: { type: "string", default: path.join(EXTENSION_ROOT, "out", "wizardcoder-tpu.vsix") },
    out: { type: "string" },
    shots: { type: "string" },
    keep: { type: "boolean", default: false },
    "server-log": { type: "string" },
  },
});

const started = performance.now();
const seconds = () => Math.round((performance.now() - started) / 100) / 10;
const log = (message) => console.error(`[e2e ${seconds().toFixed(1)}s] ${message}`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function check(condition, message) {
  if (!condition) {
    throw new Error(`check failed: ${message}`);
  }
}

function toolPaths() {
  let entry = process.env.CODE_SERVER_ENTRY;
  let browser = process.env.CHROMIUM;
  if (!entry || !browser) {
    log("running e2e/setup.sh");
    const printed = execFileSync("bash", [path.join(HERE, "setup.sh")], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
    const vars = Object.fromEntries(printed.trim().split("\n").map((line) => line.split(/=(.*)/s).slice(0, 2)));
    entry ??= vars.CODE_SERVER_ENTRY;
    browser ??= vars.CHROMIUM;
  }
  check(entry && browser, "setup.sh printed CODE_SERVER_ENTRY and CHROMIUM");
  return { entry, browser };
}

function serverCommand() {
  if (process.env.WIZARDCODER_SERVER_COMMAND) {
    return JSON.parse(process.env.WIZARDCODER_SERVER_COMMAND);
  }
  return [path.join(REPO_ROOT, ".venv", "bin", "wizardcoder-tpu"), "serve", "--stdio"];
}

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

async function waitFor(what, timeoutMs, probe, intervalMs = 250) {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) {
      return value;
    }
    if (performance.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    }
    await sleep(intervalMs);
  }
}

/** The server's log file (--server-log): its size now, and what it gained since a size. */
const serverLog = {
  file: () => (options["server-log"] && existsSync(options["server-log"]) ? options["server-log"] : null),
  size: () => (serverLog.file() ? statSync(serverLog.file()).size : 0), // 0 until the server starts
  since: (offset) => (serverLog.file() ? readFileSync(serverLog.file()).subarray(offset).toString("utf8") : ""),
};

/** Wait until the server's log gains a line matching `pattern` after `offset` (the server's
 * answer to a request that shows nothing in the editor); without --server-log, wait `fallbackMs`. */
async function serverLogged(what, offset, pattern, fallbackMs = 2_000) {
  if (!options["server-log"]) {
    await sleep(fallbackMs);
    return;
  }
  await waitFor(`the server's log to say ${what}`, TIMEOUT.serverLog, () => pattern.test(serverLog.since(offset)));
}

/** A sandbox for one run: workspace, VS Code profile, extensions and XDG dirs. */
function makeSandbox(server) {
  const root = mkdtempSync(path.join(tmpdir(), "wizardcoder-vscode-e2e-"));
  const dirs = Object.fromEntries(["workspace", "user-data", "extensions", "xdg-config", "xdg-data"]
    .map((name) => [name, path.join(root, name)]));
  for (const dir of Object.values(dirs)) {
    mkdirSync(dir, { recursive: true });
  }
  const file = path.join(dirs.workspace, FILE_NAME);
  writeFileSync(file, SOURCE);
  mkdirSync(path.join(dirs["user-data"], "User"), { recursive: true });
  writeFileSync(path.join(dirs["user-data"], "User", "settings.json"), JSON.stringify({
    "wizardcoder.serverCommand": server,
    "security.workspace.trust.enabled": false,
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": false,
    "workbench.enableExperiments": false,
    "telemetry.telemetryLevel": "off",
    "update.mode": "none",
    "extensions.autoCheckUpdates": false,
    "extensions.autoUpdate": false,
    "extensions.ignoreRecommendations": true,
    "editor.quickSuggestions": { other: "off", comments: "off", strings: "off" },
    "editor.suggestOnTriggerCharacters": false,
    "editor.inlineSuggest.enabled": true,
    "wizardcoder.maxNewTokens": 10, // the first suggestion ends early: there is more for the prefetch
    "wizardcoder.explainMaxNewTokens": 160, // enough to see it stream and render (48 finished between two polls on an idle machine)
    "editor.minimap.enabled": false,
    "files.autoSave": "off",
    "chat.commandCenter.enabled": false,
  }, null, 2));
  writeFileSync(path.join(dirs["user-data"], "User", "keybindings.json"), JSON.stringify([
    { key: RETRIGGER_KEY, command: "editor.action.inlineSuggest.trigger", when: "editorTextFocus" },
    { key: ACCEPT_LINE_KEY, command: "editor.action.inlineSuggest.acceptNextLine", when: "inlineSuggestionVisible" },
  ], null, 2));
  const env = { ...process.env, XDG_CONFIG_HOME: dirs["xdg-config"], XDG_DATA_HOME: dirs["xdg-data"] };
  delete env.VSCODE_IPC_HOOK_CLI;
  return { root, dirs, file, env };
}

function installExtension(entry, sandbox, vsix) {
  const output = execFileSync(process.execPath, [entry, "--install-extension", vsix,
    "--user-data-dir", sandbox.dirs["user-data"], "--extensions-dir", sandbox.dirs.extensions, "--force"],
  { env: sandbox.env, encoding: "utf8", timeout: TIMEOUT.install, stdio: ["ignore", "pipe", "pipe"] });
  check(/successfully installed/i.test(output), `the .vsix installed: ${output}`);
}

async function startCodeServer(entry, sandbox, logFile) {
  const port = await freePort();
  const logStream = createWriteStream(logFile);
  const child = spawn(process.execPath, [entry, "--auth", "none", "--bind-addr", `127.0.0.1:${port}`,
    "--disable-workspace-trust", "--disable-telemetry", "--disable-update-check", "--disable-getting-started-override",
    "--user-data-dir", sandbox.dirs["user-data"], "--extensions-dir", sandbox.dirs.extensions, sandbox.dirs.workspace],
  { env: sandbox.env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  child.stdout.pipe(logStream);
  child.stderr.pipe(logStream);
  let exited = null;
  child.once("exit", (code, signal) => { exited = `code ${code}, signal ${signal}`; });
  const url = `http://127.0.0.1:${port}`;
  await waitFor("code-server's /healthz", TIMEOUT.codeServer, async () => {
    check(exited === null, `code-server exited (${exited}); see ${logFile}`);
    try {
      return (await fetch(`${url}/healthz`)).ok;
    } catch {
      return false;
    }
  }, 500);
  const stop = () => {
    if (exited === null) {
      try {
        process.kill(-child.pid, "SIGTERM"); // code-server, its extension host and the language server
      } catch {
        // already gone
      }
    }
  };
  return { url, stop, child, logStream };
}

/** The extension's status bar item: its codicon and its tooltip/aria text. */
async function statusItem(page) {
  return page.evaluate(() => {
    const item = [...document.querySelectorAll(".statusbar-item")]
      .find((element) => element.id.includes("wizardcoder-tpu") && element.textContent?.includes("WizardCoder"));
    if (!item) {
      return null;
    }
    const icons = [...item.querySelectorAll(".codicon")].map((icon) => [...icon.classList].find((c) => c.startsWith("codicon-") && c !== "codicon-modifier-spin")).filter(Boolean);
    const icon = item.querySelector(".codicon")?.getBoundingClientRect();
    return { iconWidth: icon?.width ?? 0, id: item.id, text: item.textContent?.trim() ?? "", icons, label: item.querySelector("a")?.getAttribute("aria-label") ?? item.getAttribute("aria-label") ?? "" };
  });
}

/** What the editor shows as ghost text: the part on the cursor's line and the lines below it. */
async function ghostText(page) {
  return page.evaluate(() => {
    const editor = document.querySelector(".monaco-editor.focused") ?? document.querySelector(".editor-instance .monaco-editor");
    if (!editor) {
      return null;
    }
    const clean = (text) => (text ?? "").replace(/\u00a0/g, " ");
    const inline = [...editor.querySelectorAll(".ghost-text-decoration")];
    // The lines below the cursor's: a view zone of .view-line rows made of span.ghost-text.
    const below = [...editor.querySelectorAll(".view-line")]
      .filter((line) => line.querySelector("span.ghost-text") && !line.querySelector(".ghost-text-decoration"))
      .sort((a, b) => parseFloat(a.style.top || "0") - parseFloat(b.style.top || "0"));
    if (inline.length === 0 && below.length === 0) {
      return null;
    }
    return { first: inline.map((element) => clean(element.textContent)).join(""), rest: below.map((element) => clean(element.textContent)) };
  });
}

async function quickOpen(page, shortcut, text, rowLabel) {
  await page.keyboard.press(shortcut);
  const input = page.locator(".quick-input-widget .quick-input-box input");
  await input.waitFor({ state: "visible", timeout: 30_000 });
  await input.fill(text);
  await page.locator(`.quick-input-list .monaco-list-row[aria-label*=${JSON.stringify(rowLabel)}]`).first()
    .waitFor({ state: "visible", timeout: 30_000 });
  await page.keyboard.press("Enter");
}

/** The explanation webview's text and phase, searched through every frame of the page. */
async function explanation(page) {
  for (const frame of page.frames()) {
    try {
      const found = await frame.evaluate(() => {
        const main = document.querySelector("main#explanation");
        return main ? { phase: document.body.dataset.phase ?? "", text: main.innerText, html: main.innerHTML } : null;
      });
      if (found) {
        return found;
      }
    } catch {
      // a frame that navigated away or is not ready yet
    }
  }
  return null;
}

async function run(outDir) {
  const { entry, browser: browserPath } = toolPaths();
  const shots = path.resolve(options.shots ?? outDir);
  mkdirSync(shots, { recursive: true });
  const server = serverCommand();
  const vsix = path.resolve(options.vsix);
  check(readFileSync(vsix).length > 0, `${vsix} exists`);
  const sandbox = makeSandbox(server);
  const timings = {};
  const logAt = {};
  const mark = (name) => { timings[name] = seconds(); logAt[name] = serverLog.size(); log(name); };
  const result = { ok: false, vsix, server, timings, logAt, sandbox: sandbox.root };
  let codeServer;
  let browser;
  let page;
  try {
    installExtension(entry, sandbox, vsix);
    mark("extension installed");
    codeServer = await startCodeServer(entry, sandbox, path.join(outDir, "code-server.log"));
    mark("code-server up");
    browser = await chromium.launch({ executablePath: browserPath, args: CHROMIUM_FLAGS, headless: true, timeout: 60_000 });
    page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
    page.setDefaultTimeout(30_000);
    await page.goto(`${codeServer.url}/?folder=${encodeURIComponent(sandbox.dirs.workspace)}`, { timeout: TIMEOUT.workbench });
    await page.locator(".statusbar").waitFor({ state: "visible", timeout: TIMEOUT.workbench });
    mark("workbench loaded");

    // The extension activates on startup, starts the server and shows its state in the status bar.
    await waitFor("the WizardCoder status bar item", TIMEOUT.workbench, () => statusItem(page));
    mark("status bar item shown");
    await quickOpen(page, "Control+P", FILE_NAME, FILE_NAME);
    await page.locator(".monaco-editor .view-lines").first().waitFor({ state: "visible" });
    const idle = await waitFor("the server to load the model (status idle)", TIMEOUT.serverIdle, async () => {
      const item = await statusItem(page);
      check(!item?.icons.includes("codicon-error") && !item?.icons.includes("codicon-circle-slash"),
        `the server failed: ${JSON.stringify(item)}`);
      return item?.icons.includes("codicon-sparkle") ? item : null;
    }, 500);
    result.status = idle;
    mark("server idle");

    // Type at the end of the file; the suggestion shows as ghost text.
    await page.locator(".monaco-editor .view-lines").first().click();
    await page.keyboard.press("Control+End");
    await page.keyboard.type(TYPED, { delay: 60 });
    mark("typed");
    let asked = performance.now();
    const ghost = await waitFor("ghost text", TIMEOUT.ghost, async () => {
      const shown = await ghostText(page);
      if (shown && (shown.first.trim() || shown.rest.some((line) => line.trim()))) {
        return shown;
      }
      if (performance.now() - asked > TIMEOUT.retrigger) {
        log("no suggestion yet: asking again");
        await page.keyboard.press(PRESS[RETRIGGER_KEY]);
        asked = performance.now();
      }
      return null;
    });
    result.ghost = ghost;
    mark("ghost text shown");
    await sleep(300); // let the multi-line part settle before the picture and the comparison
    const settled = (await ghostText(page)) ?? ghost;
    result.ghost = settled;
    const shot = path.join(shots, "vscode-ghost-text.png");
    await page.screenshot({ path: shot });
    result.screenshot = shot;
    // Still a suggestion: the file on disk is untouched and the model text is not in the document.
    check(readFileSync(sandbox.file, "utf8") === SOURCE, "nothing is written before the user accepts");

    // VS Code's own accept-next-word (Ctrl+Right) and accept-next-line on our item: each part goes
    // in (saved and read back), the rest stays shown, served from the server's cache.
    const savedNow = async (before) => {
      await page.keyboard.press("Control+S");
      return waitFor("the saved file", TIMEOUT.saved, () => {
        const text = readFileSync(sandbox.file, "utf8");
        return text !== before ? text : null;
      });
    };
    await page.keyboard.press("Control+ArrowRight");
    result.afterWord = await savedNow(SOURCE);
    await sleep(800);
    result.restAfterWord = await ghostText(page);
    await page.screenshot({ path: path.join(shots, "vscode-partial-accept.png") });
    mark("accepted a word");
    check(result.afterWord.startsWith(SOURCE + TYPED) && result.afterWord.length > (SOURCE + TYPED).length,
      `the word went in: ${JSON.stringify(result.afterWord)}`);
    check(result.restAfterWord !== null, "the rest stays shown after a word");
    await page.keyboard.press(PRESS[ACCEPT_LINE_KEY]);
    result.afterLine = await savedNow(result.afterWord);
    await sleep(800);
    result.restAfterLine = await ghostText(page);
    mark("accepted a line");
    // When the line was all that was left, VS Code accepted the item whole (and ran its command);
    // otherwise Tab accepts the rest. (When the rest starts a line with its indentation, VS Code's
    // first Tab indents and the second accepts.) The item's command tells the server: its log says so.
    const accepted = /suggestion \S+ accepted/;
    const taken = result.afterLine.slice((SOURCE + TYPED).length);
    result.lineTookRest = [settled.first, ...settled.rest].join("\n").slice(taken.length).trim() === "";
    // `restAtAccept`: what was shown when the whole accept came, which the item's command reports.
    if (result.lineTookRest) {
      result.restAtAccept = result.restAfterWord;
      await serverLogged("that the suggestion was accepted", logAt["accepted a word"], accepted);
    } else {
      result.restAtAccept = result.restAfterLine;
      await page.keyboard.press("Tab");
      await sleep(800);
      const pending = result.restAfterLine;
      const still = await ghostText(page);
      if (still && pending && still.first.trim() && still.first.trim() === pending.first.trim()) {
        result.restAtAccept = still;
        await page.keyboard.press("Tab");
      }
      await serverLogged("that the suggestion was accepted", logAt["accepted a line"], accepted);
    }
    const saved = await savedNow(result.afterLine);
    result.saved = saved;
    mark("accepted and saved");
    check(saved.startsWith(SOURCE + TYPED), `the saved file keeps the text and what was typed: ${JSON.stringify(saved)}`);
    const added = saved.slice((SOURCE + TYPED).length);
    check(added.trim() !== "", `the accepted suggestion added text: ${JSON.stringify(saved)}`);
    const shownLines = [settled.first, ...settled.rest];
    const addedLines = added.split("\n");
    // What went in is what was shown (trailing blanks aside: the renderer trims them).
    for (const [index, line] of shownLines.entries()) {
      check(addedLines[index]?.trimEnd() === line.trimEnd(),
        `line ${index} of the accepted text ${JSON.stringify(addedLines[index])} equals the ghost text ${JSON.stringify(line)}`);
    }
    check(addedLines.slice(shownLines.length).every((line) => line.trim() === ""),
      `no more went in than was shown: ${JSON.stringify(addedLines.slice(shownLines.length))}`);

    // The next suggestion, which the server prefetched while the first one showed: the request
    // after the accept is answered without a model run (the Python side reads the server's log).
    await serverLogged("that the prefetch answered", logAt["accepted a word"], /prefetch hit|waited for the prefetch/);
    const prefetchServed = !options["server-log"] || /served suggestion \S+ from prefetch/.test(serverLog.since(logAt["accepted a word"]));
    result.next = prefetchServed ? await waitFor("the next suggestion", 10_000, async () => {
      const shown = await ghostText(page);
      return shown && (shown.first.trim() || shown.rest.some((line) => line.trim())) ? shown : null;
    }).catch(() => null) : null; // the prefetch found nothing to show there
    mark("after the accept");

    // A backspace: the server refuses the automatic request that follows, and nothing shows.
    await page.keyboard.press("Backspace");
    await serverLogged("that the last edit deleted text", logAt["after the accept"], /the last edit deleted text/);
    await sleep(500);
    result.afterBackspace = await ghostText(page);
    mark("after a backspace");
    check(result.afterBackspace === null, `nothing is suggested after a backspace: ${JSON.stringify(result.afterBackspace)}`);

    // Automatic mode off (the extension's toggle: `wizardcoder.trigger` = manual in the user's
    // settings): typing asks nothing of the model, the extension's suggest key does.
    await quickOpen(page, "F1", ">WizardCoder: Toggle Automatic Suggestions", "WizardCoder: Toggle Automatic Suggestions");
    await serverLogged("that the trigger setting changed", logAt["after a backspace"], /settings changed: .*\btrigger\b/);
    mark("trigger manual");
    await page.keyboard.press("End");
    await page.keyboard.press("Enter");
    await page.keyboard.type(MANUAL_TYPED, { delay: 60 });
    await serverLogged("that the trigger is manual", logAt["trigger manual"], /trigger is manual/);
    await sleep(1_000);
    result.unasked = await ghostText(page);
    mark("typed in manual mode");
    check(result.unasked === null, `nothing is suggested unasked in manual mode: ${JSON.stringify(result.unasked)}`);
    await page.keyboard.press(PRESS[SUGGEST_KEY]);
    result.asked = await waitFor("the asked-for suggestion", TIMEOUT.ghost, async () => {
      const shown = await ghostText(page);
      return shown && (shown.first.trim() || shown.rest.some((line) => line.trim())) ? shown : null;
    });
    mark("asked-for suggestion shown");
    await page.keyboard.press("Escape"); // left untaken (VS Code tells an extension nothing of it)

    // Explain the function's first two lines: a webview beside the editor fills with markdown.
    await page.keyboard.press("Control+Home");
    await page.keyboard.press("Shift+ArrowDown");
    await page.keyboard.press("Shift+ArrowDown");
    await quickOpen(page, "F1", ">WizardCoder: Explain Selection", "WizardCoder: Explain Selection");
    mark("explain requested");
    const opened = await waitFor("the explanation panel", 30_000, () => explanation(page), 500);
    result.explainFirstPhase = opened.phase;
    let streamedText = "";
    const done = await waitFor("the explanation to finish", TIMEOUT.explanation, async () => {
      const shown = await explanation(page);
      if (shown?.phase === "running" && shown.text.trim() && !streamedText) {
        streamedText = shown.text.trim();
        mark("first explanation text");
      }
      return shown && shown.phase !== "running" ? shown : null;
    }, 250);
    // markdown.api.render's HTML, not the extension's <pre> fallback for when it is unavailable.
    const rendered = !(done.html.trimStart().startsWith("<pre>") && !done.html.includes("<code"));
    result.explanation = { phase: done.phase, text: done.text, streamed: streamedText, rendered };
    mark("explanation done");
    check(done.phase === "done", `the explanation finished without error: ${JSON.stringify(done)}`);
    check(done.text.trim().length >= 20, `the explanation has text: ${JSON.stringify(done.text)}`);
    check(!/WizardCoder:/.test(done.text), `no error in the explanation: ${done.text}`);
    check(streamedText !== "", "the explanation was streamed: text showed while the phase was still running");
    check(rendered, `the markdown was rendered: ${done.html.slice(0, 300)}`);
    await page.screenshot({ path: path.join(shots, "vscode-explain.png") });
    check(readFileSync(sandbox.file, "utf8") === saved, "explaining changes no text");
    result.ok = true;
    return result;
  } catch (error) {
    result.error = error instanceof Error ? error.stack ?? error.message : String(error);
    if (page) {
      await page.screenshot({ path: path.join(outDir, "failure.png") }).catch(() => {});
      result.statusBar = await page.locator(".statusbar").innerText({ timeout: 5_000 }).catch(() => null);
      result.notifications = await page.locator(".notifications-toasts").innerText({ timeout: 5_000 }).catch(() => null);
    }
    return result;
  } finally {
    timings.total = seconds();
    await browser?.close().catch(() => {});
    codeServer?.stop();
    if (codeServer) {
      await new Promise((resolve) => {
        if (codeServer.child.exitCode !== null || codeServer.child.signalCode !== null) {
          resolve();
          return;
        }
        const force = setTimeout(() => {
          try { process.kill(-codeServer.child.pid, "SIGKILL"); } catch { /* gone */ }
          resolve();
        }, 10_000);
        codeServer.child.once("exit", () => { clearTimeout(force); resolve(); });
      });
      codeServer.logStream.end();
    }
    if (!options.keep) {
      rmSync(sandbox.root, { recursive: true, force: true });
    }
  }
}

const outDir = path.resolve(options.out ?? mkdtempSync(path.join(tmpdir(), "wizardcoder-vscode-e2e-out-")));
mkdirSync(outDir, { recursive: true });
const result = await run(outDir);
writeFileSync(path.join(outDir, "result.json"), JSON.stringify(result, null, 2));
log(`${result.ok ? "PASS" : "FAIL"}: ${path.join(outDir, "result.json")}`);
if (!result.ok) {
  console.error(result.error);
}
console.log(JSON.stringify({ ok: result.ok, result: path.join(outDir, "result.json"), timings: result.timings }));
process.exit(result.ok ? 0 : 1);
